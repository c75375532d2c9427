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
2. **Bodies** are the pieces of at least ``min_body_fraction`` of the median volume of the
   ``n_bodies`` largest ones; smaller pieces are fragments.
3. **Order** the bodies along the cranio-caudal axis (centroids; :func:`craniocaudal_axis` reads the
   axis from the affine) and keep the ``n_bodies`` most caudal ones. Everything cranial to them (the
   extra bodies and fragments beyond the midpoint between the last kept and the first dropped body)
   becomes background. With ``n_bodies`` or fewer bodies nothing is removed.
4. **Multiclass** (``relabel=True``): when at least ``n_bodies`` bodies were found, the kept ones
   are numbered upwards from the caudal end, so the most caudal is label ``n_bodies`` (L5) and the
   next ``n_bodies - 1`` ..., each body one label (fragments take the label of the nearest body).
   With fewer bodies (two fused that could not be split, or one missed) a map that carries the
   network's own levels keeps them; a foreground map (one label) has its bodies numbered from the
   caudal end as far as they go.

Two bodies fused through a disc that the network took for bone are split first: the largest piece
is split while it holds at least ``merged_factor`` times the median volume of the next largest ones,
at its narrowest waist (erosion), or else across its long axis where its section is smallest.

It assumes that the most caudal labelled body of every scan is in the field of view and segmented
(true for L1-L5 masks of lumbar MRI that include the sacrum) and that the network does not segment
the sacrum; where there are no more bodies than expected it leaves the prediction as it is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["PostprocessConfig", "craniocaudal_axis", "split_bodies", "keep_caudal_bodies"]


@dataclass(frozen=True)
class PostprocessConfig:
    """What happens to a label map after prediction (``[postprocess]`` of a config; stored with the model).

    Args:
        caudal_bodies: keep this many vertebral bodies, counted from the caudal end
            (:func:`keep_caudal_bodies`; 5 for L1-L5); 0 turns the step off.
        number_levels: also number the kept bodies from the caudal end (multiclass maps whose label
            ``k`` is the ``k``-th level from the head end, like L1..L5 = 1..5).
    """

    caudal_bodies: int = 0
    number_levels: bool = False

    def __post_init__(self) -> None:
        if int(self.caudal_bodies) != self.caudal_bodies or self.caudal_bodies < 0:
            raise ValueError(f"postprocess.caudal_bodies must be an integer >= 0, got {self.caudal_bodies!r}")
        object.__setattr__(self, "caudal_bodies", int(self.caudal_bodies))
        if self.number_levels and not self.caudal_bodies:
            raise ValueError("postprocess.number_levels needs postprocess.caudal_bodies (how many levels to number)")

    @property
    def active(self) -> bool:
        return self.caudal_bodies > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PostprocessConfig":
        return cls(**(d or {}))

    def apply(self, label_map: np.ndarray, affine, spacing: Sequence[float]) -> np.ndarray:
        """``label_map`` (on the grid of ``affine`` with voxel size ``spacing``) post-processed."""
        if not self.active:
            return label_map
        if self.number_levels and int(label_map.max(initial=0)) > self.caudal_bodies:
            raise ValueError(f"postprocess.number_levels numbers {self.caudal_bodies} levels, but the label map "
                             f"has label {int(label_map.max())}; set caudal_bodies to the number of levels")
        axis, sign = craniocaudal_axis(affine)
        return keep_caudal_bodies(label_map, self.caudal_bodies, axis, sign, spacing, relabel=self.number_levels)


def craniocaudal_axis(affine: np.ndarray | Sequence[Sequence[float]]) -> tuple[int, int]:
    """``(axis, caudal_sign)`` of a voxel grid from its NIfTI (RAS+) affine.

    ``axis`` is the voxel axis whose direction has the largest superior-inferior (world z)
    component; ``caudal_sign`` is +1 when increasing the index along it moves towards the feet, -1
    when it moves towards the head.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape not in ((4, 4), (3, 4), (3, 3)):
        raise ValueError(f"craniocaudal_axis needs a 4 x 4 (or 3 x 3) affine, got shape {a.shape}")
    z = a[2, :3]
    if not np.any(z):
        raise ValueError("the affine has no superior-inferior component: cannot tell head from feet")
    axis = int(np.argmax(np.abs(z)))
    return axis, (1 if z[axis] < 0 else -1)


def split_bodies(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 erosion_mm: float = 2.0) -> tuple[np.ndarray, int]:
    """Split a foreground ``mask`` into touching objects; returns ``(labels int32, count)``.

    Seeds: 6-connected components of the mask eroded by a ball of radius ``erosion_mm`` (physical,
    so anisotropic voxels erode equally in mm). Every mask voxel takes the label of its nearest
    seed voxel in the same 26-connected piece of the mask; a piece without a seed (thinner than the
    erosion) keeps a label of its own.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"split_bodies expects a 3D mask, got shape {mask.shape}")
    spacing = np.asarray(spacing, dtype=np.float64)
    pieces, n_pieces = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n_pieces == 0:
        return pieces.astype(np.int32), 0
    radius = np.floor(erosion_mm / spacing).astype(int)
    if erosion_mm > 0 and radius.max() > 0:
        grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
        ball = sum((g * s) ** 2 for g, s in zip(grid, spacing)) <= erosion_mm ** 2 + 1e-9
        eroded = ndimage.binary_erosion(mask, structure=ball)
    else:
        eroded = mask
    seeds, n_seeds = ndimage.label(eroded)
    out = np.zeros(mask.shape, dtype=np.int32)
    if n_seeds:
        _, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
        out[mask] = seeds[tuple(idx[mask] for idx in nearest)]
        # a seed is only valid inside its own piece: voxels whose nearest seed lies in another piece
        seed_piece = np.zeros(n_seeds + 1, dtype=np.int64)
        seed_piece[seeds[eroded]] = pieces[eroded]
        out[mask & (seed_piece[out] != pieces)] = 0
    # pieces (or parts of them) without a seed of their own: one label per piece
    rest = mask & (out == 0)
    if rest.any():
        rest_pieces = np.unique(pieces[rest])
        remap = np.zeros(n_pieces + 1, dtype=np.int32)
        remap[rest_pieces] = np.arange(n_seeds + 1, n_seeds + 1 + len(rest_pieces), dtype=np.int32)
        out[rest] = remap[pieces[rest]]
        n_seeds += len(rest_pieces)
    return out, int(n_seeds)


def keep_caudal_bodies(label_map: np.ndarray, n_bodies: int = 5, axis: int = 0, caudal_sign: int = 1,
                       spacing: Sequence[float] = (1.0, 1.0, 1.0), relabel: bool = False,
                       erosion_mm: float = 2.0, min_body_fraction: float = 0.3,
                       merged_factor: float = 1.6) -> np.ndarray:
    """Keep the ``n_bodies`` most caudal vertebral bodies of ``label_map`` (see the module docstring).

    Args:
        label_map: ``D x H x W`` integer map, 0 = background (binary or levels ``1..n_bodies``).
        n_bodies: how many bodies the label set has (5 for L1-L5).
        axis, caudal_sign: the cranio-caudal voxel axis and +1/-1 for the direction of the feet
            (:func:`craniocaudal_axis`).
        spacing: voxel size in mm.
        relabel: number the kept bodies ``n_bodies, n_bodies - 1, ...`` from the caudal end
            (multiclass label maps whose label ``k`` is the ``k``-th body from the head end).
        erosion_mm, min_body_fraction, merged_factor: see :func:`split_bodies` and the module
            docstring.
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
    out = label_map.copy()
    parts, n = split_bodies(label_map > 0, spacing, erosion_mm)
    if n == 0:
        return out
    n = _split_merged_bodies(parts, n, n_bodies, spacing, erosion_mm, merged_factor)
    index = np.arange(1, n + 1)
    volume = _volumes(parts, n)
    reference = float(np.median(np.sort(volume)[::-1][:n_bodies]))
    is_body = volume >= min_body_fraction * reference
    found = int(is_body.sum())
    has_levels = int(label_map.max()) > 1           # the network's own levels, the fallback when counting fails
    if (found < n_bodies and (not relabel or has_levels)) or (found == n_bodies and not relabel):
        return out
    position = np.array([c[axis] for c in ndimage.center_of_mass(parts > 0, parts, index)]) * caudal_sign
    bodies = index[is_body][np.argsort(-position[is_body])]       # caudal first
    kept, dropped = bodies[:n_bodies], bodies[n_bodies:]
    remove = np.zeros(n + 1, dtype=bool)
    if len(dropped):
        pos = dict(zip(index, position))
        cut = 0.5 * (pos[kept[-1]] + pos[dropped[0]])              # between the last kept and the first dropped
        remove[dropped] = True
        remove[index[~is_body][position[~is_body] < cut]] = True   # fragments cranial to the cut
    out[remove[parts]] = 0
    if relabel:
        level = np.zeros(n + 1, dtype=np.int64)
        level[kept] = np.arange(n_bodies, n_bodies - len(kept), -1)
        keep_mask = (parts > 0) & ~remove[parts]
        # fragments: the level of the nearest kept body
        body_map = np.where(np.isin(parts, kept), parts, 0)
        _, nearest = ndimage.distance_transform_edt(body_map == 0, sampling=spacing, return_indices=True)
        owner = body_map[tuple(idx[keep_mask] for idx in nearest)]
        out[keep_mask] = level[owner].astype(out.dtype)
    return out


def _volumes(parts: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(parts.ravel(), minlength=n + 1)[1:n + 1].astype(np.float64)


def _split_merged_bodies(parts: np.ndarray, n: int, n_bodies: int, spacing: Sequence[float], erosion_mm: float,
                         merged_factor: float) -> int:
    """Split (in place) pieces that hold two bodies joined across a disc; returns the new count.

    Repeatedly: the largest piece is taken for two bodies when its volume is at least
    ``merged_factor`` times the median of the other large pieces (the up to ``n_bodies`` next
    largest); it is split at its narrowest waist (:func:`_split_by_erosion`, else
    :func:`_split_across_axis`). Stops when the largest piece looks like one body or cannot be split.
    """
    tried: set[int] = set()
    for _ in range(2 * n_bodies):
        volume = _volumes(parts, n)
        order = [int(i) for i in np.argsort(volume)[::-1] if int(i) + 1 not in tried]
        if len(order) < 2:
            break
        largest = order[0] + 1
        others = np.sort(volume)[::-1]
        others = others[others < volume[largest - 1]][:n_bodies] if len(others) > 1 else others
        if not len(others) or volume[largest - 1] < merged_factor * float(np.median(others)):
            break
        new_n = _split_by_erosion(parts, largest, n, spacing, erosion_mm)
        if new_n == n:
            new_n = _split_across_axis(parts, largest, n, spacing)
        if new_n == n:
            tried.add(largest)
        n = new_n
    return n


def _piece_box(parts: np.ndarray, piece: int) -> tuple[slice, ...]:
    box = ndimage.find_objects((parts == piece).astype(np.int8))[0]
    return tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)


def _split_by_erosion(parts: np.ndarray, piece: int, n: int, spacing: Sequence[float], start_mm: float,
                      max_mm: float = 10.0, step_mm: float = 1.0, min_seed_fraction: float = 0.2) -> int:
    """Split piece ``piece`` of ``parts`` (in place) where it is thinnest; returns the new count.

    The piece is eroded by growing radii (``start_mm + step_mm`` .. ``max_mm``, through its distance
    transform) until at least two of the cores left hold ``min_seed_fraction`` of the largest core's
    volume; its voxels then go to the nearest core. Bodies are thicker than the bridge a disc predicted
    as foreground leaves between them, so the bridge goes first. Unsplittable pieces stay as they are.
    """
    box = _piece_box(parts, piece)
    mask = parts[box] == piece
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    radius = start_mm + step_mm
    while radius <= max_mm:
        cores, k = ndimage.label(depth > radius)
        if k >= 2:
            size = np.bincount(cores.ravel(), minlength=k + 1)[1:]
            big = np.nonzero(size >= min_seed_fraction * size.max())[0] + 1
            if len(big) >= 2:
                seeds = np.where(np.isin(cores, big), cores, 0)
                _, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
                owner = seeds[tuple(idx[mask] for idx in nearest)]
                remap = np.zeros(k + 1, dtype=np.int32)
                remap[big] = [piece] + list(range(n + 1, n + len(big)))
                sub = parts[box]
                sub[mask] = remap[owner]
                return n + len(big) - 1
        radius += step_mm
    return n


def _split_across_axis(parts: np.ndarray, piece: int, n: int, spacing: Sequence[float],
                       middle: tuple[float, float] = (0.25, 0.75), max_dip: float = 0.9) -> int:
    """Cut piece ``piece`` (in place) by the plane across its long axis where its section is smallest.

    Two bodies fused through a disc predicted as bone are longer along the spine than across it:
    the long axis is the first principal axis of the voxel positions (in mm); the piece is cut
    perpendicular to it at the 1 mm bin of least volume among those between the ``middle``
    fractions of the cumulative volume (the disc, not the end plates), provided that bin is a waist:
    at most ``max_dip`` times the largest section on either side of it. A single body, convex, has
    no such waist and stays whole. Returns the new count.
    """
    box = _piece_box(parts, piece)
    mask = parts[box] == piece
    coords = np.stack(np.nonzero(mask), axis=1) * np.asarray(spacing, dtype=np.float64)
    if len(coords) < 8:
        return n
    centred = coords - coords.mean(0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    t = centred @ vt[0]
    bins = np.floor(t - t.min()).astype(np.int64)
    profile = np.bincount(bins)
    cumulative = np.cumsum(profile) / len(t)
    lo, hi = np.searchsorted(cumulative, middle[0]), np.searchsorted(cumulative, middle[1])
    if hi <= lo:
        return n
    cut = lo + int(np.argmin(profile[lo:hi + 1]))
    if cut in (lo, hi) or profile[cut] > max_dip * min(profile[lo:cut].max(), profile[cut + 1:hi + 1].max()):
        return n
    sub = parts[box]
    positions = np.nonzero(mask)
    sub[tuple(p[bins > cut] for p in positions)] = n + 1
    return n + 1
