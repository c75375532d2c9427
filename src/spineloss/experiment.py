"""An experiment: a grid of (loss, fold) training runs under seeded k-fold cross-validation.

A TOML config names the data, the preprocessing, the model, the training, the augmentation and the
losses (see ``configs/`` and the README). :func:`run_experiment` validates the data set, splits the
cases into ``folds`` outer folds with a seeded permutation, preprocesses every case once (cached), then
for each loss and fold trains a model on the fold's training cases and scores it once on its test
cases at their original voxel grid.

The protocol (every table stands on it): a fold's test cases choose nothing. With
``[experiment] selection = "last"`` (the default, as nnU-Net) the scored model is the last epoch's;
with ``"inner"`` the checkpoint is the epoch with the best Dice on an inner validation split
(``inner_val_fraction`` of the fold's training cases, seeded by ``(seed, fold)``, not trained on).
The post-processing (``[postprocess]``) is part of the config, fixed before the grid runs. Written::

    <out>/experiment.json                the resolved config and the protocol
    <out>/folds.json                     per fold: train, inner_val and test case ids
    <out>/<loss>/fold<k>/run.json        the run's config (written when it starts)
    <out>/<loss>/fold<k>/history.csv     per-epoch loss, inner-validation Dice, learning rate
    <out>/<loss>/fold<k>/model.pt        the scored checkpoint, usable by `spineloss predict`
    <out>/<loss>/fold<k>/predictions/    each test case's label map (original grid, .nii.gz)
    <out>/<loss>/fold<k>/cases.csv       every metric of every test case, per label and foreground
    <out>/<loss>/fold<k>/metrics.json    the same, their means, the config (written last: marks it done)
    <out>/<loss>/pictures/               the best and the worst test case of the loss (PNG)
    <out>/summary.{md,csv,tex}, stats.csv  the results table and the paired tests behind its daggers

A (loss, fold) with a ``metrics.json`` is reused only when its recorded config equals the current
one (else the run stops and names what changed; ``--force`` reruns); one interrupted mid-way resumes
from its ``last.pt``. The same seed gives the same folds and, on the CPU, the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .atomic import atomic_write_text
from .data.augment import AugmentConfig
from .data.preprocess import PreprocessConfig
from .postprocess import PostprocessConfig
from .training import (ModelConfig, TrainConfig, checkpoint_mirror_axes, evaluate_cases,
                       load_checkpoint, write_json)

__all__ = ["LossSpec", "DataConfig", "ExperimentConfig", "load_config", "make_folds", "run_experiment"]

log = logging.getLogger("spineloss.experiment")


#: ``[experiment] selection``: how the scored model is chosen (:func:`protocol_text` says it in words).
SELECTION_RULES = ("last", "inner")

#: Bumped when a change of spineloss changes the numbers a run produces with the same config, so that
#: runs recorded before are not reused (:func:`run_config`).
RESULTS_VERSION = 2


def protocol_text(selection: str, inner_val_fraction: float) -> str:
    """The evaluation protocol in one sentence, for results files and the README."""
    rule = ("no selection (the model after the last epoch)" if selection == "last" else
            f"the epoch with the best inner-validation Dice ({inner_val_fraction:.0%} of each fold's training "
            "cases, seeded, held out of training)")
    return ("Each case is scored once, as a test case of the outer fold that did not train on it; test cases "
            f"choose nothing. Checkpoint: {rule}.")


@dataclass(frozen=True)
class LossSpec:
    """A loss of the experiment: the row name, the registry name (or ``{name: weight}``), parameters, and
    how it changes while training (``tuning``: :class:`spineloss.tuning.runner.TuningSpec`'s table)."""

    name: str
    loss: Any
    params: dict = field(default_factory=dict)
    tuning: dict | None = None

    def tuning_spec(self):
        """The :class:`~spineloss.tuning.runner.TuningSpec` of the row's ``tuning`` table, or None."""
        from .tuning.runner import TuningSpec
        return TuningSpec.from_table(self.tuning, f"[[losses]] '{self.name}' tuning")

    def build(self, spacing: tuple[float, float, float] | None = None):
        """The loss module; distance losses get ``spacing`` (mm) unless the params set it. In training
        each batch item's own spacing is passed with its distance maps (computed at that spacing in
        the data pipeline) and takes precedence; this one applies when the loss is called without."""
        from .losses import build_loss
        loss = build_loss(self.loss, **self.params)
        if spacing is not None and getattr(loss, "needs_distance_maps", False) and "spacing" not in self.params:
            loss = build_loss(self.loss, **self.params, spacing=tuple(spacing))
        return loss


def _checked_tuning(spec: LossSpec) -> dict | None:
    """The row's tuning table checked against its loss when the config loads (a typo or a scheme that
    cannot work fails before any run), with Rebalance's ``start`` / ``end`` written as ``{term: weight}``
    (a list follows the terms' order, which a JSON record does not keep)."""
    tuning = spec.tuning_spec()
    if tuning is None:
        return None
    owner = f"[[losses]] '{spec.name}' tuning"
    loss = spec.build()
    table = tuning.to_dict()
    if tuning.greedy is not None:
        from .tuning.greedy import GreedyConfig, GreedySearch
        try:
            search = GreedySearch(loss, GreedyConfig.from_dict(dict(tuning.greedy)))
        except ValueError as exc:
            raise ValueError(f"{owner}.greedy: {exc}") from exc
        if tuning.weighting is not None and any(n.startswith("weight.") for n in search.parameters):
            raise ValueError(f"{owner}: greedy searches term weights that the weighting also sets; search the "
                             "terms' own parameters, or drop one of the two")
    if tuning.weighting is not None:
        from .tuning.weighting import build_weighting
        terms = dict(getattr(loss, "terms", {}) or {})
        if not terms:
            raise ValueError(f"{owner}.weighting re-weights the terms of a weighted sum; this loss has none "
                             "(use loss = { dice = 1.0, ce = 1.0 } or a compound)")
        weighting = dict(tuning.weighting)
        ratio_based = weighting["scheme"] == "cov" or (weighting["scheme"] == "softadapt"
                                                       and weighting.get("variant") == "loss_weighted")
        signed = [t for t, child in terms.items() if getattr(child, "can_be_negative", False)]
        if ratio_based and signed:
            raise ValueError(f"{owner}.weighting: {weighting['scheme']} divides by the terms' values, and "
                             f"{signed} can be negative (the boundary loss is below 0 near a good prediction); "
                             "measure it from its optimum (boundary = { weight = 0.01, relative = true }), or use "
                             "rebalance or softadapt's original / normalized variants")
        for key in ("start", "end"):
            if isinstance(weighting.get(key), (list, tuple)) and len(weighting[key]) == len(terms):
                weighting[key] = dict(zip(terms, weighting[key]))
        try:
            build_weighting(weighting["scheme"], list(terms), 1, **{k: v for k, v in weighting.items()
                                                                    if k != "scheme"})
        except ValueError as exc:
            raise ValueError(f"{owner}.weighting: {exc}") from exc
        table["weighting"] = weighting
    return table


@dataclass(frozen=True)
class DataConfig:
    """Where the cases come from: a data set folder, or a built-in phantom written on first use.

    Args:
        path: an nnU-Net v2 or MSD folder (relative paths are relative to the current directory).
        phantom: ``{region, cases, shape, seed}`` of a synthetic data set, written under the output
            folder (``<out>/data``) when ``path`` is not given.
        label_mode: ``multiclass`` (labels as declared) or ``binary`` (all foreground merged): the
            labels the pipeline outputs and is scored on.
        train_label_mode: the labels the network learns, when they differ: ``binary`` with
            ``label_mode = "multiclass"`` trains a foreground network and takes the levels from
            counting the bodies (``[postprocess] number_levels``), for labels that are ordinal
            levels along the spine (L1-L5).
        cache: folder of the preprocessing cache (default ``<out>/cache``).
    """

    path: str | None = None
    phantom: dict | None = None
    label_mode: str = "multiclass"
    cache: str | None = None
    train_label_mode: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.phantom is None):
            raise ValueError("[data] needs exactly one of 'path' (a data set folder) or 'phantom' "
                             "(a table {region, cases, shape, seed})")
        if self.label_mode not in ("multiclass", "binary"):
            raise ValueError(f"[data] label_mode must be 'multiclass' or 'binary', got {self.label_mode!r}")
        if self.train_label_mode not in (None, self.label_mode, "binary"):
            raise ValueError(f"[data] train_label_mode must be left out, equal label_mode, or be 'binary' (a "
                             f"foreground network for multiclass levels); got {self.train_label_mode!r}")

    @property
    def network_label_mode(self) -> str:
        """The label mode the network is trained on."""
        return self.train_label_mode or self.label_mode


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment (one TOML file)."""

    name: str
    data: DataConfig
    losses: tuple[LossSpec, ...]
    folds: int = 3
    seed: int = 0
    output: str | None = None
    table_distance: str = "hd"
    selection: str = "last"
    inner_val_fraction: float = 0.2
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    training: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    postprocess: PostprocessConfig = PostprocessConfig()

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"[experiment] folds must be >= 2 for cross-validation, got {self.folds}")
        if not self.losses:
            raise ValueError("the config names no loss: add `losses = [\"dice\", ...]` or [[losses]] tables")
        names = [s.name for s in self.losses]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"loss names must be unique (they name the result folders), repeated: {dupes}")
        if self.postprocess.needs_probabilities and self.data.network_label_mode != "multiclass":
            raise ValueError("[postprocess] levels = 'probabilities' reads a network that predicts the levels: it "
                             "needs [data] label_mode = 'multiclass' (and no train_label_mode = 'binary')")
        if self.postprocess.number_levels and self.data.label_mode != "multiclass":
            raise ValueError("[postprocess] number_levels outputs levels: it needs [data] label_mode = 'multiclass'")
        if self.data.network_label_mode != self.data.label_mode and not self.postprocess.number_levels:
            raise ValueError("[data] train_label_mode = 'binary' trains a foreground network; the levels of "
                             "label_mode = 'multiclass' then come from counting the bodies: set [postprocess] "
                             "caudal_bodies = <number of levels> and number_levels = true")
        if self.table_distance not in ("hd", "hd95"):
            raise ValueError(f"[experiment] table_distance must be 'hd' or 'hd95', got {self.table_distance!r}")
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"[experiment] selection must be one of {sorted(SELECTION_RULES)}, got {self.selection!r}")
        if not 0.0 < float(self.inner_val_fraction) < 1.0:
            raise ValueError(f"[experiment] inner_val_fraction must be in (0, 1), got {self.inner_val_fraction!r}")

    def protocol(self) -> str:
        """One sentence: which cases are scored and which (if any) chose the checkpoint."""
        return protocol_text(self.selection, self.inner_val_fraction)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["losses"] = [asdict(s) for s in self.losses]
        return d


def _section(cls, table: dict | None, where: str, **overrides):
    table = dict(table or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"[{where}] unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("target_spacing", "clip_percentiles", "patch_size", "channels"):
        if key in table and table[key] is not None:
            table[key] = tuple(table[key])
    table.update({k: v for k, v in overrides.items() if k not in table})
    return cls(**table)


def _row_name(loss: str) -> str:
    """The row (results folder) name of a loss given without one: its registry name, or ``learned_<folder>``
    for a ``"learned:PATH"`` file (:func:`spineloss.learning.format.learned_row_name`)."""
    if loss.strip().lower().startswith("learned:"):
        from .learning.format import learned_row_name
        return learned_row_name(loss)
    return loss


def _loss_specs(raw) -> tuple[LossSpec, ...]:
    specs = []
    for item in raw or []:
        if isinstance(item, str):
            specs.append(LossSpec(_row_name(item), item))
        elif isinstance(item, dict):
            item = dict(item)
            loss = item.pop("loss", item.get("name"))
            name = item.pop("name", None) or (_row_name(loss) if isinstance(loss, str) else None)
            if name is None:
                raise ValueError(f"a [[losses]] entry with a weighted sum needs a 'name': {item}")
            params = item.pop("params", {})
            tuning = item.pop("tuning", None)
            if item:
                raise ValueError(f"[[losses]] '{name}': unknown key(s) {sorted(item)}; use name, loss, params, tuning")
            spec = LossSpec(str(name), loss, dict(params), dict(tuning) if tuning else None)
            specs.append(dataclasses.replace(spec, tuning=_checked_tuning(spec)))
        else:
            raise ValueError(f"a loss must be a name or a table, got {item!r}")
    return tuple(specs)


def config_from_dict(raw: dict) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from the parsed TOML."""
    raw = dict(raw)
    if "learn" in raw:
        raise ValueError("this is the config of a loss search ([learn]): run it with `spineloss learn "
                         "genetic|taylor|meta CONFIG.toml`, then use its learned_loss.json as a loss here")
    exp = dict(raw.pop("experiment", {}))
    losses = _loss_specs(raw.pop("losses", exp.pop("losses", None)))
    allowed = {"data", "preprocess", "model", "training", "augment", "postprocess"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; known: experiment, losses, {sorted(allowed)}")
    seed = int(exp.get("seed", 0))
    known_exp = {"name", "folds", "seed", "output", "table_distance", "selection", "inner_val_fraction"}
    if set(exp) - known_exp:
        raise ValueError(f"[experiment] unknown key(s) {sorted(set(exp) - known_exp)}; known: {sorted(known_exp)}")
    return ExperimentConfig(
        name=str(exp.get("name", "experiment")), data=_section(DataConfig, raw.get("data"), "data"),
        losses=losses, folds=int(exp.get("folds", 3)), seed=seed, output=exp.get("output"),
        table_distance=exp.get("table_distance", "hd"), selection=str(exp.get("selection", "last")),
        inner_val_fraction=float(exp.get("inner_val_fraction", 0.2)),
        preprocess=_section(PreprocessConfig, raw.get("preprocess"), "preprocess"),
        model=_section(ModelConfig, raw.get("model"), "model"),
        training=_section(TrainConfig, raw.get("training"), "training", seed=seed),
        augment=_section(AugmentConfig, raw.get("augment"), "augment"),
        postprocess=_section(PostprocessConfig, raw.get("postprocess"), "postprocess"))


def load_toml(path: str | Path, build: Callable[[dict], Any]) -> Any:
    """``build(parsed TOML of path)``; every error names the file (and ``build``'s the key to fix)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return build(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a TOML experiment config; errors name the file and the key to fix."""
    return load_toml(path, config_from_dict)


def make_folds(case_ids: Sequence[str], folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Seeded k-fold split: ``[(train_ids, test_ids), ...]``; every case is a test case exactly once.

    The sorted ids are permuted with ``numpy.random.default_rng(seed)`` and cut into ``folds`` nearly
    equal parts (``numpy.array_split``), so the same ids and seed always give the same folds.
    """
    ids = sorted(case_ids)
    if len(ids) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} cases, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = [sorted(ids[i] for i in part) for part in np.array_split(order, folds)]
    return [([c for j, p in enumerate(parts) if j != k for c in p], parts[k]) for k in range(folds)]


def inner_split(train_ids: Sequence[str], fraction: float, seed: int, fold: int) -> tuple[list[str], list[str]]:
    """``(fit_ids, inner_val_ids)``: ``round(fraction * n)`` of a fold's training cases (at least one,
    and at least one left to train on) held out for checkpoint selection, drawn with
    ``numpy.random.default_rng([seed, fold])`` from the sorted ids. Test cases never enter: the
    function sees only ``train_ids``."""
    ids = sorted(train_ids)
    if len(ids) < 2:
        raise ValueError(f"an inner validation split needs at least 2 training cases per fold, got {len(ids)}; "
                         "use [experiment] selection = \"last\"")
    n_val = min(max(1, int(round(fraction * len(ids)))), len(ids) - 1)
    chosen = set(np.random.default_rng([seed, fold]).choice(len(ids), size=n_val, replace=False).tolist())
    return [c for i, c in enumerate(ids) if i not in chosen], [c for i, c in enumerate(ids) if i in chosen]


@dataclass(frozen=True)
class FoldSplit:
    """The cases of one outer fold: ``train`` fits the network, ``inner_val`` (a part of the fold's
    training cases, empty without selection) chooses the checkpoint, ``test`` is scored once."""

    fold: int
    train: tuple[str, ...]
    inner_val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"fold": self.fold, "train": list(self.train), "inner_val": list(self.inner_val),
                "test": list(self.test)}


def fold_splits(config: ExperimentConfig, case_ids: Sequence[str]) -> list[FoldSplit]:
    """The experiment's outer folds and, with ``selection = "inner"``, each fold's inner split."""
    out = []
    for k, (train_ids, test_ids) in enumerate(make_folds(case_ids, config.folds, config.seed)):
        fit, inner = (inner_split(train_ids, config.inner_val_fraction, config.seed, k)
                      if config.selection == "inner" else (train_ids, []))
        out.append(FoldSplit(k, tuple(fit), tuple(inner), tuple(test_ids)))
    return out


def resolve_data(config: ExperimentConfig, out_dir: Path) -> Path:
    """The data set folder, writing the phantom data set first when the config asks for one."""
    if config.data.path is not None:
        return Path(config.data.path)
    from .data.phantom import write_phantom_dataset
    ph = dict(config.data.phantom)
    target = out_dir / "data"
    marker = target / ".phantom.json"
    if not (marker.exists() and json.loads(marker.read_text()) == ph):
        write_phantom_dataset(target, region=ph.get("region", "lumbar"), cases=int(ph.get("cases", 12)),
                              seed=int(ph.get("seed", 0)), shape=tuple(ph.get("shape", (96, 96, 40))))
        marker.write_text(json.dumps(ph))
    return target


#: Config entries that change how fast or where a run goes, not its numbers: left out of the comparison
#: that decides whether a finished run can be reused. (The data are compared by content, not by path.)
_NOT_COMPARED = {"name", "output", "table_distance", "data.path", "data.cache", "training.num_workers",
                 "training.threads", "training.device", "training.amp"}
#: Entries that matter only when the scored model is chosen on an inner split.
_SELECTION_ONLY = {"inner_val_fraction", "training.val_every"}


def data_fingerprints(cases) -> dict[str, str]:
    """``{case_id: hash}`` of each case's image and label file contents (BLAKE2b, 16 hex digits): the
    identity of the data a run trained and was scored on, wherever the folder lies."""
    import hashlib
    out = {}
    for case in cases:
        h = hashlib.blake2b(digest_size=8)
        for path in list(case.image_paths) + ([case.label_path] if case.label_path else []):
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        out[case.case_id] = h.hexdigest()
    return out


def resolved_settings(training: TrainConfig) -> dict:
    """``{"resolved.device", "resolved.amp"}``: what ``training.device`` / ``training.amp`` resolve to in this
    process (``"auto"`` differs between machines: a CPU head node and GPU workers)."""
    from .training import resolve_amp, resolve_device
    device = resolve_device(training.device)
    amp = resolve_amp(training.amp, device)
    return {"resolved.device": device.type, "resolved.amp": str(amp).replace("torch.", "") if amp is not None else "fp32"}


def run_config(config: ExperimentConfig, spec: LossSpec, split: FoldSplit,
               fingerprints: dict[str, str] | None = None, resolved: dict | None = None) -> dict:
    """Everything that determines the numbers of one (loss, fold) run, flattened to ``section.key``:
    the config with this loss only, the fold's case ids, the contents of their files
    (``fingerprints``, :func:`data_fingerprints`), the device and autocast dtype the config resolves to
    here (or ``resolved``, :func:`resolved_settings` where the runs execute), and :data:`RESULTS_VERSION`.
    A finished run is reused only when this is unchanged."""
    d = config.to_dict()
    d.pop("losses")
    d["loss"] = asdict(spec)
    from .learning.format import learned_digests  # a learned loss is its file's contents, not its path
    learned = learned_digests(spec.loss, spec.params)  # the whole loss, or {term: digest} of a weighted sum's
    if learned:
        d["loss"]["learned_file"] = learned[spec.loss] if isinstance(spec.loss, str) and spec.loss in learned \
            else learned
    d["split"] = split.to_dict()
    flat = _flatten(d)
    skip = _NOT_COMPARED | (_SELECTION_ONLY if config.selection == "last" else set())
    out = {k: v for k, v in flat.items() if k not in skip}
    if fingerprints is not None:
        ids = sorted(split.train + split.inner_val + split.test)
        out["data.files"] = _digest([f"{i}:{fingerprints[i]}" for i in ids])
    out.update(resolved if resolved is not None else resolved_settings(config.training))
    out["resolved.results_version"] = RESULTS_VERSION
    return out


def _digest(items: Sequence[str]) -> str:
    import hashlib
    return hashlib.blake2b("\n".join(items).encode(), digest_size=8).hexdigest()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in ("loss.params", "data.phantom"):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = json.loads(json.dumps(value, default=float))  # tuples -> lists, as read back
    return out


def _option_defaults() -> dict:
    """Every section option at its default value, flattened like :func:`run_config`."""
    sections = {"preprocess": PreprocessConfig(), "model": ModelConfig(), "training": TrainConfig(),
                "augment": AugmentConfig(), "postprocess": PostprocessConfig()}
    top = {f.name: f.default for f in fields(ExperimentConfig) if f.name not in sections and
           f.default is not dataclasses.MISSING}
    data = {f.name: f.default for f in fields(DataConfig) if f.name not in ("path", "phantom")}
    return _flatten({**top, "data": data, "loss": {"tuning": None}, **{k: asdict(v) for k, v in sections.items()}})


def config_differences(recorded: dict | None, current: dict | None) -> list[str]:
    """``["training.epochs: 16 -> 20", ...]``: what differs between a run's recorded config and now
    (``current`` None: the run is not part of the current config at all). An option that the run's
    record lacks (added to spineloss since) counts as equal when it is at its default value."""
    if current is None:
        return ["not part of this config (a loss or fold it no longer has)"]
    if recorded is None:
        return ["the run was recorded without its config (an older spineloss)"]
    defaults = _option_defaults()
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key, "<absent>"), current.get(key, "<absent>")
        if key not in recorded and key in defaults and new == defaults[key]:
            continue
        if old != new:
            if key.startswith("split.") and isinstance(old, list):
                out.append(f"{key}: the cases differ")
            elif key == "data.files":
                out.append("data.files: the image or label files differ")
            else:
                out.append(f"{key}: {old!r} -> {new!r}")
    return out


def _recorded_run_config(run_dir: Path) -> tuple[bool, bool, dict | None]:
    """``(something recorded, finished, its run_config)`` from ``metrics.json`` or ``run.json``."""
    for name in ("metrics.json", "run.json"):
        path = run_dir / name
        if path.exists():
            return True, name == "metrics.json", json.loads(path.read_text()).get("run_config")
    return (run_dir / "last.pt").exists() or (run_dir / "model.pt").exists(), False, None


def _check_run_folder(out_dir: Path, expected: dict[tuple[str, int], dict], force: bool, resume: bool) -> None:
    """Every run in ``out_dir`` must belong to the current config, so a table never mixes configs.

    ``expected``: ``{(loss, fold): run_config}`` of the whole current config (all its losses, also
    those a ``--losses`` subset leaves out). A run recorded with another config, or not part of this
    one (a removed loss, a fold beyond ``folds``), stops the command with what differs; ``force``
    deletes those runs instead. An unfinished run is simply restarted when ``resume`` is off.
    """
    import shutil
    changed, emptied = [], set()
    for run_dir in sorted(p for p in out_dir.glob("*/fold*") if p.is_dir()):
        try:
            key = (run_dir.parent.name, int(run_dir.name[len("fold"):]))
        except ValueError:
            continue
        present, finished, recorded = _recorded_run_config(run_dir)
        if not present or (not finished and not resume and key in expected):
            continue
        diffs = config_differences(recorded, expected.get(key))
        if diffs:
            if force:
                shutil.rmtree(run_dir)
                emptied.add(run_dir.parent)
            else:
                changed.append(f"  {key[0]} fold {key[1]}: " + "; ".join(diffs[:6])
                               + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""))
    for loss_dir in emptied:  # a loss whose folds were all deleted goes, its pictures with it
        if not any(loss_dir.glob("fold*")):
            shutil.rmtree(loss_dir)
    if changed:
        raise ValueError(f"{out_dir} holds runs that do not belong to this config:\n" + "\n".join(changed)
                         + "\nRerun with --force (those runs are deleted), or use another --out folder.")


def _write_cases_csv(path: Path, per_case: dict, selection: str, flags: dict | None = None) -> None:
    """``cases.csv``: one row per test case, a column per (metric, label): ``dice_1``, ``hd_foreground``,
    ``dice_mean``, ... (labels as in ``metrics.json``; NaN written as ``nan``), the ``selection`` rule
    that chose the scored model (``last_epoch`` or ``best_inner_val_dice``) and the post-processing's
    ``flags`` for the case (``;``-separated, empty when every assumption held)."""
    import csv
    import io
    from .metrics import METRIC_NAMES
    keys = sorted({k for m in per_case.values() for k in m},
                  key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case"] + [f"{m}_{k}" for k in keys for m in METRIC_NAMES] + ["selection", "flags"])
    for case_id in sorted(per_case):
        row = per_case[case_id]
        writer.writerow([case_id] + [repr(float(row.get(k, {}).get(m, float("nan")))) for k in keys
                                     for m in METRIC_NAMES] + [selection, ";".join((flags or {}).get(case_id, []))])
    atomic_write_text(path, buf.getvalue())


def write_pictures(out_dir: Path, info, label_mode: str) -> list[Path]:
    """For each loss of a run folder, the best and the worst test case by Dice (over its finished folds):
    three orthogonal slices with the ground truth and the prediction outlined, in
    ``<loss>/pictures/{best,worst}_<case>.png``."""
    import nibabel as nib
    from .data.layout import load_case, spacing_from_affine, to_label_mode
    from .report.pictures import best_and_worst, render_case
    cases = {c.case_id: c for c in info.cases}
    written = []
    for loss_dir in sorted(p for p in out_dir.iterdir() if p.is_dir() and any(p.glob("fold*/metrics.json"))):
        scores, where = {}, {}
        for metrics_path in sorted(loss_dir.glob("fold*/metrics.json")):
            for case_id, m in json.loads(metrics_path.read_text())["cases"].items():
                scores[case_id], where[case_id] = float(m["mean"]["dice"]), metrics_path.parent
        pictures = loss_dir / "pictures"
        pictures.mkdir(exist_ok=True)
        best, worst = best_and_worst(scores)
        targets = {f"{kind}_{case_id}.png": (kind, case_id) for kind, case_id in (("best", best), ("worst", worst))}
        for old in pictures.glob("*.png"):
            if old.name not in targets:                      # a case that is no longer the best or worst
                old.unlink()
        for name, (kind, case_id) in targets.items():
            pred_path = where[case_id] / "predictions" / f"{case_id}.nii.gz"
            if case_id not in cases or not pred_path.exists():
                # e.g. runs copied from committed results (no predictions): an existing picture of the
                # same case, made when the run was scored, stays
                if not (pictures / name).exists():
                    log.warning("no prediction or data for %s: no picture", case_id)
                continue
            image, label, affine = load_case(cases[case_id], info)
            reference = to_label_mode(np.rint(label).astype(np.int64), label_mode)
            prediction = np.asarray(nib.load(str(pred_path)).dataobj)
            spacing = spacing_from_affine(affine)
            title = f"{loss_dir.name}: {kind} test case {case_id} (Dice {scores[case_id]:.3f}, {where[case_id].name})"
            written.append(render_case(image, reference, prediction, spacing, pictures / f"{kind}_{case_id}.png",
                                       title=title))
    return written


@dataclass(frozen=True)
class GridPlan:
    """A grid before anything trains: its data, its folds and what each finished run must match.

    The one planning step of ``spineloss experiment`` and ``spineloss train`` (:func:`plan_grid`), so a
    run trained on its own is the grid's run, checked and recorded the same way.
    """

    config: "ExperimentConfig"
    out_dir: Path
    info: Any                                  # spineloss.data.layout.DatasetInfo
    splits: tuple[FoldSplit, ...]
    fingerprints: dict[str, str]

    def run_configs(self, resolved: dict | None = None) -> dict[tuple[str, int], dict]:
        """``{(loss, fold): run_config}`` of every run of the config (``resolved``: the device and autocast
        dtype where the runs execute, :func:`resolved_settings`; default: here)."""
        return {(spec.name, split.fold): run_config(self.config, spec, split, self.fingerprints, resolved)
                for spec in self.config.losses for split in self.splits}

    @property
    def full_config(self) -> dict:
        """The config as the records store it (JSON types)."""
        return json.loads(json.dumps(self.config.to_dict(), default=float))

    def write_records(self) -> None:
        """``experiment.json`` (the config and its protocol) and ``folds.json`` of the grid's folder."""
        write_json(self.out_dir / "experiment.json", {**self.full_config, "protocol": self.config.protocol()})
        write_json(self.out_dir / "folds.json", [s.to_dict() for s in self.splits])


def plan_grid(config: ExperimentConfig, out_dir: Path) -> GridPlan:
    """The data (a phantom is written on first use), checked against the config's labels and
    post-processing; the seeded folds; the data's fingerprints; and the learned-loss protocol (no test
    case may have chosen a learned loss, and each passes the screening for this network's classes:
    :func:`spineloss.learning.protocol.check_learned_losses`)."""
    from .data.layout import check_dataset
    from .learning.protocol import check_learned_losses

    data_dir = resolve_data(config, out_dir)
    info = check_dataset(data_dir)
    label_names = info.label_names(config.data.label_mode)
    config.postprocess.check_labels(len(label_names) - 1, f"the data set {data_dir}")
    splits = tuple(fold_splits(config, [c.case_id for c in info.cases]))
    fingerprints = data_fingerprints(info.cases)
    check_learned_losses(config.losses, splits, fingerprints, num_classes=info.num_classes_for(config.data.label_mode))
    return GridPlan(config, out_dir, info, splits, fingerprints)


def run_experiment(config: ExperimentConfig, out_dir: str | Path | None = None, *,
                   progress: bool = True, only_losses: Sequence[str] | None = None,
                   resume: bool = True, force: bool = False, pictures: bool = True,
                   backend: str | Any = "local", backend_options: dict | None = None) -> str:
    """Run every (loss, fold) not yet finished, then write and return the summary table.

    A finished run is reused only when its recorded :func:`run_config` equals the current one;
    otherwise nothing runs and a ``ValueError`` names what changed (``force=True`` deletes and reruns
    those runs). ``progress``: one updating progress line for the grid (:mod:`spineloss.progress`).
    ``backend``: ``"local"`` (one run after the other in this process) or ``"ray"`` (each run a Ray task,
    :mod:`spineloss.backends.ray`; ``backend_options`` e.g. ``{"address": "auto", "cpus_per_task": 2}``),
    or a backend object. Runs that fail twice on Ray are reported by a
    :class:`~spineloss.backends.GridFailed` raised after the table of the others is written (its
    ``table`` attribute).
    """
    from .backends import get_backend

    # absolute paths: a Ray worker on another node does not share this process's working directory
    out_dir = Path(out_dir or config.output or f"runs/{config.name}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_grid(config, out_dir)
    specs = [s for s in config.losses if only_losses is None or s.name in only_losses]
    if only_losses is not None and len(specs) != len(set(only_losses)):
        unknown = sorted(set(only_losses) - {s.name for s in config.losses})
        raise ValueError(f"--losses names {unknown}, which the config does not have; it has "
                         f"{[s.name for s in config.losses]}")
    runner = get_backend(backend, **(backend_options or {}))
    try:
        return _run_grid(plan, specs, runner, progress, resume, force, pictures)
    finally:
        if runner is not backend:
            runner.close()


def _run_grid(grid: GridPlan, specs, runner, progress: bool, resume: bool, force: bool, pictures: bool) -> str:
    """:func:`run_experiment` once the data, the folds and the backend are known."""
    from .backends import GridFailed, Job, epochs_in
    from .data.loader import prepare_cases
    from .one_run import collapse_warning, execute_run
    from .progress import GridProgress
    from .report import write_summary

    config, out_dir, info = grid.config, grid.out_dir, grid.info
    resolved = runner.probe(resolved_settings, config.training)   # "auto" as the workers resolve it
    expected = grid.run_configs(resolved)
    _check_run_folder(out_dir, expected, force, resume)
    plan = [(spec, split, expected[(spec.name, split.fold)]) for spec in specs for split in grid.splits]
    full_config = grid.full_config
    grid.write_records()

    t0 = time.perf_counter()
    prepared = prepare_cases(info, info.cases, config.preprocess, config.data.network_label_mode,
                             cache_dir=config.data.cache or out_dir / "cache")   # the cache the runs read
    prepared = {p.case_id: p for p in prepared}
    log.info("prepared %d cases in %.1f s", len(prepared), time.perf_counter() - t0)
    view = GridProgress(len(plan), config.training.epochs, interactive=None if progress else False)
    job_config = _with_absolute_paths(config)
    jobs = []
    for spec, split, current in plan:  # finished runs first, so the time left counts only the rest
        run_dir = out_dir / spec.name / f"fold{split.fold}"
        if (run_dir / "metrics.json").exists():
            view.skip(f"{spec.name} fold {split.fold}")
            continue
        local = {"prepared": prepared} if runner.name == "local" else {}
        jobs.append(Job(f"{spec.name} fold {split.fold}", execute_run,
                        (job_config, spec.name, split, out_dir, current, full_config), {"resume": resume, **local},
                        watch=run_dir, start_epoch=epochs_in(run_dir) if resume else 0,
                        retry_kwargs={"resume": True}))   # a retry goes on from the checkpoint
    failures: dict[str, str] = {}

    def failed(job, why: str) -> None:
        failures[job.key] = why
        view.fail(f"[{job.key}] failed twice: {why}", job.key)

    def done(job, result: dict) -> None:
        if not (job.watch / "metrics.json").exists():
            failed(job, f"it finished, but {job.watch}/metrics.json is not visible here: the output folder must "
                        "be on storage that every node of the cluster shares, under the same path")
            return
        collapsed = collapse_warning(result)
        view.finish(f"[{job.key}] test Dice {result['dice']:.4f}  HD {result['hd']:.2f} mm"
                    f"  ({result['train_seconds']:.0f} s)" + (f"  WARNING: {collapsed}" if collapsed else ""), job.key)

    runner.run_jobs(jobs, view, done, failed)
    view.close()
    if pictures:
        write_pictures(out_dir, info, config.data.label_mode)
        from .report.trajectories import plot_trajectories
        for spec in config.losses:
            if spec.tuning:
                plot_trajectories(out_dir / spec.name)
    table = write_summary(out_dir, distance=config.table_distance)
    if failures:
        error = GridFailed(failures)
        error.table = table
        raise error
    return table


def _with_absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    """The config with its data and cache folders made absolute (for workers in other directories). Both are
    left out of the run records (:data:`_NOT_COMPARED`), so nothing recorded changes."""
    data = config.data
    path = None if data.path is None else str(Path(data.path).resolve())
    cache = None if data.cache is None else str(Path(data.cache).resolve())
    return dataclasses.replace(config, data=dataclasses.replace(data, path=path, cache=cache))


def _score_run(model, ckpt: dict, post: PostprocessConfig, test_cases, label_mode: str, labels, run_dir: Path,
               config: ExperimentConfig, current: dict, full_config: dict, **extra) -> dict:
    """Score a run's model once on its test cases; write ``predictions/``, ``cases.csv`` and, last,
    ``metrics.json`` (which marks the run done). ``extra``: more entries for ``metrics.json``."""
    metrics = evaluate_cases(model, test_cases, label_mode, labels=labels, mirror_axes=checkpoint_mirror_axes(ckpt),
                             postprocess=post, predictions_dir=run_dir / "predictions")
    metrics.update(postprocess=post.to_dict(), protocol=config.protocol(),
                   selection={**ckpt["selection"], "epoch": int(ckpt["epoch"]) + 1},
                   test_cases=[c.case_id for c in test_cases], run_config=current, config=full_config,
                   environment=_environment(config), **extra)
    from . import distributed
    if distributed.is_main():   # every rank scored its share and has all the results: one writes them
        _write_cases_csv(run_dir / "cases.csv", metrics["cases"], metrics["selection"]["rule"], metrics["flags"])
        write_json(run_dir / "metrics.json", metrics)
    distributed.barrier()
    return metrics


def config_from_record(record: dict) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a run folder's ``experiment.json`` (:meth:`ExperimentConfig.to_dict`)."""
    record = {k: v for k, v in record.items() if k != "protocol"}
    sections = ("data", "preprocess", "model", "training", "augment", "postprocess")
    raw = {name: {k: v for k, v in (record.pop(name, None) or {}).items() if v is not None} for name in sections}
    raw["losses"] = [{"name": spec["name"], "loss": spec["loss"], "params": spec.get("params", {}),
                      **({"tuning": spec["tuning"]} if spec.get("tuning") else {})}
                     for spec in record.pop("losses")]
    raw["experiment"] = {k: v for k, v in record.items() if v is not None}
    return config_from_dict(raw)


def rescore(run_dir: str | Path, postprocess: PostprocessConfig, out_dir: str | Path, *,
            pictures: bool = True, force: bool = False, label_mode: str | None = None) -> str:
    """Score the finished runs of ``run_dir`` again with another post-processing, without training.

    Each (loss, fold)'s ``model.pt`` is evaluated on the same test cases as in the experiment, with
    ``postprocess`` instead of the config's; ``out_dir`` becomes the run folder of that config
    (``experiment.json``, ``metrics.json``, ``cases.csv``, ``history.csv`` copied, pictures, table,
    stats; no model weights). Used to compare post-processings (e.g. the level assignments) on the
    same networks. Returns the table.

    ``label_mode = "multiclass"`` scores the levels of a foreground (binary) network's run: the network
    stays what it was trained as (``[data] train_label_mode = "binary"``), the post-processing must
    number the bodies (``caudal_bodies`` = the number of levels, ``number_levels``), and the scores are
    on the data set's own labels (the counting route to L1-L5, on the binary grid's test folds).
    """
    import shutil

    from .data.layout import check_dataset
    from .data.loader import prepare_cases
    from .report import write_summary

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError("rescore writes a new run folder: give an --out other than the run folder itself")
    if not (run_dir / "experiment.json").exists():
        raise ValueError(f"{run_dir}: no experiment.json (not a spineloss run folder)")
    record = json.loads((run_dir / "experiment.json").read_text())
    if "rescored_from" in record:
        raise ValueError(f"{run_dir} was itself rescored (it has no models): rescore {record['rescored_from']}")
    source = config_from_record(record)
    if source.selection != "last":
        raise ValueError(f"{run_dir} chose its checkpoints on an inner split scored with its own post-processing; "
                         "rescoring them with another would not be the model that post-processing would choose")
    data = source.data
    if label_mode not in (None, data.label_mode):
        if (label_mode, data.network_label_mode) != ("multiclass", "binary"):
            raise ValueError(f"rescore --label-mode {label_mode}: only a binary (foreground) network's run can be "
                             f"scored on other labels, as multiclass levels; {run_dir} trained a "
                             f"{data.network_label_mode} network")
        data = dataclasses.replace(data, label_mode="multiclass", train_label_mode="binary")
    config = dataclasses.replace(source, data=data, postprocess=postprocess, output=None)
    info = check_dataset(resolve_data(source, run_dir))
    label_mode, network_mode = config.data.label_mode, config.data.network_label_mode
    label_names = info.label_names(label_mode)
    postprocess.check_labels(len(label_names) - 1, f"the data set of {run_dir}")
    splits = fold_splits(config, [c.case_id for c in info.cases])
    fingerprints = data_fingerprints(info.cases)
    expected = {(spec.name, split.fold): {**run_config(config, spec, split, fingerprints),
                                          "rescored_from": str(run_dir / spec.name / f"fold{split.fold}")}
                for spec in config.losses for split in splits}
    todo = []
    for spec in config.losses:
        for split in splits:
            source_run = run_dir / spec.name / f"fold{split.fold}"
            if not (source_run / "metrics.json").exists():
                continue
            recorded = json.loads((source_run / "metrics.json").read_text()).get("run_config")
            # the model is what it is: where (device, precision) and by which version it was made does not
            # matter for scoring it again, everything that shaped it does
            current = {k: v for k, v in run_config(source, spec, split, fingerprints).items()
                       if not k.startswith("resolved.")}
            diffs = config_differences({k: v for k, v in (recorded or {}).items() if not k.startswith("resolved.")},
                                       current) if recorded else ["recorded without its config"]
            if diffs:
                raise ValueError(f"{source_run} does not match {run_dir}/experiment.json: " + "; ".join(diffs[:6]))
            todo.append((spec, split, source_run))
    if not todo:
        raise ValueError(f"{run_dir}: no finished run to rescore")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_folder(out_dir, expected, force, resume=True)
    full_config = json.loads(json.dumps(config.to_dict(), default=float))
    write_json(out_dir / "experiment.json", {**full_config, "protocol": config.protocol(),
                                             "rescored_from": str(run_dir)})
    write_json(out_dir / "folds.json", [s.to_dict() for s in splits])
    prepared = {p.case_id: p for p in prepare_cases(info, info.cases, config.preprocess, network_mode,
                                                       cache_dir=config.data.cache or run_dir / "cache")}
    labels = sorted(k for k in label_names if k > 0)
    for spec, split, source_run in todo:
        target = out_dir / spec.name / f"fold{split.fold}"
        if (target / "metrics.json").exists():
            continue
        model, ckpt = load_checkpoint(source_run / "model.pt")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_run / "history.csv", target / "history.csv")
        metrics = _score_run(model, ckpt, postprocess, [prepared[i] for i in split.test], label_mode, labels,
                             target, config, expected[(spec.name, split.fold)], full_config,
                             rescored_from=str(source_run))
        mean = metrics["mean"].get("mean", {})
        print(f"[{spec.name} fold {split.fold}] rescored: test Dice {mean.get('dice', float('nan')):.4f}",
              file=sys.stderr, flush=True)
    if pictures:
        write_pictures(out_dir, info, label_mode)
    return write_summary(out_dir, distance=config.table_distance)


def _environment(config: ExperimentConfig) -> dict:
    """Where the numbers were made: versions, device, the autocast dtype the config resolved to."""
    import platform

    import torch

    from . import __version__
    resolved = resolved_settings(config.training)
    return {"spineloss": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": resolved["resolved.device"], "amp": resolved["resolved.amp"],
            "machine": platform.processor() or platform.machine()}
