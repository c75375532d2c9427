"""Distance losses: the distance-transform Hausdorff loss and the boundary loss.

Both read the signed distance maps ``phi`` of the ground truth defined in
:mod:`spineloss.losses.distance_maps` (negative inside, positive outside, in mm, 0 for an empty or full
class). The data pipeline computes them once per augmented sample with ``signed_distance_maps`` and hands
them in as ``dist_map`` (``B x C x D x H x W``, all C classes) when ``loss.needs_distance_maps``; without
them the loss computes them itself with the same fast exact EDT (one multi-label pass plus one pass per
present class and sample), never scipy per channel. ``spacing`` (mm, axes D, H, W) must be the spacing the
maps were computed with; it is used when the loss computes maps itself (ground truth without ``dist_map``,
and the prediction's maps of the Hausdorff loss) and for the boundary loss's inside offset.

Per-sample spacing: cases of a data set have different voxel sizes, and the pipeline makes each sample's maps
with its own. ``loss(logits, target, dist_map=maps, spacing=s)`` with ``s`` of shape ``B x 3`` (mm, one row per
batch item; a tensor, array or nested sequence) overrides the constructor's ``spacing`` for that call: the
Hausdorff loss computes each item's prediction maps (and, without ``dist_map``, its ground-truth maps) with its
own row, and the boundary loss's default inside offset is each item's smallest spacing. A batch then gives
exactly the mean of its items computed one by one with their own spacing.

``reduction="none"`` returns one value per (batch item, class): ``B x C'`` (``1 x C'`` with ``batch=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..geometry import check_spacing
from .base import Bounds, Loss, LossInput, check_bool

__all__ = ["BoundaryLoss", "HausdorffDTLoss"]


class _DistanceLoss(Loss):
    needs_distance_maps = True
    uses_label_stats = True  # reads the probabilities: share the softmax with CE terms of a compound

    def __init__(self, include_background: bool, spacing: Any, batch: bool, reduction: str,
                 activation: str | None, sigmoid: bool | None, softmax: bool | None,
                 other_act: Callable | None) -> None:
        super().__init__(reduction=reduction, activation=activation, sigmoid=sigmoid, softmax=softmax,
                         other_act=other_act)
        owner = self._owner()
        self.include_background = check_bool("include_background", include_background, owner)
        self.spacing = check_spacing(spacing, 3, owner)
        self.batch = check_bool("batch", batch, owner)

    def forward(self, input: Tensor, target: Tensor, dist_map: Tensor | None = None,
                spacing: Any = None) -> Tensor:
        """Loss of ``input`` against ``target``; ``dist_map`` the pipeline's ground-truth maps (B x C x D x H x W)
        and ``spacing`` (B x 3, mm) each item's voxel spacing, overriding the loss's ``spacing`` for this call."""
        return self._forward(input, target, dist_map, spacing)

    def classes(self, batch: LossInput) -> list[int]:
        start = 0 if (self.include_background or batch.C == 1) else 1
        return list(range(start, batch.C))

    def finish(self, per_item: Tensor) -> Tensor:
        if self.batch:
            per_item = per_item.mean(dim=0, keepdim=True)
        return self.reduce(per_item)


class HausdorffDTLoss(_DistanceLoss):
    """Distance-transform Hausdorff loss (Karimi & Salcudean 2019, "Reducing the Hausdorff distance in medical
    image segmentation with convolutional neural networks", IEEE TMI 39(2)), their ``HD_DT`` loss::

        L_c = (1/N) sum_n (p_c(n) - t_c(n))^2 (d_G(n)^alpha + d_P(n)^alpha)

    ``d_G = |phi_G|`` is the distance of each voxel to the ground-truth boundary of class ``c`` (MONAI's
    ``edt(fg) + edt(bg)``) and ``d_P`` the same for the thresholded prediction ``p_c > 0.5`` (recomputed each
    step, no gradient); both in mm, so ``L`` scales as ``mm^alpha``. Averaged over items and classes.

    Args:
        alpha: exponent of the distances, in (0, 4] (default 2, the paper's choice).
        include_background: default False (MONAI's default).
        spacing: voxel spacing in mm (default (1, 1, 1)); a call's ``spacing`` (B x 3) overrides it per item.
        batch: average over the batch before the reduction (same mean; changes "none").
        reduction, activation: as for every loss; MONAI's ``sigmoid``, ``softmax``, ``other_act`` too
            (``d_P`` then thresholds the activated input at 0.5 per channel, as MONAI does).

    Same value as MONAI's ``HausdorffDTLoss`` with unit spacing. An empty (or full) ground-truth class has
    ``d_G = 0``: the loss is ``mean(p^2 d_P^alpha)``, which vanishes when the prediction is empty too.
    """

    name = "hausdorff"
    tunables = {"alpha": Bounds(0.0, 4.0, low_inclusive=False, doc="exponent of the distances")}

    def __init__(self, alpha: float = 2.0, include_background: bool = False,
                 spacing: Any = (1.0, 1.0, 1.0), batch: bool = False, reduction: str = "mean",
                 activation: str | None = None, sigmoid: bool | None = None, softmax: bool | None = None,
                 other_act: Callable | None = None) -> None:
        super().__init__(include_background, spacing, batch, reduction, activation, sigmoid, softmax, other_act)
        self._init_tunable("alpha", alpha)

    def compute(self, batch: LossInput) -> Tensor:
        cls = self.classes(batch)
        p = batch.probs()
        p = p if len(cls) == batch.C else p[:, cls[0]:]
        spacings = batch.spacings(self.spacing)  # one per item: the call's spacing, or the loss's
        with torch.no_grad():
            d2_g = batch.gt_signed_maps(cls, spacings, squared=True)  # squared distances, no sqrt
            d2_p = batch.pred_signed_maps(cls, spacings, squared=True)
            a = float(self.alpha)
            dist = d2_g + d2_p if a == 2.0 else d2_g.pow(a / 2.0).add_(d2_p.pow(a / 2.0))
        if batch.label_path:
            diff = p - batch.target_masks(cls).to(p.dtype)
        else:
            diff = p - batch.target_values(cls)
        per_item = (diff.square() * dist).mean(dim=2)
        return self.finish(per_item)


class BoundaryLoss(_DistanceLoss):
    """Boundary loss (Kervadec et al. 2019, "Boundary loss for highly unbalanced segmentation", MIDL;
    Medical Image Analysis 2021)::

        L_c = (1/N) sum_n p_c(n) phi_K(n),     phi_K = phi + inside_offset * [phi < 0]

    the level-set form of the distance between the predicted and the true boundary. ``phi`` is the signed
    distance of the ground truth (negative inside); ``phi_K`` is Kervadec's reference ``one_hot2dist``
    (``edt(~G) * ~G - (edt(G) - 1) * G``), in which the innermost layer of the object is at 0, when
    ``inside_offset`` is one voxel. The loss is minimal (and negative) when ``p`` is 1 exactly where
    ``phi_K < 0``; it is meant to be combined with a region loss (Kervadec et al. use Dice/GDL + alpha*boundary).

    With ``relative=True`` the loss is measured from its optimum instead::

        L_c = (1/N) sum_n (p_c(n) - [phi_K(n) < 0]) phi_K(n)  >= 0,

    the same loss less the constant ``(1/N) sum_n min(phi_K, 0)``: equal gradients, 0 exactly at the perfect
    prediction, never negative. Weighting schemes that divide by a term's value (CoV, Groenendijk et al.
    2021; SoftAdapt's loss-weighted variant) need that; the plain form's sign changes during training.

    Args:
        include_background: default True (MONAI's default; Kervadec et al. use the foreground classes only).
        spacing: voxel spacing in mm (default (1, 1, 1)); a call's ``spacing`` (B x 3) overrides it per item.
        inside_offset: added to ``phi`` inside the object, in mm. Default None = the smallest spacing (1 at
            unit spacing: Kervadec's and MONAI's map exactly; with a call's per-item spacing, each item's
            smallest spacing); 0 uses ``phi`` as it is (then the loss scales exactly with the spacing and every
            inside voxel pulls the prediction up).
        batch: average over the batch before the reduction.
        relative: subtract the loss's minimum (see above), so that it is >= 0 and 0 at the optimum.
            Default False (Kervadec's and MONAI's value).
        reduction, activation: as for every loss; MONAI's ``sigmoid``, ``softmax``, ``other_act`` too.

    Same value as MONAI's ``BoundaryLoss`` at unit spacing. An empty (or full) class has ``phi = 0``, so it
    contributes 0 (no gradient): false positives of an absent class are left to the region term.
    """

    can_be_negative = True   # mean p * phi < 0 near a good prediction (phi < 0 inside)

    name = "boundary"

    def __init__(self, include_background: bool = True, spacing: Any = (1.0, 1.0, 1.0),
                 inside_offset: float | None = None, batch: bool = False, reduction: str = "mean",
                 activation: str | None = None, sigmoid: bool | None = None, softmax: bool | None = None,
                 other_act: Callable | None = None, relative: bool = False) -> None:
        super().__init__(include_background, spacing, batch, reduction, activation, sigmoid, softmax, other_act)
        if not isinstance(relative, bool):
            raise ValueError(f"{self._owner()}: relative must be true or false, got {relative!r}")
        self.relative = relative
        self.can_be_negative = not relative
        if inside_offset is not None:
            if isinstance(inside_offset, bool) or not isinstance(inside_offset, (int, float)) \
                    or not inside_offset >= 0 or inside_offset == float("inf"):
                raise ValueError(f"{self._owner()}: inside_offset must be a finite number >= 0 (mm) or None, "
                                 f"got {inside_offset!r}")
            inside_offset = float(inside_offset)
        self.inside_offset = inside_offset

    def offset(self, spacing: tuple[float, ...] | None = None) -> float:
        """The inside offset in mm for ``spacing`` (default: the loss's): ``inside_offset`` or min(spacing)."""
        if self.inside_offset is not None:
            return self.inside_offset
        return min(self.spacing if spacing is None else spacing)

    def compute(self, batch: LossInput) -> Tensor:
        cls = self.classes(batch)
        p = batch.probs()
        p = p if len(cls) == batch.C else p[:, cls[0]:]
        spacings = batch.spacings(self.spacing)
        with torch.no_grad():
            phi = batch.gt_signed_maps(cls, spacings)
            offsets = [self.offset(sp) for sp in spacings]
            if len(set(offsets)) == 1:
                off: float | Tensor = offsets[0]
            else:  # each item's own offset
                off = torch.tensor(offsets, dtype=phi.dtype, device=phi.device).view(-1, 1, 1)
            if not (isinstance(off, float) and off == 0.0):
                phi = torch.where(phi < 0, phi + off, phi)
        if self.relative:  # every term (p - [phi < 0]) phi is >= 0, so the sum is too, in floating point as well
            per_item = ((p - (phi < 0).to(p.dtype)) * phi).sum(dim=2) / batch.N
        else:
            per_item = (p * phi).sum(dim=2) / batch.N
        return self.finish(per_item)
