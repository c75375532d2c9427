"""What a learned loss reads from one loss call: per-voxel ``p`` and ``g``, their logs, region soft counts.

All three learned losses (:mod:`.expression`, :mod:`.taylor`, :mod:`.meta`) see the checked
:class:`~spineloss.losses.base.LossInput` of the loss library (fp32, autocast off, labels or soft targets)
through these functions, so they read the input exactly as every other spineloss loss does:

* ``p`` (B x C x N): softmax probabilities (C > 1), sigmoid (C = 1), or the input itself (``activation="none"``);
* ``g`` (B x C x N): the one-hot (label map) or soft target;
* soft counts per (batch item, class): ``TP = sum_n p g``, ``FP = sum_n p (1 - g)``, ``FN = sum_n (1 - p) g``.

The probabilities are the plain softmax/sigmoid (never the fused label statistics of the region losses, whose
hand-written backward is first-order only), so every quantity here can be differentiated twice, which the
meta-learned loss needs (:func:`spineloss.learning.meta.inner_step`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses.base import PROB_EPS, LossInput

__all__ = ["log_terms", "probabilities_and_target", "reduce_channels", "soft_counts"]


def probabilities_and_target(batch: LossInput) -> tuple[Tensor, Tensor]:
    """``(p, g)``, both B x C x N float32 (see the module docstring)."""
    return batch.probs(), batch.target_values(list(range(batch.C)))


def soft_counts(p: Tensor, g: Tensor, normalise: bool = False) -> dict[str, Tensor]:
    """``{"tp", "fp", "fn", "sp", "st"}`` per (batch item, class), each B x C.

    ``TP = sum p g``, ``FP = sum p (1 - g)``, ``FN = sum (1 - p) g``, ``sp = sum p``, ``st = sum g`` over the
    voxels; with ``normalise`` divided by the number of voxels N (fractions in [0, 1], so a formula over them
    does not depend on the volume size; ratios such as ``2 TP / (2 TP + FP + FN)`` are unchanged).
    """
    tp = (p * g).sum(dim=2)
    sp, st = p.sum(dim=2), g.sum(dim=2)
    out = {"tp": tp, "fp": sp - tp, "fn": st - tp, "sp": sp, "st": st}
    if normalise:
        n = float(p.shape[2])
        out = {k: v / n for k, v in out.items()}
    return out


def log_terms(batch: LossInput, p: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p, log(1 - p))`` (B x C x N), computed stably from the logits where there are logits.

    Softmax: ``log_softmax`` and ``log1p(-min(p, 1 - 1e-7))``; sigmoid: ``logsigmoid(x)`` and
    ``logsigmoid(-x)``; probabilities (no activation): the logs of ``p`` clamped to ``[1e-7, 1 - 1e-7]`` (the
    loss library's clamp, :meth:`~spineloss.losses.base.LossInput.clamped_probs`).
    """
    if batch.activation == "softmax":
        return batch.log_probs(), torch.log1p(-p.clamp(max=1.0 - PROB_EPS))
    if batch.activation == "sigmoid":
        return F.logsigmoid(batch.x), F.logsigmoid(-batch.x)
    q = batch.clamped_probs()
    return torch.log(q), torch.log1p(-q)


def reduce_channels(values: Tensor, batch: LossInput) -> Tensor:
    """A per-voxel, per-channel quantity (B x C x N) reduced over the channels: the sum for one categorical
    distribution (softmax; as cross-entropy ``-sum_c g_c log p_c``), the mean for independent sigmoid
    channels (as binary cross-entropy averages over ``B x C x N``). Returns B x N."""
    return values.sum(dim=1) if batch.categorical else values.mean(dim=1)
