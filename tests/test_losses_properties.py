"""Properties of every loss (hypothesis): perfect prediction = minimum, monotone in the overlap, finite
gradients under bf16 autocast, and distance losses that follow the voxel spacing as the geometry says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spineloss.losses import available_losses, build_loss
from spineloss.losses.distance_maps import signed_distance_maps_torch

NAMES = [n for n in available_losses() if n != "weighted_sum"] + ["weighted_sum"]
SETTINGS = dict(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(name: str, **kw):
    if name == "weighted_sum":
        return build_loss("weighted_sum", terms={"dice": 1.0, "hausdorff": 0.05, "boundary": 0.1}, **kw)
    if name == "wce":
        return build_loss("wce", weight=[0.5, 1.0, 2.0, 1.5, 1.0][: kw.pop("C", 5)], **kw)
    return build_loss(name, **kw)


def blob_labels(B: int, C: int, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool3d(torch.randn((B, C) + tuple(shape), generator=g), 3, stride=1, padding=1,
                         count_include_pad=False)
    return field.argmax(1, keepdim=True)


def perfect_logits(labels: torch.Tensor, C: int, margin: float = 20.0) -> torch.Tensor:
    if C == 1:
        return margin * (2.0 * labels.float() - 1.0)
    onehot = (labels == torch.arange(C).view(1, C, 1, 1, 1)).float()
    return margin * (2.0 * onehot - 1.0)


def boundary_minimum(labels: torch.Tensor, C: int, include_background: bool = True) -> float:
    """min over p in [0,1] of mean(p phi_K): p = 1 exactly where phi_K < 0 (Kervadec's map, unit spacing)."""
    maps = signed_distance_maps_torch(labels, C)
    phi_k = torch.where(maps < 0, maps + 1.0, maps)
    start = 0 if include_background or C == 1 else 1
    return float(phi_k[:, start:].clamp(max=0).flatten(2).mean(-1).mean())


@settings(**SETTINGS)
@given(name=st.sampled_from(NAMES), C=st.sampled_from([1, 3, 4]), seed=st.integers(0, 10_000),
       shape=st.sampled_from([(5, 6, 7), (8, 4, 6)]))
def test_perfect_prediction_is_the_minimum(name, C, seed, shape):
    labels = blob_labels(2, max(C, 2), shape, seed)
    if C == 1:
        labels = (labels > 0).long()
    kw = {"C": C} if name == "wce" and C > 1 else {}
    if name == "wce" and C == 1:
        kw = {}
        loss = build_loss("wce", weight=[1.0, 2.0])
    else:
        loss = make(name, **kw)
    perfect = float(loss(perfect_logits(labels, C), labels))
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(3):
        other = float(loss(3.0 * torch.randn((2, C) + shape, generator=g), labels))
        assert perfect <= other + 1e-6
    if name == "boundary":
        assert perfect == pytest.approx(boundary_minimum(labels, C), abs=1e-5)
    elif name == "weighted_sum":
        assert perfect == pytest.approx(0.1 * boundary_minimum(labels, C), abs=1e-4)
    else:
        assert perfect == pytest.approx(0.0, abs=1e-4)  # every other loss is 0 at a perfect prediction


def box_case(shift: int, axis: int = 2, size: int = 4, C: int = 2, n: int = 12, margin: float = 6.0):
    """A cube of class 1 (or a C-class split of it) in an n^3 volume; the prediction is the same cube moved
    by ``shift`` voxels along ``axis`` (confident logits)."""
    labels = torch.zeros((1, 1, n, n, n), dtype=torch.long)
    lo = (n - size) // 2
    labels[..., lo:lo + size, lo:lo + size, lo:lo + size] = 1
    if C > 2:
        labels[..., lo:lo + size // 2, lo:lo + size, lo:lo + size] = 2
    pred = torch.roll(labels, shifts=shift, dims=2 + axis)
    return perfect_logits(pred, C, margin=margin), labels


@settings(**SETTINGS)
@given(name=st.sampled_from(NAMES), C=st.sampled_from([2, 3]), size=st.integers(3, 6),
       axis=st.integers(0, 2))
def test_loss_grows_as_overlap_shrinks(name, C, size, axis):
    loss = make(name, C=C) if name == "wce" else make(name)
    values = [float(loss(*box_case(s, axis, size, C))) for s in range(0, size + 1)]
    for a, b in zip(values, values[1:]):
        assert b >= a - 1e-6, values
    assert values[-1] > values[0] + 1e-4, values


@settings(**SETTINGS)
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 10_000), empty=st.booleans())
def test_gradients_finite_under_bf16_autocast(name, seed, empty):
    torch.manual_seed(seed)
    C = 3
    net = torch.nn.Conv3d(2, C, 3, padding=1)
    image = torch.randn((2, 2, 6, 6, 6))
    labels = torch.zeros((2, 1, 6, 6, 6), dtype=torch.long) if empty else blob_labels(2, C, (6, 6, 6), seed)
    loss = make(name, C=C) if name == "wce" else make(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(image)
        assert logits.dtype == torch.bfloat16
        value = loss(logits, labels)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@settings(**SETTINGS)
@given(s=st.floats(0.3, 4.0), seed=st.integers(0, 10_000))
def test_isotropic_spacing_scales_distance_losses(s, seed):
    """Uniform voxel size s: every distance scales by s, so the Hausdorff loss by s^alpha and the boundary
    loss (with the raw map, inside_offset=0) by s."""
    labels = blob_labels(2, 3, (7, 6, 8), seed)
    logits = torch.randn((2, 3, 7, 6, 8), generator=torch.Generator().manual_seed(seed))
    for alpha in (1.0, 2.0):
        base = float(build_loss("hausdorff", alpha=alpha)(logits, labels))
        scaled = float(build_loss("hausdorff", alpha=alpha, spacing=(s, s, s))(logits, labels))
        assert scaled == pytest.approx(base * s**alpha, rel=1e-4)
    base = float(build_loss("boundary", inside_offset=0.0)(logits, labels))
    scaled = float(build_loss("boundary", inside_offset=0.0, spacing=(s, s, s))(logits, labels))
    assert scaled == pytest.approx(base * s, rel=1e-4, abs=1e-7)


@settings(**SETTINGS)
@given(factor=st.floats(1.5, 4.0), size=st.integers(3, 6), axis=st.integers(0, 2), shift=st.integers(1, 2))
def test_anisotropic_spacing_penalises_errors_along_the_coarse_axis(factor, size, axis, shift):
    """A cube shifted by the same number of voxels along two axes: the same extra loss (over the perfect
    prediction) with isotropic voxels; when one axis has voxels `factor` times longer, the error along it is
    farther in mm and costs more than the same error along a fine axis."""
    other = (axis + 1) % 3
    spacing = [1.0, 1.0, 1.0]
    spacing[axis] = factor

    def excess(loss, ax):
        logits, labels = box_case(shift, ax, size, margin=15.0)
        perfect, _ = box_case(0, ax, size, margin=15.0)
        return float(loss(logits, labels)) - float(loss(perfect, labels))

    for name in ("hausdorff", "boundary"):
        iso, aniso = build_loss(name), build_loss(name, spacing=tuple(spacing))
        assert excess(iso, axis) == pytest.approx(excess(iso, other), rel=1e-5)
        assert excess(aniso, axis) > 1.2 * excess(aniso, other) > 0


def test_anisotropic_maps_follow_the_spacing_exactly():
    """A single voxel: the distance map is the spacing-weighted Euclidean norm."""
    labels = torch.zeros((1, 1, 5, 5, 5), dtype=torch.long)
    labels[0, 0, 2, 2, 2] = 1
    maps = signed_distance_maps_torch(labels, 2, spacing=(3.0, 2.0, 0.5))[0, 1]
    zz, yy, xx = np.meshgrid(*(np.arange(5) - 2,) * 3, indexing="ij")
    expected = np.sqrt((3.0 * zz) ** 2 + (2.0 * yy) ** 2 + (0.5 * xx) ** 2)
    expected[2, 2, 2] = -0.5  # inside: the nearest outside voxel along the finest axis
    np.testing.assert_allclose(maps.numpy(), expected, rtol=1e-6)
