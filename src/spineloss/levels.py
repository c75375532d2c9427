"""Vertebral levels from both sources of evidence: the network's per-voxel level probabilities and the
anatomy (levels ordered head to feet, one body each).

A network that predicts the levels (L1..L5 = 1..5) voxel by voxel can label one body with two levels,
give two bodies the same level, or take T12 for L1; counting bodies from the sacrum
(:mod:`spineloss.postprocess`) fixes the last but cannot tell a fused pair from a missing level.
:func:`assign_levels` combines them:

1. **Bodies.** The foreground (arg-max not background) is split into pieces as in
   :func:`spineloss.postprocess.split_bodies` (erosion seeds, nearest-seed growth), and pieces are
   ordered along the cranio-caudal axis read from the affine.
2. **Evidence.** For piece ``b`` and label ``k`` (0 = background) the probability mass
   ``M[b, k] = sum_{v in b} p_k(v)``.
3. **Ordered labelling** (dynamic programme over the pieces, head to feet, state = the last level
   used): each piece is background (gain ``M[b, 0]``), one level ``k`` above the last one used (gain
   ``M[b, k]``), or two consecutive levels ``k, k+1`` when the probabilities say two levels meet in it
   (each holds at least ``fused_share`` of the piece's mass on the two; gain
   ``sum_v max(p_k(v), p_{k+1}(v))``, voxels split by that arg-max). Levels strictly increase towards
   the feet, each is used at most once. The labelling with the highest total gain is returned: the
   maximum-probability labelling that respects the anatomy's order.
4. **Flags.** What breaks an assumption is reported, never relabelled silently: ``missing:L5`` (a
   level no body took), ``dropped_below`` (a body-size piece caudal to the most caudal level: a
   segmented S1 or a transitional L6), ``dropped_above`` (a body-size piece cranial to the first
   level: T12), ``split`` (one piece took two levels), ``bodies:<n>`` (body-size pieces found, when
   not the number of levels) and ``oblique_axis`` (the affine has no clear head-feet axis).

The probabilities are softmax outputs on the label map's grid (``C x D x H x W``, ``C = levels + 1``).

References: Glocker et al. 2012, "Automatic localization and identification of vertebrae in arbitrary
field-of-view CT scans" (MICCAI), for labelling by anatomical order; Sekuboyina et al. 2021, "VerSe"
(Med. Image Anal. 73:102166), on transitional vertebrae and level-shift errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from .geometry import bounding_box

__all__ = ["LevelAssignment", "assign_levels", "ordered_labelling"]


@dataclass
class LevelAssignment:
    """The relabelled map and what the assignment noticed (:func:`assign_levels`)."""

    labels: np.ndarray
    flags: list[str] = field(default_factory=list)
    pieces: list[tuple[int, ...]] = field(default_factory=list)   # head to feet: the level(s) of each piece


def ordered_labelling(mass: np.ndarray, fused: np.ndarray | None = None) -> list[tuple[int, ...]]:
    """The best ordered labelling of ``n`` pieces (rows, head to feet) with levels ``1..L``.

    ``mass``: ``n x (L + 1)`` gains, column 0 background. ``fused``: ``n x (L + 1)``, ``fused[b, k]``
    the gain of giving piece ``b`` the levels ``k`` and ``k + 1`` (NaN: not allowed). Returns, per
    piece, ``()`` (background), ``(k,)`` or ``(k, k + 1)``; levels strictly increase down the rows.
    Exact dynamic programme, ``O(n L^2)``.
    """
    mass = np.asarray(mass, dtype=np.float64)
    n, width = mass.shape
    levels = width - 1
    if fused is None:
        fused = np.full_like(mass, np.nan)
    neg = -np.inf
    score = np.full((n + 1, levels + 1), neg)   # score[i, j]: best over pieces < i with last level j
    score[0, 0] = 0.0
    back: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
    for i in range(n):
        for j in range(levels + 1):
            if score[i, j] == neg:
                continue
            options = [((), j, mass[i, 0])]
            options += [((k,), k, mass[i, k]) for k in range(j + 1, levels + 1)]
            options += [((k, k + 1), k + 1, fused[i, k]) for k in range(j + 1, levels)
                        if np.isfinite(fused[i, k])]
            for chosen, state, gain in options:
                total = score[i, j] + gain
                if total > score[i + 1, state] + 1e-12:
                    score[i + 1, state] = total
                    back[(i + 1, state)] = (j, chosen)
    state = int(np.argmax(score[n]))
    out: list[tuple[int, ...]] = []
    for i in range(n, 0, -1):
        prev, chosen = back[(i, state)]
        out.append(chosen)
        state = prev
    return out[::-1]


def assign_levels(probabilities: np.ndarray, axis: int, caudal_sign: int, spacing: Sequence[float],
                  erosion_mm: float = 2.0, min_body_fraction: float = 0.5, fused_share: float = 0.25,
                  oblique: bool = False) -> LevelAssignment:
    """Label the vertebral bodies of ``probabilities`` (``(L + 1) x D x H x W`` softmax) with levels ``1..L``.

    Args:
        axis, caudal_sign: the cranio-caudal voxel axis and +1/-1 for the feet
            (:func:`spineloss.postprocess.craniocaudal_axis`).
        spacing: voxel size in mm.
        erosion_mm: erosion radius of the split into pieces.
        min_body_fraction: pieces of at least this fraction of the median volume of the ``L`` largest
            are body-size (the flags count those).
        fused_share: a piece may take two consecutive levels when each holds at least this share of
            its probability mass on the two.
        oblique: the caller found no clear head-feet axis (adds the ``oblique_axis`` flag).
    Returns:
        :class:`LevelAssignment` (see the module docstring for the method and the flags).
    """
    from .postprocess import split_bodies

    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 4 or p.shape[0] < 2:
        raise ValueError(f"assign_levels needs (levels + 1) x D x H x W probabilities, got shape {p.shape}")
    levels = p.shape[0] - 1
    flags = ["oblique_axis"] if oblique else []
    argmax = p.argmax(0)
    labels = np.zeros(argmax.shape, dtype=np.uint8)
    box = bounding_box(argmax > 0, margin=1)
    if box is None:
        return LevelAssignment(labels, flags + [f"missing:L{k}" for k in range(1, levels + 1)] + ["bodies:0"])
    parts, n = split_bodies(argmax[box] > 0, spacing, erosion_mm)
    index = np.arange(1, n + 1)
    flat = parts.ravel()
    mass = np.stack([np.bincount(flat, weights=p[k][box].ravel(), minlength=n + 1)[1:]
                     for k in range(levels + 1)], axis=1)
    fused = np.full_like(mass, np.nan)
    for k in range(1, levels):
        pair = mass[:, k] + mass[:, k + 1]
        ok = (mass[:, k] >= fused_share * pair) & (mass[:, k + 1] >= fused_share * pair)
        if ok.any():
            best_of_two = np.bincount(flat, weights=np.maximum(p[k][box], p[k + 1][box]).ravel(),
                                      minlength=n + 1)[1:]
            fused[ok, k] = best_of_two[ok]
    centre = np.array([c[axis] for c in ndimage.center_of_mass(parts > 0, parts, index)])
    order = np.argsort(centre * caudal_sign)                     # head to feet
    chosen = ordered_labelling(mass[order], fused[order])

    volume = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    body = volume >= min_body_fraction * float(np.median(np.sort(volume)[::-1][:levels]))
    level_of = np.zeros(n + 1, dtype=np.int64)
    sub = labels[box]
    used, first, last = set(), None, None
    for rank, (piece, levels_here) in enumerate(zip(order + 1, chosen)):
        used.update(levels_here)
        if not levels_here:
            continue
        first = rank if first is None else first
        last = rank
        if len(levels_here) == 1:
            level_of[piece] = levels_here[0]
        else:
            k = levels_here[0]
            inside = parts == piece
            sub[inside] = np.where(p[k + 1][box][inside] > p[k][box][inside], k + 1, k)
    assigned = level_of[parts]
    sub[assigned > 0] = assigned[assigned > 0]
    flags += [f"missing:L{k}" for k in range(1, levels + 1) if k not in used]
    dropped = [rank for rank, levels_here in enumerate(chosen) if not levels_here and body[order[rank]]]
    if last is not None and any(rank > last for rank in dropped):
        flags.append("dropped_below")
    if first is not None and any(rank < first for rank in dropped):
        flags.append("dropped_above")
    if any(len(c) == 2 for c in chosen):
        flags.append("split")
    if int(body.sum()) != levels:
        flags.append(f"bodies:{int(body.sum())}")
    return LevelAssignment(labels, flags, [tuple(c) for c in chosen])
