"""Hand-computed values on tiny arrays (the arithmetic is written out in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spineloss.losses import build_loss

TOL = dict(rel=1e-5, abs=1e-6)
NO_SMOOTH = dict(smooth_nr=0.0, smooth_dr=1e-12)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def binary_case():
    """One channel (sigmoid), four voxels: p = [0.8, 0.6, 0.3, 0.1], t = [1, 1, 0, 0].

    TP = 0.8 + 0.6 = 1.4, FP = 0.3 + 0.1 = 0.4, FN = 0.2 + 0.4 = 0.6, sum p = 1.8, sum t = 2.
    """
    x = torch.tensor([logit(v) for v in (0.8, 0.6, 0.3, 0.1)], dtype=torch.float64).float().view(1, 1, 1, 2, 2)
    t = torch.tensor([1, 1, 0, 0]).view(1, 1, 1, 2, 2)
    return x, t


def value(name, **kw) -> float:
    x, t = binary_case()
    return float(build_loss(name, **kw)(x, t))


def test_asymmetric_hand_value():
    # beta = 1.5, b2 = 2.25: 1 - 3.25*1.4 / (3.25*1.4 + 2.25*0.6 + 0.4) = 1 - 4.55 / 6.3 = 1.75 / 6.3 = 5/18
    assert value("asymmetric", **NO_SMOOTH) == pytest.approx(5 / 18, rel=1e-5)
    # beta = 1 is Dice: 1 - 2*1.4 / (1.8 + 2) = 1 / 3.8
    assert value("asymmetric", beta=1.0, **NO_SMOOTH) == pytest.approx(1 / 3.8, rel=1e-5)


def test_effectiveness_hand_value():
    # alpha = 0.5: 1 - 1.4 / (1.4 + 0.5*0.4 + 0.5*0.6) = 0.5 / 1.9 (= Dice)
    assert value("effectiveness", **NO_SMOOTH) == pytest.approx(0.5 / 1.9, rel=1e-5)
    assert value("effectiveness", **NO_SMOOTH) == pytest.approx(value("dice", **NO_SMOOTH), rel=1e-6)
    # alpha = 0.2: 1 - 1.4 / (1.4 + 0.08 + 0.48) = 0.56 / 1.96 = 2/7; via P = 1.4/1.8, R = 1.4/2:
    # 1 - 1 / (0.2/P + 0.8/R) = 1 - 1 / (0.257142.. + 1.142857..) = 1 - 1/1.4 = 2/7
    assert value("effectiveness", alpha=0.2, **NO_SMOOTH) == pytest.approx(2 / 7, rel=1e-5)
    P, R = 1.4 / 1.8, 1.4 / 2.0
    assert value("effectiveness", alpha=0.2, **NO_SMOOTH) == pytest.approx(1 - 1 / (0.2 / P + 0.8 / R), rel=1e-5)
    # alpha = 0 is 1 - recall = 0.3, alpha = 1 is 1 - precision = 0.4/1.8
    assert value("effectiveness", alpha=0.0, **NO_SMOOTH) == pytest.approx(0.3, rel=1e-5)
    assert value("effectiveness", alpha=1.0, **NO_SMOOTH) == pytest.approx(0.4 / 1.8, rel=1e-5)


def test_focal_tversky_hand_value():
    # TI = 1.4 / (1.4 + 0.3*0.4 + 0.7*0.6) = 1.4 / 1.94; 1 - TI = 0.54 / 1.94; loss = (0.54/1.94)^(3/4)
    assert value("focal_tversky", **NO_SMOOTH) == pytest.approx((0.54 / 1.94) ** 0.75, rel=1e-5)
    # gamma = 1 is the Tversky loss
    assert value("focal_tversky", gamma=1.0, **NO_SMOOTH) == pytest.approx(0.54 / 1.94, rel=1e-5)
    assert value("tversky", **NO_SMOOTH) == pytest.approx(0.54 / 1.94, rel=1e-5)


def test_topk_hand_value():
    # C = 2 softmax, label 1 everywhere, p_1 = [0.9, 0.5, 0.2, 0.99, 0.6]:
    # CE = -ln p = [0.10536, 0.69315, 1.60944, 0.01005, 0.51083]
    ps = [0.9, 0.5, 0.2, 0.99, 0.6]
    x = torch.zeros(1, 2, 1, 1, 5)
    x[0, 1, 0, 0] = torch.tensor([logit(p) for p in ps])
    y = torch.ones(1, 1, 1, 1, 5, dtype=torch.long)
    ce = [-math.log(p) for p in ps]
    # k = 40 %: floor(0.4 * 5) = 2 hardest voxels: (1.60944 + 0.69315) / 2
    assert float(build_loss("topk", k=40)(x, y)) == pytest.approx((ce[2] + ce[1]) / 2, rel=1e-5)
    # k = 10 %: floor(0.5) = 0 -> at least one voxel: the hardest, 1.60944
    assert float(build_loss("topk", k=10)(x, y)) == pytest.approx(ce[2], rel=1e-5)
    # k = 100 %: plain CE
    assert float(build_loss("topk", k=100)(x, y)) == pytest.approx(sum(ce) / 5, rel=1e-5)
    assert float(build_loss("topk", k=40, reduction="sum")(x, y)) == pytest.approx(ce[2] + ce[1], rel=1e-5)


def test_weighted_ce_hand_value():
    # C = 2, labels [0, 1, 1, 0], p_y = [0.8, 0.5, 0.25, 0.9], w = [1, 3]:
    # sum w_y l_y / sum w_y = (-ln .8 - 3 ln .5 - 3 ln .25 - ln .9) / (1 + 3 + 3 + 1)
    py = [0.8, 0.5, 0.25, 0.9]
    y = torch.tensor([0, 1, 1, 0]).view(1, 1, 1, 1, 4)
    x = torch.zeros(1, 2, 1, 1, 4)
    for n, (lab, p) in enumerate(zip([0, 1, 1, 0], py)):
        x[0, lab, 0, 0, n] = logit(p)  # the other logit is 0
    expected = -(math.log(0.8) + 3 * math.log(0.5) + 3 * math.log(0.25) + math.log(0.9)) / 8
    assert float(build_loss("wce", weight=[1.0, 3.0])(x, y)) == pytest.approx(expected, rel=1e-5)
    # inverse frequency from counts [300, 100]: w = 400/(2*300), 400/(2*100) = 2/3, 2 -> ratio 1 : 3, same value
    wce = build_loss("wce")
    wce.prepare(np.array([300, 100]))
    torch.testing.assert_close(wce.weight, torch.tensor([2 / 3, 2.0]))
    assert float(wce(x, y)) == pytest.approx(expected, rel=1e-5)
    # one-hot target: same value; sum reduction: the numerator only
    onehot = torch.stack([y[:, 0] == 0, y[:, 0] == 1], dim=1).float()
    assert float(build_loss("wce", weight=[1.0, 3.0])(x, onehot)) == pytest.approx(expected, rel=1e-5)
    assert float(build_loss("wce", weight=[1.0, 3.0], reduction="sum")(x, y)) == pytest.approx(8 * expected,
                                                                                                rel=1e-5)


def test_weighted_binary_ce_hand_value():
    # sigmoid, weights (background 1, foreground 4): p = [0.8, 0.6, 0.3, 0.1], t = [1, 1, 0, 0]
    x, t = binary_case()
    expected = -(4 * math.log(0.8) + 4 * math.log(0.6) + math.log(0.7) + math.log(0.9)) / (4 + 4 + 1 + 1)
    assert float(build_loss("wce", weight=[1.0, 4.0])(x, t)) == pytest.approx(expected, rel=1e-5)


def test_focal_hand_value():
    x, t = binary_case()
    # sigmoid: per element (1 - p_t)^2 (-ln p_t) with p_t = [0.8, 0.6, 0.7, 0.9]
    terms = [(1 - pt) ** 2 * -math.log(pt) for pt in (0.8, 0.6, 0.7, 0.9)]
    assert float(build_loss("focal")(x, t)) == pytest.approx(sum(terms) / 4, rel=1e-5)
    # alpha = 0.25 on positives, 0.75 on negatives
    a = [0.25, 0.25, 0.75, 0.75]
    assert float(build_loss("focal", alpha=0.25)(x, t)) == pytest.approx(
        sum(w * v for w, v in zip(a, terms)) / 4, rel=1e-5)


def test_boundary_and_hausdorff_hand_values():
    # 1 x 5 voxels, ground truth [0, 1, 1, 0, 0]: phi = [1, -1, -1, 1, 2]; Kervadec's phi_K = [1, 0, 0, 1, 2]
    t = torch.tensor([0, 1, 1, 0, 0]).view(1, 1, 1, 1, 5)
    p = [0.2, 0.9, 0.6, 0.3, 0.1]
    x = torch.tensor([logit(v) for v in p]).view(1, 1, 1, 1, 5)
    phi_k = [1, 0, 0, 1, 2]
    assert float(build_loss("boundary")(x, t)) == pytest.approx(sum(a * b for a, b in zip(p, phi_k)) / 5, **TOL)
    phi = [1, -1, -1, 1, 2]
    assert float(build_loss("boundary", inside_offset=0.0)(x, t)) == pytest.approx(
        sum(a * b for a, b in zip(p, phi)) / 5, **TOL)
    # Hausdorff: prediction mask p > 0.5 = [0, 1, 1, 0, 0] equals the truth, so d_P = d_G = |phi|;
    # loss = mean((p - t)^2 (d_G^2 + d_P^2)) = mean((p - t)^2 * 2 phi^2)
    err = [(a - b) ** 2 for a, b in zip(p, [0, 1, 1, 0, 0])]
    expected = sum(e * 2 * f * f for e, f in zip(err, phi)) / 5
    assert float(build_loss("hausdorff")(x, t)) == pytest.approx(expected, **TOL)
    # spacing 2 mm along the last axis: distances double, the loss scales by 2^alpha = 4
    assert float(build_loss("hausdorff", spacing=(1.0, 1.0, 2.0))(x, t)) == pytest.approx(4 * expected, **TOL)


def test_relative_boundary_is_measured_from_its_optimum():
    # phi = [1, -1, -1, 1, 2] (inside_offset 0): the minimum of sum p * phi / N is sum min(phi, 0) / N = -2/5
    t = torch.tensor([0, 1, 1, 0, 0]).view(1, 1, 1, 1, 5)
    p = [0.2, 0.9, 0.6, 0.3, 0.1]
    x = torch.tensor([logit(v) for v in p], requires_grad=True)
    plain = build_loss("boundary", inside_offset=0.0)(x.view(1, 1, 1, 1, 5), t)
    relative = build_loss("boundary", inside_offset=0.0, relative=True)(x.view(1, 1, 1, 1, 5), t)
    assert relative.item() == pytest.approx(plain.item() + 2 / 5, **TOL)
    assert relative.item() == pytest.approx(sum((a - b) * f for a, b, f in zip(p, [0, 1, 1, 0, 0], [1, -1, -1, 1, 2]))
                                            / 5, **TOL)
    g_plain, = torch.autograd.grad(plain, x)
    g_rel, = torch.autograd.grad(relative, x)
    assert torch.equal(g_plain, g_rel)
    # 0 at the perfect prediction, never below
    perfect = torch.tensor([-30.0, 30.0, 30.0, -30.0, -30.0]).view(1, 1, 1, 1, 5)
    assert float(build_loss("boundary", inside_offset=0.0, relative=True)(perfect, t)) == pytest.approx(0.0, abs=1e-6)
    assert not build_loss("boundary", relative=True).can_be_negative and build_loss("boundary").can_be_negative
    with pytest.raises(ValueError, match="relative must be true or false"):
        build_loss("boundary", relative="yes")
