"""Greedy search over a loss's tunable parameters, driven by a decision metric (adaptive loss).

After Seo, Bassenne & Xing (2020): every ``every`` optimiser steps the loss parameters are moved by the
candidate that, after **one trial optimiser step**, scores best on a decision metric. For the ``P`` searched
parameters ``theta = (theta_1, ..., theta_P)`` each parameter has three actions with relative step ``s``
(default 5 %)::

    a_i in {keep, down, up}:      keep: theta_i      down: theta_i (1 - s)      up: theta_i (1 + s)

each result clipped into the parameter's bounds (:class:`~spineloss.losses.base.ParamSpec`). The Cartesian
product gives ``3^P`` candidates (fewer after removing duplicates, e.g. ``up == keep`` at a bound, or all
three equal for a parameter whose value is 0). For every candidate ``theta'``::

    W'(theta')  = one optimiser step from the current (W, optimiser state, scaler state) with L(.; theta')
    m(theta')   = decision metric of the network with weights W'(theta')
    theta      <- argbest_theta' m(theta')          (ties: the earlier candidate; "keep all" comes first)

after which weights, optimiser, scaler, gradients, module modes and random number generators are restored
exactly, so training goes on from where it was with the chosen parameters (the trials leave no trace).

Decision metrics (:func:`decision_metric`)
------------------------------------------
Computed on a held-out batch drawn from the fold's **training** cases (an inner split; never a test case),
from the model's probabilities ``p`` (softmax over C > 1 channels, sigmoid for C = 1) and the one-hot target
``g``. Foreground classes are ``1 .. C-1`` for a softmax and the single channel for a sigmoid. Per foreground
class ``c``, pooled over the batch and all voxels::

    TP_c = sum p_c g_c      FP_c = sum p_c (1 - g_c)      FN_c = sum (1 - p_c) g_c

    dice      = 2 TP / (2 TP + FP + FN)          (= 2 sum pg / (sum p + sum g))
    iou       = TP / (TP + FP + FN)
    precision = TP / (TP + FP)                   (= sum pg / sum p)
    recall    = TP / (TP + FN)                   (= sum pg / sum g)
    f2        = 5 TP / (5 TP + 4 FN + FP)        (F-beta, beta = 2: (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP))

and the metric is the mean over the foreground classes. A zero denominator follows
:mod:`spineloss.metrics`: for dice/iou/f2 it means prediction and target are both empty, a perfect 1; for
precision/recall the ratio is undefined and that class is left out of the mean (NaN when no class is left).
These five are **higher is better**.

* ``"hd"``: Hausdorff distance (:func:`spineloss.metrics.compute_metrics`, in units of ``spacing``) between the
  arg-max prediction (``p > 0.5`` for a sigmoid) and the target label map, per batch item and foreground
  class, then averaged. A class absent from both maps scores 0; a class present in exactly one (where
  ``compute_metrics`` gives NaN) scores the largest distance possible in the volume,
  ``sqrt(sum_i ((n_i - 1) s_i)^2)``, so an empty prediction is the worst outcome and still comparable.
  **Lower is better.**
* ``"train_error"`` (the study's own rule): ``mean |p - g|`` over every channel (background included) and voxel
  of the **same training batch** the trial step used. **Lower is better.** With a softmax
  ``sum_c |p_c - g_c| = 2 (1 - p_y)``, so it is ``2 mean(1 - p_y) / C``.

:func:`decision_metric` returns the metric's own value; :func:`decision_score` (and the search) turns it into
**higher is better** by negating the lower-is-better ones (``hd``, ``train_error``): ``score = -value``. A NaN
score never wins; when every candidate scores NaN the parameters are kept.

Cost
----
One adaptation with ``n <= 3^P`` candidates costs ``n`` trial steps (``n`` forward + ``n`` backward passes on
the training batch) plus ``n`` forward passes of the scorer (held-out batch), plus ``n + 1`` copies of weights,
gradients and optimiser state. The real training step that follows is not part of it. :meth:`GreedySearch.adapt`
counts the passes it actually saw (a forward pre-hook on the model, a gradient hook on one parameter).

Why save/restore and not ``torch.func.functional_call``: the trial step is the caller's own training step
(autocast, GradScaler, Adam, MixUp, skipped non-finite steps), so the trials run exactly the code that trains;
a functional version would have to re-implement the optimiser and scaler. The state is restored in place
(``copy_`` into the same parameter tensors), so the optimiser keeps pointing at the model's parameters.

Reference:
    H. Seo, M. Bassenne, L. Xing, "Closing the gap between deep neural network modeling and biomedical
    decision-making metrics in segmentation via adaptive loss functions", IEEE Transactions on Medical Imaging
    40(2), 2021 (early access 2020).
"""
from __future__ import annotations

import copy
import csv
import io
import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write_text
from ..losses.base import ParamSpec

__all__ = [
    "CRITERIA",
    "HIGHER_IS_BETTER",
    "GreedyConfig",
    "GreedySearch",
    "ParamsCSV",
    "candidate_values",
    "decision_metric",
    "decision_score",
    "make_scorer",
    "read_params_csv",
]

#: decision criteria and whether a larger value is better
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "f2": True, "iou": True, "precision": True, "recall": True,
                                     "hd": False, "train_error": False}
CRITERIA: tuple[str, ...] = tuple(HIGHER_IS_BETTER)
#: order of the actions of one parameter; "keep" first so that ties keep the current value
ACTIONS: tuple[str, ...] = ("keep", "down", "up")


# ---------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class GreedyConfig:
    """Settings of the greedy search.

    Args:
        every: adapt every this many optimiser steps (:meth:`GreedySearch.due`).
        step: relative step ``s`` of the actions ``theta (1 - s)``, ``theta``, ``theta (1 + s)``; in (0, 1).
        parameters: names of the loss parameters to search (as in ``loss.tunable_parameters()``, e.g.
            ``("alpha", "beta")`` or ``("tversky.alpha",)`` for a compound), or ``None`` for every scalar
            tunable parameter of the loss.
        criterion: decision metric, one of :data:`CRITERIA` (see the module docstring).
        max_parameters: refuse to search more parameters than this (``3^P`` trial steps per adaptation);
            raise it explicitly to search more.
    """

    every: int = 50
    step: float = 0.05
    parameters: tuple[str, ...] | None = None
    criterion: str = "dice"
    max_parameters: int = 3

    def __post_init__(self) -> None:
        def whole(name: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
                raise ValueError(f"greedy search: {name} must be an integer >= 1, got {value!r}")
            return int(value)

        object.__setattr__(self, "every", whole("every", self.every))
        object.__setattr__(self, "max_parameters", whole("max_parameters", self.max_parameters))
        s = self.step
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) \
                or not (0.0 < float(s) < 1.0):
            raise ValueError(f"greedy search: step must be a number in (0, 1) (relative change, e.g. 0.05), "
                             f"got {s!r}")
        object.__setattr__(self, "step", float(s))
        if self.criterion not in HIGHER_IS_BETTER:
            raise ValueError(f"greedy search: unknown criterion {self.criterion!r}; choose one of {list(CRITERIA)}")
        if self.parameters is not None:
            names = (self.parameters,) if isinstance(self.parameters, str) else tuple(self.parameters)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError("greedy search: parameters must be None (all scalar tunables) or a non-empty "
                                 f"sequence of parameter names, got {self.parameters!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"greedy search: parameters must be unique, got {list(names)}")
            if len(names) > self.max_parameters:
                raise ValueError(_too_many(names, self.max_parameters))
            object.__setattr__(self, "parameters", names)

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.criterion]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["parameters"] = None if self.parameters is None else list(self.parameters)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GreedyConfig":
        known = {"every", "step", "parameters", "criterion", "max_parameters"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"greedy search: unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if d.get("parameters") is not None:
            d["parameters"] = tuple(d["parameters"])
        return cls(**d)


def _too_many(names: Sequence[str], limit: int) -> str:
    return (f"greedy search: {len(names)} parameters {list(names)} would need 3^{len(names)} = "
            f"{3 ** len(names)} trial steps per adaptation, more than max_parameters={limit} allows; choose "
            f"at most {limit} with parameters=[...] or raise max_parameters explicitly")


# ---------------------------------------------------------------------------------------------------------
# candidates


def _clip(value: float, spec: ParamSpec) -> float:
    """``value`` moved into ``spec``'s bounds: onto an inclusive bound, just inside an open one."""
    if spec.contains(value):
        return value
    if value <= spec.low:
        return spec.low if spec.low_inclusive else math.nextafter(spec.low, math.inf)
    if value >= spec.high:
        return spec.high if spec.high_inclusive else math.nextafter(spec.high, -math.inf)
    return value  # pragma: no cover - NaN cannot be a current value (set_parameter refuses it)


def candidate_values(spec: ParamSpec, step: float) -> list[float]:
    """The distinct values of one parameter for the actions (keep, down, up), in that order.

    ``down = v (1 - step)``, ``up = v (1 + step)`` (for ``v < 0`` these shrink and grow the magnitude), each
    clipped into the bounds: onto an inclusive bound, onto the nearest float inside an open one (e.g.
    ``1 - 1.1e-16`` for Tversky's ``alpha in (0, 1)``). Values equal to an earlier one are dropped, so at a
    bound (or at 0) fewer than three remain.
    """
    v = float(spec.value)
    out: list[float] = []
    for x in (v, _clip(v * (1.0 - step), spec), _clip(v * (1.0 + step), spec)):
        if x not in out:
            out.append(x)
    return out


# ---------------------------------------------------------------------------------------------------------
# decision metrics


def _probabilities(logits: Tensor, owner: str) -> Tensor:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim < 3:
        raise ValueError(f"{owner}: logits must be a float tensor B x C x spatial..., got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
                         f"{'' if not isinstance(logits, Tensor) else ' ' + str(logits.dtype)}")
    x = logits.detach().float()
    return torch.sigmoid(x) if x.shape[1] == 1 else torch.softmax(x, dim=1)


def _target_onehot(target: Tensor, logits: Tensor, owner: str) -> tuple[Tensor, Tensor]:
    """``(g, labels)``: target probabilities B x C x ... (float) and the hard label map B x ... (int64)."""
    if not isinstance(target, Tensor):
        raise ValueError(f"{owner}: target must be a tensor, got {type(target).__name__}")
    B, C = logits.shape[:2]
    spatial = tuple(logits.shape[2:])
    t = target.detach().to(logits.device)
    if t.is_floating_point() and tuple(t.shape) == tuple(logits.shape) and C > 1:
        g = t.float()
        if bool((g < 0).any()) or bool((g > 1).any()):
            raise ValueError(f"{owner}: a one-hot/soft target must hold values in [0, 1]")
        return g, g.argmax(dim=1)
    if tuple(t.shape) == (B, 1) + spatial:
        t = t[:, 0]
    if tuple(t.shape) != (B,) + spatial:
        raise ValueError(f"{owner}: target must be a label map B x 1 x spatial or B x spatial matching the logits "
                         f"{tuple(logits.shape)}, or (C > 1) a soft target of the logits' shape; got "
                         f"{tuple(target.shape)}")
    if t.is_floating_point():
        if not bool(torch.all(t == torch.round(t))):
            raise ValueError(f"{owner}: a label-map target must hold whole numbers")
    labels = t.long()
    n = max(C, 2)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
        raise ValueError(f"{owner}: target labels must lie in [0, {n - 1}] for {C} output channel(s), found "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if C == 1:
        return labels[:, None].float(), labels
    g = torch.nn.functional.one_hot(labels, C).movedim(-1, 1).float()
    return g, labels


def _overlap(name: str, p: Tensor, g: Tensor) -> float:
    """Mean over the foreground classes of one soft overlap metric (see the module docstring)."""
    fg = slice(0, 1) if p.shape[1] == 1 else slice(1, None)
    dims = [0] + list(range(2, p.ndim))
    pf, gf = p[:, fg].double(), g[:, fg].double()
    tp = (pf * gf).sum(dim=dims)
    fp = (pf * (1.0 - gf)).sum(dim=dims)
    fn = ((1.0 - pf) * gf).sum(dim=dims)
    if name == "dice":
        num, den, empty = 2.0 * tp, 2.0 * tp + fp + fn, 1.0
    elif name == "iou":
        num, den, empty = tp, tp + fp + fn, 1.0
    elif name == "f2":
        num, den, empty = 5.0 * tp, 5.0 * tp + 4.0 * fn + fp, 1.0
    elif name == "precision":
        num, den, empty = tp, tp + fp, math.nan
    else:  # recall
        num, den, empty = tp, tp + fn, math.nan
    values = [float(n / d) if float(d) > 0 else empty for n, d in zip(num, den)]
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _hausdorff(logits: Tensor, labels: Tensor, spacing: float | Sequence[float]) -> float:
    from ..metrics import compute_metrics

    C = logits.shape[1]
    pred = (logits[:, 0] > 0).long() if C == 1 else logits.argmax(dim=1)
    classes = [1] if C == 1 else list(range(1, C))
    spatial = tuple(labels.shape[1:])
    sp = (float(spacing),) * len(spatial) if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(sp) != len(spatial):
        raise ValueError(f"decision metric 'hd': spacing needs {len(spatial)} values (one per spatial axis), "
                         f"got {len(sp)}")
    worst = math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(spatial, sp)))
    values = []
    pred_np, ref_np = pred.cpu().numpy(), labels.cpu().numpy()
    for b in range(pred_np.shape[0]):
        m = compute_metrics(pred_np[b], ref_np[b], spacing=sp, labels=classes, num_threads=1)
        for c in classes:
            h = float(m[c]["hd"])
            values.append(worst if math.isnan(h) else h)
    return float(np.mean(values))


def decision_metric(name: str, logits: Tensor, target: Tensor, *,
                    spacing: float | Sequence[float] = 1.0) -> float:
    """The decision metric ``name`` of ``logits`` (B x C x spatial) against ``target``; its own value.

    ``target``: an integer label map (B x 1 x spatial or B x spatial, values in ``[0, max(C, 2))``) or, for
    C > 1, a one-hot/soft target of the logits' shape. ``spacing`` (one number or one per spatial axis) is
    read by ``"hd"`` only. Definitions, empty-class and NaN rules: the module docstring. Higher is better for
    ``dice, f2, iou, precision, recall``; lower for ``hd, train_error`` (:data:`HIGHER_IS_BETTER`,
    :func:`decision_score`).
    """
    owner = f"decision metric {name!r}"
    if name not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown decision metric {name!r}; choose one of {list(CRITERIA)}")
    p = _probabilities(logits, owner)
    g, labels = _target_onehot(target, logits, owner)
    if name == "hd":
        return _hausdorff(logits.detach().float(), labels, spacing)
    if name == "train_error":
        return float((p.double() - g.double()).abs().mean())
    return _overlap(name, p, g)


def decision_score(name: str, logits: Tensor, target: Tensor, *,
                   spacing: float | Sequence[float] = 1.0) -> float:
    """:func:`decision_metric` made higher-is-better: the value itself, or ``-value`` for ``hd`` and
    ``train_error``. NaN stays NaN."""
    value = decision_metric(name, logits, target, spacing=spacing)
    return value if HIGHER_IS_BETTER[name] else -value


def make_scorer(model: nn.Module, image: Tensor, target: Tensor, criterion: str = "dice", *,
                spacing: float | Sequence[float] = 1.0) -> Callable[[], float]:
    """A ``score()`` for :meth:`GreedySearch.adapt`: :func:`decision_metric` of ``model(image)`` vs ``target``.

    The forward pass runs in eval mode, without gradients and in float32 (autocast off), like validation;
    the modules' train/eval modes are restored afterwards. ``image``/``target``: the held-out batch, drawn
    from the fold's training cases (never a test case); for ``"train_error"`` the training batch of the
    trial step (the study's rule). The tensors should already be on the model's device.
    """
    if criterion not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {list(CRITERIA)}")
    if not isinstance(image, Tensor) or not isinstance(target, Tensor):
        raise ValueError("make_scorer: image and target must be tensors")

    def score() -> float:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad(), torch.autocast(device_type=image.device.type, enabled=False):
                logits = model(image)
        finally:
            for m, mode in modes:
                m.training = mode
        return decision_metric(criterion, logits, target, spacing=spacing)

    return score


# ---------------------------------------------------------------------------------------------------------
# exact save / restore of a training state


class _TrainingState:
    """A copy of everything one training step may change, restorable in place any number of times.

    Parameters (of the model and the optimiser), all buffers (persistent or not), gradients, the optimiser's
    state dict, the GradScaler's, every module's train/eval flag and the random number generators (torch CPU,
    CUDA when initialised, Python's ``random``, numpy's global one and the extra ``generators``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                 generators: Iterable[torch.Generator]) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        params: dict[int, Tensor] = {}
        for p in model.parameters():
            params.setdefault(id(p), p)
        for group in optimizer.param_groups:
            for p in group["params"]:
                params.setdefault(id(p), p)
        buffers = {id(b): b for b in model.buffers()}
        with torch.no_grad():
            self.tensors = [(t, t.detach().clone()) for t in [*params.values(), *buffers.values()]]
            self.grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in params.values()]
        self.opt_state = copy.deepcopy(optimizer.state_dict())
        self.scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
        self.modes = [(m, m.training) for m in model.modules()]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.py_rng = random.getstate()
        self.np_rng = np.random.get_state()
        self.generators = [(g, g.get_state()) for g in generators]

    def restore(self) -> None:
        with torch.no_grad():
            for t, saved in self.tensors:
                t.copy_(saved)
            for p, g in self.grads:
                if g is None:
                    p.grad = None
                elif p.grad is not None and p.grad.shape == g.shape and p.grad.dtype == g.dtype:
                    p.grad.copy_(g)
                else:
                    p.grad = g.clone()
        # load_state_dict keeps the given tensors (no copy when dtype and device match) and Adam updates them
        # in place, so every restore loads a fresh deep copy
        self.optimizer.load_state_dict(copy.deepcopy(self.opt_state))
        if self.scaler is not None:
            self.scaler.load_state_dict(copy.deepcopy(self.scaler_state))
        for m, mode in self.modes:
            m.training = mode
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.py_rng)
        np.random.set_state(self.np_rng)
        for g, state in self.generators:
            g.set_state(state)


class _PassCounter:
    """Counts forward passes of ``model`` (pre-hook) and backward passes (gradient hook on one parameter)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward = self.backward = 0
        self._handles = [model.register_forward_pre_hook(self._on_forward)]
        first = next((p for p in model.parameters() if p.requires_grad), None)
        if first is not None:
            self._handles.append(first.register_hook(self._on_backward))

    def _on_forward(self, *_: Any) -> None:
        self.forward += 1

    def _on_backward(self, _grad: Tensor) -> None:
        self.backward += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------------
# the search


class GreedySearch:
    """Greedy adaptation of a loss's parameters during training (Seo, Bassenne & Xing 2020).

    ``loss``: any object with ``tunable_parameters() -> {name: ParamSpec}`` and ``set_parameter(name, value)``
    (every :class:`~spineloss.losses.base.Loss`, compounds included). Typical use inside a training loop::

        search = GreedySearch(loss, GreedyConfig(parameters=("alpha", "beta"), criterion="dice"))
        score = make_scorer(model, held_out_image, held_out_label, "dice")
        for step, batch in enumerate(batches):              # step = optimiser steps taken so far
            if search.due(step):
                search.adapt(model, optimizer, scaler, lambda: trainer.step(batch, mix_gen), score,
                             generators=[mix_gen], step=step)
            trainer.step(batch, mix_gen)                     # the real step, with the chosen parameters

    ``train_step`` must train on the same batch every time it is called (close over it; do not draw from an
    iterator inside), so the candidates are compared on equal terms; it sees the same random numbers in every
    trial (the generators are restored), and the ones listed in ``generators`` are restored too.
    """

    def __init__(self, loss: Any, config: GreedyConfig | None = None) -> None:
        self.config = config if config is not None else GreedyConfig()
        if not isinstance(self.config, GreedyConfig):
            raise ValueError(f"greedy search: config must be a GreedyConfig, got {type(config).__name__}")
        for attr in ("tunable_parameters", "set_parameter"):
            if not callable(getattr(loss, attr, None)):
                raise ValueError(f"greedy search: the loss must have {attr}() (a spineloss Loss), got "
                                 f"{type(loss).__name__}")
        self.loss = loss
        specs = loss.tunable_parameters()
        if self.config.parameters is None:
            names = tuple(specs)
            if not names:
                raise ValueError(f"greedy search: {type(loss).__name__} has no scalar tunable parameter to search")
            if len(names) > self.config.max_parameters:
                raise ValueError(_too_many(names, self.config.max_parameters))
        else:
            names = self.config.parameters
            declared = set(getattr(loss, "tunables", {}) or {})
            for n in names:
                if n not in specs:
                    why = " (it is tunable but not a scalar right now, e.g. None or per-class values)" \
                        if n in declared else ""
                    raise ValueError(f"greedy search: unknown parameter {n!r}{why}; the scalar tunable parameters "
                                     f"of {type(loss).__name__} are {list(specs)}")
        self.parameters: tuple[str, ...] = tuple(names)
        self.adaptations = 0
        self.history: list[dict] = []

    # -- inspection -----------------------------------------------------------------------------------------
    def specs(self) -> dict[str, ParamSpec]:
        """The searched parameters' current :class:`ParamSpec` (value and bounds), read from the loss."""
        specs = self.loss.tunable_parameters()
        missing = [n for n in self.parameters if n not in specs]
        if missing:
            raise ValueError(f"greedy search: parameter(s) {missing} are no longer scalar tunables of the loss")
        return {n: specs[n] for n in self.parameters}

    def values(self) -> dict[str, float]:
        """The searched parameters' current values."""
        return {n: s.value for n, s in self.specs().items()}

    def due(self, step: int) -> bool:
        """Whether to adapt now: after every ``every`` optimiser steps (``step`` = steps taken, > 0)."""
        return int(step) > 0 and int(step) % self.config.every == 0

    def candidates(self) -> list[dict[str, float]]:
        """The distinct candidates, Cartesian product of each parameter's (keep, down, up) values.

        At most ``3^P``; the first is the current values ("keep" everywhere); the order is
        :func:`itertools.product` over the parameters in :attr:`parameters` order, each in the order keep,
        down, up (a later duplicate of an earlier value is dropped: :func:`candidate_values`).
        """
        specs = self.specs()
        per = [candidate_values(specs[n], self.config.step) for n in self.parameters]
        return [dict(zip(self.parameters, combo)) for combo in itertools.product(*per)]

    def _set(self, values: Mapping[str, float]) -> None:
        for n, v in values.items():
            self.loss.set_parameter(n, v)

    # -- the adaptation -------------------------------------------------------------------------------------
    def adapt(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
              train_step: Callable[[], Any], score: Callable[[], float], *,
              generators: Sequence[torch.Generator] = (), step: int | None = None) -> dict:
        """Try every candidate with one trial step, keep the best, leave no other trace.

        Args:
            model, optimizer: what ``train_step`` trains; restored exactly after each trial.
            scaler: the ``torch.amp.GradScaler`` ``train_step`` uses, or None.
            train_step: one optimiser step with the loss's current parameters on the training batch (its
                return value, e.g. the loss, is recorded if it is a number).
            score: the decision metric of :attr:`config.criterion <GreedyConfig.criterion>` after the trial
                step, as :func:`decision_metric` returns it (e.g. :func:`make_scorer`); the search negates
                lower-is-better criteria itself.
            generators: extra ``torch.Generator`` objects ``train_step`` draws from (e.g. the MixUp one).
            step: the training step, recorded in the history.

        Returns:
            ``{"step", "previous": {name: value}, "chosen": {name: value}, "chosen_index", "candidates":
            [{name: value}, ...], "scores": [metric per candidate], "train_losses": [...], "trial_steps",
            "score_calls", "forward_passes", "backward_passes"}`` (passes as counted by hooks on the model).

        On an exception in a trial the state and the parameters are restored before it propagates.
        """
        for name, fn in (("train_step", train_step), ("score", score)):
            if not callable(fn):
                raise ValueError(f"greedy search: {name} must be callable, got {type(fn).__name__}")
        previous = self.values()
        candidates = self.candidates()
        sign = 1.0 if self.config.higher_is_better else -1.0
        saved = _TrainingState(model, optimizer, scaler, generators)
        counter = _PassCounter(model)
        scores: list[float] = []
        losses: list[float | None] = []
        score_calls = 0
        best, best_value = 0, -math.inf
        chosen = previous
        try:
            for i, cand in enumerate(candidates):
                self._set(cand)
                try:
                    out = train_step()
                    score_calls += 1
                    value = float(score())
                finally:
                    saved.restore()
                losses.append(float(out) if isinstance(out, (int, float)) and not isinstance(out, bool) else None)
                scores.append(value)
                signed = sign * value
                if not math.isnan(signed) and signed > best_value:  # strict: ties keep the earlier candidate
                    best, best_value = i, signed
            chosen = candidates[best]
        finally:
            counter.remove()
            self._set(chosen)
        self.adaptations += 1
        self.history.append({"step": step, "values": dict(chosen), "score": scores[best]})
        return {"step": step, "previous": previous, "chosen": dict(chosen), "chosen_index": best,
                "candidates": candidates, "scores": scores, "train_losses": losses,
                "trial_steps": len(candidates), "score_calls": score_calls,
                "forward_passes": counter.forward, "backward_passes": counter.backward}

    # -- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain data to resume from: config, parameter names and values, adaptation count and history."""
        return {"version": 1, "config": self.config.to_dict(), "parameters": list(self.parameters),
                "values": self.values(), "adaptations": self.adaptations,
                "history": copy.deepcopy(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: check that config and parameters match, then set the saved values on the loss."""
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError("greedy search: not a GreedySearch state dict (version 1)")
        config = GreedyConfig.from_dict(state["config"])
        if config != self.config:
            raise ValueError(f"greedy search: the saved config {config} differs from this search's {self.config}")
        if list(state["parameters"]) != list(self.parameters):
            raise ValueError(f"greedy search: the saved parameters {list(state['parameters'])} differ from "
                             f"{list(self.parameters)}")
        self._set({n: float(state["values"][n]) for n in self.parameters})
        self.adaptations = int(state["adaptations"])
        self.history = copy.deepcopy(list(state["history"]))


# ---------------------------------------------------------------------------------------------------------
# params.csv


class ParamsCSV:
    """``params.csv``: one row per write, columns ``step`` and one per parameter, written incrementally.

    ``resume_from=None`` starts a new file (header only, an old file is replaced); ``resume_from=S`` keeps
    the existing rows with ``step <= S`` (rows written after the checkpoint being resumed are dropped; the
    header must name the same parameters) and appends after them. Values are written with ``repr`` (exact
    float round trip). Each :meth:`write` appends one line and flushes it.
    """

    def __init__(self, path: str | Path, parameters: Sequence[str], resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.parameters = [str(p) for p in parameters]
        if not self.parameters or len(set(self.parameters)) != len(self.parameters) or "step" in self.parameters:
            raise ValueError(f"params.csv: parameters must be unique names other than 'step', got {self.parameters}")
        header = ["step", *self.parameters]
        kept: list[list[str]] = []
        if resume_from is not None and self.path.exists():
            with self.path.open(newline="") as fh:
                rows = list(csv.reader(fh))
            if rows and rows[0] != header:
                raise ValueError(f"{self.path}: header {rows[0]} does not match {header}; resume with the same "
                                 "parameters or start a new file")
            for row in rows[1:]:
                if row and int(row[0]) <= int(resume_from):
                    kept.append(row)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(kept)
        atomic_write_text(self.path, buf.getvalue())

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Append the row ``step, values[p] for p in parameters``."""
        missing = [p for p in self.parameters if p not in values]
        if missing:
            raise ValueError(f"params.csv: values for {missing} are missing")
        with self.path.open("a", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow([int(step), *(repr(float(values[p]))
                                                                       for p in self.parameters)])


def read_params_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``params.csv`` as dicts (``step`` an int, the parameters floats)."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in rows]
