"""Post-processing of a predicted spine label map: count the vertebral bodies from the caudal end.

A network that segments "the lumbar bodies" must tell L1 from T12, which look alike; the one reliable
landmark is the sacrum, below L5 (radiologists number lumbar levels from it; Glocker et al. 2012,
"Automatic localization and identification of vertebrae in arbitrary field-of-view CT scans",
MICCAI; Sekuboyina et al. 2021, "VerSe: a vertebrae labelling and segmentation benchmark", Med.
Image Anal.). With few training scans a network instead learns where L1 usually sits below the
field of view's head end and segments T12 as well in a scan that shows more thoracic spine.

:func:`keep_caudal_bodies` repairs that after prediction:

1. **Split** the foreground into bodies: erode it by ``erosion_mm`` (a thin bridge across a disc
   disappears), label the 6-connected components of what is left as seeds, and give every
   foreground voxel the seed nearest to it (Euclidean, in mm) within its own connected piece of
   foreground -- a seeded split like a distance-based watershed.
2. **Bodies** are the pieces of at least ``min_body_fraction`` (half) of the median volume of the
   ``n_bodies`` largest ones; smaller pieces are fragments.
3. **Order** the bodies along the cranio-caudal axis (centroids; :func:`craniocaudal_axis` reads the
   axis from the affine) and keep the ``n_bodies`` most caudal ones. Everything cranial to them
   becomes background: the extra bodies, and fragments beyond the midpoint between the last kept and
   the first dropped body (with exactly ``n_bodies`` bodies: beyond half a body spacing above the
   last kept one -- a partly segmented T12). With fewer bodies nothing is removed.
4. **Multiclass** (``relabel=True``): when at least ``n_bodies`` bodies were found, the kept ones
   are numbered upwards from the caudal end, so the most caudal is label ``n_bodies`` (L5) and the
   next ``n_bodies - 1`` ..., each body one label (fragments take the label of the nearest body).
   With fewer bodies (two fused that could not be split, or one missed) a map that carries the
   network's own levels keeps them; a foreground map (one label) has its bodies numbered from the
   caudal end as far as they go.

Two bodies fused through a disc that the network took for bone are split first: the largest piece
is split while there are fewer than ``n_bodies`` body-size pieces or it holds at least
``merged_factor`` times the median volume of the next largest ones, at its narrowest waist
(erosion), or else across its long axis where its section is smallest.

It assumes that the most caudal labelled body of every scan is in the field of view and segmented
(true for L1-L5 masks of lumbar MRI that include the sacrum) and that the network does not segment
the sacrum; where there are no more bodies than expected it leaves the prediction as it is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .geometry import bounding_box

__all__ = ["PostprocessConfig", "craniocaudal_axis", "axis_obliqueness", "split_bodies", "keep_caudal_bodies"]


@dataclass(frozen=True)
class PostprocessConfig:
    """What happens to a label map after prediction (``[postprocess]`` of a config; stored with the model).

    Args:
        caudal_bodies: keep this many vertebral bodies, counted from the caudal end
            (:func:`keep_caudal_bodies`; 5 for L1-L5); 0 turns the step off.
        number_levels: also number the kept bodies from the caudal end (multiclass maps whose label
            ``k`` is the ``k``-th level from the head end, like L1..L5 = 1..5; ``caudal_bodies``
            must then equal the number of foreground labels).
        levels: ``"probabilities"``: assign the levels from the network's per-voxel level
            probabilities in anatomical order (:func:`spineloss.levels.assign_levels`; a network that
            predicts the levels; instead of counting, so ``caudal_bodies`` stays 0); ``"none"``: off.

    Whatever breaks an assumption (bodies missing or extra, a piece split, an oblique head-feet axis)
    is returned as flags by :meth:`apply_with_flags`, which the experiment writes to ``cases.csv``
    and logs as a warning naming the case.
    """

    caudal_bodies: int = 0
    number_levels: bool = False
    levels: str = "none"

    def __post_init__(self) -> None:
        n = self.caudal_bodies
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"postprocess.caudal_bodies must be an integer >= 0 (0: off), got {n!r}")
        object.__setattr__(self, "caudal_bodies", int(n))
        if not isinstance(self.number_levels, (bool, np.bool_)):
            raise ValueError(f"postprocess.number_levels must be true or false, got {self.number_levels!r}")
        object.__setattr__(self, "number_levels", bool(self.number_levels))
        if self.number_levels and not self.caudal_bodies:
            raise ValueError("postprocess.number_levels needs postprocess.caudal_bodies (how many levels to number)")
        if self.levels not in ("none", "probabilities"):
            raise ValueError(f"postprocess.levels must be 'none' or 'probabilities', got {self.levels!r}")
        if self.levels == "probabilities" and self.caudal_bodies:
            raise ValueError("postprocess.levels = 'probabilities' assigns the levels itself: leave "
                             "caudal_bodies and number_levels out (they count bodies instead)")

    @property
    def active(self) -> bool:
        return self.caudal_bodies > 0 or self.needs_probabilities

    @property
    def needs_probabilities(self) -> bool:
        """Whether :meth:`apply` needs the network's per-voxel probabilities."""
        return self.levels == "probabilities"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PostprocessConfig":
        return cls(**(d or {}))

    def check_labels(self, foreground_labels: int, where: str = "the config") -> None:
        """Raise unless numbering fits a label set with ``foreground_labels`` levels."""
        if self.number_levels and self.caudal_bodies != foreground_labels:
            raise ValueError(f"postprocess.number_levels numbers {self.caudal_bodies} levels, but {where} has "
                             f"{foreground_labels} foreground labels; set caudal_bodies = {foreground_labels}")

    def apply(self, label_map: np.ndarray, affine, spacing: Sequence[float],
              probabilities: np.ndarray | None = None) -> np.ndarray:
        """``label_map`` (on the grid of ``affine`` with voxel size ``spacing``) post-processed."""
        return self.apply_with_flags(label_map, affine, spacing, probabilities)[0]

    def apply_with_flags(self, label_map: np.ndarray, affine, spacing: Sequence[float],
                         probabilities: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """``(post-processed label map, flags)``; ``probabilities`` (``C x D x H x W`` softmax on the
        same grid) are needed with ``levels = "probabilities"``. Flags: see :mod:`spineloss.levels`
        and :func:`keep_caudal_bodies`; ``oblique_axis`` when the head-feet axis is unclear."""
        if not self.active:
            return label_map, []
        axis, sign = craniocaudal_axis(affine)
        flags = ["oblique_axis"] if axis_obliqueness(affine) > OBLIQUE_LIMIT else []
        if self.needs_probabilities:
            if probabilities is None or probabilities.shape[1:] != label_map.shape:
                raise ValueError("postprocess.levels = 'probabilities' needs the network's probabilities on the "
                                 "label map's grid (a network that predicts the levels)")
            from .levels import assign_levels
            result = assign_levels(probabilities, axis, sign, spacing)
            return result.labels, flags + result.flags
        if self.number_levels and int(label_map.max(initial=0)) > self.caudal_bodies:
            raise ValueError(f"postprocess.number_levels numbers {self.caudal_bodies} levels, but the prediction "
                             f"has label {int(label_map.max())}: the model and its post-processing do not match")
        out = keep_caudal_bodies(label_map, self.caudal_bodies, axis, sign, spacing, relabel=self.number_levels,
                                 flags=flags)
        return out, flags


#: An affine whose head-feet voxel axis is more than ~37 degrees off world z is "oblique" (flagged).
OBLIQUE_LIMIT = 0.2


def axis_obliqueness(affine) -> float:
    """``1 - |cos|`` of the angle between the cranio-caudal voxel axis (:func:`craniocaudal_axis`) and
    world z: 0 for an axial stack, 1 for no head-feet component at all."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    axis, _ = craniocaudal_axis(affine)
    column = a[:, axis]
    norm = float(np.linalg.norm(column))
    return 1.0 - abs(float(column[2])) / norm if norm > 0 else 1.0


def craniocaudal_axis(affine: np.ndarray | Sequence[Sequence[float]]) -> tuple[int, int]:
    """``(axis, caudal_sign)`` of a voxel grid from its NIfTI (RAS+) affine.

    ``axis`` is the voxel axis whose direction (the affine's column, normalised by the voxel size, so
    thick slices do not outweigh thin ones) has the largest superior-inferior (world z) component;
    ``caudal_sign`` is +1 when increasing the index along it moves towards the feet, -1 when it moves
    towards the head.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape not in ((4, 4), (3, 4), (3, 3)):
        raise ValueError(f"craniocaudal_axis needs a 4 x 4, 3 x 4 or 3 x 3 affine, got shape {a.shape}")
    z = a[2, :3]
    if not np.any(z):
        raise ValueError("the affine has no superior-inferior component: cannot tell head from feet")
    norms = np.linalg.norm(a[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(z) / np.where(norms > 0, norms, np.inf)))
    return axis, (1 if z[axis] < 0 else -1)


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray | None:
    radius = np.floor(radius_mm / spacing).astype(int)
    if radius_mm <= 0 or radius.max() == 0:
        return None
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    return sum((g * s) ** 2 for g, s in zip(grid, spacing)) <= radius_mm ** 2 + 1e-9


def split_bodies(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 erosion_mm: float = 2.0) -> tuple[np.ndarray, int]:
    """Split a foreground ``mask`` into touching objects; returns ``(labels int32, count)``.

    Per 26-connected piece of the mask: the seeds are the 6-connected components of the piece
    eroded by a ball of radius ``erosion_mm`` (physical, so anisotropic voxels erode equally in mm),
    and every voxel of the piece takes the label of its nearest seed (Euclidean, in mm) among the
    piece's own seeds; a piece without a seed (thinner than the erosion) is one object.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"split_bodies expects a 3D mask, got shape {mask.shape}")
    spacing = np.asarray(spacing, dtype=np.float64)
    pieces, n_pieces = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    out = np.zeros(mask.shape, dtype=np.int32)
    ball = _ball(erosion_mm, spacing)
    count = 0
    for k, box in enumerate(ndimage.find_objects(pieces), start=1):
        piece = pieces[box] == k
        eroded = piece if ball is None else ndimage.binary_erosion(piece, structure=ball)  # outside: background
        seeds, n_seeds = ndimage.label(eroded)
        if n_seeds <= 1:
            out[box][piece] = count + 1
            count += 1
            continue
        nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_distances=False,
                                                    return_indices=True)
        out[box][piece] = count + seeds[tuple(idx[piece] for idx in nearest)]
        count += n_seeds
    return out, count


def keep_caudal_bodies(label_map: np.ndarray, n_bodies: int = 5, axis: int = 0, caudal_sign: int = 1,
                       spacing: Sequence[float] = (1.0, 1.0, 1.0), relabel: bool = False,
                       erosion_mm: float = 2.0, min_body_fraction: float = 0.5,
                       merged_factor: float = 1.6, flags: list[str] | None = None) -> np.ndarray:
    """Keep the ``n_bodies`` most caudal vertebral bodies of ``label_map`` (see the module docstring).

    Args:
        label_map: ``D x H x W`` integer map, 0 = background (binary or levels ``1..n_bodies``).
        n_bodies: how many bodies the label set has (5 for L1-L5).
        axis, caudal_sign: the cranio-caudal voxel axis and +1/-1 for the direction of the feet
            (:func:`craniocaudal_axis`).
        spacing: voxel size in mm.
        relabel: number the kept bodies ``n_bodies, n_bodies - 1, ...`` from the caudal end
            (multiclass label maps whose label ``k`` is the ``k``-th body from the head end).
        erosion_mm: erosion radius of the first split (:func:`split_bodies`).
        min_body_fraction: pieces of at least this fraction of the median volume of the
            ``n_bodies`` largest pieces are bodies, smaller ones fragments.
        merged_factor: a piece this many times the median of the next largest ones is taken for
            two fused bodies and split.
        flags: a list to append what breaks an assumption to: ``bodies:<n>`` when the number of
            body-size pieces is not ``n_bodies`` (fewer: nothing removed, and with ``relabel`` the
            bodies are numbered from the caudal end as far as they go, or the network's own levels
            kept), ``split`` when fused bodies were split, ``oversized_body`` when a kept body is
            at least :data:`TALL_FACTOR` times as tall as the median one (:func:`tall_bodies`: two
            levels in one piece that could not be split, so the count may be one off: with T12 in
            view and L4 and L5 in one piece, T12 is counted as L1 and nothing else would tell), and
            ``partial_top_body`` when the most cranial body kept holds less than :data:`PARTIAL_TOP`
            of the median body (a half-segmented T12 counted as L1 while L5 was missed: five bodies,
            in order, and the count one level off).
    Returns:
        a new label map of the same shape and dtype.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"keep_caudal_bodies expects a 3D label map, got shape {label_map.shape}")
    if n_bodies < 1:
        raise ValueError(f"n_bodies must be >= 1, got {n_bodies}")
    if axis not in (0, 1, 2) or caudal_sign not in (1, -1):
        raise ValueError(f"axis must be 0, 1 or 2 and caudal_sign +1 or -1; got {axis}, {caudal_sign}")
    spacing = np.asarray(spacing, dtype=np.float64)
    out = label_map.copy()
    foreground = label_map > 0
    if not foreground.any():
        if flags is not None:
            flags.append("bodies:0")
        return out
    # work inside the foreground's bounding box (plus one voxel)
    box = bounding_box(foreground, margin=1)
    parts, n = split_bodies(foreground[box], spacing, erosion_mm)
    n_before = n
    n = _split_merged_bodies(parts, n, n_bodies, spacing, erosion_mm, merged_factor)
    index = np.arange(1, n + 1)
    volume = _volumes(parts, n)
    reference = float(np.median(np.sort(volume)[::-1][:n_bodies]))
    is_body = volume >= min_body_fraction * reference
    found = int(is_body.sum())
    if flags is not None:
        flags += (["split"] if n > n_before else []) + ([f"bodies:{found}"] if found != n_bodies else [])
    offset = box[axis].start
    position = (np.array([c[axis] for c in ndimage.center_of_mass(parts > 0, parts, index)]) + offset) \
        * spacing[axis] * caudal_sign                              # mm, growing towards the feet
    bodies = index[is_body][np.argsort(-position[is_body])]       # caudal first
    kept, dropped = bodies[:n_bodies], bodies[n_bodies:]          # with fewer bodies: all of them
    if flags is not None and tall_bodies(parts, kept, axis):
        flags.append("oversized_body")
    if flags is not None and found >= n_bodies and volume[kept[-1] - 1] < PARTIAL_TOP * reference:
        flags.append("partial_top_body")
    has_levels = int(label_map.max()) > 1           # the network's own levels, the fallback when counting fails
    if found < n_bodies and (not relabel or has_levels):
        return out
    remove = np.zeros(n + 1, dtype=bool)
    if found >= n_bodies:
        pos = dict(zip(index, position))
        if len(dropped):                                          # between the last kept and the first dropped
            cut = 0.5 * (pos[kept[-1]] + pos[dropped[0]])
        else:                                                     # half a body spacing above the last kept
            cut = pos[kept[-1]] - 0.5 * float(np.median(-np.diff([pos[b] for b in kept])))
        remove[dropped] = True
        remove[index[~is_body][position[~is_body] < cut]] = True   # fragments cranial to the cut
    sub = out[box]
    sub[remove[parts]] = 0
    if relabel:
        level = np.zeros(n + 1, dtype=np.int64)
        level[kept] = np.arange(n_bodies, n_bodies - len(kept), -1)
        keep_mask = (parts > 0) & ~remove[parts]
        owner = np.where(np.isin(parts, kept), parts, 0)
        stray = keep_mask & (owner == 0)
        if stray.any():                                           # fragments: the level of the nearest kept body
            nearest = ndimage.distance_transform_edt(owner == 0, sampling=spacing, return_distances=False,
                                                        return_indices=True)
            owner[stray] = owner[tuple(idx[stray] for idx in nearest)]
        sub[keep_mask] = level[owner[keep_mask]].astype(out.dtype)
    return out


#: A body at least this many times as tall (along the head-feet axis) as the median body is taken for two.
TALL_FACTOR = 1.5
#: The most cranial body kept, smaller than this fraction of the median body, is flagged: L1 is the
#: smallest lumbar body but holds about 0.8-0.9 of the median one, so a smaller top body is more likely a
#: T12 that the network half-segmented (and counting took for L1, with L5 missed) than an L1.
PARTIAL_TOP = 0.7


def tall_bodies(parts: np.ndarray, ids: Sequence[int], axis: int, factor: float = TALL_FACTOR) -> list[int]:
    """The ids among ``ids`` (labels of ``parts``) at least ``factor`` times as tall along ``axis`` as the
    median of ``ids``: two bodies (or a body and a piece of sacrum) taken for one. A lumbar body is about
    as tall as its neighbours (L1 to L5 differ by a few millimetres), so one and a half times the height
    means two levels in one piece, and every level above or below it may be numbered one off.

    Height: the span between the 5th and the 95th percentile of the piece's voxels along ``axis``, so a
    thin bridge or a few stray voxels do not count. Empty with fewer than three bodies (no reliable
    median)."""
    ids = [int(i) for i in ids]
    if len(ids) < 3:
        return []
    rows = np.moveaxis(parts, axis, 0).reshape(parts.shape[axis], -1)
    height = {}
    for i in ids:
        along = (rows == i).sum(axis=1).cumsum()
        if along[-1] == 0:
            continue
        low, high = np.searchsorted(along, [0.05 * along[-1], 0.95 * along[-1]])
        height[i] = float(high - low + 1)
    if len(height) < 3:
        return []
    typical = float(np.median(list(height.values())))
    return [i for i, h in height.items() if h >= factor * typical]


def _volumes(parts: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(parts.ravel(), minlength=n + 1)[1:n + 1].astype(np.float64)


def _split_merged_bodies(parts: np.ndarray, n: int, n_bodies: int, spacing: np.ndarray, erosion_mm: float,
                         merged_factor: float) -> int:
    """Split (in place) pieces that hold two bodies joined across a disc; returns the new count.

    Repeatedly: the largest piece not yet tried is taken for two bodies when there are fewer than
    ``n_bodies`` pieces of body size (a quarter of its volume or more: the scan shows at least
    ``n_bodies`` bodies), or when its volume is at least ``merged_factor`` times the median of the
    (up to ``n_bodies``) next largest body-size pieces; it is split at its narrowest waist
    (:func:`_split_by_erosion`, else :func:`_split_across_axis`; a convex body has none and stays
    whole). Stops when the largest piece looks like one body.
    """
    tried: set[int] = set()
    for _ in range(2 * n_bodies):
        volume = _volumes(parts, n)
        order = [int(i) + 1 for i in np.argsort(volume)[::-1] if int(i) + 1 not in tried]
        if not order:
            break
        largest = order[0]
        v = volume[largest - 1]
        body_sized = volume >= 0.25 * v
        others = np.sort(volume[body_sized & (volume < v)])[::-1][:n_bodies]
        too_few = int(body_sized.sum()) < n_bodies                 # there are at least n_bodies bodies
        too_big = len(others) >= 2 and v >= merged_factor * float(np.median(others))
        if not (too_few or too_big):
            break
        new_n = _split_by_erosion(parts, largest, n, spacing, erosion_mm)
        if new_n == n:
            new_n = _split_across_axis(parts, largest, n, spacing)
        if new_n == n:
            tried.add(largest)
        n = new_n
    return n


def _split_by_erosion(parts: np.ndarray, piece: int, n: int, spacing: np.ndarray, start_mm: float,
                      max_mm: float = 10.0, step_mm: float = 1.0, min_seed_fraction: float = 0.2) -> int:
    """Split piece ``piece`` of ``parts`` (in place) where it is thinnest; returns the new count.

    The piece is eroded by growing radii (``start_mm + step_mm`` .. ``max_mm``, through its distance
    transform) until at least two of the cores left hold ``min_seed_fraction`` of the largest core's
    volume; its voxels then go to the nearest core. Bodies are thicker than the bridge a disc predicted
    as foreground leaves between them, so the bridge goes first. Unsplittable pieces stay as they are.
    """
    box = bounding_box(parts == piece, margin=1)
    mask = parts[box] == piece
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    radius = start_mm + step_mm
    while radius <= max_mm:
        cores, k = ndimage.label(depth > radius)
        if k >= 2:
            size = np.bincount(cores.ravel(), minlength=k + 1)[1:]
            big = np.nonzero(size >= min_seed_fraction * size.max())[0] + 1
            if len(big) >= 2:
                seeds = np.where(np.isin(cores, big), cores, 0)
                nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_distances=False,
                                                            return_indices=True)
                owner = seeds[tuple(idx[mask] for idx in nearest)]
                remap = np.zeros(k + 1, dtype=np.int32)
                remap[big] = [piece] + list(range(n + 1, n + len(big)))
                parts[box][mask] = remap[owner]
                return n + len(big) - 1
        radius += step_mm
    return n


def _split_across_axis(parts: np.ndarray, piece: int, n: int, spacing: np.ndarray,
                       middle: tuple[float, float] = (0.25, 0.75), max_dip: float = 0.9,
                       smooth_mm: float = 3.0) -> int:
    """Cut piece ``piece`` (in place) by the plane across its long axis where its section is smallest.

    Two bodies fused through a disc predicted as bone are longer along the spine than across it:
    the long axis is the first principal axis of the voxel positions (in mm). The section profile
    along it (bins of one voxel's extent along the axis, so that along a grid axis each bin holds
    one row of voxels, never none or two; then a moving average over ``smooth_mm``) is cut at its
    least value between the ``middle`` fractions of the cumulative volume (the disc, not the end
    plates), provided that is a waist: at most ``max_dip`` times the largest section on either
    side. A single body, convex, has no such waist and stays whole. Returns the new count.
    """
    box = bounding_box(parts == piece, margin=1)
    mask = parts[box] == piece
    positions = np.nonzero(mask)
    coords = np.stack(positions, axis=1) * spacing
    if len(coords) < 8:
        return n
    centred = coords - coords.mean(0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    t = centred @ vt[0]
    width = float(np.abs(vt[0]) @ spacing)                        # one voxel's extent along the axis
    bins = np.floor((t - t.min()) / width + 0.5).astype(np.int64)  # + 0.5: rows on bin centres, not edges
    counts = np.bincount(bins)
    cumulative = np.cumsum(counts) / len(t)
    k = max(1, int(round(smooth_mm / width)))
    profile = np.convolve(counts, np.ones(k) / k, mode="same") if k > 1 else counts.astype(np.float64)
    lo, hi = int(np.searchsorted(cumulative, middle[0])), int(np.searchsorted(cumulative, middle[1]))
    if hi - lo < 2:
        return n
    cut = lo + 1 + int(np.argmin(profile[lo + 1:hi]))
    if profile[cut] > max_dip * min(profile[lo:cut].max(), profile[cut + 1:hi + 1].max()):
        return n
    parts[box][tuple(p[bins > cut] for p in positions)] = n + 1
    return n + 1
