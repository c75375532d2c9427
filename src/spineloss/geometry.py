"""Geometry helpers shared by the losses, the metrics and the post-processing.

One place for the small checks and conversions that several modules need about the voxel grid, so they
accept the same inputs and fail with the same, clear messages:

* :func:`check_spacing`: a voxel spacing (mm per array axis) as a tuple of positive finite floats;
* :func:`batch_spacing`: one such spacing per batch item, from one shared spacing or ``B`` rows;
* :func:`bounding_box`: the box (one slice per axis) around the non-zero voxels of a mask or label map.

Keep this a plain module of small functions with no dependency on the rest of the package (it is imported
by :mod:`spineloss.losses`, :mod:`spineloss.metrics` and the post-processing alike).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["batch_spacing", "bounding_box", "check_spacing"]


def check_spacing(value: Any, ndim: int = 3, owner: str = "") -> tuple[float, ...]:
    """``value`` as ``ndim`` positive finite floats: the voxel spacing in mm, one per array axis.

    Accepts any 1-D sequence of numbers (tuple, list, numpy array, CPU or GPU tensor). A single number is
    *not* a spacing here: callers that allow an isotropic shorthand expand it before calling.

    Raises:
        ValueError: naming ``owner`` (e.g. ``"hausdorff loss"``) and the offending value, and saying what is
            expected, when ``value`` is not a sequence of ``ndim`` positive finite numbers.
    """
    if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim < 1:
        raise ValueError(f"check_spacing: ndim must be a positive integer, got {ndim!r}")
    where = f"{owner}: " if owner else ""
    axes = " (axes D, H, W)" if ndim == 3 else ""
    want = f"{ndim} positive finite numbers in mm, one per spatial axis{axes}"
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{where}spacing must be {want}, got the string {value!r}")
    try:
        sp = tuple(float(v) for v in value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where}spacing must be {want}, got {value!r}") from exc
    if len(sp) != ndim:
        raise ValueError(f"{where}spacing must be {want}, got {len(sp)} value(s): {value!r}")
    if not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"{where}spacing must be {want}, got {value!r}")
    return sp


def bounding_box(mask: Any, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel of ``mask``, as one slice per axis; None if there is none.

    ``mask`` may be boolean or a label map (every non-zero value counts), of any number of axes and any
    memory layout. ``margin`` (voxels, one number or one per axis, >= 0) widens the box on each side,
    clipped at the array border. ``array[bounding_box(array)]`` is then the cropped array.

    Raises:
        ValueError: for a 0-d (scalar) ``mask`` or a negative / non-integer ``margin``.
    """
    a = np.asarray(mask)
    if a.ndim == 0:
        raise ValueError(f"bounding_box needs an array with at least one axis, got a scalar {mask!r}")
    try:
        m = np.broadcast_to(np.asarray(margin), (a.ndim,))
    except ValueError as exc:
        raise ValueError(f"bounding_box: margin must be one number or one per axis ({a.ndim}), "
                         f"got {margin!r}") from exc
    if m.dtype.kind not in "iu" or bool((m < 0).any()):
        raise ValueError(f"bounding_box: margin must be whole numbers of voxels >= 0, got {margin!r}")
    if a.size == 0:
        return None
    nonzero = a if a.dtype == np.bool_ else a != 0
    box = []
    for ax in range(a.ndim):
        other = tuple(i for i in range(a.ndim) if i != ax)
        hit = np.flatnonzero(nonzero.any(axis=other) if other else nonzero)
        if hit.size == 0:
            return None
        lo, hi, pad, n = int(hit[0]), int(hit[-1]) + 1, int(m[ax]), a.shape[ax]
        box.append(slice(max(lo - pad, 0), min(hi + pad, n)))
    return tuple(box)


def batch_spacing(spacing: Any, batch: int, ndim: int = 3, owner: str = "") -> list[tuple[float, ...]]:
    """One spacing per batch item (:func:`check_spacing` each): ``spacing`` is one spacing shared by the
    batch (``ndim`` numbers) or ``batch`` rows of them (a ``B x ndim`` array, list or tensor)."""
    if hasattr(spacing, "detach"):  # a torch tensor, possibly on the GPU
        spacing = spacing.detach().cpu().double().numpy()
    try:
        depth = np.ndim(spacing)
    except ValueError:  # ragged nesting
        depth = -1
    where = f"{owner}: " if owner else ""
    if depth == 2:
        rows = list(spacing)
        if len(rows) != batch:
            raise ValueError(f"{where}per-sample spacing must have one row per batch item ({batch}), "
                             f"got {len(rows)} rows")
        return [check_spacing(row, ndim, f"{owner} (spacing of batch item {b})") for b, row in enumerate(rows)]
    return [check_spacing(spacing, ndim, owner)] * batch
