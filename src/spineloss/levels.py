"""Vertebral levels from both sources of evidence: the network's per-voxel level probabilities and the
anatomy (levels ordered head to feet, one body each).

A network that predicts the levels (L1..L5 = 1..5) voxel by voxel can label one body with two levels,
give two bodies the same level, or take T12 for L1; counting bodies from the sacrum
(:mod:`spineloss.postprocess`) fixes the last but cannot tell a fused pair from a missing level.
:func:`assign_levels` combines them:

1. **Bodies.** The foreground (``p_0 < 0.5``: more likely a body than background, whichever level; the
   arg-max alone loses the voxels where neighbouring levels share a body's probability and the
   background wins with less than half of it) is split into pieces as in
   :func:`spineloss.postprocess.split_bodies` (erosion seeds, nearest-seed growth). Pieces side by side
   at one height (each one's centroid within the other's head-feet extent) are one body. Bodies of at
   least ``min_body_fraction`` of the median of the ``L`` largest take part; smaller pieces are
   fragments and take the label of the nearest body afterwards. Bodies are ordered along the
   cranio-caudal axis read from the affine.
2. **Evidence.** For body ``b`` and label ``k`` (0 = background) the probability mass
   ``M[b, k] = sum_{v in b} p_k(v)``.
3. **Ordered labelling** (exact dynamic programme over the bodies, head to feet, state = the last level
   used): each body is background (gain ``M[b, 0]``), one level ``k`` above the last one used (gain
   ``M[b, k]``), or, when it holds at least ``fused_volume`` median bodies (two bodies fused through a
   disc), two consecutive levels ``k, k+1`` cut by the plane across the head-feet axis that maximises
   ``sum_{above} p_k + sum_{below} p_{k+1}`` (each part body-size). Levels strictly increase towards the
   feet and each is used at most once. An anatomical prior costs half a median body's mass for each
   body left unlabelled and each level skipped between neighbouring bodies (one typical spacing
   apart): a body between L1 and L3 is L2 unless its probabilities insist otherwise, and bodies whose
   level probabilities are spread out are labelled by their order. The result: the maximum-probability
   labelling under the anatomy.
4. **Flags.** What breaks an assumption is reported, never relabelled silently: ``missing:L5`` (a
   level with less than a quarter of a median body written), ``dropped_above`` (a body cranial to the
   first level: T12), ``dropped_below`` (caudal to the last: a segmented S1 or a transitional L6),
   ``dropped_between``, ``split`` (a body took two levels), ``bodies:<n>`` (bodies found, a split one
   counted twice, when not ``L``), ``oversized_body`` (a body of at least ``fused_volume`` median
   bodies, or 1.5 times as tall as the median body (:func:`spineloss.postprocess.tall_bodies`), took
   one level: two bodies fused through a disc that the probabilities did not split, so the levels
   above or below it may be shifted by one), ``skipped_level`` (neighbouring bodies one typical spacing apart
   whose levels jump: a shift, not a missing body), ``count_disagrees`` (counting the bodies up from
   the most caudal one would label them otherwise) and ``oblique_axis`` (no clear head-feet axis).

Limits: a network that shifts every level by one and misses the most caudal body (T12 called L1, ...,
L4 called L5, no L5 segmented) gives an ordered, complete labelling that counting agrees with: nothing
in the label map can tell, so it is not flagged.

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


def ordered_labelling(mass: np.ndarray, fused: np.ndarray | None = None, adjacent: Sequence[bool] | None = None,
                      anatomy_cost: float = 0.0) -> list[tuple[int, ...]]:
    """The best ordered labelling of ``n`` pieces (rows, head to feet) with levels ``1..L``.

    ``mass``: ``n x (L + 1)`` gains, column 0 background. ``fused``: ``n x (L + 1)``, ``fused[b, k]``
    the gain of giving piece ``b`` the levels ``k`` and ``k + 1`` (NaN: not allowed). Returns, per
    piece, ``()`` (background), ``(k,)`` or ``(k, k + 1)``; levels strictly increase down the rows.

    The anatomical prior (``anatomy_cost`` > 0, in the units of ``mass``): the pieces are bodies, so each
    one left as background costs ``anatomy_cost`` (a T12 or an S1 is still dropped when there are more
    bodies than levels, or when its background mass outweighs the cost), and so does every level skipped
    between two labelled pieces that are neighbours (``adjacent[i]``: pieces ``i`` and ``i + 1`` lie one
    typical spacing apart), since no body lies between them. Where the level probabilities say little
    (spread over the levels), the order alone labels the bodies, as counting would.
    Exact dynamic programme over the last level used and whether the previous piece was labelled,
    ``O(n L^2)``.
    """
    mass = np.asarray(mass, dtype=np.float64)
    n, width = mass.shape
    levels = width - 1
    if fused is None:
        fused = np.full_like(mass, np.nan)
    near = [False] * max(n - 1, 0) if adjacent is None else [bool(a) for a in adjacent]
    neg = -np.inf
    # score[i][(j, d)]: best over pieces < i whose last level is j; d = 1 when piece i - 1 was left unlabelled
    score: list[dict[tuple[int, int], float]] = [dict() for _ in range(n + 1)]
    score[0][(0, 0)] = 0.0
    back: dict[tuple[int, int, int], tuple[tuple[int, int], tuple[int, ...]]] = {}
    for i in range(n):
        for (j, d), before in score[i].items():
            options = [((), (j, 1), mass[i, 0] - anatomy_cost)]                  # a body left unlabelled
            for k in range(j + 1, levels + 1):
                moves = [((k,), k, mass[i, k])]
                if k < levels and np.isfinite(fused[i, k]):
                    moves.append(((k, k + 1), k + 1, fused[i, k]))
                for chosen, state, gain in moves:
                    skipped = chosen[0] - j - 1 if j and d == 0 and i > 0 and near[i - 1] else 0
                    options.append((chosen, (state, 0), gain - anatomy_cost * skipped))   # levels skipped next door
            for chosen, state, gain in options:
                total = before + gain
                if total > score[i + 1].get(state, neg) + 1e-12:
                    score[i + 1][state] = total
                    back[(i + 1,) + state] = ((j, d), chosen)
    state = max(score[n], key=lambda s: score[n][s])
    out: list[tuple[int, ...]] = []
    for i in range(n, 0, -1):
        prev, chosen = back[(i,) + state]
        out.append(chosen)
        state = prev
    return out[::-1]


def assign_levels(probabilities: np.ndarray, axis: int, caudal_sign: int, spacing: Sequence[float],
                  erosion_mm: float = 2.0, min_body_fraction: float = 0.5, fused_volume: float = 1.5,
                  oblique: bool = False, anatomy_weight: float = 0.5) -> LevelAssignment:
    """Label the vertebral bodies of ``probabilities`` (``(L + 1) x D x H x W`` softmax) with levels ``1..L``.

    Args:
        axis, caudal_sign: the cranio-caudal voxel axis and +1/-1 for the feet
            (:func:`spineloss.postprocess.craniocaudal_axis`).
        spacing: voxel size in mm.
        erosion_mm: erosion radius of the split into pieces.
        min_body_fraction: bodies are pieces (or pieces side by side at one height) of at least this
            fraction of the median volume of the ``L`` largest; smaller ones are fragments, which take
            the label of the nearest body.
        fused_volume: a body may take two consecutive levels, cut by a plane across the head-feet
            axis, when it holds at least this many median bodies (two bodies fused through a disc).
        oblique: the caller found no clear head-feet axis (adds the ``oblique_axis`` flag).
        anatomy_weight: the anatomical prior of :func:`ordered_labelling`, in median bodies: a body left
            unlabelled, or a level skipped between neighbouring bodies, costs this
            fraction of a median body's probability mass (default 0.5; 0: the probabilities alone).
    Returns:
        :class:`LevelAssignment` (see the module docstring for the method and the flags).
    """
    from .postprocess import split_bodies, tall_bodies

    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 4 or p.shape[0] < 2:
        raise ValueError(f"assign_levels needs (levels + 1) x D x H x W probabilities, got shape {p.shape}")
    levels = p.shape[0] - 1
    flags = ["oblique_axis"] if oblique else []
    foreground = p[0] < 0.5
    labels = np.zeros(foreground.shape, dtype=np.uint8)
    box = bounding_box(foreground, margin=1)
    if box is None:
        return LevelAssignment(labels, flags + [f"missing:L{k}" for k in range(1, levels + 1)] + ["bodies:0"])
    pb = p[(slice(None),) + box]
    parts, n = split_bodies(foreground[box], spacing, erosion_mm)
    groups = _bodies_at_one_height(parts, n, axis)                 # piece -> body id (side-by-side halves join)
    n_groups = int(groups.max())
    body_of = groups[parts]                                        # voxel -> body id (0: background)
    flat = body_of.ravel()
    volume = np.bincount(flat, minlength=n_groups + 1)[1:].astype(np.float64)
    reference = float(np.median(np.sort(volume)[::-1][:levels]))
    is_body = volume >= min_body_fraction * reference
    ids = np.flatnonzero(is_body) + 1
    mass = np.stack([np.bincount(flat, weights=pb[k].ravel(), minlength=n_groups + 1)[ids]
                     for k in range(levels + 1)], axis=1)
    position = np.array([c[axis] for c in ndimage.center_of_mass(body_of > 0, body_of, ids)]) * caudal_sign
    order = np.argsort(position)                                   # head to feet
    ids, mass, position = ids[order], mass[order], position[order]
    fused = np.full_like(mass, np.nan)
    cuts: dict[tuple[int, int], int] = {}
    for row, body in enumerate(ids):
        if volume[body - 1] >= fused_volume * reference:
            for k in range(1, levels):
                cut = _best_cut(body_of == body, pb[k], pb[k + 1], axis, caudal_sign,
                                min_body_fraction * reference)
                if cut is not None:
                    fused[row, k], cuts[(row, k)] = cut[1], cut[0]
    steps = np.diff(position)
    adjacent = steps <= 1.5 * float(np.median(steps)) if steps.size else steps.astype(bool)
    chosen = ordered_labelling(mass, fused, adjacent, anatomy_weight * reference)

    sub = labels[box]
    is_body_voxel = np.isin(body_of, ids)
    for row, (body, levels_here) in enumerate(zip(ids, chosen)):
        inside = body_of == body
        if len(levels_here) == 1:
            sub[inside] = levels_here[0]
        elif len(levels_here) == 2:
            k = levels_here[0]
            coord = np.indices(inside.shape)[axis] * caudal_sign
            sub[inside & (coord < cuts[(row, k)] * caudal_sign)] = k
            sub[inside & (coord >= cuts[(row, k)] * caudal_sign)] = k + 1
    fragments = (body_of > 0) & ~is_body_voxel
    if fragments.any():                                            # the label of the nearest body (or none)
        nearest = ndimage.distance_transform_edt(~is_body_voxel, sampling=spacing, return_distances=False,
                                                    return_indices=True)
        sub[fragments] = sub[tuple(idx[fragments] for idx in nearest)]
    flags += _flags(sub, chosen, position, levels, min_body_fraction * reference / 2)
    tall = set(tall_bodies(body_of, ids, axis))
    if any(len(c) == 1 and (volume[body - 1] >= fused_volume * reference or body in tall)
           for body, c in zip(ids, chosen)):
        flags.append("oversized_body")                             # one level on what may be two bodies
    flags += _count_check(chosen, levels)
    return LevelAssignment(labels, flags, [tuple(c) for c in chosen])


def _bodies_at_one_height(parts: np.ndarray, n: int, axis: int) -> np.ndarray:
    """``groups[piece]``: pieces lying side by side at one height (each one's centroid within the
    other's head-feet extent, as the two halves of one body cut by a gap) share a body id; adjacent
    bodies, one above the other, never do. ``groups[0] = 0``."""
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    index = np.arange(1, n + 1)
    centre = np.array([c[axis] for c in ndimage.center_of_mass(parts > 0, parts, index)])
    extent = [(sl[axis].start, sl[axis].stop - 1) for sl in ndimage.find_objects(parts)]
    parent = list(range(n + 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if extent[j][0] <= centre[i] <= extent[j][1] and extent[i][0] <= centre[j] <= extent[i][1]:
                parent[root(i + 1)] = root(j + 1)
    roots = sorted({root(i) for i in index})
    renumber = {r: g + 1 for g, r in enumerate(roots)}
    return np.array([0] + [renumber[root(i)] for i in index], dtype=np.int64)


def _best_cut(inside: np.ndarray, p_upper: np.ndarray, p_lower: np.ndarray, axis: int, caudal_sign: int,
              min_volume: float) -> tuple[int, float] | None:
    """The plane across ``axis`` that best splits a body into an upper level (head side, ``p_upper``) and
    a lower one: ``(first index of the lower part, gain)``, each part at least ``min_volume`` voxels,
    or ``None``. Gain: the upper level's probability summed above the cut plus the lower one's below."""
    other = tuple(a for a in range(inside.ndim) if a != axis)
    up = (p_upper * inside).sum(axis=other)
    low = (p_lower * inside).sum(axis=other)
    count = inside.sum(axis=other).astype(np.float64)
    if caudal_sign < 0:                                            # walk from the head end
        up, low, count = up[::-1], low[::-1], count[::-1]
    above_up = np.concatenate([[0.0], np.cumsum(up)])              # slices [0, c) are the upper part
    below_low = np.concatenate([[0.0], np.cumsum(low[::-1])])[::-1]
    above_count = np.concatenate([[0.0], np.cumsum(count)])
    gain = above_up + below_low
    ok = (above_count >= min_volume) & (above_count[-1] - above_count >= min_volume)
    if not ok.any():
        return None
    c = int(np.argmax(np.where(ok, gain, -np.inf)))
    index = c if caudal_sign > 0 else len(count) - c               # back to array indices
    return index, float(gain[c])


def _flags(labels: np.ndarray, chosen: list[tuple[int, ...]], position: np.ndarray, levels: int,
           min_volume: float) -> list[str]:
    """What the labelling had to assume (module docstring): from the labels written and the choices."""
    out = []
    written = np.bincount(labels.ravel(), minlength=levels + 1)
    out += [f"missing:L{k}" for k in range(1, levels + 1) if written[k] < min_volume]
    labelled = [row for row, c in enumerate(chosen) if c]
    dropped = [row for row, c in enumerate(chosen) if not c]
    if labelled:
        if any(row > labelled[-1] for row in dropped):
            out.append("dropped_below")
        if any(row < labelled[0] for row in dropped):
            out.append("dropped_above")
        if any(labelled[0] < row < labelled[-1] for row in dropped):
            out.append("dropped_between")
    if any(len(c) == 2 for c in chosen):
        out.append("split")
    units = sum(max(1, len(c)) for c in chosen)
    if units != levels:
        out.append(f"bodies:{units}")
    spacing = np.diff(position[labelled]) if len(labelled) > 1 else np.zeros(0)
    if spacing.size:
        typical = float(np.median(spacing))
        for (a, b), gap in zip(zip(labelled, labelled[1:]), spacing):
            if chosen[b][0] - chosen[a][-1] > 1 and gap <= 1.5 * typical:
                out.append("skipped_level")                        # a level jumped between neighbours
                break
    return out


def _count_check(chosen: list[tuple[int, ...]], levels: int) -> list[str]:
    """``count_disagrees`` when counting the bodies up from the most caudal one (L5, L4, ...) would have
    labelled any of the ``levels`` most caudal bodies differently (a shift, or an extra body below)."""
    units = [lev for c in chosen for lev in (c if c else (0,))]    # head to feet, a split body counts twice
    counted = units[::-1][:levels]
    expected = list(range(levels, levels - len(counted), -1))
    return ["count_disagrees"] if len(units) >= levels and counted != expected else []
