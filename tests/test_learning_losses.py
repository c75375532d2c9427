"""The learned-loss families: formulas, the TaylorGLO family's known members, the ML3 network and inner step."""
import math

import pytest
import torch

from spineloss.learning.expression import (EPS_DIV, PRIMITIVES, ExpressionLoss, canonical, constant_values,
                                           formula_string, name_constants, parse_formula, readable, replace_numbers)
from spineloss.learning.meta import MetaLoss, MetaLossNet, imitate, inner_step
from spineloss.learning.taylor import KNOWN_SETTINGS, TaylorFamily, TaylorLoss
from spineloss.losses import build_loss
from spineloss.model import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _inputs(C=3, seed=0, soft=False):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, C, 6, 5, 4, generator=g)
    target = torch.randint(0, max(C, 2), (2, 1, 6, 5, 4), generator=g)
    if soft and C > 1:
        target = torch.softmax(torch.randn(2, C, 6, 5, 4, generator=g), 1)
    return logits, target


# ----------------------------------------------------------------------------------------------- formulas
def test_parse_write_canonical_readable():
    node = parse_formula("add(mul(g, p), mul(0.5, neg(-2)))")
    assert formula_string(node) == "add(mul(g, p), mul(0.5, neg(-2.0)))"
    assert canonical(node) == canonical(parse_formula("add(mul(0.5, neg(-2)), mul(p, g))"))
    assert canonical(node) != canonical(parse_formula("sub(mul(g, p), mul(0.5, neg(-2)))"))
    assert readable(parse_formula("div(p, mul(g, add(p, 1.0)))")) == "p / (g * (p + 1))"
    named, values = name_constants(node)
    assert formula_string(named) == "add(mul(g, p), mul(c0, neg(c1)))" and values == {"c0": 0.5, "c1": -2.0}
    assert constant_values(node) == [0.5, -2.0]
    assert constant_values(replace_numbers(node, [1.0, 3.0])) == [1.0, 3.0]


def test_expression_values():
    x, y = _inputs(3)
    p = torch.softmax(x, 1)
    g = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    brier = ExpressionLoss("square(sub(p, g))")(x, y)
    assert torch.allclose(brier, ((p - g) ** 2).mean(), atol=1e-6)
    dice = ExpressionLoss("sub(1.0, div(mul(2.0, TP), add(add(mul(2.0, TP), FP), FN)))")
    assert torch.allclose(dice(x, y), build_loss("dice", smooth_nr=0.0, smooth_dr=1e-12)(x, y), atol=1e-6)
    per = ExpressionLoss("mul(c0, p)", {"c0": 2.0}, reduction="none")(x, y)
    assert per.shape == (2, 3) and torch.allclose(per, 2 * p.mean(dim=(2, 3, 4)), atol=1e-6)


def test_protected_primitives_stay_finite():
    x, y = _inputs(2)
    for formula in ("div(p, sub(g, g))", "log(sub(p, p))", "sqrt(neg(p))", "mul(p, div(log(g), sqrt(sub(g, g))))"):
        xa = x.clone().requires_grad_(True)
        value = ExpressionLoss(formula)(xa, y)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(xa.grad).all(), formula


def test_protections_are_continuous():
    """Inside the guard the protected log follows its tangent and the division divides by +-eps (version 2)."""
    plog, pdiv = PRIMITIVES["log"][1], PRIMITIVES["div"][1]
    eps = EPS_DIV
    t = torch.tensor
    for f in (lambda a: plog(a), lambda a: pdiv(t(1.0), a), lambda a: pdiv(t(1.0), -a)):
        below, above = f(t(eps * (1 - 1e-4), dtype=torch.float64)), f(t(eps * (1 + 1e-4), dtype=torch.float64))
        assert abs(float(below - above)) <= 1e-4 * abs(float(above)) + 1e-9
    assert float(plog(t(0.0))) == pytest.approx(math.log(eps) - 1.0)
    assert float(pdiv(t(3.0), t(0.0))) == pytest.approx(3.0 / eps) and float(pdiv(t(3.0), t(-eps / 2))) == \
        pytest.approx(-3.0 / eps)
    a = torch.linspace(0.0, 1e-5, 101, dtype=torch.float64).requires_grad_(True)
    y = plog(a)
    assert bool((y[1:] > y[:-1]).all())                      # still increasing through the guard
    (grad,) = torch.autograd.grad(y.sum(), a)
    assert bool((grad[1:] > 0).all())                        # a gradient everywhere but at exactly 0


@pytest.mark.parametrize("C", [2, 3])
def test_cross_entropy_formula_punishes_confident_mistakes(C):
    """``-g log p`` on a confidently wrong prediction (true-class p ~ 1e-9): a large loss and a gradient towards
    the target, not the 0 and no gradient of a log that switches off below eps."""
    ce = ExpressionLoss("neg(mul(g, log(p)))")
    _, y = _inputs(C)
    g = torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).float()
    wrong = torch.nn.functional.one_hot((y[:, 0] + 1) % C, C).movedim(-1, 1).float()
    perfect = ce(20.0 * g, y)
    x = (20.0 * wrong).requires_grad_(True)
    mistaken = ce(x, y)
    mistaken.backward()
    assert float(mistaken.detach()) > 10.0 / C > 1e3 * float(perfect)  # ~ (-log(1e-6) + 1) / C per voxel
    assert bool((x.grad[g.bool()] < 0).all())                 # raise the true class's logit everywhere
    # outside the guard it is plain cross-entropy
    logits, _ = _inputs(C)
    assert torch.allclose(ce(logits, y), build_loss("ce")(logits, y) / C, atol=1e-5)


def test_constants_are_tunable():
    loss = ExpressionLoss("mul(c0, square(sub(p, g)))", {"c0": 0.5})
    assert loss.tunable_parameters()["c0"].value == 0.5
    loss.set_parameter("c0", 2.0)
    assert loss.constants["c0"] == 2.0
    with pytest.raises(ValueError, match="unknown tunable"):
        loss.set_parameter("c9", 1.0)


# ------------------------------------------------------------------------------------------- taylor family
@pytest.mark.parametrize("setting, reference, C", [
    ("ce", "ce", 3), ("ce", "ce", 2), ("bce", "ce", 1),
    ("dice", "dice", 3), ("dice", "dice", 1),
    ("dice_ce", "dice_ce", 3), ("dice_ce", "dice_ce", 2),
    ("tversky", "tversky", 3), ("tversky", "tversky", 1),
])
@pytest.mark.parametrize("soft", [False, True])
def test_named_settings_reproduce_spineloss_losses(setting, reference, C, soft):
    loss = TaylorLoss(TaylorFamily().setting(setting))
    ref = build_loss(reference)
    for seed in range(3):
        x, y = _inputs(C, seed, soft)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        va, vb = loss(xa, y), ref(xb, y)
        va.backward()
        vb.backward()
        assert torch.allclose(va, vb, rtol=1e-5, atol=1e-6), (setting, float(va), float(vb))
        assert torch.allclose(xa.grad, xb.grad, rtol=1e-4, atol=1e-7)


def test_polynomial_members_equal_brier_and_l1_up_to_a_target_constant():
    x, y = _inputs(3)
    p = torch.softmax(x, 1)
    g = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    brier = TaylorLoss(KNOWN_SETTINGS["brier"])(x, y)
    assert torch.allclose(brier + (g ** 2).sum(1).mean(), ((p - g) ** 2).sum(1).mean(), atol=1e-5)
    l1 = TaylorLoss(KNOWN_SETTINGS["l1"])(x, y)
    assert torch.allclose(l1 + g.sum(1).mean(), (p - g).abs().sum(1).mean(), atol=1e-5)


def test_family_encoding_and_checks():
    fam = TaylorFamily(order=2)
    assert fam.names() == ["p1g0", "p2g0", "p1g1", "ce", "ce_neg", "dice", "tversky", "alpha", "beta"]
    c = fam.complete({"tversky": 1.0, "alpha": 0.3, "beta": 0.7})
    back = fam.decode(fam.encode(c))
    assert all(abs(back[k] - c[k]) < 1e-12 for k in c)
    assert TaylorFamily(order=3, log_terms=False, region_terms=False).names()[-1] == "p1g2"
    with pytest.raises(ValueError, match="order"):
        TaylorFamily(order=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        TaylorLoss({"ce": 1.0}, reduction="none")


# ------------------------------------------------------------------------------------------------- ML3
def test_meta_loss_is_nonnegative_and_imitates_bce():
    torch.manual_seed(0)
    net = MetaLossNet(hidden=(16, 16))
    err = imitate(net, "bce", steps=300)
    assert err < 0.05
    x, y = _inputs(1)
    value = MetaLoss(net)(x, y).detach()
    assert value >= 0
    assert abs(float(value) - float(build_loss("ce")(x, y))) < 0.15


def test_inner_step_leaves_the_model_untouched_and_reaches_the_loss_network():
    torch.manual_seed(0)
    model = build_model(1, 2, depth=2, base_channels=2, max_channels=4)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    net = MetaLossNet(hidden=(4,))
    loss = MetaLoss(net)
    x = torch.randn(2, 1, 8, 8, 8)
    y = (x > 0.5).long()
    updated, inner = inner_step(model, loss, x, y, lr=0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    # theta' = theta - lr * grad, and the outer loss differentiates into the loss network
    grads = torch.autograd.grad(loss(model(x), y), list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads):
        assert torch.allclose(updated[name], p - 0.5 * g, atol=1e-6), name
    logits = torch.func.functional_call(model, updated, (x,))
    outer = build_loss("dice", include_background=False)(logits, y)
    meta_grads = torch.autograd.grad(outer, list(net.parameters()))
    assert all(torch.isfinite(g).all() for g in meta_grads)
    assert any(g.abs().sum() > 0 for g in meta_grads)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
