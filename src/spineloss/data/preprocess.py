"""Preprocessing: resampling, intensity normalisation, padding, their exact inverse, and an on-disk cache.

Forward, per case (image ``C x D x H x W``, label ``D x H x W``):

1. **Resample** to ``target_spacing`` (mm) when given: images trilinear; labels by trilinear
   interpolation of each label's indicator and the arg-max (like nnU-Net's linear resampling of
   segmentations, Isensee et al. 2021; ties by nearest neighbour), on the same voxel-centre grid as
   the image. Nearest-neighbour sampling would shift a label half an original voxel against the
   image when the grid is halved (it picks one of the two voxels a coarse voxel covers): a perfect
   2 mm lumbar label map scored 0.940 back at 1 mm that way, 0.951 this way. The new shape is ``round(shape * spacing / target_spacing)``; the field of view is kept, so the
   effective spacing is ``spacing * shape / new_shape`` (within half a voxel of the target).
2. **Normalise** each channel: clip to its ``[p_low, p_high]`` percentiles (0.5 / 99.5 by default),
   then z-score ``(x - mean) / std`` of the clipped values (Isensee et al. 2021, nnU-Net's MRI scheme,
   with the percentile clipping of the study). A constant channel becomes zeros.
3. **Pad** (in :func:`pad_to_multiple`, used by the loader and by inference) each spatial axis at its
   end to a multiple of the network's divisor.

Inverse (:func:`restore_to_original`): crop the padding, resample probabilities/logits trilinearly to
the original shape and take the arg-max, so a prediction lands on the original voxel grid. At the same
spacing (no resampling) the round trip of a label map is exact.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PreprocessConfig", "CaseGeometry", "normalize_intensity", "resample_image", "resample_label",
    "preprocess_case", "pad_to_multiple", "crop_padding", "restore_to_original", "restore_probabilities", "PreprocessCache",
]


_PREPROCESS_VERSION = 3  # 3: indicator interpolation, ties by nearest neighbour; 2: ties to background; 1: nearest


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the forward transform; stored with every model so prediction repeats it.

    Args:
        target_spacing: voxel size in mm to resample to, or ``None`` to keep each case's grid.
        clip_percentiles: lower and upper percentile for intensity clipping before the z-score.
    """

    target_spacing: tuple[float, float, float] | None = None
    clip_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.target_spacing is not None:
            ts = tuple(float(s) for s in self.target_spacing)
            if len(ts) != 3 or min(ts) <= 0:
                raise ValueError(f"target_spacing must be 3 positive numbers (mm), got {self.target_spacing}")
            object.__setattr__(self, "target_spacing", ts)
        lo, hi = (float(p) for p in self.clip_percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")
        object.__setattr__(self, "clip_percentiles", (lo, hi))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        ts = d.get("target_spacing")
        return cls(target_spacing=tuple(ts) if ts is not None else None,
                   clip_percentiles=tuple(d.get("clip_percentiles", (0.5, 99.5))))

    def key(self) -> str:
        """A short hash of the settings and of the preprocessing's version, used to key the cache."""
        blob = json.dumps({**self.to_dict(), "version": _PREPROCESS_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class CaseGeometry:
    """Everything needed to map a prediction back to the case's original voxel grid."""

    original_shape: tuple[int, int, int]
    original_spacing: tuple[float, float, float]
    original_affine: list[list[float]]
    resampled_shape: tuple[int, int, int]
    resampled_spacing: tuple[float, float, float]
    pad: tuple[int, int, int] = field(default=(0, 0, 0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CaseGeometry":
        return cls(original_shape=tuple(d["original_shape"]),
                   original_spacing=tuple(d["original_spacing"]),
                   original_affine=[list(map(float, r)) for r in d["original_affine"]],
                   resampled_shape=tuple(d["resampled_shape"]),
                   resampled_spacing=tuple(d["resampled_spacing"]),
                   pad=tuple(d.get("pad", (0, 0, 0))))


def normalize_intensity(image: np.ndarray, clip_percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Per channel: clip to the given percentiles, then z-score. ``image`` is ``C x D x H x W``.

    ``x' = (clip(x, q_lo, q_hi) - mu) / sigma`` with ``mu, sigma`` the mean and standard deviation of
    the clipped channel; ``sigma < 1e-8`` (a constant channel) gives zeros.
    """
    if image.ndim != 4:
        raise ValueError(f"normalize_intensity expects C x D x H x W, got shape {image.shape}")
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        channel = image[c].astype(np.float32, copy=False)
        lo, hi = np.percentile(channel, clip_percentiles)
        clipped = np.clip(channel, lo, hi)
        mean, std = float(clipped.mean(dtype=np.float64)), float(clipped.std(dtype=np.float64))
        out[c] = (clipped - mean) / std if std > 1e-8 else 0.0
    return out


def _resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                     target: Sequence[float] | None) -> tuple[int, int, int]:
    if target is None:
        return tuple(int(s) for s in shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample_image(image: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Trilinear resampling of a ``C x D x H x W`` array to ``new_shape`` (field of view kept)."""
    if tuple(image.shape[1:]) == tuple(new_shape):
        return image.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return F.interpolate(t, size=tuple(new_shape), mode="trilinear", align_corners=False)[0].numpy()


def resample_label(label: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Resample a ``D x H x W`` label map: each label's indicator trilinearly, then the arg-max.

    ``out(x) = argmax_k interp(1[label == k])(x)`` with the image's grid convention (voxel centres,
    ``align_corners=False``), so image and labels stay aligned. Ties (a coarse voxel exactly half
    covered, frequent when a grid is halved) take the nearest-neighbour label, which keeps volumes
    unbiased: on the lumbar masks at 2 mm, ties to background shrank the foreground by 3 %, ties to
    the label grew it by 5 %, this rule changes it by 1 %. One label at a time, so memory stays at a
    few volumes whatever the number of labels.
    """
    if tuple(label.shape) == tuple(new_shape):
        return label
    label = np.ascontiguousarray(label)
    values = np.unique(label)
    t = torch.from_numpy(label.astype(np.int64))
    nearest = F.interpolate(t[None, None].float(), size=tuple(new_shape), mode="nearest-exact")[0, 0].long()
    best = torch.full(tuple(new_shape), -1.0)
    out = torch.zeros(tuple(new_shape), dtype=torch.int64)
    for v in values:
        share = F.interpolate((t == int(v)).float()[None, None], size=tuple(new_shape), mode="trilinear",
                              align_corners=False)[0, 0]
        better = (share > best) | ((share == best) & (nearest == int(v)))
        best = torch.where(better, share, best)
        out[better] = int(v)
    return out.numpy().astype(label.dtype)


def preprocess_case(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray,
                    config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray | None, CaseGeometry]:
    """Resample and normalise one case. Returns ``(image C x d x h x w float32, label or None, geometry)``."""
    if image.ndim != 4:
        raise ValueError(f"preprocess_case expects the image as C x D x H x W, got {image.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    shape = tuple(int(s) for s in image.shape[1:])
    if label is not None and tuple(label.shape) != shape:
        raise ValueError(f"image shape {shape} and label shape {tuple(label.shape)} differ")
    new_shape = _resampled_shape(shape, spacing, config.target_spacing)
    new_spacing = tuple(s * n / m for s, n, m in zip(spacing, shape, new_shape))
    # normalise before resampling: percentiles of the acquired voxels, not of interpolated ones
    image = resample_image(normalize_intensity(image, config.clip_percentiles), new_shape)
    if label is not None:
        label = resample_label(label, new_shape)
    geometry = CaseGeometry(original_shape=shape, original_spacing=spacing,
                            original_affine=affine.tolist(), resampled_shape=new_shape,
                            resampled_spacing=new_spacing)
    return image, label, geometry


def pad_to_multiple(array: np.ndarray | torch.Tensor, divisor: int,
                    min_shape: Sequence[int] | None = None, value: float = 0.0):
    """Pad the last three axes at their end to multiples of ``divisor`` (and at least ``min_shape``).

    Returns ``(padded, pad)`` with ``pad`` the voxels added per axis; :func:`crop_padding` undoes it.
    """
    spatial = array.shape[-3:]
    target = [int(np.ceil(max(s, m) / divisor) * divisor)
              for s, m in zip(spatial, min_shape or (0, 0, 0))]
    pad = tuple(t - s for t, s in zip(target, spatial))
    if not any(pad):
        return array, pad
    if isinstance(array, torch.Tensor):
        return F.pad(array, (0, pad[2], 0, pad[1], 0, pad[0]), value=value), pad
    widths = [(0, 0)] * (array.ndim - 3) + [(0, p) for p in pad]
    return np.pad(array, widths, mode="constant", constant_values=value), pad


def crop_padding(array, pad: Sequence[int]):
    """Remove what :func:`pad_to_multiple` added (works for numpy arrays and tensors)."""
    d, h, w = array.shape[-3:]
    return array[..., : d - pad[0], : h - pad[1], : w - pad[2]]


def restore_to_original(scores: torch.Tensor, geometry: CaseGeometry) -> np.ndarray:
    """Map network output on the preprocessed grid back to the original grid as a label map.

    Args:
        scores: ``C x d x h x w`` logits or probabilities on the (padded) preprocessed grid; with
            ``C == 1`` a sigmoid output is assumed (label = score > 0 for logits).
        geometry: the case's :class:`CaseGeometry` (with ``pad`` set to what was padded).
    Returns:
        ``D x H x W`` uint8 label map on the original grid: the padding is cropped, the scores are
        resampled trilinearly (when the grid changed) and the arg-max taken.
    """
    scores = _scores_on_original_grid(scores, geometry)
    if scores.shape[0] == 1:
        return (scores[0] > 0).to(torch.uint8).numpy()
    return scores.argmax(0).to(torch.uint8).numpy()


def restore_probabilities(logits: torch.Tensor, geometry: CaseGeometry) -> np.ndarray:
    """``C x D x H x W`` float32 softmax probabilities on the original grid: the logits mapped back as in
    :func:`restore_to_original` (so their arg-max is its label map), then the softmax over ``C``."""
    scores = _scores_on_original_grid(logits, geometry)
    if scores.shape[0] < 2:
        raise ValueError("probabilities need a softmax network (C >= 2 outputs), got one output channel")
    return torch.softmax(scores, dim=0).numpy()


def _scores_on_original_grid(scores: torch.Tensor, geometry: CaseGeometry) -> torch.Tensor:
    if scores.ndim != 4:
        raise ValueError(f"restore_to_original expects C x d x h x w scores, got {tuple(scores.shape)}")
    scores = crop_padding(scores, geometry.pad).float()
    if tuple(scores.shape[1:]) != tuple(geometry.resampled_shape):
        raise ValueError(f"scores grid {tuple(scores.shape[1:])} does not match the preprocessed grid "
                         f"{tuple(geometry.resampled_shape)} (+ padding {geometry.pad})")
    if tuple(scores.shape[1:]) != tuple(geometry.original_shape):
        scores = F.interpolate(scores[None], size=tuple(geometry.original_shape), mode="trilinear",
                               align_corners=False)[0]
    return scores


class PreprocessCache:
    """Preprocessed cases on disk, keyed by the preprocessing settings and the source files.

    Entry: ``<dir>/<config.key()>/<case_id>-<source hash>.npz`` with ``image``, ``label`` and the
    geometry as JSON. The source hash covers the file paths, sizes and modification times, so editing
    a volume invalidates its entry. Writes are atomic (temporary file + rename).
    """

    def __init__(self, directory: str | os.PathLike, config: PreprocessConfig) -> None:
        self.config = config
        self.directory = Path(directory) / config.key()

    @staticmethod
    def _source_hash(paths: Sequence[Path]) -> str:
        h = hashlib.sha1()
        for p in paths:
            st = Path(p).stat()
            h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:12]

    def path_for(self, case_id: str, sources: Sequence[Path]) -> Path:
        return self.directory / f"{case_id}-{self._source_hash(sources)}.npz"

    def load(self, case_id: str, sources: Sequence[Path]):
        """Return ``(image, label, geometry)`` if cached, else ``None``."""
        path = self.path_for(case_id, sources)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            label = z["label"] if z["has_label"] else None
            return z["image"], label, CaseGeometry.from_dict(json.loads(str(z["geometry"])))

    def store(self, case_id: str, sources: Sequence[Path], image: np.ndarray,
              label: np.ndarray | None, geometry: CaseGeometry) -> Path:
        from ..atomic import atomic_path
        path = self.path_for(case_id, sources)
        with atomic_path(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, image=image, label=label if label is not None else np.zeros(0, np.uint8),
                     has_label=label is not None, geometry=json.dumps(geometry.to_dict()))
        return path
