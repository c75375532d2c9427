"""3D U-Net (Cicek et al. 2016) with instance normalisation, LeakyReLU and Kaiming initialisation.

Cicek, Abdulkadir, Lienkamp, Brox, Ronneberger. "3D U-Net: Learning Dense Volumetric Segmentation
from Sparse Annotation", MICCAI 2016. The normalisation, activation and strided-convolution
down-sampling follow nnU-Net (Isensee et al. 2021, Nature Methods 18:203-211), which found instance
norm + LeakyReLU(0.01) robust for small 3D batches.

Each level: two ``Conv3d(3x3x3) -> InstanceNorm3d(affine) -> LeakyReLU(0.01)`` blocks. Down-sampling by a
stride-2 convolution, up-sampling by a stride-2 transposed convolution, skip connections by
concatenation, a 1x1x1 convolution to ``out_channels`` logits. Width doubles per level from
``base_channels`` up to ``max_channels``. Input sizes must be divisible by ``2 ** (depth - 1)``
(:attr:`UNet3D.divisor`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["UNet3D", "build_model"]

_LEAK = 0.01


class _ConvBlock(nn.Sequential):
    """``Conv3d -> InstanceNorm3d -> LeakyReLU`` twice; the first convolution may be strided."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.InstanceNorm3d(out_ch, affine=True, eps=1e-5),
            nn.LeakyReLU(_LEAK, inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_ch, affine=True, eps=1e-5),
            nn.LeakyReLU(_LEAK, inplace=True),
        )


class UNet3D(nn.Module):
    """3D U-Net: ``depth`` resolution levels, ``base_channels`` features at full resolution.

    Args:
        in_channels: image channels (MRI sequences).
        out_channels: logits channels (number of classes; 1 for a sigmoid binary output).
        depth: number of resolution levels (>= 2); the input is down-sampled ``depth - 1`` times.
        base_channels: features at the first level; doubled per level.
        max_channels: cap on the features of the deepest levels.
        channels: explicit features per level (overrides ``depth``, ``base_channels`` and
            ``max_channels``), e.g. ``(4, 16, 32, 64, 128)``.
        stem_stride: 1 (the classic U-Net, first level at full resolution) or 2: the first block is
            a stride-2 convolution and the logits come from a stride-2 transposed convolution, so every
            level works at half resolution or coarser (as in MONAI's ``UNet``); about 4x cheaper per
            level on a CPU, with the network's output still at full resolution.
        bottleneck_blocks: extra blocks (two 3x3x3 convolutions each) at the deepest level. Each
            widens the receptive field by ``4 * 2 ** (depth - 1) * stem_stride`` input voxels per axis
            for a few voxels' work at the coarsest grid: the context that tells neighbouring,
            look-alike structures apart (L1 from T12 and from L2, counted from the sacrum).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, depth: int = 4,
                 base_channels: int = 16, max_channels: int = 256,
                 channels: Sequence[int] | None = None, stem_stride: int = 1,
                 bottleneck_blocks: int = 0) -> None:
        super().__init__()
        if bottleneck_blocks < 0:
            raise ValueError(f"UNet3D bottleneck_blocks must be >= 0, got {bottleneck_blocks}")
        if stem_stride not in (1, 2):
            raise ValueError(f"UNet3D stem_stride must be 1 or 2, got {stem_stride}")
        if channels is not None:
            channels = [int(c) for c in channels]
            if len(channels) < 2 or min(channels) < 1:
                raise ValueError(f"UNet3D channels must list >= 2 positive widths, got {channels}")
            depth = len(channels)
        if depth < 2:
            raise ValueError(f"UNet3D depth must be >= 2, got {depth}")
        if base_channels < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("UNet3D channel counts must be positive, got "
                             f"in={in_channels} out={out_channels} base={base_channels}")
        widths = channels or [min(base_channels * 2 ** i, max_channels) for i in range(depth)]
        self.depth = depth
        self.widths = widths
        self.stem_stride = stem_stride
        self.encoder = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(widths):
            self.encoder.append(_ConvBlock(prev, width, stride=stem_stride if level == 0 else 2))
            prev = width
        self.bottleneck = nn.Sequential(*[_ConvBlock(prev, prev) for _ in range(bottleneck_blocks)])
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            self.upsample.append(nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2,
                                                    bias=False))
            self.decoder.append(_ConvBlock(2 * widths[level], widths[level]))
        self.head = (nn.Conv3d(widths[0], out_channels, 1) if stem_stride == 1 else
                     nn.ConvTranspose3d(widths[0], out_channels, 2, stride=2))
        self.reset_parameters()

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (self.depth - 1) * self.stem_stride

    def reset_parameters(self) -> None:
        """Kaiming-normal init for LeakyReLU (He et al. 2015), zero biases, unit norm scales."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, a=_LEAK, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.InstanceNorm3d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"UNet3D expects B x C x D x H x W, got shape {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(f"UNet3D(depth={self.depth}) needs spatial sizes divisible by "
                             f"{self.divisor}, got {tuple(x.shape[2:])}: pad the input first")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        for up, block in zip(self.upsample, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def build_model(in_channels: int, out_channels: int, depth: int = 4, base_channels: int = 16,
                max_channels: int = 256, channels: Sequence[int] | None = None,
                stem_stride: int = 1, bottleneck_blocks: int = 0) -> UNet3D:
    """Factory used by training and prediction (the arguments are stored in checkpoints)."""
    return UNet3D(in_channels, out_channels, depth=depth, base_channels=base_channels,
                  max_channels=max_channels, channels=channels, stem_stride=stem_stride,
                  bottleneck_blocks=bottleneck_blocks)
