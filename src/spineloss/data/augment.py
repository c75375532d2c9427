"""Seeded data augmentation for training samples (never applied to validation data).

Per sample (in the loader's worker processes): a random affine transform (rotation, scaling,
translation; image trilinear, label nearest neighbour), additive Gaussian noise, mirroring along
the configured axes and a gamma transform of the intensities. Per batch (in the training step):
MixUp (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", ICLR), which blends the batch
with one random element of it and turns the targets into soft one-hot maps.

Every random draw comes from a ``numpy.random.Generator`` the caller seeds, so a sample's augmentation
depends only on ``(seed, epoch, sample index)``: the same seed gives the same training run, whatever
the number of worker processes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "check_mirror_axes", "random_affine", "add_gaussian_noise", "augment_sample",
           "adjust_gamma", "mixup", "one_hot"]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (probabilities per sample / per batch).

    Args:
        p_affine: probability of a random affine transform.
        rotation: maximum absolute rotation about each axis, in radians: one number for all three
            axes, or three (about axis 0, 1, 2 of ``D x H x W``, like nnU-Net's
            ``rotation_x/y/z``). For sagittal spine scans (axes head-feet, front-back, left-right)
            a larger angle about the front-back axis tilts the spine in the coronal plane, as a
            scoliosis does.
        scale: maximum relative scaling, e.g. 0.1 draws a factor in [0.9, 1.1] per axis.
        scale_isotropic: one scaling factor for all three axes (a smaller or larger subject, as
            nnU-Net draws it) instead of one per axis (which also changes the shape's proportions).
        translation: maximum shift as a fraction of the size of each axis.
        affine_padding: what the image shows where an affine transform looks outside the field of
            view: ``"minimum"`` (the channel minimum, like the patch padding) or ``"reflection"`` (the
            image mirrored at its border; labels there are background). Reflection makes a shift
            show more anatomy beyond the edge instead of a blank band, so the distance between the
            field of view's edge and a structure is less of a cue: with the lumbar scans, vertebrae
            mirrored above T12 teach that the body below the edge need not be L1 (the levels must be
            counted from the sacrum). The price: a labelled structure cut by the patch's edge is
            mirrored too and counts as background there (label noise near patch edges).
        p_noise: probability of Gaussian noise; its standard deviation is drawn in [0, noise_std]
            (intensities are z-scored, so 0.1 is a tenth of the image's standard deviation).
        p_mixup: probability that a batch is mixed; ``mixup_alpha`` is the Beta(a, a) parameter of
            the mixing weight.
        p_gamma: probability of a gamma transform of the intensities (nnU-Net's contrast
            augmentation): per channel, ``x' = lo + (hi - lo) ((x - lo) / (hi - lo)) ** g`` with
            ``lo, hi`` the channel's range and ``log g ~ U(log gamma_range[0], log gamma_range[1])``,
            then shifted and scaled back to the channel's mean and standard deviation.
        mirror_axes: spatial axes (0, 1, 2 of ``D x H x W``) each flipped with probability 1/2, as
            nnU-Net does (Isensee et al. 2021); only axes along which the anatomy is roughly
            symmetric (left-right for the spine, never head-feet: the levels are counted from the
            sacrum). The checkpoint records the axes, and prediction mirrors along them too.
    """

    p_affine: float = 0.5
    rotation: float | tuple[float, float, float] = 0.2
    scale: float = 0.1
    translation: float = 0.05
    p_noise: float = 0.3
    noise_std: float = 0.1
    p_mixup: float = 0.0
    mixup_alpha: float = 0.4
    affine_padding: str = "minimum"
    mirror_axes: tuple[int, ...] = ()
    scale_isotropic: bool = False
    p_gamma: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mirror_axes", check_mirror_axes(self.mirror_axes, "augment.mirror_axes"))
        if np.ndim(self.rotation) == 0:
            object.__setattr__(self, "rotation", float(self.rotation))
        else:
            angles = tuple(float(r) for r in self.rotation)
            if len(angles) != 3:
                raise ValueError(f"augment.rotation is one angle or three (one per axis); got {self.rotation}")
            object.__setattr__(self, "rotation", angles)
        if min(np.atleast_1d(self.rotation)) < 0:
            raise ValueError(f"augment.rotation must be >= 0, got {self.rotation}")
        if self.affine_padding not in ("minimum", "reflection"):
            raise ValueError(f"augment.affine_padding must be 'minimum' or 'reflection'; got {self.affine_padding!r}")
        lo, hi = (float(g) for g in self.gamma_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment.gamma_range must be two numbers 0 < low <= high; got {self.gamma_range}")
        object.__setattr__(self, "gamma_range", (lo, hi))
        for name in ("p_affine", "p_noise", "p_mixup", "p_gamma"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {value}")
        for name in ("scale", "translation", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1:
            raise ValueError(f"augment.scale must be < 1 (a relative change), got {self.scale}")
        if self.mixup_alpha <= 0:
            raise ValueError(f"augment.mixup_alpha must be > 0, got {self.mixup_alpha}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all."""
        return cls(p_affine=0.0, p_noise=0.0, p_mixup=0.0)


def check_mirror_axes(axes: Sequence[int], where: str = "mirror_axes") -> tuple[int, ...]:
    """``axes`` as a tuple of distinct spatial axes among 0, 1, 2, or a ValueError naming ``where``."""
    out = tuple(int(a) for a in axes)
    if any(a not in (0, 1, 2) for a in out) or len(set(out)) != len(out):
        raise ValueError(f"{where} lists distinct spatial axes among 0, 1, 2; got {tuple(axes)}")
    return out


def _rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  config: AugmentConfig, spacing: Sequence[float] = (1.0, 1.0, 1.0)
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate, scale and translate ``image`` (``C x D x H x W``) and ``label`` (``D x H x W``) together.

    The transform acts in physical space (voxel sizes ``spacing``) about the volume's centre, so a
    rotation of anisotropic voxels is a true rotation. Image: trilinear interpolation, filled with
    the channel minimum (or the mirrored image, ``config.affine_padding``) outside the field of view;
    label: nearest neighbour, filled with background.
    """
    limit = np.asarray(config.rotation, dtype=np.float64)  # scalar or per axis; same draws either way
    angles = rng.uniform(-limit, limit, size=3)
    scales = rng.uniform(1 - config.scale, 1 + config.scale, size=3)
    if config.scale_isotropic:
        scales = np.full(3, scales[0])
    shift = rng.uniform(-config.translation, config.translation, size=3) * 2.0  # in [-1, 1] units
    shape = np.asarray(image.shape[1:], dtype=np.float64)
    extent = shape * np.asarray(spacing, dtype=np.float64)          # physical size per axis
    # output normalised coords -> physical -> rotate/scale -> input normalised coords
    to_phys = np.diag(extent / 2.0)
    matrix = np.linalg.inv(to_phys) @ _rotation_matrix(angles) @ np.diag(1.0 / scales) @ to_phys
    # affine_grid orders coordinates (x, y, z) = (W, H, D): reverse our (D, H, W) axes
    perm = [2, 1, 0]
    theta = np.zeros((1, 3, 4), dtype=np.float32)
    theta[0, :, :3] = matrix[np.ix_(perm, perm)]
    theta[0, :, 3] = shift[perm]
    theta_t = torch.from_numpy(theta)
    size = (1, image.shape[0]) + tuple(image.shape[1:])
    grid = F.affine_grid(theta_t, size, align_corners=False)
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if config.affine_padding == "reflection":
        img = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    else:
        low = img.amin(dim=(2, 3, 4), keepdim=True)
        img = F.grid_sample(img - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low
    lab = torch.from_numpy(np.ascontiguousarray(label).astype(np.float32))[None, None]
    lab = F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img[0].numpy(), lab[0, 0].numpy().astype(label.dtype)


def add_gaussian_noise(image: np.ndarray, rng: np.random.Generator, max_std: float) -> np.ndarray:
    """``x + N(0, sigma^2)`` with ``sigma ~ U(0, max_std)`` drawn once per sample."""
    sigma = rng.uniform(0.0, max_std)
    return (image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)).astype(np.float32)


def augment_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                   config: AugmentConfig, spacing: Sequence[float] = (1.0, 1.0, 1.0)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Apply the per-sample augmentations of ``config`` (affine, noise, mirroring, gamma) with ``rng``.

    The draws that decide whether a transform is applied are made in a fixed order, so the
    sequence of random numbers does not depend on the outcome of earlier draws.
    """
    do_affine = rng.random() < config.p_affine
    do_noise = rng.random() < config.p_noise
    if do_affine:
        image, label = random_affine(image, label, rng, config, spacing)
    if do_noise and config.noise_std > 0:
        image = add_gaussian_noise(image, rng, config.noise_std)
    if config.mirror_axes:  # drawn last: configurations without mirroring keep their random stream
        flip = [a for a, u in zip(config.mirror_axes, rng.random(len(config.mirror_axes))) if u < 0.5]
        if flip:
            image = np.ascontiguousarray(np.flip(image, axis=[a + 1 for a in flip]))
            label = np.ascontiguousarray(np.flip(label, axis=flip))
    if config.p_gamma > 0:
        do_gamma, u = rng.random(2)
        if do_gamma < config.p_gamma:
            lo, hi = np.log(config.gamma_range)
            image = adjust_gamma(image, float(np.exp(lo + (hi - lo) * u)))
    return image, label


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma transform of each channel of ``C x D x H x W`` keeping its mean and standard deviation.

    ``x' = lo + (hi - lo) ((x - lo) / (hi - lo)) ** gamma`` on the channel's range ``[lo, hi]``, then
    ``x'' = (x' - mean') / std' * std + mean``. A constant channel is returned unchanged.
    """
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float32, copy=False)
        lo, hi = float(x.min()), float(x.max())
        if hi - lo < 1e-8:
            out[c] = x
            continue
        mean, std = float(x.mean()), float(x.std())
        y = lo + (hi - lo) * np.power((x - lo) / (hi - lo), np.float32(gamma))
        y_std = float(y.std())
        out[c] = (y - float(y.mean())) / y_std * std + mean if y_std > 1e-8 else x
    return out


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer map ``B x D x H x W`` (or ``B x 1 x ...``) to float one-hot ``B x C x D x H x W``.

    For ``num_classes == 1`` (sigmoid output) the result is the binary map itself as one channel.
    """
    if label.ndim == 5:
        label = label[:, 0]
    if num_classes == 1:
        return (label > 0).float()[:, None]
    classes = torch.arange(num_classes, device=label.device).view(1, -1, 1, 1, 1)
    return (label[:, None].long() == classes).float()


def mixup(image: torch.Tensor, target: torch.Tensor, num_classes: int, generator: torch.Generator,
          alpha: float, dist_map: torch.Tensor | None = None):
    """MixUp with one random element ``j`` of the batch: ``x' = l x + (1 - l) x_j``.

    ``l ~ Beta(alpha, alpha)`` (folded to ``max(l, 1 - l)`` so each sample keeps most of itself).
    Targets become soft: ``y' = l onehot(y) + (1 - l) onehot(y_j)``; distance maps, if given, are
    mixed with the same weight (a first-order approximation of the mixed target's distance map).
    Returns ``(image, soft_target, dist_map)``.
    """
    b = image.shape[0]
    j = int(torch.randint(0, b, (1,), generator=generator))
    lam = _beta_from_uniform(float(torch.rand(1, generator=generator).clamp_(1e-6, 1 - 1e-6)), alpha)
    lam = max(lam, 1.0 - lam)
    soft = target if target.ndim == 5 and target.shape[1] == num_classes and target.is_floating_point() \
        else one_hot(target, num_classes)
    image = lam * image + (1 - lam) * image[j:j + 1]
    soft = lam * soft + (1 - lam) * soft[j:j + 1]
    if dist_map is not None:
        dist_map = lam * dist_map + (1 - lam) * dist_map[j:j + 1]
    return image, soft, dist_map


def _beta_from_uniform(u: float, alpha: float) -> float:
    """Beta(a, a) draw by the inverse CDF of a seeded uniform ``u`` (deterministic in ``u``)."""
    from scipy.special import betaincinv
    return float(betaincinv(alpha, alpha, u))
