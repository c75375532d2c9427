"""The loss library of spineloss: every loss of the study, by name.

    from spineloss.losses import build_loss, available_losses
    loss = build_loss("tversky", alpha=0.3, beta=0.7)
    loss = build_loss({"dice": 1.0, "boundary": 0.01}, spacing=(1.0, 1.0, 3.0))   # weighted sum
    value = loss(logits, target)                       # logits B x C x D x H x W, labels or soft targets
    value = loss(logits, target, dist_map=maps, spacing=s)   # distance losses: pipeline maps, B x 3 spacings
    loss = build_loss("dice", sigmoid=False, softmax=False)  # MONAI's words: the input holds probabilities

Families (see docs/losses.md for formulas, references, defaults and the benchmark):

* distribution: ``ce``, ``wce``, ``topk``, ``focal``
* region: ``dice``, ``iou``, ``tversky``, ``asymmetric``, ``effectiveness``, ``focal_tversky``
* distance: ``hausdorff``, ``boundary`` (``needs_distance_maps``)
* compound: ``dice_ce``, ``dice_focal``, ``tversky_focal``, ``weighted_sum``
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .base import Bounds, Loss, LossInput, LossNotPreparedError, ParamSpec
from .compound import DiceCELoss, DiceFocalLoss, TverskyFocalLoss, WeightedSumLoss
from .distance import BoundaryLoss, HausdorffDTLoss
from .distribution import CrossEntropyLoss, FocalLoss, TopKLoss, WeightedCrossEntropyLoss
from .region import AsymmetricLoss, DiceLoss, EffectivenessLoss, FocalTverskyLoss, IoULoss, TverskyLoss

__all__ = [
    "AsymmetricLoss", "BoundaryLoss", "Bounds", "CrossEntropyLoss", "DiceCELoss", "DiceFocalLoss", "DiceLoss",
    "EffectivenessLoss", "FocalLoss", "FocalTverskyLoss", "HausdorffDTLoss", "IoULoss", "Loss", "LossInput",
    "LossNotPreparedError", "ParamSpec", "TopKLoss", "TverskyFocalLoss", "TverskyLoss",
    "WeightedCrossEntropyLoss", "WeightedSumLoss", "available_losses", "build_loss", "get_loss_class",
    "register_loss",
]

_REGISTRY: dict[str, type[Loss]] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_loss(cls: type[Loss]) -> type[Loss]:
    """Register a :class:`Loss` subclass under its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Loss)):
        raise ValueError(f"register_loss expects a Loss subclass, got {cls!r}")
    key = _normalise(cls.name)
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise ValueError(f"a loss named {key!r} is already registered ({_REGISTRY[key].__name__})")
    _REGISTRY[key] = cls
    return cls


for _cls in (CrossEntropyLoss, WeightedCrossEntropyLoss, TopKLoss, FocalLoss, DiceLoss, IoULoss, TverskyLoss,
             AsymmetricLoss, EffectivenessLoss, FocalTverskyLoss, HausdorffDTLoss, BoundaryLoss, DiceCELoss,
             DiceFocalLoss, TverskyFocalLoss, WeightedSumLoss):
    register_loss(_cls)


def available_losses() -> list[str]:
    """Registry names of every loss, sorted."""
    return sorted(_REGISTRY)


def get_loss_class(name: str) -> type[Loss]:
    """The class registered under ``name`` (case-insensitive; '-' and '_' are the same).

    ``"learned:PATH"`` names a learned-loss file (``spineloss learn``): the class is bound to the file
    (:func:`spineloss.learning.format.learned_loss_class`), so ``build_loss`` and weighted sums take it too.
    """
    if not isinstance(name, str):
        raise ValueError(f"a loss name must be a string, got {name!r}")
    if name.strip().lower().startswith("learned:"):
        from ..learning.format import learned_loss_class, learned_path  # lazy: loss learning is optional
        return learned_loss_class(learned_path(name))
    key = _normalise(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; available losses: {', '.join(available_losses())} "
                         "(or learned:PATH, a learned_loss.json)")
    return _REGISTRY[key]


def build_loss(name: str | Mapping[str, Any], **params: Any) -> Loss:
    """Build a loss from its registry name and parameters (what experiment configs call).

    ``name`` may be a mapping ``{loss_name: weight}`` (or ``{loss_name: {"weight": w, **params}}``) for a
    weighted sum, equivalent to ``build_loss("weighted_sum", terms=name, **params)``, or ``"learned:PATH"``
    for a loss found by ``spineloss learn`` (:mod:`spineloss.learning.format`). Unknown names and
    parameters raise ``ValueError`` listing what is available.
    """
    if isinstance(name, Mapping):
        if "terms" in params:
            raise ValueError("build_loss: give the terms either as the name mapping or as terms=, not both")
        return WeightedSumLoss(terms=name, **params)
    cls = get_loss_class(name)
    sig = inspect.signature(cls.__init__)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    accepted = [p for p in sig.parameters if p != "self" and
                sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(k for k in params if k not in accepted)
    if unknown and not takes_any:
        raise ValueError(f"loss {cls.name!r} does not take parameter(s) {unknown}; it takes {accepted}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"loss {cls.name!r}: {exc}") from exc
