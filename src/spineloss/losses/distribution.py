"""Distribution-based losses: cross-entropy, weighted cross-entropy, TopK and focal loss.

All of them are per-voxel losses averaged over voxels. With a softmax (C > 1) the per-voxel loss is summed
over classes (``-sum_c t_c log p_c``: for a label map only the true class counts), as in
``torch.nn.functional.cross_entropy``; with sigmoids (C = 1, or ``activation="sigmoid"``) each channel of
each voxel is one binary problem and the mean runs over ``B x C x voxels``, as in
``binary_cross_entropy_with_logits``. Soft / one-hot targets ``t`` (MixUp) use the same formulas with
``t_c`` in ``[0, 1]``.

``reduction="none"`` returns the per-voxel loss: ``B x D x H x W`` with a softmax, ``B x C x D x H x W`` with
sigmoids.

Probabilities instead of logits (``activation="none"``, e.g. for every term of a ``weighted_sum``; MONAI has no
such option for these losses): the input must hold values in [0, 1] (checked: ``ValueError`` otherwise, since
logits passed by mistake would otherwise be clamped silently) and is clamped to ``[1e-7, 1 - 1e-7]`` before the
log (the epsilon of MONAI's unified focal loss), so a probability of exactly 0 or 1 gives a finite loss and
gradient. C > 1 channels are one categorical distribution (``-sum_c t_c log p_c``), C = 1 is binary.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Bounds, Loss, LossInput, LossNotPreparedError, check_bool, check_weights

__all__ = ["CrossEntropyLoss", "FocalLoss", "TopKLoss", "WeightedCrossEntropyLoss"]

_TINY = torch.finfo(torch.float32).tiny


def _ce_log_py(batch: LossInput) -> Tensor:
    """``log p_y`` (B, 1, N) on the softmax label path, through the shared fused statistics."""
    lpt = batch.label_stats()[4]
    if lpt is None:
        raise RuntimeError("internal: log p_y requested but not prepared (wants_log_py() missing)")
    return lpt


def _class_weight_vector(weight: Tensor | None, batch: LossInput, owner: str) -> Tensor | None:
    """Check a class-weight vector against the channels: length C (softmax / multi-label sigmoid) or 2 for C=1."""
    if weight is None:
        return None
    C = batch.C
    want = 2 if C == 1 else C
    if weight.ndim != 1 or weight.numel() != want:
        what = "2 values (background, foreground) for a one-channel sigmoid" if C == 1 else f"C = {C} values"
        raise ValueError(f"{owner}: class weights must have {what}, got {weight.tolist()}")
    return weight.to(batch.device)


def per_voxel_cross_entropy(batch: LossInput, weight: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-voxel (softmax: B x N) or per-element (sigmoid: B x C x N) cross-entropy and its weights.

    Softmax: ``l(n) = -sum_c w_c t_c(n) log p_c(n)`` and voxel weight ``sum_c w_c t_c(n)``;
    sigmoid: ``l = -(t log p + (1 - t) log(1 - p))`` with weight ``w_1 t + w_0 (1 - t)`` (C = 1) or ``w_c``.
    Probability input (no activation): the same formulas on ``clamp(p, 1e-7, 1 - 1e-7)``, categorical for
    C > 1 and binary for C = 1. Returns ``(weighted loss, weights or None)``.
    """
    if not batch.from_logits:
        assert batch.soft is not None
        p, t = batch.clamped_probs(), batch.soft
        if batch.C > 1:
            tw = t if weight is None else t * weight.view(1, -1, 1)
            return -(tw * torch.log(p)).sum(dim=1), (None if weight is None else tw.sum(dim=1))
        loss = -(t * torch.log(p) + (1.0 - t) * torch.log1p(-p))
        if weight is None:
            return loss, None
        wv = weight[0] + (weight[1] - weight[0]) * t
        return loss * wv, wv
    if batch.activation == "softmax":
        if batch.label_path:
            assert batch.labels is not None
            loss = -_ce_log_py(batch)[:, 0]
            if weight is None:
                return loss, None
            wv = weight[batch.labels[:, 0]]
            return loss * wv, wv
        assert batch.soft is not None
        logp = batch.log_probs()
        t = batch.soft if weight is None else batch.soft * weight.view(1, -1, 1)
        loss = -(t * logp).sum(dim=1)
        return loss, (None if weight is None else t.sum(dim=1))
    assert batch.soft is not None
    t = batch.soft
    loss = F.binary_cross_entropy_with_logits(batch.x, t, reduction="none")
    if weight is None:
        return loss, None
    if batch.C == 1:
        wv = weight[0] + (weight[1] - weight[0]) * t
    else:
        wv = weight.view(1, -1, 1).expand_as(t)
    return loss * wv, wv


class CrossEntropyLoss(Loss):
    """Cross-entropy ``CE = -(1/N) sum_n sum_c t_c(n) log p_c(n)`` (softmax), or binary CE with sigmoids.

    With ``weight`` (weighted CE) the mean is normalised by the weights,
    ``sum_n w_{y_n} l_n / sum_n w_{y_n}`` (soft targets: voxel weight ``sum_c w_c t_c``), which is PyTorch's
    and MONAI's convention for label maps and its natural extension to soft targets, so a label map and its
    one-hot encoding give the same value. If every voxel has weight 0 the loss is 0.

    Args:
        weight: per-class weights (length C; with a one-channel sigmoid, 2 values: background, foreground).
        reduction: "mean" | "sum" | "none" (per-voxel, see the module docstring).
        activation: None (softmax for C > 1, sigmoid for C = 1), "softmax" or "sigmoid".

    The background is always part of the cross-entropy (there is no ``include_background``), as in MONAI's
    ``DiceCELoss``. Label maps with a softmax go through ``torch.nn.functional.cross_entropy``.
    """

    name = "ce"

    def __init__(self, weight: Any = None, reduction: str = "mean", activation: str | None = None) -> None:
        super().__init__(reduction=reduction, activation=activation)
        self.weight = check_weights("weight", weight, self._owner(), allow_scalar=False)

    def class_weights(self, batch: LossInput) -> Tensor | None:
        return _class_weight_vector(self.weight, batch, self._owner())

    def wants_log_py(self) -> bool:
        return True

    def compute(self, batch: LossInput) -> Tensor:
        w = self.class_weights(batch)
        if batch.activation == "softmax" and batch.label_path and not batch.prefer_stats:
            return self._torch_ce(batch, w)
        loss, wv = per_voxel_cross_entropy(batch, w)
        return self._reduce_weighted(batch, loss, wv, w)

    def _torch_ce(self, batch: LossInput, w: Tensor | None) -> Tensor:
        assert batch.labels is not None
        y = batch.labels[:, 0]
        if self.reduction == "none":
            out = F.cross_entropy(batch.x, y, weight=w, reduction="none")
            return out.reshape((batch.B,) + batch.spatial)
        if w is None:
            return F.cross_entropy(batch.x, y, reduction=self.reduction)
        total = F.cross_entropy(batch.x, y, weight=w, reduction="sum")
        if self.reduction == "sum":
            return total
        den = (batch.counts() * w.view(1, -1)).sum()
        return total / den.clamp_min(_TINY)

    def _reduce_weighted(self, batch: LossInput, loss: Tensor, wv: Tensor | None, w: Tensor | None) -> Tensor:
        if self.reduction == "none":
            shape = (batch.B,) + batch.spatial if loss.ndim == 2 else (batch.B, batch.C) + batch.spatial
            return loss.reshape(shape)
        if self.reduction == "sum":
            return loss.sum()
        if wv is None:
            return loss.mean()
        if batch.label_path and w is not None:
            den = (batch.counts() * w.view(1, -1)).sum()
        else:
            den = wv.sum()
        return loss.sum() / den.clamp_min(_TINY)


class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Weighted cross-entropy: :class:`CrossEntropyLoss` with class weights given or from the training labels.

    ``weight="inverse_frequency"`` (default) takes the weights from :meth:`prepare`, called once by the
    trainer with the voxel count ``n_c`` of each class over the training labels (``K`` classes,
    ``n = sum_c n_c``)::

        w_c = n / (K * max(n_c, 1))

    (the "balanced" weights of King & Zeng 2001 / scikit-learn: a class of average frequency gets weight 1, a
    class never seen gets weight ``n``, harmless since it never occurs in the targets). Because the mean is
    normalised by the weights, only their ratios matter. With a one-channel sigmoid the counts are
    ``(background, foreground)``. Using the loss before ``prepare()`` raises :class:`LossNotPreparedError`.
    A list of weights may be given instead, then ``prepare()`` changes nothing.
    """

    name = "wce"

    def __init__(self, weight: Any = "inverse_frequency", reduction: str = "mean",
                 activation: str | None = None) -> None:
        self.inverse_frequency = isinstance(weight, str)
        if self.inverse_frequency and weight != "inverse_frequency":
            raise ValueError(f"wce loss: weight must be a sequence of class weights or 'inverse_frequency', "
                             f"got {weight!r}")
        super().__init__(weight=None if self.inverse_frequency else weight, reduction=reduction,
                         activation=activation)

    def prepare(self, class_voxel_counts: np.ndarray) -> None:
        """Compute ``w_c = n / (K max(n_c, 1))`` from the per-class voxel counts (only for inverse_frequency)."""
        if not self.inverse_frequency:
            return
        counts = np.asarray(class_voxel_counts, dtype=np.float64)
        if counts.ndim != 1 or counts.size < 1 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError(f"wce loss: class_voxel_counts must be a 1-D array of non-negative counts, "
                             f"got {class_voxel_counts!r}")
        total = counts.sum()
        if total <= 0:
            raise ValueError("wce loss: class_voxel_counts are all zero; cannot compute inverse-frequency weights")
        w = total / (counts.size * np.maximum(counts, 1.0))
        self.weight = torch.as_tensor(w, dtype=torch.float32)

    def class_weights(self, batch: LossInput) -> Tensor | None:
        if self.inverse_frequency and self.weight is None:
            raise LossNotPreparedError(
                "wce loss with weight='inverse_frequency' needs the class frequencies of the training labels: "
                "call loss.prepare(class_voxel_counts) once before training")
        return super().class_weights(batch)


class TopKLoss(Loss):
    """TopK cross-entropy: the mean CE over the hardest ``k`` % of voxels of the batch.

    ``L = mean of the ceil-free top floor(k/100 * M) values of the per-voxel CE`` (at least one), with ``M``
    the number of voxels in the batch (elements with sigmoids), as in nnU-Net's ``TopKLoss`` (Isensee et
    al. 2021; Wu et al. 2016, "Bridging category-level and instance-level semantic image segmentation").
    Soft targets use the per-voxel soft CE. ``k`` in (0, 100], default 10; ``k = 100`` is plain CE.
    ``reduction="sum"`` sums the selected values; ``"none"`` returns the per-voxel CE with the unselected
    voxels set to 0.
    """

    name = "topk"
    uses_label_stats = True
    tunables = {"k": Bounds(0.0, 100.0, low_inclusive=False, doc="percentage of hardest voxels kept")}

    def __init__(self, k: float = 10.0, reduction: str = "mean", activation: str | None = None) -> None:
        super().__init__(reduction=reduction, activation=activation)
        self._init_tunable("k", k)

    def wants_log_py(self) -> bool:
        return True

    def compute(self, batch: LossInput) -> Tensor:
        loss, _ = per_voxel_cross_entropy(batch)
        flat = loss.reshape(-1)
        m = flat.numel()
        n_keep = max(1, min(m, int(math.floor(m * self.k / 100.0 + 1e-9))))
        if n_keep == m:
            top, idx = flat, None
        else:
            top, idx = torch.topk(flat, n_keep, sorted=False)
        if self.reduction == "mean":
            return top.mean()
        if self.reduction == "sum":
            return top.sum()
        if idx is not None:
            keep = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, idx, True)
            flat = flat * keep
        shape = (batch.B,) + batch.spatial if loss.ndim == 2 else (batch.B, batch.C) + batch.spatial
        return flat.reshape(shape)


def _sigmoid_logs(x: Tensor, p: Tensor, q: Tensor, extreme: bool) -> tuple[Tensor, Tensor]:
    """``log p, log q`` for ``p = sigmoid(x)``, ``q = sigmoid(-x)``: plain logs unless logits are extreme."""
    if not extreme:  # |x| < 80: p and q are normal floats, so log is exact enough (and fast)
        return torch.log(p), torch.log(q)
    log_p = F.logsigmoid(x)
    return log_p, log_p - x


def _mul_pow_(buf: Tensor, base: Tensor, gamma: float) -> Tensor:
    """``buf *= base ** gamma`` in place (two multiplications for the usual gamma = 2)."""
    if gamma == 2.0:
        return buf.mul_(base).mul_(base)
    if gamma == 1.0:
        return buf.mul_(base)
    if gamma == 0.0:
        return buf
    return buf.mul_(base.pow(gamma))


class _SigmoidFocal(torch.autograd.Function):
    """Element-wise sigmoid focal loss with its analytic gradient, in place where possible.

    ``l = -[a+ t q^g log p + a- (1 - t) p^g log q]``, ``p = sigmoid(x)``, ``q = 1 - p``;
    ``dl/dx = -[a+ t q^g (q - g p log p) + a- (1 - t) p^g (g q log q - p)]`` (no ``q^(g-1)``: finite for any
    g). Saves ``p`` and ``q`` besides the inputs; four full-size buffers forward, two backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, pos: Tensor | None, neg: Tensor | None,  # type: ignore[override]
                gamma: float) -> Tensor:
        p = torch.sigmoid(x)
        q = torch.neg(x).sigmoid_()  # 1 - p without cancellation
        lo, hi = torch.aminmax(x)
        extreme = float(hi) >= 80.0 or float(lo) <= -80.0
        log_p, log_q = _sigmoid_logs(x, p, q, extreme)
        loss = _mul_pow_(log_p, q, gamma).mul_(t)  # t q^g log p
        neg_term = _mul_pow_(log_q, p, gamma)  # p^g log q
        neg_term.addcmul_(neg_term, t, value=-1.0)  # (1 - t) p^g log q
        if pos is not None:
            loss.mul_(pos)
        if neg is not None:
            neg_term.mul_(neg)
        ctx.save_for_backward(x, t, p, q, pos, neg)
        ctx.gamma, ctx.extreme = gamma, extreme
        return loss.add_(neg_term).neg_()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, t, p, q, pos, neg = ctx.saved_tensors
        gamma = ctx.gamma
        log_p, log_q = _sigmoid_logs(x, p, q, ctx.extreme)
        a = _mul_pow_(log_p.mul_(p).mul_(-gamma).add_(q), q, gamma).mul_(t)  # t q^g (q - g p log p)
        b = _mul_pow_(log_q.mul_(q).mul_(gamma).sub_(p), p, gamma)  # p^g (g q log q - p)
        b.addcmul_(b, t, value=-1.0)
        if pos is not None:
            a.mul_(pos)
        if neg is not None:
            b.mul_(neg)
        return a.add_(b).mul_(g).neg_(), None, None, None, None


class FocalLoss(Loss):
    """Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"), per voxel.

    Softmax (C > 1): ``FL(n) = -sum_c a_c t_c(n) (1 - p_c(n))^gamma log p_c(n)``; for a label map only the
    true class ``y`` counts: ``-a_y (1 - p_y)^gamma log p_y``. Mean over the B x voxels.
    Sigmoid: ``FL = -[a+ t (1 - p)^gamma log p + a- (1 - t) p^gamma log(1 - p)]``, mean over elements.
    ``gamma = 0`` without ``alpha`` is exactly :class:`CrossEntropyLoss`.

    Args:
        gamma: focusing exponent >= 0 (default 2).
        alpha: None (no balancing), a number in [0, 1] or a per-class sequence. Number: sigmoid
            ``a+ = alpha, a- = 1 - alpha`` (Lin et al.); softmax ``a_0 = 1 - alpha`` for the background and
            ``a_c = alpha`` for the other classes (MONAI's convention). Sequence: ``a_c`` per scored class
            (without background: C - 1 values; sigmoid: on positives only, ``a- = 1``), as in MONAI.
        weight: optional per-class multiplier (MONAI's ``weight``: a number or one value per scored class),
            combined with ``alpha``.
        include_background: if False, the terms of class 0 are dropped (the softmax still runs over all
            classes, and the mean still runs over all voxels); ignored for C = 1.
        reduction: "mean" (over voxels; with sigmoids over elements), "sum" (MONAI's: the sum over items, and
            with sigmoids over scored classes, of the mean over voxels) or "none" (per voxel / element).
        activation: as for every loss (``"none"``: probabilities, clamped before the log).
        use_softmax: MONAI's word: True = ``activation="softmax"``, False = ``activation="sigmoid"``. Note
            that MONAI's default is the sigmoid focal loss; ours follows C (softmax for C > 1).

    Differences from MONAI's ``FocalLoss`` (intended): with a softmax MONAI averages over the class axis as
    well (so its value is ours divided by C, and ``gamma = 0`` gives CE / C), and with
    ``include_background=False`` it drops channel 0 *before* the softmax. Sigmoid values are identical for
    hard targets; for soft targets we use the soft generalisation above.
    """

    name = "focal"
    uses_label_stats = True
    tunables = {"gamma": Bounds(0.0, 10.0, doc="focusing exponent"),
                "alpha": Bounds(0.0, 1.0, doc="balance of the foreground classes")}

    #: set by compounds (MONAI's DiceFocalLoss): a sequence of length C without background drops class 0
    weight_covers_all_classes = False

    def __init__(self, gamma: float = 2.0, alpha: Any = None, weight: Any = None, include_background: bool = True,
                 reduction: str = "mean", activation: str | None = None, use_softmax: bool | None = None) -> None:
        if use_softmax is not None:
            check_bool("use_softmax", use_softmax, f"{self.name} loss")
            if activation is not None:
                raise ValueError(f"{self.name} loss: give either activation={activation!r} or MONAI's use_softmax, "
                                 "not both")
            activation = "softmax" if use_softmax else "sigmoid"
        super().__init__(reduction=reduction, activation=activation)
        self._init_tunable("gamma", gamma)
        if alpha is None or isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            self._init_tunable("alpha", alpha, optional=True)
        else:
            self.alpha = check_weights("alpha", alpha, self._owner(), allow_scalar=False)
            if bool((self.alpha > 1).any()):
                raise ValueError(f"{self._owner()}: alpha values must be in [0, 1], got {self.alpha.tolist()}")
        self.weight = check_weights("weight", weight, self._owner())
        self.include_background = check_bool("include_background", include_background, self._owner())

    def _alpha_vectors(self, batch: LossInput, start: int) -> tuple[Tensor | None, Tensor | None]:
        """Per-class factors (C,) on the positive / true-class term and on the negative term, or None.

        Sequences (``alpha``, ``weight``) give one value per *included* class, as in MONAI.
        """
        C, owner = batch.C, self._owner()

        def full(v: Tensor, what: str) -> Tensor:
            if start and self.weight_covers_all_classes and v.numel() == C:
                v = v[1:]
            if v.numel() != C - start:
                raise ValueError(f"{owner}: {what} has {v.numel()} values but {C - start} classes are scored "
                                 f"(C = {C}{', background excluded' if start else ''})")
            v = v.to(batch.device)
            return torch.cat([v.new_ones(1), v]) if start else v

        pos = neg = None
        a = self.alpha
        if isinstance(a, Tensor):
            pos = full(a, "alpha")
        elif a is not None:
            pos = torch.full((C,), float(a), device=batch.device)
            if batch.categorical:
                pos[0] = 1.0 - float(a)
            else:
                neg = torch.full((C,), 1.0 - float(a), device=batch.device)
        if self.weight is not None:
            w = self.weight if self.weight.ndim == 1 else self.weight.expand(C - start)
            w = full(w, "weight")
            pos = w if pos is None else pos * w
            neg = w if neg is None else neg * w
        return pos, neg

    def wants_log_py(self) -> bool:
        return True

    def _modulator(self, one_minus: Tensor) -> Tensor:
        g = float(self.gamma)
        if g == 0.0:
            return torch.ones_like(one_minus)
        if g == 2.0:
            return one_minus.square()
        if g == 1.0:
            return one_minus
        if g < 1.0:  # d/dq q^g is infinite at q = 0
            one_minus = one_minus.clamp_min(_TINY)
        return one_minus.pow(g)

    def reduce_focal(self, loss: Tensor) -> Tensor:
        """"mean" over everything; "sum" as MONAI: the voxel mean of each item (and class), summed."""
        if self.reduction == "sum":
            return loss.mean(dim=-1).sum()
        return loss.mean()

    def compute(self, batch: LossInput) -> Tensor:
        C = batch.C
        start = 0 if (self.include_background or C == 1) else 1
        pos, neg = self._alpha_vectors(batch, start)
        if not batch.from_logits:
            return self._compute_probs(batch, start, pos, neg)
        if batch.activation == "softmax":
            if batch.label_path:
                assert batch.labels is not None
                lpt = _ce_log_py(batch)  # (B, 1, N)
                loss = -self._modulator(-torch.expm1(lpt)) * lpt
                y = batch.labels
                if pos is not None:
                    if start:
                        pos = pos.clone()
                        pos[0] = 0.0
                    loss = loss * pos[y]
                elif start:
                    loss = loss * (y != 0)
                loss = loss[:, 0]
            else:
                assert batch.soft is not None
                logp = batch.log_probs()[:, start:]
                return self._categorical_soft(-torch.expm1(logp), logp, batch.soft[:, start:], pos, start, batch)
            if self.reduction == "none":
                return loss.reshape((batch.B,) + batch.spatial)
            return self.reduce_focal(loss)
        # sigmoid, element-wise
        assert batch.soft is not None
        x, t = batch.x[:, start:], batch.soft[:, start:]
        pos_c = pos[start:].view(1, -1, 1) if pos is not None else None
        neg_c = neg[start:].view(1, -1, 1) if neg is not None else None
        loss = _SigmoidFocal.apply(x, t, pos_c, neg_c, float(self.gamma))
        if self.reduction == "none":
            return loss.reshape((batch.B, C - start) + batch.spatial)
        return self.reduce_focal(loss)

    def _categorical_soft(self, one_minus_p: Tensor, logp: Tensor, t: Tensor, pos: Tensor | None, start: int,
                          batch: LossInput) -> Tensor:
        """``-sum_c a_c t_c (1 - p_c)^gamma log p_c`` over the scored classes, then reduced."""
        term = -self._modulator(one_minus_p) * logp * t
        if pos is not None:
            term = term * pos[start:].view(1, -1, 1)
        loss = term.sum(dim=1)
        if self.reduction == "none":
            return loss.reshape((batch.B,) + batch.spatial)
        return self.reduce_focal(loss)

    def _compute_probs(self, batch: LossInput, start: int, pos: Tensor | None, neg: Tensor | None) -> Tensor:
        """The focal loss of probabilities ``p`` (no activation), clamped to [1e-7, 1 - 1e-7] before the log:
        categorical ``-sum_c a_c t_c (1 - p_c)^gamma log p_c`` for C > 1, binary for C = 1."""
        assert batch.soft is not None
        p, t = batch.clamped_probs()[:, start:], batch.soft[:, start:]
        if batch.categorical:
            return self._categorical_soft(1.0 - p, torch.log(p), t, pos, start, batch)
        pos_term = -self._modulator(1.0 - p) * torch.log(p) * t
        neg_term = -self._modulator(p) * torch.log1p(-p) * (1.0 - t)
        if pos is not None:
            pos_term = pos_term * pos[start:].view(1, -1, 1)
        if neg is not None:
            neg_term = neg_term * neg[start:].view(1, -1, 1)
        loss = pos_term + neg_term
        if self.reduction == "none":
            return loss.reshape((batch.B, batch.C - start) + batch.spatial)
        return self.reduce_focal(loss)
