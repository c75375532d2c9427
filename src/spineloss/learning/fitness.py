"""The fitness of a candidate loss: validation Dice after a short training on a proxy task.

    fitness(L) = mean over the proxy's validation cases of the Dice (mean over foreground labels, original
                 grid) of a U-Net trained from scratch with L for E x I steps

The training is spineloss's own (:func:`spineloss.training.train_fold`: the same data pipeline, optimiser,
learning-rate decay and autocast as every experiment), with a fixed seed, so every candidate starts from the
same initial weights and sees the same batches; the Dice is the experiment's
(:func:`spineloss.training.selection_dice`), computed once, after the last step (no checkpoint selection).

The proxy task (:class:`ProxyTask`) is built from a learn config (:mod:`.config`) by :func:`build_task`: the
cases of outer fold ``fold`` of the study's seeded split (:func:`spineloss.experiment.make_folds`) minus its
test cases, split by :func:`spineloss.experiment.inner_split` into cases that train and ``val_fraction`` that
score. Test cases of that fold never train or score a candidate; their ids are recorded with the result, as
are the fit and val cases with their files' fingerprints (:meth:`ProxyTask.summary`), which an experiment
checks against its own test folds (:mod:`.protocol`).

:func:`evaluate` is a plain function of a plain dict, so any backend (the local process pool of
:mod:`spineloss.backends.local`, through :mod:`.parallel`, or Ray) can run it: ``evaluate({"loss": <learned-loss document>, "task": task.to_dict()})``.
Before training, the candidate goes through :func:`spineloss.learning.screening.screen` (unless the spec says
``"screen": False``); a rejected, invalid or crashing candidate gets :data:`WORST_FITNESS`.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ProxyTask", "REFERENCE_LOSSES", "WORST_FITNESS", "build_task", "candidate_spec", "evaluate",
           "evaluate_detailed", "reference_spec"]

log = logging.getLogger("spineloss.learning")

#: the fitness of a rejected, invalid or failed candidate: below every trained one (whose Dice is >= 0), so such
#: a candidate never wins a tournament against a trained one, nor becomes the search's result
WORST_FITNESS = -1.0

_CASES: dict[str, tuple[list, list]] = {}


@dataclass(frozen=True)
class ProxyTask:
    """Everything an evaluation needs, as plain data (it travels to worker processes).

    ``data_dir``/``cache_dir``: the data set and its preprocessing cache; ``fit_ids`` train, ``val_ids`` score;
    ``test_ids``: the fold's test cases, recorded to show they were left out; ``label_names`` value -> name of
    the scored labels; ``model``, ``training``, ``augment``, ``preprocess``: the sections' dicts.
    """

    data_dir: str
    cache_dir: str | None
    label_mode: str
    num_classes: int
    label_names: dict
    fit_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    preprocess: dict
    model: dict
    training: dict
    augment: dict

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(asdict(self)))
        d["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProxyTask":
        d = dict(d)
        d["label_names"] = {int(k): v for k, v in d["label_names"].items()}
        for key in ("fit_ids", "val_ids", "test_ids"):
            d[key] = tuple(d[key])
        return cls(**d)

    def configs(self):
        """``(ModelConfig, TrainConfig, AugmentConfig, PreprocessConfig)`` of the task; the training scores
        once, after its last epoch."""
        from ..data.augment import AugmentConfig
        from ..data.preprocess import PreprocessConfig
        from ..training import ModelConfig, TrainConfig
        training = dict(self.training)
        training["val_every"] = int(training["epochs"])
        return (ModelConfig(**self.model), TrainConfig(**training), AugmentConfig(**self.augment),
                PreprocessConfig.from_dict(self.preprocess))

    def cases(self) -> tuple[list, list]:
        """``(fit cases, validation cases)`` as :class:`~spineloss.data.loader.PreparedCase`, loaded once per
        process (from the preprocessing cache that :func:`build_task` filled)."""
        key = json.dumps([self.data_dir, self.cache_dir, self.preprocess, self.label_mode, self.fit_ids,
                          self.val_ids])
        if key not in _CASES:
            from ..data.layout import check_dataset
            from ..data.loader import prepare_cases
            from ..data.preprocess import PreprocessConfig
            info = check_dataset(self.data_dir)
            by_id = {c.case_id: c for c in info.cases}
            missing = sorted(set(self.fit_ids + self.val_ids) - set(by_id))
            if missing:
                raise ValueError(f"{self.data_dir}: the proxy task's cases {missing[:5]} are not in the data set")
            wanted = [by_id[i] for i in self.fit_ids + self.val_ids]
            prepared = {p.case_id: p for p in prepare_cases(info, wanted, PreprocessConfig.from_dict(self.preprocess),
                                                            self.label_mode, cache_dir=self.cache_dir)}
            _CASES.clear()  # one task per process
            _CASES[key] = ([prepared[i] for i in self.fit_ids], [prepared[i] for i in self.val_ids])
        return _CASES[key]

    def fingerprints(self) -> dict[str, str]:
        """``{case_id: hash}`` of the fit and val cases' image and label files
        (:func:`spineloss.experiment.data_fingerprints`): the identity of the data that chose the loss, which an
        experiment compares with its test cases' (:mod:`spineloss.learning.protocol`)."""
        from ..data.layout import check_dataset
        from ..experiment import data_fingerprints
        by_id = {c.case_id: c for c in check_dataset(self.data_dir).cases}
        missing = sorted(set(self.fit_ids + self.val_ids) - set(by_id))
        if missing:
            raise ValueError(f"{self.data_dir}: the proxy task's cases {missing[:5]} are not in the data set")
        return data_fingerprints([by_id[i] for i in self.fit_ids + self.val_ids])

    def summary(self) -> dict:
        """What a learned-loss file records about the task it was found on: the data, the case ids that chose
        the loss (``fit_cases``, ``val_cases``) and their files' ``fingerprints``, the fold's test cases left
        out, the sections."""
        return {"data": self.data_dir, "label_mode": self.label_mode, "fit_cases": list(self.fit_ids),
                "val_cases": list(self.val_ids), "fingerprints": self.fingerprints(),
                "excluded_test_cases": list(self.test_ids),
                "model": self.model, "training": {k: v for k, v in self.training.items() if k != "threads"},
                "augment": self.augment, "preprocess": self.preprocess}


def build_task(config, out_dir: str | Path) -> ProxyTask:
    """The proxy task of a :class:`~spineloss.learning.config.LearnConfig`; writes the phantom data set (when
    the config asks for one) under ``out_dir/data`` and fills the preprocessing cache ``out_dir/cache``."""
    from ..data.layout import check_dataset
    from ..data.loader import prepare_cases
    from ..experiment import inner_split, make_folds, resolve_data

    out_dir = Path(out_dir)
    data_dir = resolve_data(config, out_dir)
    info = check_dataset(data_dir)
    ids = sorted(c.case_id for c in info.cases)
    train_ids, test_ids = make_folds(ids, config.folds, config.seed)[config.fold]
    if len(train_ids) < 2:
        raise ValueError(f"the proxy task needs at least 2 training cases in fold {config.fold}, got {len(train_ids)}")
    fit, val = inner_split(train_ids, config.val_fraction, config.seed, config.fold)
    if config.max_fit_cases:
        fit = fit[:config.max_fit_cases]
    cache = str(Path(config.data.cache) if config.data.cache else out_dir / "cache")
    label_mode = config.data.label_mode
    by_id = {c.case_id: c for c in info.cases}
    prepare_cases(info, [by_id[i] for i in fit + val], config.preprocess, label_mode, cache_dir=cache)
    training = asdict(config.training)
    training["threads"] = None
    return ProxyTask(data_dir=str(data_dir), cache_dir=cache, label_mode=label_mode,
                     num_classes=info.num_classes_for(label_mode), label_names=info.label_names(label_mode),
                     fit_ids=tuple(fit), val_ids=tuple(val), test_ids=tuple(test_ids),
                     preprocess=config.preprocess.to_dict(), model=asdict(config.model), training=training,
                     augment=config.augment.to_dict())


#: the hand-designed losses every search is compared with on its own proxy task (:func:`reference_spec`)
REFERENCE_LOSSES = ("dice", "ce", "dice_ce")


def reference_spec(loss: str, task: ProxyTask | Mapping[str, Any]) -> dict:
    """The input of :func:`evaluate` for a registered loss (``"dice"``, ``"dice_ce"``, ...): the same training
    and score as a candidate's, so a learned loss's fitness can be read against the losses it should beat."""
    return {"loss": {"kind": "reference", "name": str(loss)},
            "task": task.to_dict() if isinstance(task, ProxyTask) else dict(task), "screen": False}


def candidate_spec(doc: Mapping[str, Any], task: ProxyTask | Mapping[str, Any], screen: bool = True) -> dict:
    """The plain-data input of :func:`evaluate`: a learned-loss document and the task."""
    return {"loss": dict(doc), "task": task.to_dict() if isinstance(task, ProxyTask) else dict(task),
            "screen": bool(screen)}


def evaluate_detailed(spec: Mapping[str, Any]) -> dict:
    """Evaluate one candidate: ``{"fitness", "status", "reason", "seconds"}``.

    ``status``: ``"trained"`` (fitness = validation Dice), ``"rejected"`` (by the screening, ``reason`` says
    why), ``"invalid"`` (the document does not build) or ``"failed"`` (training raised; ``reason`` is the error).
    """
    from ..training import train_fold
    from .format import loss_from_document
    from .screening import screen

    t0 = time.perf_counter()

    def result(fitness: float, status: str, reason: str = "") -> dict:
        return {"fitness": float(fitness), "status": status, "reason": reason,
                "seconds": round(time.perf_counter() - t0, 3)}

    task = ProxyTask.from_dict(spec["task"])
    reference = spec["loss"].get("kind") == "reference"  # a registered loss (reference_spec): not screened
    try:
        if reference:
            from ..losses import build_loss
            loss = build_loss(spec["loss"]["name"])
        else:
            loss = loss_from_document(spec["loss"])
    except ValueError as exc:
        return result(WORST_FITNESS, "invalid", str(exc))
    if spec.get("screen", True) and not reference:
        reason = screen(spec["loss"], task.num_classes)
        if reason is not None:
            return result(WORST_FITNESS, "rejected", reason)
    # loss.validate stays on, as in an experiment: a non-finite loss from finite logits stops the run (status
    # "failed"), so a formula that overflows cannot win here and then stop the study that uses it
    model, training, augment, preprocess = task.configs()
    try:
        fit, val = task.cases()
        with tempfile.TemporaryDirectory(prefix="spineloss-fitness-") as tmp:
            out = train_fold(fit, val, loss, task.num_classes, tmp, model_config=model, train_config=training,
                             augment=augment, preprocess=preprocess, label_mode=task.label_mode,
                             label_names=task.label_names, resume=False, progress=False)
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        log.warning("candidate failed to train: %s", exc)
        return result(WORST_FITNESS, "failed", f"{type(exc).__name__}: {exc}")
    dice = float(out.get("best_val_dice", math.nan))
    if not math.isfinite(dice):
        return result(WORST_FITNESS, "failed", "the validation Dice is not finite")
    return result(dice, "trained")


def evaluate(candidate_spec: Mapping[str, Any]) -> float:
    """The fitness (validation Dice, higher is better) of one candidate spec (:func:`candidate_spec`)."""
    return evaluate_detailed(candidate_spec)["fitness"]
