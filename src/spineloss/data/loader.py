"""From a data set on disk to training batches: cached preprocessing, patch sampling, augmentation.

:func:`prepare_cases` loads, validates and preprocesses cases once (with :class:`PreprocessCache`).
:class:`PatchDataset` draws training samples: sample ``k`` of epoch ``e`` uses the generator seeded by
``(seed, e, k)``, picks its case from a seeded per-epoch permutation, crops a patch (centred on a random
foreground voxel with probability ``foreground_oversample``, as nnU-Net does, else anywhere), augments
it, and, when the loss needs them, computes the ground-truth signed distance maps of the augmented
label. It runs in ``DataLoader`` worker processes, so this work overlaps the training step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import AugmentConfig, augment_sample
from .layout import Case, DatasetInfo, load_case, to_label_mode
from .preprocess import CaseGeometry, PreprocessCache, PreprocessConfig, preprocess_case

__all__ = ["PreparedCase", "prepare_cases", "PatchDataset", "EpochSampler", "make_train_loader",
           "class_voxel_counts"]

_MAX_FG_COORDS = 20000


@dataclass
class PreparedCase:
    """One preprocessed case held in memory."""

    case_id: str
    image: np.ndarray            # C x d x h x w float32, normalised, on the preprocessed grid
    label: np.ndarray | None     # d x h x w uint8 in the chosen label mode
    geometry: CaseGeometry
    source_label: Path | None = None   # the original label file (for evaluation on the original grid)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.geometry.resampled_spacing)


def prepare_cases(info: DatasetInfo, cases: Sequence[Case], config: PreprocessConfig,
                  label_mode: str = "multiclass", cache_dir: str | Path | None = None) -> list[PreparedCase]:
    """Load, validate and preprocess ``cases``; reuse the on-disk cache when ``cache_dir`` is given."""
    cache = PreprocessCache(cache_dir, config) if cache_dir is not None else None
    prepared = []
    for case in cases:
        sources = list(case.image_paths) + ([case.label_path] if case.label_path else [])
        cached = cache.load(case.case_id, sources) if cache else None
        if cached is None:
            image, label, affine = load_case(case, info)
            image, label, geometry = preprocess_case(image, label, affine, config)
            if cache:
                cache.store(case.case_id, sources, image, label, geometry)
        else:
            image, label, geometry = cached
        if label is not None:
            label = to_label_mode(label, label_mode).astype(np.uint8, copy=False)
        prepared.append(PreparedCase(case.case_id, image, label, geometry, case.label_path))
    return prepared


def class_voxel_counts(cases: Sequence[PreparedCase], num_classes: int) -> np.ndarray:
    """Voxels of each class over the training labels (for inverse-frequency class weights)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for case in cases:
        counts += np.bincount(case.label.ravel(), minlength=num_classes)[:num_classes]
    return counts


def _crop_or_pad(array: np.ndarray, start: Sequence[int], size: Sequence[int], value) -> np.ndarray:
    """Window ``[start, start + size)`` of the last three axes; outside the array is ``value``."""
    out = np.full(array.shape[:-3] + tuple(size), value, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[-3:]):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    out[(...,) + tuple(dst)] = array[(...,) + tuple(src)]
    return out


class EpochSampler(Sampler):
    """Yields ``(epoch, k)`` keys, ``k < samples_per_epoch``; call :meth:`set_epoch` before each epoch.

    Distributed (``world > 1``, :mod:`spineloss.distributed`): the samples form global batches of
    ``batch_size``; rank ``r`` yields the ``r``-th of the ``world`` equal slices of each one, so the ranks
    together see exactly the samples one process would, batch by batch.
    """

    def __init__(self, samples_per_epoch: int, batch_size: int = 1, rank: int = 0, world: int = 1) -> None:
        self.samples_per_epoch = int(samples_per_epoch)
        self.batch_size, self.rank, self.world = int(batch_size), int(rank), int(world)
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"EpochSampler: rank {rank} of world {world}")
        if self.batch_size % self.world:
            raise ValueError(f"training.batch_size ({batch_size}) must be a multiple of the number of processes "
                             f"({world}): each process trains on an equal share of every batch")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _mine(self, k: int) -> bool:
        return self.world == 1 or (k % self.batch_size) // (self.batch_size // self.world) == self.rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, k) for k in range(self.samples_per_epoch) if self._mine(k)])

    def __len__(self) -> int:
        return self.samples_per_epoch // self.world


class PatchDataset(Dataset):
    """Seeded training samples from preprocessed cases (see the module docstring).

    Args:
        cases: the training cases.
        patch_size: spatial size of each sample; ``None`` takes the largest case, rounded up to
            ``divisor`` (whole-volume training).
        divisor: the network's size divisor (patches are multiples of it).
        augment: the per-sample augmentation settings.
        seed: the run's seed.
        num_classes: channels of the network output (for the distance maps).
        distance_maps: compute ground-truth signed distance maps (for distance-based losses); the sample
            then also carries ``"spacing"`` (3 float64, mm), the case's spacing the maps were made with.
        foreground_oversample: probability that a patch is centred on a foreground voxel.
    """

    def __init__(self, cases: Sequence[PreparedCase], patch_size: Sequence[int] | None, divisor: int,
                 augment: AugmentConfig, seed: int, num_classes: int, distance_maps: bool = False,
                 foreground_oversample: float = 0.33) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one training case")
        if any(c.label is None for c in cases):
            raise ValueError("every training case needs a label")
        self.cases = list(cases)
        largest = np.max([c.image.shape[1:] for c in self.cases], axis=0)
        size = largest if patch_size is None else np.asarray(patch_size)
        self.patch_size = tuple(int(np.ceil(s / divisor) * divisor) for s in size)
        self.augment = augment
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.distance_maps = bool(distance_maps)
        self.foreground_oversample = float(foreground_oversample)
        self._fg_coords = []
        rng = np.random.default_rng([self.seed, 2**31 - 1])
        for c in self.cases:
            coords = np.argwhere(c.label > 0)
            if len(coords) > _MAX_FG_COORDS:
                coords = coords[rng.choice(len(coords), _MAX_FG_COORDS, replace=False)]
            self._fg_coords.append(coords)
        self._pad_values = [c.image.reshape(c.image.shape[0], -1).min(axis=1) for c in self.cases]

    def __len__(self) -> int:  # the sampler decides the epoch length
        return len(self.cases)

    def case_for(self, epoch: int, k: int) -> int:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.cases))
        return int(order[k % len(order)])

    def _window_start(self, index: int, rng: np.random.Generator) -> list[int]:
        shape = self.cases[index].image.shape[1:]
        coords = self._fg_coords[index]
        use_fg = rng.random() < self.foreground_oversample
        centre_draw = rng.random(3)
        if use_fg and len(coords):
            centre = coords[int(rng.integers(len(coords)))]
            return [int(c) - p // 2 for c, p in zip(centre, self.patch_size)]
        # anywhere: the window may overhang a volume smaller than the patch on either side
        return [int(np.floor(u * (s - p + 1))) if s >= p else -int(np.floor(u * (p - s + 1)))
                for u, s, p in zip(centre_draw, shape, self.patch_size)]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, k = key
        rng = np.random.default_rng([self.seed, epoch, k])
        index = self.case_for(epoch, k)
        case = self.cases[index]
        start = self._window_start(index, rng)
        image = np.stack([_crop_or_pad(case.image[c], start, self.patch_size, self._pad_values[index][c])
                          for c in range(case.image.shape[0])])
        label = _crop_or_pad(case.label, start, self.patch_size, 0)
        image, label = augment_sample(image, label, rng, self.augment, case.spacing)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                  "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))[None]}
        if self.distance_maps:
            from ..losses.distance_maps import signed_distance_maps
            sample["dist_map"] = torch.from_numpy(
                signed_distance_maps(label, self.num_classes, case.spacing).astype(np.float32))
            # the spacing the maps were made with: the loss's per-sample ``spacing`` (B x 3 once collated)
            sample["spacing"] = torch.tensor(case.spacing, dtype=torch.float64)
        return sample


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_train_loader(dataset: PatchDataset, batch_size: int, iterations_per_epoch: int,
                      num_workers: int = 0, rank: int = 0, world: int = 1) -> tuple[DataLoader, EpochSampler]:
    """A ``DataLoader`` of ``iterations_per_epoch`` batches per epoch and its :class:`EpochSampler`
    (with ``world > 1`` processes: this rank's ``batch_size / world`` samples of each batch)."""
    sampler = EpochSampler(batch_size * iterations_per_epoch, batch_size, rank, world)
    loader = DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, num_workers=num_workers,
                        persistent_workers=num_workers > 0, worker_init_fn=_worker_init,
                        prefetch_factor=2 if num_workers > 0 else None, drop_last=True)
    return loader, sampler
