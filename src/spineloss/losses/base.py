"""Shared machinery of every spineloss loss: the :class:`Loss` base class, input checking, tunable parameters.

Conventions (one place for all losses)
--------------------------------------
* ``input``: logits ``B x C x D x H x W`` (any float dtype; the loss computes in float32 with autocast off).
  ``C == 1`` is a binary problem with a sigmoid; ``C > 1`` uses a softmax over the channel axis unless
  ``activation="sigmoid"`` asks for independent (multi-label) channels. MONAI's words work too:
  ``sigmoid=True`` / ``softmax=True``; ``sigmoid=False, softmax=False`` (MONAI's defaults, written out) or
  ``activation="none"`` means the input already holds probabilities (no activation); ``other_act=f`` applies
  the callable ``f`` to the input instead (e.g. ``torch.tanh``). See :func:`resolve_activation`.
* ``target``: an integer label map ``B x 1 x D x H x W`` or ``B x D x H x W`` with values in ``[0, C)``
  (``{0, 1}`` when ``C == 1``), or a one-hot / soft target ``B x C x D x H x W`` of probabilities in ``[0, 1]``
  (MixUp). With a softmax the channels of a soft target should sum to one; that is not checked (it would cost a
  pass over the tensor).
* ``dist_map`` (optional, only read by distance losses): float ``B x C x D x H x W`` signed distance maps of
  the ground truth as made by :func:`spineloss.losses.distance_maps.signed_distance_maps` in the data
  pipeline. Without it a distance loss computes the maps itself (slower).
* ``spacing`` (optional, only taken by distance losses and compounds): ``B x 3`` voxel spacings in mm, one row
  per batch item (the spacing each sample's ``dist_map`` was made with), overriding the loss's ``spacing`` for
  that call.
* ``reduction``: ``"mean"`` (default), ``"sum"`` or ``"none"``; each loss documents what "none" returns.
* Validation: shapes, dtypes, label range and soft-target range raise :class:`ValueError` before any work.
  Non-finite logits are detected after the fact, on the loss value (a NaN or Inf in the logits always reaches
  the loss through the sums), so the check costs one tiny reduction instead of a pass over the logits
  (``torch.isfinite(logits).all()`` costs about as much as a softmax on CPU); only when the loss is not finite
  are the logits inspected to write the error message. Set ``loss.validate = False`` to skip it.

The sufficient-statistics trick
-------------------------------
With a softmax and an integer label map, every region loss (Dice, IoU, Tversky, ...) depends on the
probabilities only through per-(batch, class) sums ``tp = sum p_y``, ``sum p`` (and ``sum p^2``), and the
distribution losses only through ``log p_y`` at each voxel. :class:`_SoftmaxLabelStats` computes what the
loss asks for after a single softmax and writes the gradient of the logits directly in its backward
(``dL/dx = p * (G - sum_c p_c G_c)`` with ``G`` the gradient with respect to the probabilities), without ever
building a one-hot tensor. This is what makes the region and distribution losses faster than MONAI's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..geometry import batch_spacing, check_spacing

__all__ = [
    "Bounds",
    "Loss",
    "LossInput",
    "LossNotPreparedError",
    "ParamSpec",
    "REDUCTIONS",
    "resolve_activation",
]

REDUCTIONS = ("mean", "sum", "none")
#: values of ``activation``: None (softmax for C > 1, sigmoid for C = 1) or one of these; ``"none"`` = the input
#: already holds probabilities. A callable given as ``other_act`` is recorded as the activation ``"other"``.
ACTIVATIONS = ("softmax", "sigmoid", "none")
#: clamp of probabilities before a log (MONAI's epsilon in its unified focal loss)
PROB_EPS = 1e-7
_TINY = torch.finfo(torch.float32).tiny


class LossNotPreparedError(RuntimeError):
    """A loss that needs dataset statistics (``prepare()``) was used before they were given."""


@dataclass(frozen=True)
class Bounds:
    """Accepted range of a tunable parameter (class-level declaration; see :class:`ParamSpec`)."""

    low: float
    high: float
    low_inclusive: bool = True
    high_inclusive: bool = True
    log_scale: bool = False
    doc: str = ""


@dataclass(frozen=True)
class ParamSpec:
    """One tunable parameter of a loss: its current value and the range it may take.

    ``low``/``high`` are the accepted bounds (inclusive or not); ``log_scale`` suggests sampling it on a log
    scale. A tuner reads these from :meth:`Loss.tunable_parameters` and writes with :meth:`Loss.set_parameter`.
    """

    name: str
    value: float
    low: float
    high: float
    low_inclusive: bool = True
    high_inclusive: bool = True
    log_scale: bool = False
    doc: str = ""

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the bounds."""
        v = float(value)
        if math.isnan(v):
            return False
        above = v >= self.low if self.low_inclusive else v > self.low
        below = v <= self.high if self.high_inclusive else v < self.high
        return above and below

    def interval(self) -> str:
        """The bounds written as an interval, e.g. ``(0, 1]``."""
        return f"{'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}{']' if self.high_inclusive else ')'}"

    def check(self, value: Any, owner: str = "") -> float:
        """Return ``value`` as a float, or raise ``ValueError`` saying which parameter and why."""
        where = f"{owner}: " if owner else ""
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where}parameter {self.name!r} must be a number, got {value!r}")
        if not self.contains(value):
            raise ValueError(f"{where}parameter {self.name!r} must be in {self.interval()}, got {value!r}")
        return float(value)


# ---------------------------------------------------------------------------------------------------------
# small validators shared by the loss constructors


def check_choice(name: str, value: Any, choices: Sequence[Any], owner: str) -> Any:
    """``value`` if it is one of ``choices`` else a ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: Any, owner: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def check_weights(name: str, value: Any, owner: str, allow_scalar: bool = True) -> Tensor | None:
    """Class weights: None, a non-negative number, or a 1-D sequence of non-negative finite numbers."""
    if value is None:
        return None
    try:
        w = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{owner}: {name} must be a number or a sequence of numbers, got {value!r}") from exc
    if w.ndim > 1 or (w.ndim == 0 and not allow_scalar) or w.numel() == 0:
        raise ValueError(f"{owner}: {name} must be {'a number or ' if allow_scalar else ''}a 1-D sequence, "
                         f"got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{owner}: {name} must be finite and >= 0, got {w.tolist()}")
    return w


def resolve_activation(activation: str | None, sigmoid: bool | None, softmax: bool | None, other_act: Any,
                       owner: str) -> tuple[str | None, Callable[[Tensor], Tensor] | None]:
    """``(activation, other_act)`` from spineloss's ``activation`` or MONAI's ``sigmoid``/``softmax``/``other_act``.

    * no argument: ``(None, None)``, the spineloss default: the input is logits, softmax for C > 1, sigmoid
      for C = 1 (MONAI's default is no activation: write ``sigmoid=False, softmax=False`` for that);
    * ``sigmoid=True`` / ``softmax=True``: ``"sigmoid"`` / ``"softmax"``;
    * ``sigmoid=False`` and/or ``softmax=False`` given, neither True, no ``other_act``: ``"none"``, the input
      already holds probabilities (MONAI's ``sigmoid=False, softmax=False``); the same as ``activation="none"``;
    * ``other_act=f``: ``("other", f)``, probabilities ``f(input)`` (MONAI's ``other_act``, e.g. ``torch.tanh``).

    At most one of ``sigmoid=True``, ``softmax=True``, ``other_act`` (MONAI's rule), and either ``activation``
    or MONAI's flags, not both; ``ValueError`` otherwise.
    """
    if activation is not None:
        check_choice("activation", activation, ACTIVATIONS, owner)
    flags = {"sigmoid": sigmoid, "softmax": softmax}
    for name, value in flags.items():
        if value is not None:
            check_bool(name, value, owner)
    if other_act is not None and not callable(other_act):
        raise ValueError(f"{owner}: other_act must be a callable applied to the input (e.g. torch.tanh) or None, "
                         f"got {type(other_act).__name__}")
    given = [k for k, v in (*flags.items(), ("other_act", other_act)) if v is not None]
    if activation is not None and given:
        raise ValueError(f"{owner}: give either activation={activation!r} or MONAI's {'/'.join(given)}, not both")
    if int(bool(sigmoid)) + int(bool(softmax)) + int(other_act is not None) > 1:
        raise ValueError(f"{owner}: give at most one of sigmoid=True, softmax=True and other_act, got "
                         f"sigmoid={sigmoid!r}, softmax={softmax!r}, other_act={other_act!r}")
    if other_act is not None:
        return "other", other_act
    if sigmoid:
        return "sigmoid", None
    if softmax:
        return "softmax", None
    if given:  # sigmoid=False and/or softmax=False written out: MONAI's "no activation"
        return "none", None
    return activation, None


def _no_autocast(device_type: str):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------
# fused softmax statistics for integer label maps


_LANE_CACHE: dict[tuple, tuple[Tensor, int]] = {}


def _lane_base(B: int, C: int, N: int, device: torch.device) -> tuple[Tensor, int]:
    """``(base, K)``: base (B, N) int64 = ``(n mod K) + b C K``; cached per shape (at most 4 kept).

    ``bins = base + K * label`` spreads the voxels of one label over ``K`` interleaved accumulators, so a
    scatter-add over a piecewise-constant label map has no long dependency chain (about 5x faster than
    ``bincount`` on CPU) and each float32 accumulator sums at most ~8k values (relative error ~1e-7).
    """
    key = (B, C, N, str(device))
    hit = _LANE_CACHE.get(key)
    if hit is None:
        K = int(min(max(16, N // 8192), 8192))
        if len(_LANE_CACHE) >= 4:
            _LANE_CACHE.pop(next(iter(_LANE_CACHE)))
        lanes = torch.arange(N, device=device) % K
        base = lanes.view(1, N) + (torch.arange(B, device=device) * (C * K)).view(B, 1)
        hit = _LANE_CACHE[key] = (base, K)
    return hit


def _class_sums(bins: Tensor, K: int, values: Tensor | None, B: int, C: int) -> Tensor:
    """Per-(batch, class) sums (B, C) of ``values`` (B, N) over each label's voxels; counts if None."""
    if values is None:
        acc = torch.bincount(bins.reshape(-1), minlength=B * C * K).to(torch.float64)
    else:
        acc = torch.zeros(B * C * K, dtype=values.dtype, device=bins.device)
        acc.scatter_add_(0, bins.reshape(-1), values.reshape(-1))
    return acc.view(B, C, K).sum(dim=2)


class _SoftmaxLabelStats(torch.autograd.Function):
    """Softmax of ``x`` (B, C, N) and, for labels ``y`` (B, 1, N), the statistics the losses need.

    Outputs ``p`` (B, C, N), ``tp[b, c] = sum_{n: y=c} p_c``, ``sp[b, c] = sum_n p_c``,
    ``sq[b, c] = sum_n p_c^2`` (None unless ``squared``) and ``lpt[b, 0, n] = log p_{y_n}`` (None unless
    ``want_lpt``). The backward forms ``G = dL/dp`` implicitly and returns ``p * (G - sum_c p_c G_c)``, plus
    the ``log p_y`` term ``g * (e_y - p)``, without materialising a one-hot tensor.
    """

    @staticmethod
    def forward(ctx, x: Tensor, labels: Tensor, bins: Tensor, lanes: int, want_region: bool,  # type: ignore[override]
                squared: bool, want_lpt: bool):
        ctx.set_materialize_grads(False)
        B, C, _ = x.shape
        p = torch.softmax(x, dim=1)
        pt = p.gather(1, labels)
        lpt = tp = sp = sq = None
        if want_lpt:
            lpt = torch.log(pt)
            if float(pt.min()) < 1e-30:  # underflow (logit gaps of ~70 or more): recompute those exactly
                b, _, n = (pt < 1e-30).nonzero(as_tuple=True)
                xs = x[b, :, n]  # (K, C)
                exact = xs.gather(1, labels[b, :, n]) - torch.logsumexp(xs, dim=1, keepdim=True)
                lpt[b, 0, n] = exact[:, 0]
        if want_region:
            tp = _class_sums(bins, lanes, pt, B, C)
            sp = p.sum(dim=2)
        if squared:
            sq = p.square().sum(dim=2)
        ctx.save_for_backward(p, labels, pt)
        return p, tp, sp, sq, lpt

    @staticmethod
    def backward(ctx, g_p, g_tp, g_sp, g_sq, g_lpt):  # type: ignore[override]
        p, labels, pt = ctx.saved_tensors
        B, C, N = p.shape
        # dL/dp_c(n) = D_c(n) + a_c + e_y(n)_c * t(n)   with
        #   D = g_p + 2 g_sq p (dense part), a = g_sp (per class), t = g_tp[y] (at the label)
        dense = g_p
        if g_sq is not None:
            sq_part = p * (2.0 * g_sq)[:, :, None]
            dense = sq_part if dense is None else dense + sq_part
        a = g_sp
        # at_label(n) = p_y t(n) + g_lpt(n), t = g_tp[y]: the part of dL/dx_y beyond the softmax coupling
        at_label = g_tp.gather(1, labels[:, 0]).unsqueeze(1).mul_(pt) if g_tp is not None else None
        if g_lpt is not None:
            at_label = g_lpt if at_label is None else at_label.add_(g_lpt)
        # s(n) = sum_c p_c dL/dp_c (+ g_lpt, whose term -g_lpt p joins the same product below)
        s = torch.bmm(a[:, None, :], p) if a is not None else None
        if dense is not None:
            sd = (p * dense).sum(dim=1, keepdim=True)
            s = sd if s is None else s.add_(sd)
        if at_label is not None:
            s = at_label.clone() if s is None else s.add_(at_label)
        if s is None:
            s = p.new_zeros((B, 1, N))
        # grad = p * (D + a - s) + e_y * (p_y t + g_lpt), written in one buffer
        if a is None and dense is None:
            grad = torch.mul(p, s).neg_()
        else:
            grad = torch.neg(s).expand(B, C, N).contiguous() if a is None else torch.sub(a[:, :, None], s)
            if dense is not None:
                grad += dense
            grad *= p
        if at_label is not None:
            grad.scatter_add_(1, labels, at_label)
        return grad, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------
# the checked, shared view of one call's inputs


class LossInput:
    """Validated inputs of one loss call, with cached derived quantities shared by the terms of a compound.

    Attributes: ``x`` the input (B, C, N) float32 (logits, or probabilities with ``activation`` "none");
    ``labels`` (B, 1, N) int64 for the softmax label-map path, else None; ``soft`` (B, C, N) float32 target
    otherwise; ``activation`` ("softmax", "sigmoid", "none" or "other", the latter with ``other_act``);
    ``spatial`` shape; ``dist_map`` (B, C, N) float32 or None; ``spacing`` the per-sample spacings (a tuple of
    B tuples of 3 floats) or None.
    """

    def __init__(self, input: Tensor, target: Tensor, dist_map: Tensor | None = None,
                 activation: str | None = None, owner: str = "loss", other_act: Callable | None = None,
                 spacing: Any = None) -> None:
        self.owner = owner
        if activation == "other" and other_act is None:
            raise ValueError(f"{owner}: activation 'other' needs other_act")
        what = "logits" if activation in (None, "softmax", "sigmoid") else "values"
        if not isinstance(input, Tensor):
            raise ValueError(f"{owner}: input must be a torch.Tensor of {what}, got {type(input).__name__}")
        if input.ndim != 5:
            raise ValueError(f"{owner}: input must be {what} of shape B x C x D x H x W, "
                             f"got shape {tuple(input.shape)}")
        if not input.is_floating_point():
            raise ValueError(f"{owner}: input must be floating point {what}, got dtype {input.dtype}")
        if not isinstance(target, Tensor):
            raise ValueError(f"{owner}: target must be a torch.Tensor, got {type(target).__name__}")
        B, C = int(input.shape[0]), int(input.shape[1])
        if B == 0 or C == 0 or input.numel() == 0:
            raise ValueError(f"{owner}: input is empty, shape {tuple(input.shape)}")
        self.B, self.C = B, C
        self.spatial = tuple(int(s) for s in input.shape[2:])
        self.N = int(np.prod(self.spatial))
        act = activation if activation is not None else ("softmax" if C > 1 else "sigmoid")
        if act == "softmax" and C == 1:
            raise ValueError(f"{owner}: activation='softmax' needs C > 1 channels, got C = 1 "
                             "(use the default sigmoid for a binary problem)")
        self.activation = act
        self.other_act = other_act if act == "other" else None
        self.device = input.device
        self.x = input.float().reshape(B, C, self.N)
        if not self.x.is_contiguous():
            self.x = self.x.contiguous()
        self.labels: Tensor | None = None
        self.soft: Tensor | None = None
        self._raw = (input, target, dist_map)
        self._set_target(target)
        self.dist_map = self._check_dist_map(dist_map)
        self.spacing = self._check_spacing(spacing)
        self._cache: dict[Any, Any] = {}
        self._derived: dict[Any, LossInput] = {}
        self.want_squared = False  # set by the loss: which fused statistics to compute (see Loss.make_input)
        self.want_log_py = True
        self.want_region = True
        self.prefer_stats = False  # True when some term reads the fused statistics: CE then shares them

    # -- validation -----------------------------------------------------------------------------------------
    def _set_target(self, target: Tensor) -> None:
        owner, B, C, S = self.owner, self.B, self.C, self.spatial
        if target.device != self.device:
            raise ValueError(f"{owner}: target is on {target.device} but input is on {self.device}")
        shape = tuple(target.shape)
        if target.ndim == 4:
            labels = target
            if shape[0] != B or shape[1:] != S:
                raise ValueError(f"{owner}: label map of shape {shape} does not match input {(B, C) + S}; "
                                 f"expected {(B,) + S} or {(B, 1) + S}")
        elif target.ndim == 5:
            if shape[0] != B or shape[2:] != S:
                raise ValueError(f"{owner}: target shape {shape} does not match input shape {(B, C) + S} "
                                 "(batch and spatial sizes must agree)")
            if shape[1] == C and (C > 1 or target.is_floating_point()):
                self._set_soft(target)
                return
            if shape[1] != 1:
                raise ValueError(f"{owner}: target has {shape[1]} channels; expected 1 (label map) or C = {C} "
                                 f"(one-hot / soft target), shape {shape}")
            labels = target[:, 0]
        else:
            raise ValueError(f"{owner}: target must be a label map B x [1 x] D x H x W or a one-hot/soft "
                             f"target B x C x D x H x W, got shape {shape}")
        if self.activation == "softmax":
            labels = self._check_labels(labels)
            self.labels = labels.reshape(B, 1, self.N)
            return
        labels = self._check_labels(labels)
        if C == 1:
            self.soft = labels.reshape(B, 1, self.N).float()
        else:  # multi-label sigmoid with a label map: one-hot channels
            ar = torch.arange(C, device=self.device).view(1, C, 1)
            self.soft = (labels.reshape(B, 1, self.N) == ar).float()

    def _check_labels(self, labels: Tensor) -> Tensor:
        owner, C = self.owner, self.C
        if labels.dtype == torch.bool:
            labels = labels.long()
        elif labels.is_floating_point():
            if not bool((labels == torch.round(labels)).all()):
                raise ValueError(f"{owner}: a 1-channel float target is read as a label map and must hold whole "
                                 "numbers; for a soft binary target use C = 1 logits, for soft multi-class "
                                 "targets pass B x C x ... probabilities")
            labels = labels.long()
        elif labels.is_complex():
            raise ValueError(f"{owner}: target dtype {labels.dtype} is not supported")
        else:
            labels = labels.long()
        top = 1 if C == 1 else C - 1
        lo, hi = torch.aminmax(labels)
        if int(lo) < 0 or int(hi) > top:
            self._label_range_error(labels)
        return labels

    def _label_range_error(self, labels: Tensor) -> None:
        owner, C = self.owner, self.C
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise ValueError(f"{owner}: target labels must be >= 0, found {lo}")
        if C == 1:
            raise ValueError(f"{owner}: with C = 1 (binary, sigmoid) the target must be 0/1, found label {hi}")
        raise ValueError(f"{owner}: target label {hi} >= number of channels C = {C} "
                         f"(labels must be in [0, {C - 1}])")

    def _set_soft(self, target: Tensor) -> None:
        owner = self.owner
        soft = target.float() if target.dtype != torch.float32 else target
        if soft.numel():
            lo, hi = torch.aminmax(soft)
            lo, hi = float(lo), float(hi)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{owner}: the soft/one-hot target contains NaN or Inf")
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"{owner}: a one-hot/soft target must hold probabilities in [0, 1], "
                                 f"found values in [{lo:g}, {hi:g}]")
        self.soft = soft.reshape(self.B, self.C, self.N)

    def _check_dist_map(self, dist_map: Tensor | None) -> Tensor | None:
        if dist_map is None:
            return None
        owner = self.owner
        if not isinstance(dist_map, Tensor):
            raise ValueError(f"{owner}: dist_map must be a torch.Tensor or None, got {type(dist_map).__name__}")
        want = (self.B, self.C) + self.spatial
        if tuple(dist_map.shape) != want:
            raise ValueError(f"{owner}: dist_map must have shape B x C x D x H x W = {want} (one signed distance "
                             f"map per class, all C classes), got {tuple(dist_map.shape)}")
        if not dist_map.is_floating_point():
            raise ValueError(f"{owner}: dist_map must be floating point, got {dist_map.dtype}")
        return dist_map.to(device=self.device, dtype=torch.float32).reshape(self.B, self.C, self.N)

    def _check_spacing(self, spacing: Any) -> tuple[tuple[float, float, float], ...] | None:
        """Per-sample spacings (mm, axes D, H, W) as a tuple of B tuples, or None: ``B x 3`` rows, or one
        spacing for every item (:func:`spineloss.geometry.batch_spacing`)."""
        if spacing is None:
            return None
        return tuple(batch_spacing(spacing, self.B, 3, self.owner))  # type: ignore[arg-type]

    def spacings(self, default: tuple[float, float, float]) -> tuple[tuple[float, float, float], ...]:
        """One spacing per batch item: the call's ``spacing`` if given, else ``default`` for every item."""
        return self.spacing if self.spacing is not None else (tuple(default),) * self.B  # type: ignore[return-value]

    @property
    def from_logits(self) -> bool:
        """True when the input holds logits (softmax / sigmoid), False for probabilities ("none", "other")."""
        return self.activation in ("softmax", "sigmoid")

    @property
    def categorical(self) -> bool:
        """True when the channels are one categorical distribution: a softmax, or probabilities with C > 1
        (then CE and focal read ``-sum_c t_c log p_c``); False for sigmoids and one-channel probabilities."""
        return self.activation == "softmax" or (not self.from_logits and self.C > 1)

    def derived(self, activation: str | None, other_act: Callable | None = None) -> LossInput:
        """The same call seen with another activation (a compound whose terms read the input differently,
        e.g. MONAI's DiceCELoss: Dice on probabilities, CE on logits); ``self`` when it is the same one."""
        act = activation if activation is not None else ("softmax" if self.C > 1 else "sigmoid")
        if act == self.activation and (act != "other" or other_act is self.other_act):
            return self
        key = (act, id(other_act) if act == "other" else None)
        if key not in self._derived:
            input, target, dist_map = self._raw
            sub = LossInput(input, target, dist_map, act, self.owner, other_act)
            sub.spacing = self.spacing
            self._derived[key] = sub
        return self._derived[key]

    # -- cached quantities --------------------------------------------------------------------------------
    @property
    def label_path(self) -> bool:
        """True for the fast path: softmax with an integer label map."""
        return self.labels is not None

    def bins(self) -> tuple[Tensor, int]:
        """Lane-interleaved bin index (B, N) of every voxel's label and the lane count (label path)."""
        key = ("bins",)
        if key not in self._cache:
            assert self.labels is not None
            base, K = _lane_base(self.B, self.C, self.N, self.device)
            self._cache[key] = (torch.add(base, self.labels[:, 0], alpha=K), K)
        return self._cache[key]

    def label_stats(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(p, tp, sum_p, sum_p2, log_p_y)`` from :class:`_SoftmaxLabelStats` (label path only)."""
        key = ("stats",)
        if key not in self._cache:
            assert self.labels is not None
            bins, K = self.bins()
            self._cache[key] = _SoftmaxLabelStats.apply(self.x, self.labels, bins, K, bool(self.want_region),
                                                         bool(self.want_squared), bool(self.want_log_py))
        return self._cache[key]

    def probs(self) -> Tensor:
        """Probabilities (B, C, N): softmax over channels, elementwise sigmoid, the input itself ("none") or
        ``other_act(input)`` ("other", applied to the B x C x D x H x W input)."""
        if self.label_path and (self.want_region or self.want_log_py or self.want_squared):
            return self.label_stats()[0]
        key = ("probs",)
        if key not in self._cache:
            if self.activation == "softmax":
                p = torch.softmax(self.x, 1)
            elif self.activation == "sigmoid":
                p = torch.sigmoid(self.x)
            elif self.activation == "none":
                p = self.x
            else:
                p = self._apply_other_act()
            self._cache[key] = p
        return self._cache[key]

    def _apply_other_act(self) -> Tensor:
        assert self.other_act is not None
        shape = (self.B, self.C) + self.spatial
        out = self.other_act(self.x.reshape(shape))
        if not isinstance(out, Tensor) or tuple(out.shape) != shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{self.owner}: other_act must return a tensor of the input's shape {shape}, got {got}")
        return out.float().reshape(self.B, self.C, self.N)

    def clamped_probs(self) -> Tensor:
        """Probabilities clamped to ``[PROB_EPS, 1 - PROB_EPS]`` for a log (probability input only).

        The input must hold values in [0, 1] (1e-6 slack): a log of anything else has no meaning, so the error
        says so instead of a clamp hiding logits passed with ``sigmoid=False, softmax=False``.
        """
        key = ("clamped",)
        if key not in self._cache:
            p = self.probs()
            lo, hi = torch.aminmax(p.detach())
            lo, hi = float(lo), float(hi)
            if math.isfinite(lo) and math.isfinite(hi) and (lo < -1e-6 or hi > 1.0 + 1e-6):
                src = "other_act(input)" if self.activation == "other" else \
                    "with activation='none' (MONAI's sigmoid=False, softmax=False) the input"
                raise ValueError(f"{self.owner}: {src} must hold probabilities in [0, 1] for the log of this loss, "
                                 f"found values in [{lo:g}, {hi:g}]; pass logits with the default activation "
                                 "(or sigmoid=True / softmax=True) instead")
            self._cache[key] = p.clamp(PROB_EPS, 1.0 - PROB_EPS)
        return self._cache[key]

    def log_probs(self) -> Tensor:
        """``log_softmax`` of the logits (softmax path only)."""
        key = ("log_probs",)
        if key not in self._cache:
            self._cache[key] = torch.log_softmax(self.x, 1)
        return self._cache[key]

    def counts(self) -> Tensor:
        """Per-(batch, class) target mass ``sum_n t_c(n)`` (B, C) float32 (voxel counts for label maps)."""
        key = ("counts",)
        if key not in self._cache:
            if self.label_path:
                self._cache[key] = _class_sums(*self.bins(), None, self.B, self.C).to(torch.float32)
            else:
                assert self.soft is not None
                self._cache[key] = self.soft.sum(dim=2)
        return self._cache[key]

    def region_stats(self, squared: bool = False, soft_label: bool = False) -> dict[str, Tensor]:
        """Per-(batch, class) sums ``tp, sp, st`` (+ ``sp2, st2`` when squared) over all C channels.

        ``tp = sum p t``, ``sp = sum p``, ``st = sum t``; with ``soft_label`` and a soft target,
        ``tp = (sum p + sum t - sum |p - t|) / 2`` (Wang & Blaschko 2023), equal to ``sum p t`` for hard targets.
        """
        key = ("region", squared, soft_label and not self.label_path)
        if key in self._cache:
            return self._cache[key]
        if self.label_path:
            _, tp, sp, sq, _ = self.label_stats()
            if tp is None or sp is None:
                raise RuntimeError("internal: region statistics requested but not prepared (wants_region() missing)")
            st = self.counts()
            out = {"tp": tp, "sp": sp, "st": st}
            if squared:
                if not self.want_squared:
                    raise RuntimeError("internal: squared statistics requested but not prepared")
                out.update(sp2=sq, st2=st)
        else:
            p, t = self.probs(), self.soft
            assert t is not None
            sp = p.sum(dim=2)
            st = self.counts()
            if soft_label:
                tp = 0.5 * (sp + st - (p - t).abs().sum(dim=2))
            else:
                tp = (p * t).sum(dim=2)
            out = {"tp": tp, "sp": sp, "st": st}
            if squared:
                out.update(sp2=p.square().sum(dim=2), st2=t.square().sum(dim=2))
        self._cache[key] = out
        return out

    def target_masks(self, classes: Sequence[int]) -> Tensor:
        """Boolean ground-truth masks (B, len(classes), N): ``label == c`` or ``soft_c > 0.5``."""
        key = ("masks", tuple(classes))
        if key not in self._cache:
            if self.label_path:
                assert self.labels is not None
                cls = torch.as_tensor(list(classes), device=self.device).view(1, -1, 1)
                self._cache[key] = self.labels == cls
            else:
                assert self.soft is not None
                self._cache[key] = self.soft[:, list(classes)] > 0.5
        return self._cache[key]

    def target_values(self, classes: Sequence[int]) -> Tensor:
        """Target probabilities (B, len(classes), N) as float (one-hot for label maps)."""
        if self.label_path:
            return self.target_masks(classes).float()
        assert self.soft is not None
        if list(classes) == list(range(self.C)):
            return self.soft
        return self.soft[:, list(classes)]

    def gt_signed_maps(self, classes: Sequence[int], spacing: Sequence[Sequence[float]],
                       squared: bool = False) -> Tensor:
        """Signed distance maps of the ground truth (B, len(classes), N): from ``dist_map`` or computed with one
        spacing per batch item (``spacing``: B tuples, see :meth:`spacings`); with ``squared`` the squared
        distances ``phi^2`` (computed directly when there is no ``dist_map``)."""
        if self.dist_map is not None:
            maps = self.dist_map if list(classes) == list(range(self.C)) else self.dist_map[:, list(classes)]
            return maps.square() if squared else maps
        key = ("gt_maps", tuple(classes), tuple(tuple(sp) for sp in spacing))
        if squared:
            if key in self._cache:  # the signed maps are there already (a boundary term): square them
                return self._cache[key].square()
            key = key + ("squared",)
        if key not in self._cache:
            from .distance_maps import signed_distance_maps_torch

            tgt = self.labels[:, 0].reshape((self.B,) + self.spatial) if self.label_path else \
                self.soft.reshape((self.B, self.C) + self.spatial)  # type: ignore[union-attr]
            maps = signed_distance_maps_torch(tgt, self.C, spacing=spacing, classes=classes, squared=squared)
            self._cache[key] = maps.reshape(self.B, len(classes), self.N)
        return self._cache[key]

    def pred_signed_maps(self, classes: Sequence[int], spacing: Sequence[Sequence[float]],
                         squared: bool = False) -> Tensor:
        """Signed maps (B, len(classes), N) of the thresholded prediction ``p > 0.5`` (no gradient), one spacing
        per batch item (B tuples); with ``squared`` the unsigned squared distances."""
        key = ("pred_maps", tuple(classes), tuple(tuple(sp) for sp in spacing), squared)
        if key not in self._cache:
            from .distance_maps import prediction_signed_maps

            p = self.probs().detach().reshape((self.B, self.C) + self.spatial)
            maps = prediction_signed_maps(p, self.activation, classes=classes, spacing=spacing, squared=squared)
            self._cache[key] = maps.reshape(self.B, len(classes), self.N)
        return self._cache[key]


# ---------------------------------------------------------------------------------------------------------
# the base class


class Loss(nn.Module):
    """Base class of every spineloss loss.

    Subclasses implement :meth:`compute` on a :class:`LossInput`; :meth:`forward` does the checking, turns
    autocast off and casts to float32. Class attributes: ``name`` (registry name), ``needs_distance_maps``
    (True when the data pipeline should hand ``dist_map`` in) and ``tunables`` (name -> :class:`Bounds`, the
    parameters a tuner may move; their current value is the attribute of the same name).
    """

    name: ClassVar[str] = "loss"
    needs_distance_maps: ClassVar[bool] = False
    #: True for losses whose value can be negative (the boundary loss): ratio-based weightings refuse them
    can_be_negative: ClassVar[bool] = False
    tunables: ClassVar[dict[str, Bounds]] = {}
    #: reductions this loss accepts
    reductions: ClassVar[tuple[str, ...]] = REDUCTIONS
    #: whether the loss reads the fused softmax statistics (label maps); tells CE to share them in compounds
    uses_label_stats: ClassVar[bool] = False

    def __init__(self, *, reduction: str = "mean", activation: str | None = None, sigmoid: bool | None = None,
                 softmax: bool | None = None, other_act: Callable | None = None) -> None:
        super().__init__()
        self.reduction = check_choice("reduction", reduction, self.reductions, self._owner())
        #: None (softmax for C > 1, sigmoid for C = 1), "softmax", "sigmoid", "none" (probabilities) or "other"
        self.activation, self.other_act = resolve_activation(activation, sigmoid, softmax, other_act,
                                                             self._owner())
        #: check that the loss value is finite (and name the culprit) after each call
        self.validate = True

    # -- tunable parameters ---------------------------------------------------------------------------------
    def _owner(self) -> str:
        return f"{self.name} loss"

    def tunable_parameters(self) -> dict[str, ParamSpec]:
        """The parameters a tuner may change, with their current values and accepted bounds."""
        out = {}
        for pname, b in self.tunables.items():
            value = getattr(self, pname)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # e.g. focal alpha=None or a per-class sequence: not a scalar knob right now
            out[pname] = ParamSpec(pname, float(value), b.low, b.high, b.low_inclusive, b.high_inclusive,
                                   b.log_scale, b.doc)
        return out

    def _spec(self, pname: str, value: float = 0.0) -> ParamSpec:
        b = self.tunables[pname]
        return ParamSpec(pname, value, b.low, b.high, b.low_inclusive, b.high_inclusive, b.log_scale, b.doc)

    def set_parameter(self, name: str, value: float) -> None:
        """Set a tunable parameter after checking its bounds (``ValueError`` if unknown or out of range)."""
        if name not in self.tunables:
            raise ValueError(f"{self._owner()}: unknown tunable parameter {name!r}; "
                             f"tunable parameters are {sorted(self.tunables)}")
        setattr(self, name, self._spec(name).check(value, self._owner()))

    def _init_tunable(self, name: str, value: Any, optional: bool = False) -> None:
        if optional and value is None:
            setattr(self, name, None)
            return
        setattr(self, name, self._spec(name).check(value, self._owner()))

    def prepare(self, class_voxel_counts: np.ndarray) -> None:
        """Hook called once before training with the per-class voxel counts of the training labels.

        No-op by default; see :class:`~spineloss.losses.distribution.WeightedCrossEntropyLoss`.
        """
        return None

    # -- what the shared input should compute ---------------------------------------------------------------
    def wants_squared(self) -> bool:
        """Whether this loss needs ``sum p^2`` statistics (Dice/IoU with ``squared_pred``)."""
        return False

    def wants_log_py(self) -> bool:
        """Whether this loss reads ``log p_y`` from the fused statistics (distribution losses)."""
        return False

    def wants_region(self) -> bool:
        """Whether this loss reads the per-class sums ``TP``, ``sum p`` from the fused statistics."""
        return False

    def make_input(self, input: Tensor, target: Tensor, dist_map: Tensor | None = None,
                   spacing: Any = None) -> LossInput:
        """Check the inputs and build the shared :class:`LossInput` (float32)."""
        batch = LossInput(input, target, dist_map, activation=self.activation, owner=self._owner(),
                          other_act=self.other_act, spacing=spacing)
        batch.want_squared = self.wants_squared()
        batch.want_log_py = self.wants_log_py()
        batch.want_region = self.wants_region()
        batch.prefer_stats = self.uses_label_stats
        return batch

    # -- computation --------------------------------------------------------------------------------------
    def forward(self, input: Tensor, target: Tensor, dist_map: Tensor | None = None) -> Tensor:
        """Loss of logits ``input`` (B x C x D x H x W) against ``target``; see the module docstring."""
        return self._forward(input, target, dist_map, None)

    def _forward(self, input: Tensor, target: Tensor, dist_map: Tensor | None, spacing: Any) -> Tensor:
        with _no_autocast(input.device.type if isinstance(input, Tensor) else "cpu"):
            batch = self.make_input(input, target, dist_map, spacing)
            out = self.compute(batch)
        if self.validate:
            _check_finite(out, input, dist_map, self._owner(), batch.from_logits)
        return out

    def compute(self, batch: LossInput) -> Tensor:  # pragma: no cover - abstract
        """The loss on checked inputs; implemented by each loss."""
        raise NotImplementedError

    def reduce(self, values: Tensor) -> Tensor:
        """Apply ``self.reduction`` to per-item values."""
        if self.reduction == "mean":
            return values.mean()
        if self.reduction == "sum":
            return values.sum()
        return values

    def extra_repr(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in self.tunables if hasattr(self, k)]
        parts.append(f"reduction={self.reduction!r}")
        return ", ".join(parts)


def _check_finite(out: Tensor, input: Tensor, dist_map: Tensor | None, owner: str, logits: bool = True) -> None:
    if bool(torch.isfinite(out).all()):
        return
    what, contain, are = ("logits", "contain", "are") if logits else ("input", "contains", "is")
    bad = ~torch.isfinite(input)
    n_bad = int(bad.sum())
    if n_bad:
        first = tuple(int(i) for i in bad.nonzero()[0])
        kind = "NaN" if bool(torch.isnan(input).any()) else "Inf"
        raise ValueError(f"{owner}: the {what} {contain} {n_bad} non-finite value(s) ({kind}), the first at index "
                         f"{first} of input shape {tuple(input.shape)}")
    if dist_map is not None and not bool(torch.isfinite(dist_map).all()):
        raise ValueError(f"{owner}: dist_map contains NaN or Inf")
    extra = "" if logits else ", other_act"
    raise ValueError(f"{owner}: the loss is not finite although the {what} {are} finite "
                     f"(check the target, the class weights{extra} and the parameters)")
