"""Compound losses: weighted sums of registered losses.

``L = sum_i w_i L_i``. The terms share one checked input, one softmax and one set of fused statistics, so
Dice + CE costs little more than Dice alone. The study's compounds are ``dice_ce`` (MONAI's ``DiceCELoss``),
``dice_focal`` and ``tversky_focal``; :class:`WeightedSumLoss` builds any other combination from a config,
e.g. ``build_loss({"dice": 1.0, "boundary": 0.01})``.

Tunable parameters of a compound are those of its terms, prefixed with the term name (``"dice.smooth_nr"``,
``"focal.gamma"``), and the term weights, ``"weight.<term>"``, in [0, 1000]. After each call the unweighted
value of every term is kept (detached) in ``last_term_values`` for loss-weighting schemes (SoftAdapt, ...).

Activations. ``activation`` (spineloss's word) applies to every term. MONAI's ``sigmoid``, ``softmax`` and
``other_act`` keep MONAI's meaning in ``dice_ce``, ``dice_focal`` and ``tversky_focal`` (as in MONAI's
``DiceCELoss`` / ``DiceFocalLoss``): they set the activation of the region term only, and the CE / focal term
always reads the input as logits: CE with a softmax for C > 1 and a sigmoid (BCE) for C = 1, the focal term
with a sigmoid, except that ``softmax=True`` gives the softmax focal loss (an intended difference: MONAI's
focal term is a sigmoid one even then). So ``DiceCELoss(sigmoid=False, softmax=False)`` scores the Dice of the
input taken as probabilities plus the CE of the same input taken as logits, exactly as MONAI does. Terms that
read the input differently get their own view of it (:meth:`LossInput.derived`); with one activation for all,
they share one softmax and one set of fused statistics.

``reduction="none"``: the terms' unreduced values are broadcast to ``B x C' x D x H x W`` and summed: a region
or distance term (``B x C'``) is constant over the voxels, a softmax CE / focal / TopK term (per voxel,
``B x D x H x W``) is the same for every class, a sigmoid term is per element. This is the shape MONAI's
``DiceFocalLoss`` returns (its Dice ``B x C' x 1 x 1 x 1`` plus its per-element focal term); the mean over it is
the ``"mean"`` reduction (for CE without class weights). MONAI's ``DiceCELoss`` refuses "none"; ours returns the
same broadcast form. When all terms have the same shape (e.g. two region losses, ``B x C'``) it is kept.
Per-sample ``spacing`` (``B x 3``) reaches the distance terms and is ignored by the others.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .base import Bounds, Loss, LossInput, ParamSpec, check_weights

__all__ = ["DiceCELoss", "DiceFocalLoss", "TverskyFocalLoss", "WeightedSumLoss"]

_WEIGHT_BOUNDS = Bounds(0.0, 1000.0, doc="weight of the term in the sum")


def _accepts(cls: type, param: str) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return param in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class WeightedSumLoss(Loss):
    """A weighted sum of registered losses, ``L = sum_i w_i L_i`` (registry name ``"weighted_sum"``).

    Args:
        terms: ``{loss_name: weight}`` or ``{loss_name: {"weight": w, **params}}``. Inside a term's dict,
            ``"weight"`` is the term's weight in the sum (default 1) and ``"class_weight"`` is passed on as that
            loss's own ``weight`` argument (per-class weights).
        reduction: "mean", "sum" or "none" (the terms' unreduced values broadcast and summed, see the module
            docstring), passed to every term.
        activation: shared by all terms (they share one softmax / sigmoid); ``"none"`` for probabilities.
        **shared: further keyword arguments given to every term whose constructor takes them (e.g.
            ``include_background``, ``spacing``, ``weight`` as class weights); a term's own params win. An
            argument that no term takes is an error.
    """

    name = "weighted_sum"

    def __init__(self, terms: Mapping[str, Any], reduction: str = "mean", activation: str | None = None,
                 **shared: Any) -> None:
        super().__init__(reduction=reduction, activation=activation)
        from . import get_loss_class  # registry; imported here to avoid an import cycle

        owner = self._owner()
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError(f"{owner}: terms must be a non-empty mapping {{loss_name: weight or params}}, "
                             f"got {terms!r}")
        children: dict[str, Loss] = {}
        self.weights: dict[str, float] = {}
        used: set[str] = set()
        for raw_name, spec in terms.items():
            if not isinstance(raw_name, str):
                raise ValueError(f"{owner}: term names must be strings, got {raw_name!r}")
            cls = get_loss_class(raw_name)
            tname = cls.name
            if tname in children:
                raise ValueError(f"{owner}: loss {tname!r} appears twice in the terms")
            if isinstance(spec, Mapping):
                params = dict(spec)
                weight = params.pop("weight", 1.0)
                if "class_weight" in params:
                    params["weight"] = params.pop("class_weight")
            else:
                weight, params = spec, {}
            self.weights[tname] = ParamSpec(f"weight.{tname}", 0.0, _WEIGHT_BOUNDS.low,
                                            _WEIGHT_BOUNDS.high).check(weight, owner)
            kwargs: dict[str, Any] = {}
            for k, v in shared.items():
                if _accepts(cls, k):
                    kwargs[k] = v
                    used.add(k)
            kwargs.update(params)
            for k, mine in (("reduction", reduction), ("activation", activation)):
                if k in params and params[k] != mine:
                    raise ValueError(f"{owner}: term {tname!r} sets {k}={params[k]!r} but the sum uses "
                                     f"{k}={mine!r}; set it on the sum instead")
                if _accepts(cls, k):
                    kwargs[k] = mine
            if issubclass(cls, WeightedSumLoss):
                raise ValueError(f"{owner}: a weighted_sum cannot contain another weighted_sum; list its terms")
            try:
                children[tname] = cls(**kwargs)
            except TypeError as exc:
                raise ValueError(f"{owner}: bad parameters for term {tname!r}: {exc}") from exc
        unused = sorted(set(shared) - used)
        if unused:
            raise ValueError(f"{owner}: parameter(s) {unused} are accepted by none of the terms "
                             f"{sorted(children)}")
        self.terms = nn.ModuleDict(children)
        self.last_term_values: dict[str, Tensor] = {}

    # -- properties derived from the terms ----------------------------------------------------------------
    @property
    def needs_distance_maps(self) -> bool:  # type: ignore[override]
        return any(child.needs_distance_maps for child in self.terms.values())

    @property
    def uses_label_stats(self) -> bool:  # type: ignore[override]
        return any(child.uses_label_stats for child in self.terms.values())

    def wants_squared(self) -> bool:
        return any(child.wants_squared() for child in self.terms.values())

    def wants_log_py(self) -> bool:
        return any(child.wants_log_py() for child in self.terms.values())

    def wants_region(self) -> bool:
        return any(child.wants_region() for child in self.terms.values())

    def prepare(self, class_voxel_counts) -> None:
        """Pass the class counts on to every term."""
        for child in self.terms.values():
            child.prepare(class_voxel_counts)

    # -- tunable parameters -------------------------------------------------------------------------------
    def tunable_parameters(self) -> dict[str, ParamSpec]:
        out: dict[str, ParamSpec] = {}
        for tname, child in self.terms.items():
            for pname, spec in child.tunable_parameters().items():
                full = f"{tname}.{pname}"
                out[full] = replace(spec, name=full)
            out[f"weight.{tname}"] = ParamSpec(f"weight.{tname}", self.weights[tname], _WEIGHT_BOUNDS.low,
                                               _WEIGHT_BOUNDS.high, doc=_WEIGHT_BOUNDS.doc)
        return out

    def set_parameter(self, name: str, value: float) -> None:
        owner = self._owner()
        head, _, rest = name.partition(".")
        if head == "weight" and rest in self.weights:
            self.weights[rest] = ParamSpec(name, 0.0, _WEIGHT_BOUNDS.low, _WEIGHT_BOUNDS.high).check(value, owner)
            return
        if head in self.terms and rest:
            self.terms[head].set_parameter(rest, value)
            return
        raise ValueError(f"{owner}: unknown tunable parameter {name!r}; tunable parameters are "
                         f"{sorted(self.tunable_parameters())}")

    # -- computation --------------------------------------------------------------------------------------
    def forward(self, input: Tensor, target: Tensor, dist_map: Tensor | None = None,
                spacing: Any = None) -> Tensor:
        """Weighted sum of the terms; ``dist_map`` and the per-item ``spacing`` (B x 3, mm) reach the distance
        terms (``spacing`` is checked and ignored when there is none)."""
        return self._forward(input, target, dist_map, spacing)

    def _term_activation(self, child: Loss, C: int) -> tuple[str, Callable | None]:
        act = child.activation if child.activation is not None else ("softmax" if C > 1 else "sigmoid")
        return act, (child.other_act if act == "other" else None)

    def _prepare(self, batch: LossInput) -> LossInput:
        """Tell ``batch`` which fused statistics the terms reading it need (before any is computed)."""
        def key(act: str, fn: Callable | None) -> tuple[str, int | None]:
            return act, (id(fn) if act == "other" else None)

        mine = key(batch.activation, batch.other_act)
        group = [child for child in self.terms.values() if key(*self._term_activation(child, batch.C)) == mine]
        batch.want_squared = any(child.wants_squared() for child in group)
        batch.want_log_py = any(child.wants_log_py() for child in group)
        batch.want_region = any(child.wants_region() for child in group)
        batch.prefer_stats = any(child.uses_label_stats for child in group)
        return batch

    def make_input(self, input: Tensor, target: Tensor, dist_map: Tensor | None = None,
                   spacing: Any = None) -> LossInput:
        batch = LossInput(input, target, dist_map, activation=self.activation, owner=self._owner(),
                          other_act=self.other_act, spacing=spacing)
        return self._prepare(batch)

    def _input_for(self, batch: LossInput, child: Loss) -> LossInput:
        """The view of the call that ``child`` reads: ``batch`` itself, or one with the child's activation."""
        act, fn = self._term_activation(child, batch.C)
        sub = batch.derived(act, fn)
        if sub is not batch and not getattr(sub, "_prepared", False):
            self._prepare(sub)
            sub._prepared = True  # type: ignore[attr-defined]
        return sub

    def compute_terms(self, batch: LossInput) -> dict[str, Tensor]:
        """Unweighted value of every term on the shared input (or its view with the term's activation)."""
        return {tname: child.compute(self._input_for(batch, child)) for tname, child in self.terms.items()}

    def compute(self, batch: LossInput) -> Tensor:
        values = self.compute_terms(batch)
        self.last_term_values = {k: v.detach() for k, v in values.items()}
        if self.reduction == "none":
            values = self._broadcast_unreduced(values)
        total: Tensor | None = None
        for tname, v in values.items():
            w = self.weights[tname]
            term = v * w if w != 1.0 else v
            total = term if total is None else total + term
        assert total is not None
        return total

    def _broadcast_unreduced(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Unreduced term values in a common shape: kept when they already agree, else lifted to
        ``B x C' x D x H x W`` (``B x C'`` -> constant over voxels, ``B x D x H x W`` -> the same for every class)."""
        shapes = {k: tuple(v.shape) for k, v in values.items()}
        if len(set(shapes.values())) == 1:
            return values
        lifted = {}
        for k, v in values.items():
            if v.ndim == 2:  # region / distance: B x C' (1 x C' with batch=True)
                v = v[:, :, None, None, None]
            elif v.ndim == 4:  # softmax CE / focal / TopK: per voxel
                v = v[:, None]
            lifted[k] = v
        try:
            torch.broadcast_shapes(*(v.shape for v in lifted.values()))
        except RuntimeError as exc:
            raise ValueError(f"{self._owner()}: reduction='none' adds the terms' unreduced values broadcast to "
                             f"B x C' x D x H x W, but their shapes {shapes} do not broadcast (the terms score "
                             "different classes: give them the same include_background)") from exc
        return lifted

    def extra_repr(self) -> str:
        ws = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return f"weights=({ws}), reduction={self.reduction!r}"


def _check_lambda(name: str, value: Any, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _monai_flags(sigmoid: bool | None, softmax: bool | None, other_act: Callable | None,
                 activation: str | None, owner: str) -> dict[str, Any]:
    """MONAI's activation words for the region term (only those given: None means "not given"); an error
    when spineloss's ``activation`` is given as well."""
    flags = {k: v for k, v in (("sigmoid", sigmoid), ("softmax", softmax), ("other_act", other_act))
             if v is not None}
    if flags and activation is not None:
        raise ValueError(f"{owner}: give either activation={activation!r} or MONAI's {'/'.join(flags)}, not both")
    return flags


def _logit_term_activation(flags: dict[str, Any], focal: bool) -> str | None:
    """Activation of the CE / focal term of a MONAI-style compound when MONAI's flags are given: CE follows C
    (None: softmax for C > 1, BCE for C = 1), the focal term is a sigmoid one unless ``softmax=True``."""
    if not focal:
        return None
    return "softmax" if flags.get("softmax") else "sigmoid"


def _dice_weight(weight: Any, include_background: bool, owner: str) -> Any:
    """MONAI's DiceCELoss rule: class weights for all C classes; Dice without background drops class 0."""
    w = check_weights("weight", weight, owner)
    if w is not None and w.ndim == 1 and not include_background:
        return w[1:]
    return w


class DiceCELoss(WeightedSumLoss):
    """Dice + cross-entropy, ``lambda_dice * Dice + lambda_ce * CE`` (MONAI's ``DiceCELoss``; Isensee et al.
    2021, nnU-Net). Arguments as :class:`~spineloss.losses.region.DiceLoss` and
    :class:`~spineloss.losses.distribution.CrossEntropyLoss`; ``include_background`` only affects the Dice
    term, ``weight`` (length C) weighs both (the Dice term drops class 0 without background). MONAI's
    ``sigmoid``/``softmax``/``other_act`` set the Dice term's activation and the CE term reads logits, as in
    MONAI (module docstring); ``activation`` applies to both. ``reduction="none"``: ``B x C' x D x H x W``
    (MONAI refuses it). Tunable: ``dice.*``, ``weight.dice``, ``weight.ce``.
    """

    name = "dice_ce"

    def __init__(self, include_background: bool = True, squared_pred: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight: Any = None, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, soft_label: bool = False, reduction: str = "mean",
                 activation: str | None = None, sigmoid: bool | None = None, softmax: bool | None = None,
                 other_act: Callable | None = None) -> None:
        owner = f"{self.name} loss"
        flags = _monai_flags(sigmoid, softmax, other_act, activation, owner)
        terms = {
            "dice": {"weight": _check_lambda("lambda_dice", lambda_dice, owner),
                     "include_background": include_background, "squared_pred": squared_pred,
                     "smooth_nr": smooth_nr, "smooth_dr": smooth_dr, "batch": batch, "soft_label": soft_label,
                     "class_weight": _dice_weight(weight, include_background, owner), **flags},
            "ce": {"weight": _check_lambda("lambda_ce", lambda_ce, owner), "class_weight": weight},
        }
        super().__init__(terms, reduction=reduction, activation=activation)
        if flags:  # MONAI: the flags act on the Dice term; CE reads logits (softmax for C > 1, BCE for C = 1)
            self.terms["ce"].activation = _logit_term_activation(flags, focal=False)
            self.activation, self.other_act = self.terms["dice"].activation, self.terms["dice"].other_act


class DiceFocalLoss(WeightedSumLoss):
    """Dice + focal, ``lambda_dice * Dice + lambda_focal * Focal`` (Zhu et al. 2019, AnatomyNet).

    The focal term is :class:`~spineloss.losses.distribution.FocalLoss`: with a softmax it is the softmax
    focal loss, where MONAI's ``DiceFocalLoss`` always uses a sigmoid focal term (intended difference).
    ``include_background`` applies to both terms, ``weight`` to both: one value per scored class (MONAI's
    rule) or, without background, C values of which class 0 is dropped; ``gamma`` and ``alpha`` are the focal
    term's. MONAI's ``sigmoid``/``softmax``/``other_act`` set the Dice term's activation and the focal term
    reads logits with a sigmoid (softmax with ``softmax=True``), as in MONAI (module docstring);
    ``activation`` applies to both. ``reduction="none"``: ``B x C' x D x H x W``, as MONAI. Tunable:
    ``dice.*``, ``focal.*``, ``weight.dice``, ``weight.focal``.
    """

    name = "dice_focal"

    def __init__(self, include_background: bool = True, squared_pred: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, gamma: float = 2.0, alpha: Any = None,
                 weight: Any = None, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 soft_label: bool = False, reduction: str = "mean", activation: str | None = None,
                 sigmoid: bool | None = None, softmax: bool | None = None,
                 other_act: Callable | None = None) -> None:
        owner = f"{self.name} loss"
        flags = _monai_flags(sigmoid, softmax, other_act, activation, owner)
        terms = {
            "dice": {"weight": _check_lambda("lambda_dice", lambda_dice, owner),
                     "include_background": include_background, "squared_pred": squared_pred,
                     "smooth_nr": smooth_nr, "smooth_dr": smooth_dr, "batch": batch, "soft_label": soft_label,
                     "class_weight": check_weights("weight", weight, owner), **flags},
            "focal": {"weight": _check_lambda("lambda_focal", lambda_focal, owner), "gamma": gamma,
                      "alpha": alpha, "include_background": include_background,
                      "class_weight": check_weights("weight", weight, owner)},
        }
        super().__init__(terms, reduction=reduction, activation=activation)
        for child in self.terms.values():  # C weights without background: class 0 dropped at the call
            child.weight_covers_all_classes = True
        if flags:  # MONAI: the flags act on the Dice term; the focal term reads logits
            self.terms["focal"].activation = _logit_term_activation(flags, focal=True)
            self.activation, self.other_act = self.terms["dice"].activation, self.terms["dice"].other_act


class TverskyFocalLoss(WeightedSumLoss):
    """Tversky + focal, ``lambda_tversky * Tversky(alpha, beta) + lambda_focal * Focal(gamma, focal_alpha)``.

    ``alpha``/``beta`` are the Tversky weights of FP/FN (defaults 0.3/0.7), ``gamma``/``focal_alpha`` the focal
    term's. ``include_background`` applies to both terms. MONAI's ``sigmoid``/``softmax``/``other_act`` act
    as in ``dice_focal`` (on the Tversky term; the focal term reads logits). ``reduction="none"``:
    ``B x C' x D x H x W``. Tunable: ``tversky.*``, ``focal.*``, ``weight.tversky``, ``weight.focal``.
    """

    name = "tversky_focal"

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 2.0, focal_alpha: Any = None,
                 include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, lambda_tversky: float = 1.0, lambda_focal: float = 1.0,
                 soft_label: bool = False, reduction: str = "mean", activation: str | None = None,
                 sigmoid: bool | None = None, softmax: bool | None = None,
                 other_act: Callable | None = None) -> None:
        owner = f"{self.name} loss"
        flags = _monai_flags(sigmoid, softmax, other_act, activation, owner)
        terms = {
            "tversky": {"weight": _check_lambda("lambda_tversky", lambda_tversky, owner), "alpha": alpha,
                        "beta": beta, "include_background": include_background, "smooth_nr": smooth_nr,
                        "smooth_dr": smooth_dr, "batch": batch, "soft_label": soft_label, **flags},
            "focal": {"weight": _check_lambda("lambda_focal", lambda_focal, owner), "gamma": gamma,
                      "alpha": focal_alpha, "include_background": include_background},
        }
        super().__init__(terms, reduction=reduction, activation=activation)
        if flags:  # as MONAI's DiceFocalLoss: the flags act on the Tversky term; the focal term reads logits
            self.terms["focal"].activation = _logit_term_activation(flags, focal=True)
            self.activation, self.other_act = self.terms["tversky"].activation, self.terms["tversky"].other_act
