"""Signed Euclidean distance maps of label maps, exact and fast (the ``edt`` package), spacing-aware.

The convention (what the data pipeline hands to the distance losses as ``dist_map``)
-----------------------------------------------------------------------------------
For a class mask ``G`` (voxels of class ``c``) on a grid with spacing ``s = (s_D, s_H, s_W)`` mm, and
``|x - y|_s`` the Euclidean distance between voxel centres in mm::

    phi(x) = + min_{y in G}     |x - y|_s     for x outside G   (distance to the nearest voxel of the class)
    phi(x) = - min_{y not in G} |x - y|_s     for x inside G    (minus the distance to the nearest voxel
                                                                 outside the class)

Only voxels of the volume count: the image border is not a boundary (``edt``'s ``black_border=False``).
Hence ``|phi| >= min(s)`` everywhere and no voxel is at 0: with unit spacing ``phi`` jumps from -1 (the
innermost boundary layer) to +1 (the outermost); the zero level set lies half-way between voxel centres.
An empty class (no voxel) and a full class (every voxel) have no boundary and get ``phi = 0`` everywhere,
the convention of MONAI and of Kervadec's reference code.

* ``|phi|`` is exactly MONAI's ``HausdorffDTLoss`` distance field ``edt(G) + edt(~G)`` (with spacing), so the
  Hausdorff loss uses ``|phi|^alpha``.
* Kervadec et al.'s reference ``one_hot2dist`` (and MONAI's ``BoundaryLoss``) use ``phi + 1`` inside the
  mask (``-(edt(G) - 1)``); the boundary loss adds that offset itself (``inside_offset``), so both distance
  losses read the same map.

Speed: an integer label map is a partition, so one multi-label EDT pass gives every voxel its distance to
the nearest voxel of another label, i.e. the inside distance of its own class for all classes at once; the
outside distance of each class is one binary EDT of the whole volume (it cannot be cropped exactly). A
class that is empty or full costs nothing. For masks that are not a partition (soft targets, sigmoid
outputs), the inside distance is computed on the bounding box of the mask grown by one voxel, which is exact
(the nearest outside voxel of an inside voxel is never farther than the box's shell).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["prediction_signed_maps", "signed_distance_maps", "signed_distance_maps_torch"]


def _edt(data: np.ndarray, spacing: Sequence[float], parallel: int) -> np.ndarray:
    import edt  # imported here: keeps `import spineloss.losses` light

    return edt.edt(np.ascontiguousarray(data), anisotropy=tuple(float(s) for s in spacing),
                   black_border=False, parallel=max(1, int(parallel)))


def _label_dtype(n_labels: int) -> np.dtype:
    if n_labels < 2**8:
        return np.dtype(np.uint8)
    if n_labels < 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def _maps_from_partition(part: np.ndarray, values: Sequence[int], spacing: Sequence[float],
                         parallel: int) -> np.ndarray:
    """Signed maps of the masks ``part == v`` for each ``v`` in ``values``.

    ``part`` is an unsigned label array in which every voxel has exactly one value; the value 0 means "no
    class" (it is a boundary for every class and never asked for).
    """
    out = np.zeros((len(values),) + part.shape, dtype=np.float32)
    n = part.size
    counts = np.bincount(part.reshape(-1), minlength=int(max(values, default=0)) + 1)
    todo = [i for i, v in enumerate(values) if 0 < counts[v] < n]
    if not todo:
        return out
    inside = _edt(part, spacing, parallel)  # distance to the nearest voxel with another value
    for i in todo:
        not_v = part != values[i]
        outside = _edt(not_v.view(np.uint8), spacing, parallel)  # distance to the nearest voxel of v
        np.copyto(out[i], outside)
        np.negative(inside, out=outside)  # reuse the buffer
        np.copyto(out[i], outside, where=~not_v)
    return out


def _bbox_slices(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    sl = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(int(idx[0]) - margin, 0)
        hi = min(int(idx[-1]) + margin + 1, mask.shape[axis])
        sl.append(slice(lo, hi))
    return tuple(sl)


def _map_from_mask(mask: np.ndarray, spacing: Sequence[float], parallel: int) -> np.ndarray:
    """Signed map of one boolean mask (the general path; crops the inside transform to the mask's box)."""
    out = np.zeros(mask.shape, dtype=np.float32)
    n_in = int(np.count_nonzero(mask))
    if n_in == 0 or n_in == mask.size:
        return out
    outside = _edt((~mask).view(np.uint8), spacing, parallel)
    box = _bbox_slices(mask)
    inside = _edt(np.ascontiguousarray(mask[box]).view(np.uint8), spacing, parallel)
    out[...] = outside
    out[box] -= inside  # inside is 0 off the mask, outside is 0 on it
    return out


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise ValueError(f"spacing must be a sequence of {ndim} positive numbers (mm), got {spacing!r}") from exc
    if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (mm, one per spatial axis), "
                         f"got {spacing!r}")
    return sp


def _check_classes(classes: Sequence[int] | None, num_classes: int) -> list[int]:
    if classes is None:
        return list(range(num_classes))
    cls = [int(c) for c in classes]
    bad = [c for c in cls if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} out of range for num_classes = {num_classes}")
    return cls


def signed_distance_maps(label: np.ndarray, num_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                         classes: Sequence[int] | None = None, parallel: int = 1) -> np.ndarray:
    """Signed Euclidean distance map (mm) of each class of one sample, ``C x D x H x W`` float32.

    Args:
        label: an integer label map ``D x H x W`` with values in ``[0, num_classes)`` (``{0, 1}`` when
            ``num_classes == 1``, whose single channel is then the foreground ``label == 1``), or a one-hot /
            soft target ``num_classes x D x H x W`` (thresholded at 0.5).
        num_classes: C, the number of output channels of the model.
        spacing: voxel size in mm along the three axes of ``label`` (default ``(1, 1, 1)``).
        classes: compute only these channels (others are left out of the result); default all.
        parallel: threads for ``edt`` (1 in data-loader workers, which are already parallel).

    Returns:
        ``phi`` with the convention of this module: negative inside the class, positive outside, ``|phi|``
        the distance in mm to the nearest voxel on the other side; 0 everywhere for an empty or full class.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    label = np.asarray(label)
    cls = _check_classes(classes, num_classes)
    if label.dtype.kind not in "biuf":
        raise ValueError(f"label dtype {label.dtype} is not supported (integer, bool or float expected)")
    if label.ndim not in (3, 4) or label.size == 0:
        raise ValueError(f"label must be a D x H x W label map or a C x D x H x W one-hot/soft target, "
                         f"got shape {label.shape}")
    sp = _check_spacing(spacing, 3)
    if label.ndim == 3 and num_classes == 1:
        label = label[None]  # binary: a 0/1 map or a probability map, foreground = value > 0.5
    if label.ndim == 3:  # integer label map of a multi-class problem
        if label.dtype.kind == "f" and not _is_integral(label):
            raise ValueError("a D x H x W float label map must hold whole numbers; pass soft targets as "
                             "C x D x H x W")
        lo, hi = label.min(), label.max()
        if lo < 0 or hi > num_classes - 1:
            raise ValueError(f"label values must be in [0, {num_classes - 1}] for num_classes = {num_classes}, "
                             f"found values in [{lo}, {hi}]")
        part = (label.astype(np.int64) + 1).astype(_label_dtype(num_classes + 1))
        return _maps_from_partition(part, [c + 1 for c in cls], sp, parallel)
    if label.shape[0] != num_classes:
        raise ValueError(f"a one-hot/soft target must have num_classes = {num_classes} channels, "
                         f"got shape {label.shape}")
    lo, hi = label.min(), label.max()
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise ValueError(f"a one-hot/soft/binary target must hold values in [0, 1], found [{lo}, {hi}]")
    masks = label > 0.5
    if num_classes > 1 and bool(np.all(masks.sum(axis=0) == 1)):  # one-hot: a partition
        part = (np.argmax(masks, axis=0) + 1).astype(_label_dtype(num_classes + 1))
        return _maps_from_partition(part, [c + 1 for c in cls], sp, parallel)
    out = np.zeros((len(cls),) + label.shape[1:], dtype=np.float32)
    for i, c in enumerate(cls):
        out[i] = _map_from_mask(masks[c], sp, parallel)
    return out


def _is_integral(a: np.ndarray) -> bool:
    return bool(np.all(np.mod(a, 1) == 0))


def signed_distance_maps_torch(target: Tensor, num_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                               classes: Sequence[int] | None = None, parallel: int | None = None) -> Tensor:
    """Batch version of :func:`signed_distance_maps`: ``B x C' x D x H x W`` float32 on ``target``'s device.

    ``target``: label maps ``B x D x H x W`` or ``B x 1 x D x H x W`` (integer), or one-hot/soft targets
    ``B x C x D x H x W``. ``parallel`` defaults to ``torch.get_num_threads()``. Used by the distance losses
    when no ``dist_map`` comes with the batch.
    """
    threads = torch.get_num_threads() if parallel is None else int(parallel)
    t = target.detach()
    if t.ndim == 5 and t.shape[1] == 1 and (num_classes > 1 or not t.is_floating_point()):
        t = t[:, 0]
    arr = t.cpu().numpy()
    maps = [signed_distance_maps(arr[b], num_classes, spacing, classes, threads) for b in range(arr.shape[0])]
    return torch.from_numpy(np.stack(maps)).to(target.device)


def prediction_signed_maps(probs: Tensor, activation: str, classes: Sequence[int],
                           spacing: Sequence[float] = (1.0, 1.0, 1.0), parallel: int | None = None) -> Tensor:
    """Signed maps ``B x C' x ...`` of the thresholded prediction ``probs > 0.5`` (as MONAI's Hausdorff loss).

    With a softmax the masks are disjoint, so they form a partition with a "no class" value and share one
    multi-label EDT pass; with sigmoids each channel is its own mask.
    """
    threads = torch.get_num_threads() if parallel is None else int(parallel)
    sp = _check_spacing(spacing, probs.ndim - 2)
    B, C = probs.shape[:2]
    cls = _check_classes(classes, C)
    out = np.zeros((B, len(cls)) + tuple(probs.shape[2:]), dtype=np.float32)
    if activation == "softmax":
        pmax, idx = probs.max(dim=1)
        part = torch.where(pmax > 0.5, idx + 1, torch.zeros_like(idx))
        part_np = part.cpu().numpy().astype(_label_dtype(C + 1))
        for b in range(B):
            out[b] = _maps_from_partition(part_np[b], [c + 1 for c in cls], sp, threads)
    else:
        masks = (probs[:, cls] > 0.5).cpu().numpy()
        for b in range(B):
            for i in range(len(cls)):
                out[b, i] = _map_from_mask(masks[b, i], sp, threads)
    return torch.from_numpy(out).to(probs.device)
