"""Cheap rejection of candidate losses before any training."""
import pytest
import torch

from spineloss.learning.screening import screen
from spineloss.learning.taylor import TaylorFamily


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _expr(formula):
    return {"kind": "expression", "formula": formula, "constants": {}}


@pytest.mark.parametrize("C", [1, 2, 3])
@pytest.mark.parametrize("formula, reason", [
    ("mul(g, 2.0)", "ignores p"),
    ("square(add(p, 1.0))", "ignores g"),
    ("mul(p, square(square(square(square(square(square(div(g, 0.001))))))))", "not finite"),
    ("add(g, sub(p, p))", "no gradient"),
    ("neg(square(sub(p, g)))", "not minimised by the perfect prediction"),
    ("mul(g, log(p))", "not minimised by the perfect prediction"),
])
def test_rejects(formula, reason, C):
    got = screen(_expr(formula), C)
    assert got is not None and got.startswith(reason), got


def test_ignores_g_numerically():
    assert screen(_expr("add(square(p), sub(g, g))"), 2).startswith("ignores g")


@pytest.mark.parametrize("C", [1, 2, 3])
@pytest.mark.parametrize("formula", [
    "square(sub(p, g))",
    "sqrt(square(sub(p, g)))",
    "sub(1.0, div(mul(2.0, TP), add(add(mul(2.0, TP), FP), FN)))",
])
def test_accepts(formula, C):
    assert screen(_expr(formula), C) is None


def test_accepts_cross_entropy_with_a_softmax_only():
    ce = _expr("neg(mul(g, log(p)))")
    assert screen(ce, 2) is None
    # with one sigmoid channel -g log p ignores the background: predicting everything is as good
    assert screen(ce, 1).startswith("not minimised")


@pytest.mark.parametrize("setting", ["ce", "dice", "dice_ce", "tversky", "brier", "l1"])
def test_taylor_known_members_pass(setting):
    fam = TaylorFamily()
    doc = {"kind": "taylor", "family": fam.to_dict(), "coefficients": fam.setting(setting)}
    assert screen(doc, 2) is None


def _koza_log(a):
    """Version 1's protected log: log|a|, but 0 where |a| <= 1e-6 (discontinuous)."""
    ok = a.abs() > 1e-6
    return torch.where(ok, torch.log(torch.where(ok, a.abs(), torch.ones_like(a))), torch.zeros_like(a))


@pytest.mark.parametrize("C", [2, 3])
def test_a_tree_exploiting_a_discontinuity_is_rejected(monkeypatch, C):
    """With a log that switches off below 1e-6, ``-g log p`` costs nothing on a confidently wrong prediction;
    the confidently wrong prediction of rule 5 shows it (the smoothed wrong prediction does not)."""
    from spineloss.learning import expression
    log = expression.PRIMITIVES["log"]
    monkeypatch.setitem(expression.PRIMITIVES, "log", (log[0], _koza_log, log[2]))
    got = screen(_expr("neg(mul(g, log(p)))"), C)
    assert got is not None and got.startswith("not minimised by the perfect prediction"), got
    assert got.endswith("at the confidently wrong prediction"), got
    monkeypatch.setitem(expression.PRIMITIVES, "log", log)
    assert screen(_expr("neg(mul(g, log(p)))"), C) is None  # the continuous log of version 2


@pytest.mark.parametrize("C", [2, 3])
def test_the_gradient_is_taken_with_respect_to_the_logits(C):
    """``p + g`` has a gradient with respect to p, but the softmax the network trains through projects it away
    (sum_c p_c = 1): no gradient reaches the logits."""
    got = screen(_expr("add(p, g)"), C)
    assert got is not None and got.startswith("no gradient: the gradient with respect to the logits is zero"), got
    assert not (screen(_expr("mul(add(p, 1.0), add(g, 1.0))"), C) or "").startswith("no gradient")
    # one sigmoid channel: p + g does move the logits (and fails for another reason)
    assert not screen(_expr("add(p, g)"), 1).startswith("no gradient")


def test_invalid_documents_are_rejected_with_the_reason():
    assert screen(_expr("mul(p, q)"), 2).startswith("invalid")
    assert screen({"kind": "taylor", "family": {}, "coefficients": {"zz": 1.0}}, 2).startswith("invalid")


def test_same_seed_same_answer():
    doc = _expr("sub(square(p), mul(2.0, mul(p, g)))")
    assert screen(doc, 2, seed=3) == screen(doc, 2, seed=3)
