"""Registry, validation errors, empty ground truth, soft targets, tunable parameters, prepare(), shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spineloss.losses import (
    Loss,
    LossNotPreparedError,
    ParamSpec,
    WeightedSumLoss,
    available_losses,
    build_loss,
)
from spineloss.losses.base import _lane_base, _SoftmaxLabelStats
from spineloss.losses.distance_maps import signed_distance_maps_torch

ALL = ["asymmetric", "boundary", "ce", "dice", "dice_ce", "dice_focal", "effectiveness", "focal",
       "focal_tversky", "hausdorff", "iou", "topk", "tversky", "tversky_focal", "wce", "weighted_sum"]
SINGLE = [n for n in ALL if n != "weighted_sum"]


def make(name: str, **kw) -> Loss:
    if name == "weighted_sum":
        return build_loss("weighted_sum", terms={"dice": 1.0, "boundary": 0.01, "ce": 0.5}, **kw)
    loss = build_loss(name, **kw)
    if name == "wce":
        loss.prepare(np.array([1000, 100, 50, 10]))
    return loss


def blobs(B=2, C=4, shape=(6, 7, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool3d(torch.randn((B, C) + shape, generator=g), 3, stride=1, padding=1,
                         count_include_pad=False)
    labels = field.argmax(1, keepdim=True)
    logits = 2.0 * (labels == torch.arange(C).view(1, C, 1, 1, 1)).float() + torch.randn((B, C) + shape,
                                                                                          generator=g)
    return logits, labels


# ----------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_loss():
    assert available_losses() == ALL


def test_build_loss_by_name_and_config():
    assert build_loss("Dice").name == "dice"
    assert build_loss("focal-tversky").name == "focal_tversky"
    s = build_loss({"dice": 1.0, "boundary": 0.01}, include_background=False, spacing=(1.0, 1.0, 2.0))
    assert isinstance(s, WeightedSumLoss) and s.weights == {"dice": 1.0, "boundary": 0.01}
    assert s.terms["dice"].include_background is False and s.terms["boundary"].spacing == (1.0, 1.0, 2.0)
    s2 = build_loss("weighted_sum", terms={"dice": {"weight": 1.0, "smooth_nr": 1e-4},
                                           "boundary": {"weight": 0.01}})
    assert s2.terms["dice"].smooth_nr == 1e-4 and s2.weights["boundary"] == 0.01
    s3 = build_loss({"dice": {"class_weight": [1.0, 2.0]}, "ce": {"class_weight": [0.5, 1.0]}})
    assert s3.terms["dice"].weight.tolist() == [1.0, 2.0] and s3.terms["ce"].weight.tolist() == [0.5, 1.0]


@pytest.mark.parametrize("call, msg", [
    (lambda: build_loss("dcie"), "available losses: asymmetric, boundary"),
    (lambda: build_loss("dice", gamma=2.0), "does not take parameter"),
    (lambda: build_loss({"dice": 1.0, "nope": 1.0}), "unknown loss 'nope'"),
    (lambda: build_loss({"dice": 1.0}, spacing=(1, 1, 1)), "accepted by none of the terms"),
    (lambda: build_loss({"dice": -1.0}), "weight.dice"),
    (lambda: build_loss({}), "non-empty"),
    (lambda: build_loss({"dice": 1.0}, reduction="avg"), "reduction"),
    (lambda: build_loss({"dice": 1.0, "hausdorff": 1.0}, reduction="none")(*blobs()), "do not broadcast"),
    (lambda: build_loss({"dice": {"activation": "sigmoid"}}), "set it on the sum"),
    (lambda: build_loss(3), "must be a string"),
])
def test_registry_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_needs_distance_maps():
    wanted = {"hausdorff", "boundary", "weighted_sum"}  # the weighted_sum of make() contains boundary
    for name in ALL:
        assert make(name).needs_distance_maps == (name in wanted), name
    assert not build_loss({"dice": 1.0, "ce": 1.0}).needs_distance_maps


# ------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name, kw, msg", [
    ("focal", dict(gamma=-1.0), r"'gamma' must be in \[0, 10\]"),
    ("focal", dict(alpha=1.5), r"'alpha' must be in \[0, 1\]"),
    ("focal", dict(alpha=[0.5, 1.2]), "alpha values"),
    ("topk", dict(k=0.0), r"'k' must be in \(0, 100\]"),
    ("topk", dict(k=101), r"'k' must be in \(0, 100\]"),
    ("tversky", dict(alpha=1.0), r"'alpha' must be in \(0, 1\)"),
    ("tversky", dict(beta=0.0), r"'beta' must be in \(0, 1\)"),
    ("focal_tversky", dict(gamma=0.0), "'gamma'"),
    ("asymmetric", dict(beta=0.0), "'beta'"),
    ("effectiveness", dict(alpha=-0.1), "'alpha'"),
    ("hausdorff", dict(alpha=0.0), "'alpha'"),
    ("dice", dict(smooth_dr=0.0), "'smooth_dr'"),
    ("dice", dict(smooth_nr=float("nan")), "'smooth_nr'"),
    ("dice", dict(reduction="avg"), "reduction must be one of"),
    ("dice", dict(activation="relu"), "activation must be one of"),
    ("dice", dict(weight=[1.0, -2.0]), "finite and >= 0"),
    ("dice", dict(include_background="no"), "include_background"),
    ("boundary", dict(spacing=(1.0, -1.0, 1.0)), "spacing"),
    ("boundary", dict(inside_offset=-1.0), "inside_offset"),
    ("wce", dict(weight="median"), "inverse_frequency"),
    ("dice_ce", dict(lambda_ce=-1.0), "lambda_ce"),
    ("dice_focal", dict(gamma=-2.0), "gamma"),
])
def test_invalid_parameters(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        build_loss(name, **kw)


def test_tunable_parameters_and_set_parameter():
    for name in ALL:
        loss = make(name)
        specs = loss.tunable_parameters()
        for pname, spec in specs.items():
            assert isinstance(spec, ParamSpec) and spec.name == pname
            assert spec.contains(spec.value), (name, pname)
            loss.set_parameter(pname, spec.value)  # round trip
    tv = build_loss("tversky")
    assert set(tv.tunable_parameters()) == {"alpha", "beta", "smooth_nr", "smooth_dr"}
    tv.set_parameter("alpha", 0.6)
    assert tv.alpha == 0.6
    with pytest.raises(ValueError, match=r"'beta' must be in \(0, 1\), got 1.5"):
        tv.set_parameter("beta", 1.5)
    with pytest.raises(ValueError, match="unknown tunable parameter 'gamma'"):
        tv.set_parameter("gamma", 1.0)
    fo = build_loss("focal")
    assert set(fo.tunable_parameters()) == {"gamma"}  # alpha=None is not a scalar knob
    fo.set_parameter("alpha", 0.25)
    assert fo.tunable_parameters()["alpha"].value == 0.25


def test_compound_parameters_are_prefixed():
    loss = build_loss("tversky_focal")
    specs = loss.tunable_parameters()
    assert {"tversky.alpha", "tversky.beta", "focal.gamma", "weight.tversky", "weight.focal"} <= set(specs)
    loss.set_parameter("focal.gamma", 1.0)
    loss.set_parameter("weight.focal", 0.5)
    assert loss.terms["focal"].gamma == 1.0 and loss.weights["focal"] == 0.5
    with pytest.raises(ValueError, match="weight.focal"):
        loss.set_parameter("weight.focal", -1.0)
    with pytest.raises(ValueError, match="unknown tunable parameter"):
        loss.set_parameter("dice.smooth_nr", 1e-3)
    dce = build_loss("dice_ce", lambda_dice=0.3, lambda_ce=1.7)
    assert dce.tunable_parameters()["weight.dice"].value == pytest.approx(0.3)
    assert "dice.smooth_nr" in dce.tunable_parameters()


def test_prepare_inverse_frequency():
    logits, labels = blobs(C=3)
    wce = build_loss("wce")
    with pytest.raises(LossNotPreparedError, match="prepare"):
        wce(logits, labels)
    wce.prepare(np.array([600, 300, 100]))
    # w_c = n / (K n_c) = 1000 / (3 * [600, 300, 100])
    torch.testing.assert_close(wce.weight, torch.tensor([1000 / 1800, 1000 / 900, 1000 / 300]))
    expected = F.cross_entropy(logits, labels[:, 0], weight=wce.weight)
    torch.testing.assert_close(wce(logits, labels), expected)
    wce.prepare(np.array([5, 0, 5]))  # an absent class: weight n / K (count taken as 1), finite
    assert torch.isfinite(wce.weight).all()
    with pytest.raises(ValueError, match="class_voxel_counts"):
        wce.prepare(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="all zero"):
        wce.prepare(np.array([0, 0, 0]))
    compound = build_loss({"dice": 1.0, "wce": 1.0})
    compound.prepare(np.array([600, 300, 100]))  # forwarded to the terms
    assert torch.isfinite(compound(logits, labels))
    assert build_loss("ce").prepare(np.array([1, 2, 3])) is None  # a no-op elsewhere


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("make_args, msg", [
    (lambda x, y: (x[0], y), "B x C x D x H x W"),
    (lambda x, y: (x.long(), y), "floating point"),
    (lambda x, y: (x, y[:, :, :-1]), "does not match"),
    (lambda x, y: (x, y[:1]), "does not match"),
    (lambda x, y: (x, torch.cat([y, y], 1)), "channels"),
    (lambda x, y: (x, y[0, 0]), "label map"),
    (lambda x, y: (x, torch.full_like(y, 4)), "target label 4 >= number of channels C = 4"),
    (lambda x, y: (x, y - 1), "must be >= 0"),
    (lambda x, y: (x, y.float() + 0.5), "whole numbers"),
    (lambda x, y: (x, torch.full(x.shape, 1.5)), r"\[0, 1\]"),
    (lambda x, y: (x[:, :1], y.clamp(max=1) * 2), "must be 0/1"),
    (lambda x, y: ("logits", y), "torch.Tensor"),
])
def test_invalid_inputs(make_args, msg):
    logits, labels = blobs()
    for name in ("dice", "ce", "focal", "boundary"):
        with pytest.raises(ValueError, match=msg):
            make(name)(*make_args(logits, labels))


def test_softmax_needs_two_channels():
    logits, labels = blobs(C=2)
    with pytest.raises(ValueError, match="needs C > 1"):
        build_loss("dice", activation="softmax")(logits[:, :1], labels)


@pytest.mark.parametrize("name", ALL)
def test_nan_or_inf_in_logits_is_named(name):
    logits, labels = blobs()
    logits[1, 2, 3, 4, 5] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(NaN\), the first at index \(1, 2, 3, 4, 5\)"):
        make(name)(logits, labels)
    logits[1, 2, 3, 4, 5] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        make(name)(logits, labels)
    loss = make(name)
    loss.validate = False  # the check can be switched off
    assert not torch.isfinite(loss(logits, labels)).all()


def test_dist_map_checks():
    logits, labels = blobs()
    with pytest.raises(ValueError, match="dist_map must have shape"):
        build_loss("boundary")(logits, labels, dist_map=torch.zeros(2, 3, 6, 7, 8))
    bad = signed_distance_maps_torch(labels, 4)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="dist_map contains NaN"):
        build_loss("boundary")(logits, labels, dist_map=bad)


def test_class_weight_length_checked_at_call():
    logits, labels = blobs(C=4)
    with pytest.raises(ValueError, match="C = 4 values"):
        build_loss("ce", weight=[1.0, 2.0])(logits, labels)
    with pytest.raises(ValueError, match="weight has 4 values but 3 classes are scored"):
        build_loss("dice", weight=[1.0, 2.0, 3.0, 4.0], include_background=False)(logits, labels)
    with pytest.raises(ValueError, match="alpha has 2 values"):
        build_loss("focal", alpha=[0.2, 0.8])(logits, labels)


# ------------------------------------------------------------------------------------- empty ground truth
@pytest.mark.parametrize("name", ALL)
def test_empty_ground_truth_is_finite(name):
    """Every loss: all-background labels (C = 4) and an empty binary foreground (C = 1) give finite values and
    gradients, whatever the prediction."""
    g = torch.Generator().manual_seed(1)
    for C in (4, 1):
        labels = torch.zeros((2, 1, 5, 6, 7), dtype=torch.long)
        for logits in (torch.randn((2, C, 5, 6, 7), generator=g), torch.full((2, C, 5, 6, 7), -30.0)):
            loss = build_loss("wce", weight=[1.0, 3.0]) if (name == "wce" and C == 1) else make(name)
            x = logits.clone().requires_grad_(True)
            value = loss(x, labels)
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(x.grad).all(), (name, C)


def test_empty_ground_truth_documented_values():
    labels = torch.zeros((1, 1, 4, 4, 4), dtype=torch.long)
    empty_pred = torch.zeros((1, 2, 4, 4, 4))
    empty_pred[:, 0] = 30.0  # confident background everywhere
    full_pred = torch.zeros((1, 2, 4, 4, 4))
    full_pred[:, 1] = 30.0  # confident foreground everywhere
    for name in ("dice", "iou", "tversky", "asymmetric", "effectiveness", "focal_tversky"):
        loss = build_loss(name, include_background=False)
        assert float(loss(empty_pred, labels)) == pytest.approx(0.0, abs=1e-4), name  # nothing to find
        assert float(loss(full_pred, labels)) == pytest.approx(1.0, abs=1e-4), name  # all false positives
    # boundary: an empty class has phi = 0, hence contributes 0
    assert float(build_loss("boundary", include_background=False)(full_pred, labels)) == 0.0
    # hausdorff: d_G = 0; empty prediction too -> 0; a full prediction has no boundary either (d_P = 0)
    assert float(build_loss("hausdorff")(empty_pred, labels)) == pytest.approx(0.0, abs=1e-12)
    # binary: empty foreground, sigmoid
    x = torch.full((1, 1, 4, 4, 4), -30.0)
    assert float(build_loss("dice")(x, labels)) == pytest.approx(0.0, abs=1e-4)
    assert float(build_loss("ce")(x, labels)) == pytest.approx(0.0, abs=1e-6)


# -------------------------------------------------------------------------------------------- soft targets
@pytest.mark.parametrize("name", ALL)
def test_one_hot_target_equals_label_map(name):
    logits, labels = blobs()
    onehot = (labels == torch.arange(4).view(1, 4, 1, 1, 1)).float()
    loss = make(name)
    torch.testing.assert_close(loss(logits, onehot), loss(logits, labels), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss(logits, labels[:, 0]), loss(logits, labels), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_mixup_soft_targets_work(name):
    logits, labels = blobs(seed=2)
    _, other = blobs(seed=3)
    ar = torch.arange(4).view(1, 4, 1, 1, 1)
    lam = 0.3
    soft = lam * (labels == ar).float() + (1 - lam) * (other == ar).float()
    x = logits.clone().requires_grad_(True)
    value = make(name)(x, soft)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_soft_cross_entropy_is_linear_in_the_target():
    logits, a = blobs(seed=4)
    _, b = blobs(seed=5)
    ar = torch.arange(4).view(1, 4, 1, 1, 1)
    soft = 0.3 * (a == ar).float() + 0.7 * (b == ar).float()
    ce = build_loss("ce")
    torch.testing.assert_close(ce(logits, soft), 0.3 * ce(logits, a) + 0.7 * ce(logits, b))
    fo = build_loss("focal", gamma=2.0)
    torch.testing.assert_close(fo(logits, soft), 0.3 * fo(logits, a) + 0.7 * fo(logits, b))


def test_soft_label_dice_is_zero_at_the_soft_target():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 3, 4, 5, 6), generator=g)
    target = torch.softmax(logits, 1)  # the prediction itself, soft
    assert float(build_loss("dice", soft_label=True)(logits, target)) == pytest.approx(0.0, abs=1e-5)
    assert float(build_loss("dice")(logits, target)) > 0.05  # the usual soft Dice is not minimal there


# ---------------------------------------------------------------------------------------- shapes, dtype
def test_reduction_none_shapes():
    logits, labels = blobs()
    assert build_loss("dice", reduction="none")(logits, labels).shape == (2, 4)
    assert build_loss("dice", reduction="none", include_background=False, batch=True)(logits, labels).shape == (1, 3)
    assert build_loss("hausdorff", reduction="none")(logits, labels).shape == (2, 3)
    assert build_loss("boundary", reduction="none")(logits, labels).shape == (2, 4)
    assert build_loss("ce", reduction="none")(logits, labels).shape == (2, 6, 7, 8)
    assert build_loss("focal", reduction="none")(logits, labels).shape == (2, 6, 7, 8)
    assert build_loss("topk", reduction="none")(logits, labels).shape == (2, 6, 7, 8)
    assert build_loss("focal", reduction="none", activation="sigmoid")(logits, labels).shape == (2, 4, 6, 7, 8)
    none = build_loss("topk", k=25, reduction="none")(logits, labels)
    assert (none > 0).sum() == math.floor(0.25 * none.numel())
    sums = build_loss("dice", reduction="sum")(logits, labels)
    torch.testing.assert_close(sums, build_loss("dice", reduction="none")(logits, labels).sum())


def test_fp32_under_autocast_and_low_precision_inputs():
    logits, labels = blobs()
    ref = build_loss("dice_ce")(logits, labels)
    for dtype in (torch.bfloat16, torch.float16):
        out = build_loss("dice_ce")(logits.to(dtype), labels)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, build_loss("dice_ce")(logits.to(dtype).float(), labels))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build_loss("dice_ce")(logits, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_distance_losses_same_value_with_or_without_pipeline_maps():
    logits, labels = blobs()
    maps = signed_distance_maps_torch(labels, 4, spacing=(2.0, 1.0, 1.5))
    for name in ("hausdorff", "boundary"):
        loss = build_loss(name, spacing=(2.0, 1.0, 1.5))
        torch.testing.assert_close(loss(logits, labels, maps), loss(logits, labels))
    s = build_loss({"dice": 1.0, "hausdorff": 0.1, "boundary": 0.01})
    torch.testing.assert_close(s(logits, labels, signed_distance_maps_torch(labels, 4)), s(logits, labels))
    assert set(s.last_term_values) == {"dice", "hausdorff", "boundary"}
    total = sum(s.weights[k] * v for k, v in s.last_term_values.items())
    torch.testing.assert_close(total, s(logits, labels))


def test_compound_shares_statistics_and_matches_the_sum_of_terms():
    logits, labels = blobs()
    dce = build_loss("dice_ce", squared_pred=True, lambda_ce=0.5)
    expected = build_loss("dice", squared_pred=True)(logits, labels) + 0.5 * build_loss("ce")(logits, labels)
    torch.testing.assert_close(dce(logits, labels), expected)
    tf = build_loss("tversky_focal", alpha=0.4, beta=0.6, gamma=1.0, focal_alpha=0.3)
    expected = build_loss("tversky", alpha=0.4, beta=0.6)(logits, labels) + \
        build_loss("focal", gamma=1.0, alpha=0.3)(logits, labels)
    torch.testing.assert_close(tf(logits, labels), expected)


def test_fused_statistics_gradients():
    """The hand-written backward of the fused softmax statistics against finite differences."""
    g = torch.Generator().manual_seed(0)
    B, C, N = 2, 3, 40
    x = torch.randn((B, C, N), generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(0, C, (B, 1, N), generator=g)
    base, K = _lane_base(B, C, N, x.device)
    bins = torch.add(base, y[:, 0], alpha=K)

    def outputs(x):
        p, tp, sp, sq, lpt = _SoftmaxLabelStats.apply(x, y, bins, K, True, True, True)
        return p, tp, sp, sq, lpt

    assert torch.autograd.gradcheck(outputs, (x,))
    assert torch.autograd.gradcheck(lambda x: _SoftmaxLabelStats.apply(x, y, bins, K, True, False, False)[1], (x,))
    assert torch.autograd.gradcheck(lambda x: _SoftmaxLabelStats.apply(x, y, bins, K, False, False, True)[4], (x,))


def test_extreme_logits_keep_exact_log_probabilities():
    x = torch.zeros((1, 2, 1, 1, 3))
    x[0, 0] = 200.0  # p_1 underflows to 0 in float32
    y = torch.ones((1, 1, 1, 1, 3), dtype=torch.long)
    loss = build_loss("focal", gamma=0.0)
    torch.testing.assert_close(loss(x, y), torch.tensor(200.0))
    torch.testing.assert_close(build_loss("topk", k=100)(x, y), torch.tensor(200.0))
