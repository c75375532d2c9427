"""The signed distance maps handed to the distance losses: convention, exactness, spacing, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from spineloss.losses.distance_maps import (
    prediction_signed_maps,
    signed_distance_maps,
    signed_distance_maps_torch,
)


def reference_phi(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The documented convention written with scipy: + distance to the class outside, - distance to the
    nearest voxel outside the class inside; 0 for an empty or full mask."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, np.float32)
    out = ndi.distance_transform_edt(~mask, sampling=spacing)
    ins = ndi.distance_transform_edt(mask, sampling=spacing)
    return np.where(mask, -ins, out).astype(np.float32)


def blob_labels(C: int, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndi.uniform_filter(rng.standard_normal((C,) + tuple(shape)), size=(1, 3, 3, 3))
    return field.argmax(axis=0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 1.2)])
def test_label_map_matches_scipy_reference(spacing):
    label = blob_labels(4, (9, 11, 10), seed=1)
    label[label == 3] = 2  # class 3 empty
    maps = signed_distance_maps(label, 4, spacing=spacing)
    assert maps.shape == (4,) + label.shape and maps.dtype == np.float32
    for c in range(4):
        np.testing.assert_allclose(maps[c], reference_phi(label == c, spacing), rtol=1e-5, atol=1e-5)
    assert not maps[3].any()  # empty class: zeros
    # no voxel on the zero level: |phi| >= the smallest spacing for present classes
    assert np.abs(maps[0]).min() >= min(spacing) - 1e-6


def test_full_class_and_border_is_not_a_boundary():
    label = np.zeros((4, 5, 6), np.int64)
    maps = signed_distance_maps(label, 2)
    assert not maps.any()  # class 0 full, class 1 empty
    label[:, :, :2] = 1  # a slab touching the border: inside distances only to the other side
    maps = signed_distance_maps(label, 2)
    np.testing.assert_allclose(maps[1, 0, 0, :], [-2, -1, 1, 2, 3, 4])
    np.testing.assert_allclose(maps[0, 0, 0, :], [2, 1, -1, -2, -3, -4])


def test_binary_one_channel_and_probability_maps():
    label = blob_labels(2, (8, 8, 8), seed=2)
    ref = reference_phi(label == 1)
    np.testing.assert_allclose(signed_distance_maps(label, 1)[0], ref)
    np.testing.assert_allclose(signed_distance_maps(label.astype(np.float32) * 0.8 + 0.1, 1)[0], ref)


def test_one_hot_and_soft_targets():
    label = blob_labels(3, (7, 8, 9), seed=3)
    onehot = (label[None] == np.arange(3)[:, None, None, None]).astype(np.float32)
    np.testing.assert_allclose(signed_distance_maps(onehot, 3), signed_distance_maps(label, 3))
    soft = 0.7 * onehot + 0.3 * np.roll(onehot, 1, axis=0)  # MixUp-like, still thresholds to the partition
    np.testing.assert_allclose(signed_distance_maps(soft, 3), signed_distance_maps(label, 3))
    overlapping = np.stack([label == 1, label >= 1, label == 2]).astype(np.float32)  # not a partition
    maps = signed_distance_maps(overlapping, 3, spacing=(1.0, 2.0, 1.0))
    for c in range(3):
        np.testing.assert_allclose(maps[c], reference_phi(overlapping[c] > 0.5, (1.0, 2.0, 1.0)), atol=1e-5)


def test_class_subset_and_torch_batch():
    labels = np.stack([blob_labels(4, (6, 7, 8), seed=s) for s in (4, 5)])
    t = torch.from_numpy(labels)
    full = signed_distance_maps_torch(t, 4)
    assert full.shape == (2, 4, 6, 7, 8) and full.dtype == torch.float32
    sub = signed_distance_maps_torch(t[:, None], 4, classes=[1, 3])
    torch.testing.assert_close(sub, full[:, [1, 3]])
    np.testing.assert_allclose(full[1].numpy(), signed_distance_maps(labels[1], 4))


def test_abs_phi_is_monai_hausdorff_field_and_kervadec_map():
    monai_losses = pytest.importorskip("monai.losses")
    label = blob_labels(3, (8, 9, 7), seed=6)
    onehot = torch.from_numpy((label[None, None] == np.arange(3)[None, :, None, None, None]).astype(np.float32))
    maps = torch.from_numpy(signed_distance_maps(label, 3))
    hd = monai_losses.HausdorffDTLoss()
    for c in range(3):
        torch.testing.assert_close(hd.distance_field(onehot[:, c:c + 1])[0, 0], maps[c].abs())
    kervadec = monai_losses.BoundaryLoss().compute_distance_map(onehot)[0]
    torch.testing.assert_close(kervadec, torch.where(maps < 0, maps + 1, maps))


def test_prediction_maps_softmax_partition_and_squared():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn((2, 4, 7, 6, 8), generator=g), dim=1)
    maps = prediction_signed_maps(probs, "softmax", classes=[0, 1, 2, 3], spacing=(1.0, 1.5, 1.0))
    sq = prediction_signed_maps(probs, "softmax", classes=[1, 2], spacing=(1.0, 1.5, 1.0), squared=True)
    for b in range(2):
        for c in range(4):
            mask = (probs[b, c] > 0.5).numpy()
            np.testing.assert_allclose(maps[b, c].numpy(), reference_phi(mask, (1.0, 1.5, 1.0)), atol=1e-5)
    torch.testing.assert_close(sq, maps[:, 1:3].square(), rtol=1e-5, atol=1e-4)
    sig = prediction_signed_maps(torch.sigmoid(torch.randn((1, 2, 5, 5, 5), generator=g)), "sigmoid", [0, 1])
    assert sig.shape == (1, 2, 5, 5, 5)


@pytest.mark.parametrize("bad, msg", [
    (dict(label=np.full((3, 3, 3), 4), num_classes=4), "label values"),
    (dict(label=np.full((3, 3, 3), -1), num_classes=4), "label values"),
    (dict(label=np.zeros((3, 3)), num_classes=2), "D x H x W"),
    (dict(label=np.zeros((3, 3, 3, 3)), num_classes=2), "channels"),
    (dict(label=np.zeros((3, 3, 3)), num_classes=0), "num_classes"),
    (dict(label=np.zeros((3, 3, 3), int), num_classes=2, spacing=(1.0, 0.0, 1.0)), "spacing"),
    (dict(label=np.zeros((3, 3, 3), int), num_classes=2, spacing=(1.0, 1.0)), "spacing"),
    (dict(label=np.full((3, 3, 3), 0.5), num_classes=2), "whole numbers"),
    (dict(label=np.full((2, 3, 3, 3), 1.5), num_classes=2), "[0, 1]"),
    (dict(label=np.zeros((3, 3, 3), int), num_classes=2, classes=[2]), "out of range"),
])
def test_invalid_inputs_raise_value_error(bad, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        signed_distance_maps(**bad)
