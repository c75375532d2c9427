"""Voxel spacing: one shared check (spineloss.geometry.check_spacing) and per-sample spacing in the distance losses.

Cases of a data set have different voxel sizes; the pipeline makes each sample's ground-truth distance maps with
its own spacing and hands it to the loss as ``spacing`` (``B x 3``). A batch of samples with different spacings
must then give exactly the mean of the samples computed one by one with their own spacing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spineloss.geometry import check_spacing
from spineloss.losses import build_loss
from spineloss.losses.distance_maps import (
    prediction_signed_maps,
    signed_distance_maps,
    signed_distance_maps_torch,
)
from spineloss.metrics import compute_metrics

SPACINGS = torch.tensor([[1.0, 1.0, 3.0], [0.6, 2.0, 1.2]], dtype=torch.float64)


def blobs(B=2, C=3, shape=(8, 9, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool3d(torch.randn((B, C) + shape, generator=g), 3, stride=1, padding=1, count_include_pad=False)
    labels = field.argmax(1, keepdim=True)
    onehot = (labels == torch.arange(C).view(1, C, 1, 1, 1)).float()
    logits = 2.0 * onehot.roll(1, dims=3) + torch.randn((B, C) + shape, generator=g)  # shifted: real errors
    return logits, labels


def own_maps(labels, C, spacings):
    """What the data pipeline hands in: each sample's maps with its own spacing, stacked."""
    return torch.stack([torch.from_numpy(signed_distance_maps(labels[b, 0].numpy(), C, tuple(sp.tolist())))
                        for b, sp in enumerate(spacings)])


LOSSES = ["hausdorff", "boundary", {"dice": 1.0, "hausdorff": 0.1, "boundary": 0.5},
          "__monai_like__"]


def make(name, **kw):
    if name == "__monai_like__":  # hausdorff with MONAI's activation words and another alpha
        return build_loss("hausdorff", alpha=1.0, softmax=True, include_background=True, **kw)
    return build_loss(name, **kw)


@pytest.mark.parametrize("name", LOSSES, ids=str)
@pytest.mark.parametrize("with_maps", [True, False])
def test_batch_with_per_sample_spacing_equals_samples_alone(name, with_maps):
    logits, labels = blobs()
    maps = own_maps(labels, 3, SPACINGS)
    kw = dict(dist_map=maps) if with_maps else {}
    batch = make(name)(logits, labels, spacing=SPACINGS, **kw)
    alone = [make(name, spacing=tuple(SPACINGS[b].tolist()))(logits[b:b + 1], labels[b:b + 1],
                                                             **({"dist_map": maps[b:b + 1]} if with_maps else {}))
             for b in range(2)]
    torch.testing.assert_close(batch, (alone[0] + alone[1]) / 2, rtol=1e-6, atol=1e-6)
    # the per-sample spacing is used: the constructor's (unit) spacing gives another value
    plain = make(name)(logits, labels, **({"dist_map": own_maps(labels, 3, torch.ones(2, 3))} if with_maps else {}))
    assert abs(float(batch) - float(plain)) > 1e-4


def test_per_sample_spacing_reaches_every_place():
    """Hausdorff: the prediction maps (and the ground-truth maps without dist_map) per item; boundary: each
    item's own inside offset (its smallest spacing); the unreduced values are per item."""
    logits, labels = blobs(seed=1)
    maps = own_maps(labels, 3, SPACINGS)
    none_b = build_loss("boundary", reduction="none")(logits, labels, dist_map=maps, spacing=SPACINGS)
    p = torch.softmax(logits, 1)
    for b in range(2):
        off = float(SPACINGS[b].min())
        phi_k = torch.where(maps[b] < 0, maps[b] + off, maps[b])
        torch.testing.assert_close(none_b[b], (p[b] * phi_k).flatten(1).mean(1))
    none_h = build_loss("hausdorff", reduction="none", include_background=True)(logits, labels, spacing=SPACINGS)
    onehot = (labels == torch.arange(3).view(1, 3, 1, 1, 1)).float()
    for b in range(2):
        sp = tuple(SPACINGS[b].tolist())
        d2_g = signed_distance_maps_torch(labels[b:b + 1], 3, spacing=sp, squared=True)[0]
        d2_p = prediction_signed_maps(p[b:b + 1], "softmax", [0, 1, 2], spacing=sp, squared=True)[0]
        expected = ((p[b] - onehot[b]) ** 2 * (d2_g + d2_p)).flatten(1).mean(1)
        torch.testing.assert_close(none_h[b], expected)


def test_spacing_forms_and_compound_pass_through():
    logits, labels = blobs(seed=2)
    maps = own_maps(labels, 3, SPACINGS)
    loss = build_loss("hausdorff")
    ref = loss(logits, labels, dist_map=maps, spacing=SPACINGS)
    for form in (SPACINGS.float(), SPACINGS.numpy(), SPACINGS.tolist()):
        torch.testing.assert_close(loss(logits, labels, dist_map=maps, spacing=form), ref)
    # a compound passes it to the distance terms and not to the others (a sum without one ignores it)
    s = build_loss({"dice": 1.0, "ce": 1.0})
    torch.testing.assert_close(s(logits, labels, spacing=SPACINGS), s(logits, labels))
    dce = build_loss("dice_ce")
    torch.testing.assert_close(dce(logits, labels, spacing=SPACINGS), dce(logits, labels))
    # the single non-distance losses keep their signature: (input, target, dist_map=None)
    with pytest.raises(TypeError):
        build_loss("dice")(logits, labels, spacing=SPACINGS)


@pytest.mark.parametrize("bad, msg", [
    (torch.ones(3, 3), r"one row per batch item \(2\), got 3 rows"),
    (torch.ones(2), r"spacing must be 3 positive finite numbers.*got 2 value"),
    (torch.tensor([[1.0, 1.0, 1.0], [1.0, -2.0, 1.0]]), r"spacing of batch item 1\): spacing must be 3 positive"),
    (torch.tensor([[1.0, 1.0, float("nan")], [1.0, 1.0, 1.0]]), "batch item 0"),
    ("1x1x1", "got the string"),
])
def test_bad_per_sample_spacing_is_named(bad, msg):
    logits, labels = blobs()
    for name in ("hausdorff", "boundary", "dice_ce"):
        with pytest.raises(ValueError, match=msg):
            build_loss(name)(logits, labels, spacing=bad)


def test_one_spacing_in_the_call_is_every_items_spacing():
    logits, labels = blobs()
    for name in ("hausdorff", "boundary"):
        torch.testing.assert_close(build_loss(name)(logits, labels, spacing=torch.tensor([1.0, 2.0, 3.0])),
                                   build_loss(name, spacing=(1.0, 2.0, 3.0))(logits, labels))


# ------------------------------------------------------------------------------- the one spacing check
@pytest.mark.parametrize("value", [(1, 2, 3), [0.5, 0.5, 2.0], np.array([1.0, 2.0, 3.0]),
                                   torch.tensor([1.0, 2.0, 3.0])])
def test_check_spacing_accepts_sequences(value):
    assert check_spacing(value, 3, "x") == tuple(float(v) for v in value)
    assert all(isinstance(v, float) for v in check_spacing(value))


@pytest.mark.parametrize("value, ndim, msg", [
    ((1.0, 2.0), 3, r"owner: spacing must be 3 positive finite numbers in mm.*got 2 value\(s\): \(1.0, 2.0\)"),
    ((1.0, 0.0, 2.0), 3, r"owner: spacing must be 3 .*got \(1.0, 0.0, 2.0\)"),
    ((1.0, float("inf"), 2.0), 3, "inf"),
    (2.5, 3, "got 2.5"),
    ("abc", 3, "got the string 'abc'"),
    ((1.0, 1.0, 1.0), 2, "spacing must be 2 positive finite numbers"),
    (None, 3, "got None"),
])
def test_check_spacing_errors_name_owner_and_value(value, ndim, msg):
    with pytest.raises(ValueError, match=msg):
        check_spacing(value, ndim, "owner")


def test_all_three_places_use_the_one_check():
    label = np.zeros((4, 4, 4), int)
    with pytest.raises(ValueError, match=r"hausdorff loss: spacing must be 3 positive finite numbers in mm"):
        build_loss("hausdorff", spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"signed_distance_maps: spacing must be 3 positive finite numbers in mm"):
        signed_distance_maps(label, 2, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"metrics \(3-D label maps\): spacing must be 3 positive finite numbers"):
        compute_metrics(label, label, spacing=(1.0, 0.0, 1.0))
    # metrics keep their isotropic shorthand (one number) and 2-D maps
    assert compute_metrics(label[0], label[0], spacing=0.5)["mean"] is not None
