"""An experiment: a grid of (loss, fold) training runs under seeded k-fold cross-validation.

A TOML config names the data, the preprocessing, the model, the training, the augmentation and the
losses (see ``configs/`` and the README). :func:`run_experiment` validates the data set, splits the
cases into ``folds`` folds with a seeded permutation, preprocesses every case once (cached), then for
each loss and fold trains a model and evaluates it on the fold's held-out cases at their original
voxel grid, writing::

    <out>/<loss>/fold<k>/history.csv   per-epoch loss, validation Dice, learning rate
    <out>/<loss>/fold<k>/model.pt      best checkpoint (by validation Dice), usable by `spineloss predict`
    <out>/<loss>/fold<k>/metrics.json  per-case metrics and their means (written last: marks the run done)
    <out>/summary.{md,csv,tex}         the results table

A (loss, fold) with a ``metrics.json`` is not run again; one interrupted mid-way resumes from its
``last.pt``. The same seed gives the same folds and, on the CPU, the same numbers.
"""
from __future__ import annotations

import json
import logging
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data.augment import AugmentConfig
from .data.preprocess import PreprocessConfig
from .postprocess import PostprocessConfig
from .training import (ModelConfig, TrainConfig, checkpoint_mirror_axes, checkpoint_postprocess, evaluate_cases,
                       load_checkpoint, train_fold, write_json)

__all__ = ["LossSpec", "DataConfig", "ExperimentConfig", "load_config", "make_folds", "run_experiment"]

log = logging.getLogger("spineloss.experiment")


@dataclass(frozen=True)
class LossSpec:
    """A loss of the experiment: the row name, the registry name (or ``{name: weight}``), parameters."""

    name: str
    loss: Any
    params: dict = field(default_factory=dict)

    def build(self, spacing: tuple[float, float, float] | None = None):
        """The loss module; distance losses get ``spacing`` (mm) unless the params set it."""
        from .losses import build_loss
        loss = build_loss(self.loss, **self.params)
        if spacing is not None and getattr(loss, "needs_distance_maps", False) and "spacing" not in self.params:
            loss = build_loss(self.loss, **self.params, spacing=tuple(spacing))
        return loss


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
        if self.postprocess.number_levels and self.data.label_mode != "multiclass":
            raise ValueError("[postprocess] number_levels outputs levels: it needs [data] label_mode = 'multiclass'")
        if self.data.network_label_mode != self.data.label_mode and not self.postprocess.number_levels:
            raise ValueError("[data] train_label_mode = 'binary' trains a foreground network; the levels of "
                             "label_mode = 'multiclass' then come from counting the bodies: set [postprocess] "
                             "caudal_bodies = <number of levels> and number_levels = true")
        if self.table_distance not in ("hd", "hd95"):
            raise ValueError(f"[experiment] table_distance must be 'hd' or 'hd95', got {self.table_distance!r}")

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


def _loss_specs(raw) -> tuple[LossSpec, ...]:
    specs = []
    for item in raw or []:
        if isinstance(item, str):
            specs.append(LossSpec(item, item))
        elif isinstance(item, dict):
            item = dict(item)
            loss = item.pop("loss", item.get("name"))
            name = item.pop("name", None) or (loss if isinstance(loss, str) else None)
            if name is None:
                raise ValueError(f"a [[losses]] entry with a weighted sum needs a 'name': {item}")
            params = item.pop("params", {})
            if item:
                raise ValueError(f"[[losses]] '{name}': unknown key(s) {sorted(item)}; use name, loss, params")
            specs.append(LossSpec(str(name), loss, dict(params)))
        else:
            raise ValueError(f"a loss must be a name or a table, got {item!r}")
    return tuple(specs)


def config_from_dict(raw: dict) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from the parsed TOML."""
    raw = dict(raw)
    exp = dict(raw.pop("experiment", {}))
    losses = _loss_specs(raw.pop("losses", exp.pop("losses", None)))
    allowed = {"data", "preprocess", "model", "training", "augment", "postprocess"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; known: experiment, losses, {sorted(allowed)}")
    seed = int(exp.get("seed", 0))
    known_exp = {"name", "folds", "seed", "output", "table_distance"}
    if set(exp) - known_exp:
        raise ValueError(f"[experiment] unknown key(s) {sorted(set(exp) - known_exp)}; known: {sorted(known_exp)}")
    return ExperimentConfig(
        name=str(exp.get("name", "experiment")), data=_section(DataConfig, raw.get("data"), "data"),
        losses=losses, folds=int(exp.get("folds", 3)), seed=seed, output=exp.get("output"),
        table_distance=exp.get("table_distance", "hd"),
        preprocess=_section(PreprocessConfig, raw.get("preprocess"), "preprocess"),
        model=_section(ModelConfig, raw.get("model"), "model"),
        training=_section(TrainConfig, raw.get("training"), "training", seed=seed),
        augment=_section(AugmentConfig, raw.get("augment"), "augment"),
        postprocess=_section(PostprocessConfig, raw.get("postprocess"), "postprocess"))


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a TOML experiment config; errors name the file and the key to fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return config_from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def make_folds(case_ids: Sequence[str], folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Seeded k-fold split: ``[(train_ids, val_ids), ...]``; every case is validated exactly once.

    The sorted ids are permuted with ``numpy.random.default_rng(seed)`` and cut into ``folds`` nearly
    equal parts (``numpy.array_split``), so the same ids and seed always give the same folds.
    """
    ids = sorted(case_ids)
    if len(ids) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} cases, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = [sorted(ids[i] for i in part) for part in np.array_split(order, folds)]
    return [([c for j, p in enumerate(parts) if j != k for c in p], parts[k]) for k in range(folds)]


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


def run_experiment(config: ExperimentConfig, out_dir: str | Path | None = None, *,
                   progress: bool = True, only_losses: Sequence[str] | None = None,
                   resume: bool = True) -> str:
    """Run every (loss, fold) not yet finished, then write and return the summary table."""
    from .data.layout import check_dataset
    from .data.loader import prepare_cases
    from .report import write_summary

    out_dir = Path(out_dir or config.output or f"runs/{config.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "experiment.json", config.to_dict())
    data_dir = resolve_data(config, out_dir)
    info = check_dataset(data_dir)
    label_mode, network_mode = config.data.label_mode, config.data.network_label_mode
    num_classes = info.num_classes_for(network_mode)
    label_names = info.label_names(label_mode)
    config.postprocess.check_labels(len(label_names) - 1, f"the data set {data_dir}")
    cases_by_id = {c.case_id: c for c in info.cases}
    t0 = time.perf_counter()
    prepared = prepare_cases(info, info.cases, config.preprocess, network_mode,
                             cache_dir=config.data.cache or out_dir / "cache")
    prepared = {p.case_id: p for p in prepared}
    log.info("prepared %d cases in %.1f s", len(prepared), time.perf_counter() - t0)
    splits = make_folds(list(cases_by_id), config.folds, config.seed)
    write_json(out_dir / "folds.json", [{"train": tr, "val": va} for tr, va in splits])
    specs = [s for s in config.losses if only_losses is None or s.name in only_losses]
    for spec in specs:
        for k, (train_ids, val_ids) in enumerate(splits):
            run_dir = out_dir / spec.name / f"fold{k}"
            if (run_dir / "metrics.json").exists():
                print(f"[{spec.name} fold {k}] done already, skipped", flush=True)
                continue
            print(f"[{spec.name} fold {k}] training on {len(train_ids)} cases, validating on "
                  f"{len(val_ids)}", flush=True)
            t = time.perf_counter()
            train_cases = [prepared[i] for i in train_ids]
            train_fold(train_cases, [prepared[i] for i in val_ids], spec.build(train_cases[0].spacing),
                       num_classes, run_dir, model_config=config.model, train_config=config.training,
                       augment=config.augment, preprocess=config.preprocess, label_mode=label_mode,
                       label_names=label_names, progress=progress, resume=resume,
                       postprocess=config.postprocess)
            model, ckpt = load_checkpoint(run_dir / "model.pt")
            post = checkpoint_postprocess(ckpt)
            if post != config.postprocess:
                log.warning("%s was saved with postprocess %s, the config now asks for %s: evaluating with the "
                            "checkpoint's (start a new output folder to train with the config's)",
                            run_dir / "model.pt", post.to_dict(), config.postprocess.to_dict())
            metrics = evaluate_cases(model, [prepared[i] for i in val_ids], label_mode,
                                     labels=sorted(k for k in label_names if k > 0),
                                     mirror_axes=checkpoint_mirror_axes(ckpt), postprocess=post)
            metrics["postprocess"] = post.to_dict()
            metrics["train_seconds"] = time.perf_counter() - t
            write_json(run_dir / "metrics.json", metrics)
            mean = metrics["mean"].get("mean", {})
            print(f"[{spec.name} fold {k}] Dice {mean.get('dice', float('nan')):.4f}  "
                  f"HD {mean.get('hd', float('nan')):.2f} mm  ({metrics['train_seconds']:.0f} s)", flush=True)
    return write_summary(out_dir, distance=config.table_distance)
