"""Region (overlap) losses: Dice, IoU, Tversky, asymmetric F-beta, effectiveness (E measure), focal Tversky.

Each is computed per (batch item, class) from the soft counts over the voxels::

    TP = sum_n p_c(n) t_c(n),   FP = sum_n p_c(n) - TP,   FN = sum_n t_c(n) - TP

(``p`` the softmax/sigmoid probabilities, ``t`` the one-hot or soft target), then averaged over batch items
and classes (``reduction="mean"``), summed (``"sum"``), or returned per item and class (``"none"``: shape
``B x C'``, or ``1 x C'`` with ``batch=True``; ``C'`` = C, or C - 1 without background).

Common arguments (MONAI's words and defaults):
    include_background: if False, class 0 is left out (after the softmax over all classes); ignored for C = 1.
    smooth_nr, smooth_dr: added to numerator and denominator (default 1e-5 each). ``smooth_dr`` must be > 0,
        which makes every loss finite on empty classes. With ``smooth_nr == smooth_dr`` an empty class predicted
        empty scores loss 0; an empty class with predicted foreground scores close to 1.
    batch: sum the counts over the batch before the ratio (one score per class) instead of per item.
    weight: per-class multiplier of the per-class losses (a number, or one value per *included* class), as
        MONAI's ``DiceLoss(weight=...)``.
    soft_label: with soft targets, ``TP = (sum p + sum t - sum |p - t|) / 2`` (Wang & Blaschko 2023, Dice
        semimetric losses), which is minimal at ``p = t``; identical to the default for hard targets.
    reduction, activation: as for every loss. MONAI's ``sigmoid``, ``softmax`` and ``other_act`` are accepted with
        MONAI's meaning: ``sigmoid=False, softmax=False`` (MONAI's defaults, written out) uses the input as
        probabilities, without an activation and without a range check (as MONAI: e.g. its tests feed
        ``other_act=log_softmax``); ``other_act=f`` uses ``f(input)``. With no argument the input is logits
        (softmax for C > 1, sigmoid for C = 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .base import Bounds, Loss, LossInput, check_bool, check_weights

__all__ = [
    "AsymmetricLoss",
    "DiceLoss",
    "EffectivenessLoss",
    "FocalTverskyLoss",
    "IoULoss",
    "TverskyLoss",
]

_TINY = torch.finfo(torch.float32).tiny

def _nonzero(den: Tensor) -> Tensor:
    """``den`` with exact zeros replaced by the smallest positive float. With probabilities in [0, 1] a
    denominator is at least ``smooth_dr > 0``; without an activation the input may hold anything (MONAI's
    tests use ``other_act=log_softmax``), and then, as in MONAI, a negative denominator is kept as it is."""
    return torch.where(den == 0, torch.full_like(den, _TINY), den)


_SMOOTH = {
    "smooth_nr": Bounds(0.0, 1.0, doc="added to the numerator"),
    "smooth_dr": Bounds(0.0, 1.0, low_inclusive=False, doc="added to the denominator (> 0: no 0/0)"),
}


class _RegionLoss(Loss):
    """Shared machinery: counts, class selection, batch summation, class weights, reduction."""

    uses_label_stats = True
    tunables = dict(_SMOOTH)

    #: set by compounds (MONAI's DiceFocalLoss): a weight of length C without background drops class 0
    weight_covers_all_classes = False

    def __init__(self, include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, weight: Any = None, soft_label: bool = False, reduction: str = "mean",
                 activation: str | None = None, sigmoid: bool | None = None, softmax: bool | None = None,
                 other_act: Callable | None = None) -> None:
        super().__init__(reduction=reduction, activation=activation, sigmoid=sigmoid, softmax=softmax,
                         other_act=other_act)
        owner = self._owner()
        self.include_background = check_bool("include_background", include_background, owner)
        self.batch = check_bool("batch", batch, owner)
        self.soft_label = check_bool("soft_label", soft_label, owner)
        self.weight = check_weights("weight", weight, owner)
        self._init_tunable("smooth_nr", smooth_nr)
        self._init_tunable("smooth_dr", smooth_dr)

    squared = False

    def wants_squared(self) -> bool:
        return bool(self.squared)

    def wants_region(self) -> bool:
        return True

    def counts(self, batch: LossInput) -> dict[str, Tensor]:
        """``tp, sp, st`` (and ``sp2, st2``) for the included classes, summed over the batch if ``batch``."""
        stats = batch.region_stats(self.squared, self.soft_label)
        start = 0 if (self.include_background or batch.C == 1) else 1
        out = {k: v[:, start:] for k, v in stats.items()}
        if self.batch:
            out = {k: v.sum(dim=0, keepdim=True) for k, v in out.items()}
        return out

    def score(self, c: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self, batch: LossInput) -> Tensor:
        f = self.score(self.counts(batch))
        if self.weight is not None:
            w = self.weight.to(f.device)
            if (w.ndim == 1 and self.weight_covers_all_classes and not self.include_background
                    and w.numel() == f.shape[1] + 1):
                w = w[1:]
            if w.ndim == 1 and w.numel() != f.shape[1]:
                raise ValueError(f"{self._owner()}: weight has {w.numel()} values but {f.shape[1]} classes are "
                                 "scored (without background the weights must not include class 0)")
            f = f * w
        return self.reduce(f)

    @staticmethod
    def _ratio(num: Tensor, den: Tensor) -> Tensor:
        return num / _nonzero(den)


class _OverlapLoss(_RegionLoss):
    """Dice and IoU: the region losses with MONAI's ``squared_pred`` option."""

    def __init__(self, include_background: bool = True, squared_pred: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight: Any = None, soft_label: bool = False,
                 reduction: str = "mean", activation: str | None = None, sigmoid: bool | None = None,
                 softmax: bool | None = None, other_act: Callable | None = None) -> None:
        super().__init__(include_background, smooth_nr, smooth_dr, batch, weight, soft_label, reduction,
                         activation, sigmoid, softmax, other_act)
        self.squared = check_bool("squared_pred", squared_pred, self._owner())

    def _sums(self, c: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(sum p, sum t)``, or the sums of squares with ``squared_pred``."""
        return (c["sp2"], c["st2"]) if self.squared else (c["sp"], c["st"])


class DiceLoss(_OverlapLoss):
    """Soft Dice loss (Milletari et al. 2016, V-Net): ``1 - (2 TP + s_nr) / (sum p + sum t + s_dr)``.

    ``squared_pred=True`` uses ``sum p^2 + sum t^2`` in the denominator. Same value as MONAI's ``DiceLoss``
    with ``softmax=True, to_onehot_y=True`` (or ``sigmoid=True`` for C = 1).
    """

    name = "dice"

    def score(self, c: dict[str, Tensor]) -> Tensor:
        sp, st = self._sums(c)
        return 1.0 - self._ratio(2.0 * c["tp"] + self.smooth_nr, sp + st + self.smooth_dr)


class IoULoss(_OverlapLoss):
    """Soft Jaccard (IoU) loss: ``1 - (2 TP + s_nr) / (2 (sum p + sum t - TP) + s_dr)``.

    Written with the factor 2 of MONAI's ``DiceLoss(jaccard=True)`` so the smoothing terms act the same way
    (identical values); without smoothing it is ``1 - TP / (TP + FP + FN)`` (Rahman & Wang 2016).
    ``squared_pred=True`` uses ``sum p^2 + sum t^2``.
    """

    name = "iou"

    def score(self, c: dict[str, Tensor]) -> Tensor:
        sp, st = self._sums(c)
        tp = c["tp"]
        return 1.0 - self._ratio(2.0 * tp + self.smooth_nr, 2.0 * (sp + st - tp) + self.smooth_dr)


def _tversky_index(c: dict[str, Tensor], a_fp: float, b_fn: float, nr: float, dr: float) -> Tensor:
    tp = c["tp"]
    fp = c["sp"] - tp
    fn = c["st"] - tp
    return (tp + nr) / _nonzero(tp + a_fp * fp + b_fn * fn + dr)


class TverskyLoss(_RegionLoss):
    """Tversky loss (Salehi et al. 2017): ``1 - (TP + s_nr) / (TP + alpha FP + beta FN + s_dr)``.

    ``alpha`` weighs false positives, ``beta`` false negatives, both in (0, 1); defaults 0.3 / 0.7 (the
    paper's best, favouring recall). ``alpha = beta = 0.5`` is Dice. Same value as MONAI's ``TverskyLoss``.
    """

    name = "tversky"
    tunables = {**_SMOOTH,
                "alpha": Bounds(0.0, 1.0, False, False, doc="weight of false positives"),
                "beta": Bounds(0.0, 1.0, False, False, doc="weight of false negatives")}

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, include_background: bool = True,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False, weight: Any = None,
                 soft_label: bool = False, reduction: str = "mean", activation: str | None = None,
                 sigmoid: bool | None = None, softmax: bool | None = None, other_act: Callable | None = None) -> None:
        super().__init__(include_background, smooth_nr, smooth_dr, batch, weight, soft_label, reduction,
                         activation, sigmoid, softmax, other_act)
        self._init_tunable("alpha", alpha)
        self._init_tunable("beta", beta)

    def score(self, c: dict[str, Tensor]) -> Tensor:
        return 1.0 - _tversky_index(c, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)


class AsymmetricLoss(_RegionLoss):
    """Asymmetric similarity loss (Hashemi et al. 2018), the F-beta loss::

        L = 1 - ((1 + beta^2) TP + s_nr) / ((1 + beta^2) TP + beta^2 FN + FP + s_dr)

    ``beta`` > 0 (default 1.5) makes recall ``beta`` times as important as precision; ``beta = 1`` is Dice.
    It equals the Tversky loss with ``alpha = 1 / (1 + beta^2)`` and ``beta_T = beta^2 / (1 + beta^2)`` (up to
    how the smoothing terms scale).
    """

    name = "asymmetric"
    tunables = {**_SMOOTH, "beta": Bounds(0.0, 10.0, low_inclusive=False, doc="recall/precision importance")}

    def __init__(self, beta: float = 1.5, include_background: bool = True, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight: Any = None, soft_label: bool = False,
                 reduction: str = "mean", activation: str | None = None,
                 sigmoid: bool | None = None, softmax: bool | None = None, other_act: Callable | None = None) -> None:
        super().__init__(include_background, smooth_nr, smooth_dr, batch, weight, soft_label, reduction,
                         activation, sigmoid, softmax, other_act)
        self._init_tunable("beta", beta)

    def score(self, c: dict[str, Tensor]) -> Tensor:
        b2 = float(self.beta) ** 2
        tp = c["tp"]
        fp, fn = c["sp"] - tp, c["st"] - tp
        num = (1.0 + b2) * tp + self.smooth_nr
        return 1.0 - self._ratio(num, (1.0 + b2) * tp + b2 * fn + fp + self.smooth_dr)


class EffectivenessLoss(_RegionLoss):
    """Van Rijsbergen's effectiveness measure E (Information Retrieval, 1979) as a loss::

        E = 1 - 1 / (alpha / P + (1 - alpha) / R)          (P precision, R recall)
          = 1 - (TP + s_nr) / (TP + alpha FP + (1 - alpha) FN + s_dr)

    ``alpha`` in [0, 1] (default 0.5) is the weight of precision: ``alpha = 0.5`` gives the Dice loss,
    ``alpha -> 0`` only recall counts (``1 - R``), ``alpha -> 1`` only precision (``1 - P``). In van
    Rijsbergen's ``beta`` form ``alpha = 1 / (1 + beta^2)``, so E is ``1 - F_beta``: the Tversky loss with
    ``(alpha, 1 - alpha)`` (the Tversky weights tied to sum to one) and the asymmetric loss with
    ``beta = sqrt((1 - alpha) / alpha)``. Seo et al. (2020, "Closing the gap between deep neural network
    modeling and biomedical decision-making metrics in segmentation via adaptive loss functions", IEEE TMI)
    use this family with the precision/recall trade-off adapted during training; here ``alpha`` is a
    tunable parameter that the tuning module can move.
    """

    name = "effectiveness"
    tunables = {**_SMOOTH, "alpha": Bounds(0.0, 1.0, doc="weight of precision (1 - alpha: recall)")}

    def __init__(self, alpha: float = 0.5, include_background: bool = True, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight: Any = None, soft_label: bool = False,
                 reduction: str = "mean", activation: str | None = None,
                 sigmoid: bool | None = None, softmax: bool | None = None, other_act: Callable | None = None) -> None:
        super().__init__(include_background, smooth_nr, smooth_dr, batch, weight, soft_label, reduction,
                         activation, sigmoid, softmax, other_act)
        self._init_tunable("alpha", alpha)

    def score(self, c: dict[str, Tensor]) -> Tensor:
        a = float(self.alpha)
        return 1.0 - _tversky_index(c, a, 1.0 - a, self.smooth_nr, self.smooth_dr)


class FocalTverskyLoss(_RegionLoss):
    """Focal Tversky loss (Abraham & Khan 2019): ``(1 - TI)^(1/gamma)`` per class, TI the Tversky index.

    ``TI = (TP + s_nr) / (TP + alpha FP + beta FN + s_dr)``, alpha on FP and beta on FN (defaults 0.3 / 0.7,
    the paper's 0.7 weight on false negatives), ``gamma`` in (0, 10] (default 4/3, the paper's best; the
    paper explores [1, 3]). ``gamma = 1`` is the Tversky loss. ``1 - TI`` is clamped at the smallest positive
    float so the gradient stays finite at a perfect prediction.
    """

    name = "focal_tversky"
    tunables = {**_SMOOTH,
                "alpha": Bounds(0.0, 1.0, False, False, doc="weight of false positives"),
                "beta": Bounds(0.0, 1.0, False, False, doc="weight of false negatives"),
                "gamma": Bounds(0.0, 10.0, low_inclusive=False, doc="focal exponent: loss = (1 - TI)^(1/gamma)")}

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4.0 / 3.0,
                 include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, weight: Any = None, soft_label: bool = False, reduction: str = "mean",
                 activation: str | None = None,
                 sigmoid: bool | None = None, softmax: bool | None = None, other_act: Callable | None = None) -> None:
        super().__init__(include_background, smooth_nr, smooth_dr, batch, weight, soft_label, reduction,
                         activation, sigmoid, softmax, other_act)
        self._init_tunable("alpha", alpha)
        self._init_tunable("beta", beta)
        self._init_tunable("gamma", gamma)

    def score(self, c: dict[str, Tensor]) -> Tensor:
        ti = _tversky_index(c, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)
        return (1.0 - ti).clamp_min(_TINY).pow(1.0 / float(self.gamma))
