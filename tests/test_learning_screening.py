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


def test_invalid_documents_are_rejected_with_the_reason():
    assert screen(_expr("mul(p, q)"), 2).startswith("invalid")
    assert screen({"kind": "taylor", "family": {}, "coefficients": {"zz": 1.0}}, 2).startswith("invalid")


def test_same_seed_same_answer():
    doc = _expr("sub(square(p), mul(2.0, mul(p, g)))")
    assert screen(doc, 2, seed=3) == screen(doc, 2, seed=3)
