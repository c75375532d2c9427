"""The config of a loss search (``spineloss learn METHOD CONFIG.toml``): the proxy task and ``[learn]``.

A learn config is an experiment config without losses, plus a ``[learn]`` table::

    [experiment]                 # name, output; folds and seed name the study's outer folds (see below)
    name = "learn_genetic"
    folds = 3
    seed = 0
    [data]                       # the proxy task's data, as in experiments (default: a small phantom)
    phantom = { region = "lumbar", cases = 8, shape = [48, 48, 24], seed = 1000 }
    label_mode = "binary"
    [preprocess] [model] [training] [augment]      # as in experiments (defaults: a small, fast network)
    [learn]
    fold = 0                     # the fitness cases come from this fold's training cases ...
    val_fraction = 0.25          # ... this share of them scores the fitness (never trained on)
    max_fit_cases = 0            # 0: all the other training cases train; N: only the first N (sorted ids)
    workers = 0                  # evaluations in parallel (processes); 0: one per CPU core
    [learn.genetic]  population, generations, tournament, elite, crossover, mutation, init_min_height,
                     init_max_height, max_height, region_terminals, constant_range,
                     cma_generations, cma_population, cma_sigma
    [learn.taylor]   order, log_terms, region_terms, start, generations, population, sigma
    [learn.meta]     epochs, steps_per_epoch, hidden, region_features, activation, inner_lr, outer_lr,
                     reset_every, start

The protocol: the fitness is the Dice on ``val_fraction`` of the training cases of outer fold ``fold`` of the
seeded split ``(folds, seed)``, computed exactly as an experiment splits (:func:`spineloss.experiment.make_folds`,
:func:`~spineloss.experiment.inner_split`), so with the study's ``folds`` and ``seed`` no test case of that fold
is ever trained on or scored during the search. Unknown keys and sections are errors.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.augment import AugmentConfig
from ..data.preprocess import PreprocessConfig
from ..training import ModelConfig, TrainConfig
from . import METHODS

__all__ = ["GeneticConfig", "LearnConfig", "MetaConfig", "METHODS", "TaylorSearchConfig", "learn_config_from_dict",
           "load_learn_config"]

#: proxy defaults where an experiment's defaults would be too slow for a search (each is overridable)
PROXY_DATA = {"phantom": {"region": "lumbar", "cases": 8, "shape": [48, 48, 24], "seed": 1000},
              "label_mode": "binary"}
PROXY_MODEL = {"depth": 3, "base_channels": 8, "max_channels": 32}
PROXY_TRAINING = {"epochs": 4, "iterations_per_epoch": 40, "batch_size": 2, "lr": 1e-2}
PROXY_AUGMENT = {"p_affine": 0.0, "p_noise": 0.3}


def _check_int(where: str, name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"[{where}] {name} must be an integer {rng}, got {value!r}")


def _check_float(where: str, name: str, value: Any, low: float, high: float | None = None,
                 low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        rng = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
        raise ValueError(f"[{where}] {name} must be a number {rng}, got {value!r}")


def _check_bool(where: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"[{where}] {name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class GeneticConfig:
    """Genetic programming (:mod:`.genetic`): ``population`` trees, ``generations`` breeding rounds after the
    initial one, tournaments of ``tournament``, the ``elite`` best distinct trees kept, ``crossover`` and
    ``mutation`` probabilities per individual, half-and-half initial trees of height ``init_min_height`` ..
    ``init_max_height``, children limited to ``max_height`` (else the parent is kept), ``region_terminals``
    (TP, FP, FN), ephemeral constants uniform in ``constant_range`` (2 decimals); then CMA-ES on the best tree's
    constants: ``cma_generations`` of ``cma_population`` with step ``cma_sigma`` (0 generations: none)."""

    population: int = 12
    generations: int = 5
    tournament: int = 3
    elite: int = 2
    crossover: float = 0.7
    mutation: float = 0.3
    init_min_height: int = 1
    init_max_height: int = 3
    max_height: int = 6
    region_terminals: bool = True
    constant_range: tuple[float, float] = (-2.0, 2.0)
    cma_generations: int = 3
    cma_population: int = 6
    cma_sigma: float = 0.3

    def __post_init__(self) -> None:
        w = "learn.genetic"
        _check_int(w, "population", self.population, 2)
        _check_int(w, "generations", self.generations, 0)
        _check_int(w, "tournament", self.tournament, 1, self.population)
        _check_int(w, "elite", self.elite, 0, self.population - 1)
        _check_float(w, "crossover", self.crossover, 0.0, 1.0)
        _check_float(w, "mutation", self.mutation, 0.0, 1.0)
        _check_int(w, "init_min_height", self.init_min_height, 0)
        _check_int(w, "init_max_height", self.init_max_height, self.init_min_height)
        _check_int(w, "max_height", self.max_height, self.init_max_height, 17)
        _check_bool(w, "region_terminals", self.region_terminals)
        cr = tuple(self.constant_range)
        if len(cr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cr) \
                or not float(cr[0]) < float(cr[1]):
            raise ValueError(f"[{w}] constant_range must be two numbers low < high, got {self.constant_range!r}")
        object.__setattr__(self, "constant_range", (float(cr[0]), float(cr[1])))
        _check_int(w, "cma_generations", self.cma_generations, 0)
        _check_int(w, "cma_population", self.cma_population, 2)
        _check_float(w, "cma_sigma", self.cma_sigma, 0.0, low_open=True)


@dataclass(frozen=True)
class TaylorSearchConfig:
    """The TaylorGLO-style search (:mod:`.taylor_search`): the family (``order``, ``log_terms``,
    ``region_terms``), the ``start`` point (a named setting of :data:`~spineloss.learning.taylor.KNOWN_SETTINGS`
    or a table of coefficients), and CMA-ES: ``generations`` of ``population`` points, step ``sigma``."""

    order: int = 3
    log_terms: bool = True
    region_terms: bool = True
    start: Any = "dice_ce"
    generations: int = 8
    population: int = 8
    sigma: float = 0.3

    def __post_init__(self) -> None:
        w = "learn.taylor"
        _check_int(w, "generations", self.generations, 1)
        _check_int(w, "population", self.population, 2)
        _check_float(w, "sigma", self.sigma, 0.0, low_open=True)
        try:
            family = self.family()
            if isinstance(self.start, str):
                family.setting(self.start)
            elif isinstance(self.start, dict):
                family.complete(self.start, f"[{w}] start")
            else:
                raise ValueError(f"start must be a setting name or a table of coefficients, got {self.start!r}")
        except ValueError as exc:
            raise ValueError(f"[{w}] {exc}") from None

    def family(self):
        from .taylor import TaylorFamily
        return TaylorFamily(order=self.order, log_terms=self.log_terms, region_terms=self.region_terms)

    def start_coefficients(self) -> dict[str, float]:
        family = self.family()
        return family.setting(self.start) if isinstance(self.start, str) else family.complete(self.start)


@dataclass(frozen=True)
class MetaConfig:
    """ML3 meta-training (:mod:`.meta_search`): ``epochs`` x ``steps_per_epoch`` meta steps; the loss network
    (``hidden`` widths, ``region_features``, ``activation``); the U-Net's inner SGD step size ``inner_lr``; the
    loss network's Adam step ``outer_lr``; a fresh U-Net every ``reset_every`` steps (0: never); the network's
    ``start``: fitted to ``"bce"`` or ``"brier"`` first (:func:`~spineloss.learning.meta.imitate`) or
    ``"random"`` (ML3's own start)."""

    epochs: int = 5
    steps_per_epoch: int = 20
    hidden: tuple[int, ...] = (16, 16)
    region_features: bool = False
    activation: str = "tanh"
    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    reset_every: int = 25
    start: str = "bce"

    def __post_init__(self) -> None:
        w = "learn.meta"
        from .meta import START_LOSSES
        if self.start != "random" and self.start not in START_LOSSES:
            raise ValueError(f"[{w}] start must be 'random' or one of {sorted(START_LOSSES)}, got {self.start!r}")
        _check_int(w, "epochs", self.epochs, 1)
        _check_int(w, "steps_per_epoch", self.steps_per_epoch, 1)
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else None
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"[{w}] hidden must list positive integer widths, e.g. [16, 16]; got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)
        _check_bool(w, "region_features", self.region_features)
        from .meta import ACTIVATIONS
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"[{w}] activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        _check_float(w, "inner_lr", self.inner_lr, 0.0, low_open=True)
        _check_float(w, "outer_lr", self.outer_lr, 0.0, low_open=True)
        _check_int(w, "reset_every", self.reset_every, 0)


@dataclass(frozen=True)
class LearnConfig:
    """A whole learn config (module docstring)."""

    name: str
    data: Any
    folds: int = 3
    seed: int = 0
    output: str | None = None
    fold: int = 0
    val_fraction: float = 0.25
    max_fit_cases: int = 0
    workers: int = 0
    method: str | None = None
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig(**PROXY_MODEL)
    training: TrainConfig = TrainConfig(**PROXY_TRAINING)
    augment: AugmentConfig = AugmentConfig(**PROXY_AUGMENT)
    genetic: GeneticConfig = field(default_factory=GeneticConfig)
    taylor: TaylorSearchConfig = field(default_factory=TaylorSearchConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)

    def __post_init__(self) -> None:
        _check_int("experiment", "folds", self.folds, 2)
        _check_int("experiment", "seed", self.seed, 0)
        _check_int("learn", "fold", self.fold, 0, self.folds - 1)
        _check_float("learn", "val_fraction", self.val_fraction, 0.0, 1.0, low_open=True)
        if float(self.val_fraction) >= 1.0:
            raise ValueError(f"[learn] val_fraction must be < 1 (some cases must train), got {self.val_fraction}")
        _check_int("learn", "max_fit_cases", self.max_fit_cases, 0)
        _check_int("learn", "workers", self.workers, 0)
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"[learn] method must be one of {list(METHODS)}, got {self.method!r}")
        if self.data.label_mode != self.data.network_label_mode:
            raise ValueError("[data] train_label_mode: a loss search trains and scores the same labels; leave "
                             "train_label_mode out")

    def check_method(self, method: str) -> None:
        """``ValueError`` when ``method`` is unknown or differs from the config's ``[learn] method``."""
        if method not in METHODS:
            raise ValueError(f"unknown search method {method!r}; choose one of {list(METHODS)}")
        if self.method is not None and self.method != method:
            raise ValueError(f"this config is for `spineloss learn {self.method}` ([learn] method), not {method!r}")

    def record(self, method: str) -> dict:
        """What determines a search's numbers (for resuming): everything but where it runs and the other
        methods' tables."""
        d = asdict(self)
        for key in ("output", "workers", "method", "name"):
            d.pop(key)
        for other in METHODS:
            if other != method:
                d.pop(other)
        d["data"] = asdict(self.data)
        return d


def learn_config_from_dict(raw: dict) -> LearnConfig:
    """Build and check a :class:`LearnConfig` from a parsed TOML document."""
    from ..experiment import DataConfig, _section

    raw = dict(raw)
    if "losses" in raw:
        raise ValueError("a learn config has no losses: the search finds one (remove `losses`)")
    exp = dict(raw.pop("experiment", {}))
    learn = dict(raw.pop("learn", {}))
    allowed = {"data", "preprocess", "model", "training", "augment"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; a learn config has experiment, learn, "
                         f"{sorted(allowed)}")
    known_exp = {"name", "folds", "seed", "output"}
    if set(exp) - known_exp:
        raise ValueError(f"[experiment] unknown key(s) {sorted(set(exp) - known_exp)}; known: {sorted(known_exp)}")
    sections = {name: learn.pop(name, None) for name in METHODS}
    known_learn = {"fold", "val_fraction", "max_fit_cases", "workers", "method"}
    if set(learn) - known_learn:
        raise ValueError(f"[learn] unknown key(s) {sorted(set(learn) - known_learn)}; known: "
                         f"{sorted(known_learn | set(METHODS))} ([learn.genetic], [learn.taylor], [learn.meta])")
    seed = exp.get("seed", 0)
    _check_int("experiment", "seed", seed, 0)
    data_raw = raw.get("data")
    data = _section(DataConfig, data_raw if data_raw is not None else copy.deepcopy(PROXY_DATA), "data")
    methods = {}
    for name, cls in (("genetic", GeneticConfig), ("taylor", TaylorSearchConfig), ("meta", MetaConfig)):
        table = sections[name]
        if table is not None and not isinstance(table, dict):
            raise ValueError(f"[learn.{name}] must be a table, got {table!r}")
        methods[name] = _table(cls, table or {}, f"learn.{name}")
    return LearnConfig(
        name=str(exp.get("name", "learn")), data=data, folds=exp.get("folds", 3), seed=seed,
        output=exp.get("output"), fold=learn.get("fold", 0), val_fraction=learn.get("val_fraction", 0.25),
        max_fit_cases=learn.get("max_fit_cases", 0), workers=learn.get("workers", 0), method=learn.get("method"),
        preprocess=_section(PreprocessConfig, raw.get("preprocess"), "preprocess"),
        model=_section(ModelConfig, raw.get("model"), "model", **PROXY_MODEL),
        training=_section(TrainConfig, raw.get("training"), "training", seed=seed, **PROXY_TRAINING),
        augment=_section(AugmentConfig, raw.get("augment"), "augment", **PROXY_AUGMENT), **methods)


def _table(cls, table: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"[{where}] unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**table)


def load_learn_config(path: str | Path) -> LearnConfig:
    """Read a learn config; errors name the file and the key to fix."""
    from ..experiment import load_toml
    return load_toml(path, learn_config_from_dict)
