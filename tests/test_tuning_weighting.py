"""Adaptive loss weighting (spineloss.tuning.weighting) against sequences worked out by hand from the papers'
formulas: Rebalance (linear ramp), SoftAdapt (Heydari et al. 2019, arXiv:1912.12355) and CoV weighting
(Groenendijk et al. 2021, WACV). The expected numbers are literals; the comments give the arithmetic."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from spineloss.losses import build_loss
from spineloss.tuning.weighting import (CoVWeighting, RebalanceWeighting, SoftAdaptWeighting, WeightsCSV,
                                        apply_weights, available_weightings, backward_difference_coefficients,
                                        build_weighting, read_weights_csv, term_values, weighting_from_state)

TERMS = ["dice", "ce"]
approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-15)  # noqa: E731


def _feed(scheme, rows, first_step=0):
    """update() with each row {term: value}; returns the weights returned after each step."""
    return [scheme.update(first_step + i, row) for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------------------------------------
# Rebalance


def test_rebalance_endpoints_and_midpoint():
    # T = 11 steps: f(t) = t / 10; alpha = (1 - f) start + f end, start (1, 0.01), end (1, 1)
    r = build_weighting("rebalance", TERMS, 11, start=(1.0, 0.01), end=(1.0, 1.0))
    assert r.weights() == {"dice": 1.0, "ce": 0.01}                       # step 0: start exactly
    vals = {"dice": 0.3, "ce": 0.7}
    assert r.update(4, vals) == approx({"dice": 1.0, "ce": 0.505})         # step 5: f = 0.5, 0.01 + 0.99/2
    assert r.update(8, vals) == approx({"dice": 1.0, "ce": 0.901})         # step 9: f = 0.9, 0.1*0.01 + 0.9
    assert r.update(9, vals) == {"dice": 1.0, "ce": 1.0}                   # step 10 = T - 1: end exactly
    assert r.update(30, vals) == {"dice": 1.0, "ce": 1.0}                  # past the end: stays at end
    # Kervadec et al.'s (1 - a) GDL + a BL with a rising, as a mapping; T = 5: f(2) = 0.5
    k = RebalanceWeighting(["gdl", "boundary"], 5, start={"boundary": 0.01, "gdl": 0.99},
                           end={"gdl": 0.01, "boundary": 0.99})
    assert k.weights() == {"gdl": 0.99, "boundary": 0.01}
    assert k.weights_at(2) == approx({"gdl": 0.5, "boundary": 0.5})
    assert k.weights_at(4) == {"gdl": 0.01, "boundary": 0.99}
    assert RebalanceWeighting(TERMS, 1).weights_at(7) == {"dice": 1.0, "ce": 0.01}  # T = 1: no ramp


def test_rebalance_errors():
    with pytest.raises(ValueError, match="exactly two terms"):
        RebalanceWeighting(["dice", "ce", "boundary"], 10)
    with pytest.raises(ValueError, match="start must be two weights"):
        RebalanceWeighting(TERMS, 10, start=(1.0, 0.5, 0.2))
    with pytest.raises(ValueError, match=r"end weights must be >= 0"):
        RebalanceWeighting(TERMS, 10, end=(1.0, -0.5))
    with pytest.raises(ValueError, match="must give the weights of the terms"):
        RebalanceWeighting(TERMS, 10, start={"dice": 1.0, "boundary": 0.1})


# ---------------------------------------------------------------------------------------------------------
# SoftAdapt

# made-up per-step term values
DICE = [1.0, 0.8, 0.7, 0.65, 0.5, 0.45]
CE = [0.5, 0.6, 0.4, 0.45, 0.44, 0.40]
ROWS = [{"dice": d, "ce": c} for d, c in zip(DICE, CE)]


def test_backward_difference_coefficients():
    # sum_{m=1}^{n-1} nabla^m / m: n=2: f_t - f_{t-1}; n=3: + (f_t - 2 f_{t-1} + f_{t-2}) / 2
    assert backward_difference_coefficients(2) == [1.0, -1.0]
    assert backward_difference_coefficients(3) == [1.5, -2.0, 0.5]
    assert backward_difference_coefficients(4) == approx([11 / 6, -3.0, 1.5, -1 / 3])
    # exact for polynomials of degree n - 1: t^2 on t = 0, 1, 2 -> 2t = 4; t^3 on t = 0..3 -> 3t^2 = 27
    quad, cubic = SoftAdaptWeighting(TERMS, 10, n=3), SoftAdaptWeighting(TERMS, 10, n=4)
    _feed(quad, [{"dice": t ** 2, "ce": 1.0} for t in range(3)])
    _feed(cubic, [{"dice": t ** 3, "ce": 1.0} for t in range(4)])
    assert quad.slopes() == {"dice": 4.0, "ce": 0.0} and cubic.slopes() == {"dice": 27.0, "ce": 0.0}


# n = 3, beta = 2. Window of steps 0..2, slopes s = (3 L_2 - 4 L_1 + L_0) / 2:
#   dice: (2.1 - 3.2 + 1.0) / 2 = -0.05      ce: (1.2 - 2.4 + 0.5) / 2 = -0.35
#   original:      alpha_dice = 1 / (1 + e^{2 (-0.35 + 0.05)}) = 1 / (1 + e^{-0.6})            = 0.6456563062257954
#   normalized:    |s|_1 = 0.4, ns = (-0.125, -0.875): 1 / (1 + e^{2 (-0.75)}) = 1/(1+e^{-1.5}) = 0.8175744761936437
#   loss_weighted: f = window means (2.5/3, 0.5):
#                  (2.5/3) e^{-0.1} / ((2.5/3) e^{-0.1} + 0.5 e^{-0.7}) = 1 / (1 + 0.6 e^{-0.6}) = 0.7522830011875288
#   loss_weighted, loss_value="last": f = (0.7, 0.4): 1 / (1 + (4/7) e^{-0.6})                 = 0.7612628944985996
# Window of steps 1..3: dice: (1.95 - 2.8 + 0.8) / 2 = -0.025      ce: (1.35 - 1.6 + 0.6) / 2 = 0.175
#   original:      1 / (1 + e^{2 (0.175 + 0.025)}) = 1 / (1 + e^{0.4})                          = 0.401312339887548
#   normalized:    |s|_1 = 0.2, ns = (-0.125, 0.875): 1 / (1 + e^{2 * 1.0}) = 1 / (1 + e^2)     = 0.11920292202211755
#   loss_weighted: f = (2.15/3, 1.45/3): 1 / (1 + (1.45/2.15) e^{0.4})                         = 0.49847607614556544
@pytest.mark.parametrize("variant,loss_value,first,second", [
    ("original", "mean", 0.6456563062257954, 0.401312339887548),
    ("normalized", "mean", 0.8175744761936437, 0.11920292202211755),
    ("loss_weighted", "mean", 0.7522830011875288, 0.49847607614556544),
    ("loss_weighted", "last", 0.7612628944985996, None),
])
def test_softadapt_variants(variant, loss_value, first, second):
    s = build_weighting("softadapt", TERMS, 100, variant=variant, beta=2.0, n=3, loss_value=loss_value)
    assert s.weights() == {"dice": 0.5, "ce": 0.5}                 # equal until n values exist
    w = _feed(s, ROWS[:4])
    assert w[0] == w[1] == {"dice": 0.5, "ce": 0.5}
    assert w[2] == approx({"dice": first, "ce": 1.0 - first})       # after step 2: window 0..2
    if second is not None:
        assert w[3] == approx({"dice": second, "ce": 1.0 - second})  # after step 3: window 1..3
    assert s.slopes() == approx({"dice": -0.025, "ce": 0.175})


def test_softadapt_every_k():
    # k = 2, n = 3, beta = 2: updates only after steps 1, 3, 5 ((step + 1) % 2 == 0) once 3 values exist.
    #   after step 1: 2 values only -> equal; after step 2: no update -> equal
    #   after step 3: window 1..3 -> 0.401312339887548 (as above); after step 4: unchanged
    #   after step 5: window 3..5: dice (1.35 - 2.0 + 0.65) / 2 = 0, ce (1.2 - 1.76 + 0.45) / 2 = -0.055
    #                 alpha_dice = 1 / (1 + e^{2 (-0.055)}) = 1 / (1 + e^{-0.11}) = 0.5274723043445937
    s = SoftAdaptWeighting(TERMS, 100, beta=2.0, n=3, update_every=2)
    w = _feed(s, ROWS)
    half = {"dice": 0.5, "ce": 0.5}
    assert w[0] == w[1] == w[2] == half
    assert w[3] == approx({"dice": 0.401312339887548, "ce": 0.598687660112452})
    assert w[4] == w[3]
    assert w[5] == approx({"dice": 0.5274723043445937, "ce": 0.4725276956554063})


def test_softadapt_edge_cases():
    # all slopes 0: normalized gives ns = 0 -> equal weights; beta = 0 -> equal weights
    flat = [{"dice": 0.5, "ce": 0.2}] * 3
    assert _feed(SoftAdaptWeighting(TERMS, 10, variant="normalized"), flat)[-1] == {"dice": 0.5, "ce": 0.5}
    assert _feed(SoftAdaptWeighting(TERMS, 10, beta=0.0), ROWS[:3])[-1] == {"dice": 0.5, "ce": 0.5}
    with pytest.raises(ValueError, match="needs loss values >= 0"):
        _feed(SoftAdaptWeighting(TERMS, 10, variant="loss_weighted"), [{"dice": -1.0, "ce": 0.2}] * 3)
    with pytest.raises(ValueError, match="variant must be one of"):
        SoftAdaptWeighting(TERMS, 10, variant="fancy")
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        SoftAdaptWeighting(TERMS, 10, n=1)
    with pytest.raises(ValueError, match="update_every must be an integer >= 1"):
        SoftAdaptWeighting(TERMS, 10, update_every=0)
    with pytest.raises(ValueError, match="beta must be a finite number"):
        SoftAdaptWeighting(TERMS, 10, beta=float("inf"))


# ---------------------------------------------------------------------------------------------------------
# CoV weighting

# made-up 4-step sequence
COV_ROWS = [{"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 2.0}]


def test_cov_full_mean():
    # t=0: l = 1 (both); mu_l = 1, S = 0, mu_L = (2, 1)                                    -> equal (first-step rule)
    # t=1: c = 1/2. a: l = 1/2, mu_l = 3/4, S = (1/2 - 1)(1/2 - 3/4) = 1/8, mu_L = 3/2
    #               b: l = 3,   mu_l = 2,   S = (3 - 1)(3 - 2) = 2,        mu_L = 2
    #      sigma = sqrt(S / 2): a 1/4, b 1; cv = a (1/4)/(3/4) = 1/3, b 1/2   -> alpha = (2/5, 3/5)
    # t=2: c = 2/3. a: l = 2/(3/2) = 4/3, mu_l = 17/18, S = 1/8 + (7/12)(7/18) = 19/54, mu_L = 5/3
    #               b: l = 2/2 = 1,      mu_l = 5/3,   S = 2 + (-1)(-2/3) = 8/3,    mu_L = 2
    #      cv: a sqrt(19/54 / 3) / (17/18) = 0.36261258840993976, b sqrt(8/9) / (5/3) = 2 sqrt(2) / 5
    #      -> alpha_a = 0.3906208816474515
    # t=3: c = 3/4. a: l = 1/(5/3) = 3/5, mu_l = 103/120, S = 19/54 + (-31/90)(-31/120) = 4761/10800 = 69^2/10800
    #               b: l = 1,            mu_l = 3/2,     S = 8/3 + (-2/3)(-1/2) = 3
    #      cv: a sqrt(69^2/43200) / (103/120) = 69 / (103 sqrt 3), b sqrt(3/4) / (3/2) = 1/sqrt 3
    #      -> alpha = (69/172, 103/172)
    cov = build_weighting("cov", ["a", "b"], 4)
    assert cov.weights() == {"a": 0.5, "b": 0.5}
    w = _feed(cov, COV_ROWS)
    assert w[0] == {"a": 0.5, "b": 0.5}
    assert w[1] == approx({"a": 0.4, "b": 0.6})
    assert w[2] == approx({"a": 0.3906208816474515, "b": 0.6093791183525484})
    assert w[3] == approx({"a": 69 / 172, "b": 103 / 172})
    assert cov.mean_L == approx({"a": 1.5, "b": 2.0})  # full mean: arithmetic mean of all values


def test_cov_decayed_mean():
    # decay 0.5: c_0 = 0, then c = 0.5. t=0, t=1 as the full mean (c_1 = 1/2 there too) -> equal, (2/5, 3/5)
    # t=2: a: l = 2/(3/2) = 4/3, mu_l = 3/8 + 2/3 = 25/24, S = 1/8 + (7/12)(7/24) = 85/288, mu_L = 7/4
    #      b: l = 2/2 = 1,      mu_l = 3/2,              S = 2 + (-1)(-1/2) = 5/2,       mu_L = 2
    #      cv: a sqrt(85/288 / 3) / (25/24) = 0.3011090610836324, b sqrt(5/6) / (3/2) = 0.6085806194501846
    #      -> alpha_a = 0.3310019532231452
    # t=3: a: l = 1/(7/4) = 4/7, mu_l = 25/48 + 2/7 = 271/336, S = 85/288 + (-79/168)(-79/336) = 22901/56448
    #      b: l = 1,            mu_l = 5/4,                    S = 5/2 + (-1/2)(-1/4) = 21/8
    #      cv: a sqrt(22901/56448 / 4) / (271/336) = 0.394859812236995, b sqrt(21/32) / (5/4) = 0.6480740698407861
    #      -> alpha_a = 0.37860483681893337
    cov = CoVWeighting(["a", "b"], 4, mean="decayed", decay=0.5)
    w = _feed(cov, COV_ROWS)
    assert w[0] == {"a": 0.5, "b": 0.5}
    assert w[1] == approx({"a": 0.4, "b": 0.6})
    assert w[2] == approx({"a": 0.3310019532231452, "b": 0.6689980467768548})
    assert w[3] == approx({"a": 0.37860483681893337, "b": 0.6213951631810666})
    assert cov.coefficients_of_variation() == approx({"a": 0.394859812236995, "b": 0.6480740698407861})


def test_cov_errors():
    with pytest.raises(ValueError, match="decay applies only to mean='decayed'"):
        CoVWeighting(TERMS, 10, decay=0.5)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        CoVWeighting(TERMS, 10, mean="decayed", decay=1.5)
    with pytest.raises(ValueError, match="mean must be one of"):
        CoVWeighting(TERMS, 10, mean="median")
    with pytest.raises(ValueError, match="needs loss values >= 0"):
        CoVWeighting(TERMS, 10).update(0, {"dice": -0.1, "ce": 1.0})
    cov = CoVWeighting(TERMS, 10)
    cov.update(0, {"dice": 0.0, "ce": 1.0})
    with pytest.raises(ValueError, match=r"running mean of term\(s\) \['dice'\] is 0"):
        cov.update(1, {"dice": 0.5, "ce": 1.0})


# ---------------------------------------------------------------------------------------------------------
# the common interface


@pytest.mark.parametrize("name,params", [
    ("rebalance", {"start": (1.0, 0.01), "end": (0.5, 2.0)}),
    ("softadapt", {"variant": "loss_weighted", "beta": 1.5, "n": 3, "update_every": 2}),
    ("cov", {"mean": "full"}),
    ("cov", {"mean": "decayed", "decay": 0.8}),
])
def test_state_dict_round_trip(name, params):
    rows = [{"dice": d, "ce": c} for d, c in zip(DICE + DICE[::-1], CE + CE[::-1])]
    a = build_weighting(name, TERMS, 12, **params)
    _feed(a, rows[:5])
    state = json.loads(json.dumps(a.state_dict()))           # plain data: survives JSON
    b = build_weighting(name, TERMS, 12, **params)
    b.load_state_dict(state)
    assert b.weights() == a.weights() and b.last_step == 4
    assert _feed(b, rows[5:], first_step=5) == _feed(a, rows[5:], first_step=5)   # identical continuation
    c = weighting_from_state(state)
    assert c.state_dict() == state


def test_build_and_update_errors():
    assert available_weightings() == ["cov", "rebalance", "softadapt"]
    assert isinstance(build_weighting(" SoftAdapt ", TERMS, 5), SoftAdaptWeighting)   # case, spaces ignored
    with pytest.raises(ValueError, match="unknown weighting scheme 'gradnorm'; known schemes: cov, rebalance, "
                                         "softadapt"):
        build_weighting("gradnorm", TERMS, 5)
    with pytest.raises(ValueError, match=r"does not take parameter\(s\) \['alpha'\]; it takes \['beta', "
                                         r"'loss_value', 'n', 'update_every', 'variant'\]"):
        build_weighting("softadapt", TERMS, 5, alpha=1.0)
    with pytest.raises(ValueError, match="total_steps must be an integer >= 1"):
        build_weighting("cov", TERMS, 0)
    with pytest.raises(ValueError, match="at least two terms"):
        build_weighting("cov", ["dice"], 5)
    with pytest.raises(ValueError, match="distinct"):
        build_weighting("cov", ["dice", "dice"], 5)
    s = build_weighting("cov", TERMS, 5)
    with pytest.raises(ValueError, match=r"missing \['ce'\], unexpected \['focal'\]"):
        s.update(0, {"dice": 1.0, "focal": 1.0})
    with pytest.raises(ValueError, match="value of term 'ce' must be a finite number"):
        s.update(0, {"dice": 1.0, "ce": float("nan")})
    s.update(3, {"dice": 1.0, "ce": 1.0})
    with pytest.raises(ValueError, match="steps must increase; got step 3 after step 3"):
        s.update(3, {"dice": 1.0, "ce": 1.0})
    other = build_weighting("cov", TERMS, 5, mean="decayed")
    with pytest.raises(ValueError, match="belongs to another configuration .*params"):
        other.load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="scheme: saved 'cov', now 'softadapt'"):
        build_weighting("softadapt", TERMS, 5).load_state_dict(s.state_dict())


# ---------------------------------------------------------------------------------------------------------
# the loss side


def test_apply_weights_changes_loss():
    loss = build_loss({"dice": 1.0, "ce": 1.0})
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 2, 3, 3, generator=g)
    target = torch.randint(0, 2, (1, 1, 2, 3, 3), generator=g)
    base = float(loss(logits, target))
    t = term_values(loss)
    assert set(t) == {"dice", "ce"} and base == pytest.approx(t["dice"] + t["ce"], rel=1e-6)
    applied = apply_weights(loss, {"dice": 0.25, "ce": 0.75})
    assert applied == {"dice": 0.25, "ce": 0.75} and loss.weights == applied
    assert float(loss(logits, target)) == pytest.approx(0.25 * t["dice"] + 0.75 * t["ce"], rel=1e-6)
    assert term_values(loss) == pytest.approx(t)              # the unweighted values do not change


def test_apply_weights_bounds_and_errors(caplog):
    loss = build_loss({"dice": 1.0, "ce": 1.0})
    with caplog.at_level(logging.WARNING, logger="spineloss.tuning.weighting"):
        applied = apply_weights(loss, {"dice": 2000.0, "ce": -1.0})
    assert applied == {"dice": 1000.0, "ce": 0.0} and loss.weights == applied   # clipped to [0, 1000]
    assert "clipped" in caplog.text and "weight.dice=2000 -> 1000" in caplog.text
    with pytest.raises(ValueError, match=r"missing \['ce'\] and name unknown terms \['boundary'\]"):
        apply_weights(loss, {"dice": 1.0, "boundary": 1.0})
    with pytest.raises(ValueError, match="weight of term 'ce' must be a number"):
        apply_weights(loss, {"dice": 1.0, "ce": float("nan")})
    with pytest.raises(ValueError, match="has no term weights"):
        apply_weights(build_loss("dice"), {"dice": 1.0})
    with pytest.raises(ValueError, match="has not been called yet"):
        term_values(loss)


def test_weights_csv_resume(tmp_path):
    path = tmp_path / "weights.csv"
    log = WeightsCSV(path, TERMS)
    for step in range(4):
        log.write(step, {"dice": 1.0, "ce": 0.1 * step})
    with pytest.raises(ValueError, match="steps must increase"):
        log.write(2, {"dice": 1.0, "ce": 0.5})
    with open(path, "a") as fh:                               # an interrupted write: a torn last line
        fh.write("4,1.0,0.4")
    rows = read_weights_csv(path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[3]["ce"] == 0.1 * 3
    # resume at step 2 (the checkpoint was taken after step 1): steps 2, 3 and the torn line go
    log = WeightsCSV(path, TERMS, resume_step=2)
    log.write(2, {"dice": 0.9, "ce": 0.7})
    assert read_weights_csv(path) == [{"step": 0, "dice": 1.0, "ce": 0.0}, {"step": 1, "dice": 1.0, "ce": 0.1},
                                      {"step": 2, "dice": 0.9, "ce": 0.7}]
    assert path.read_text().splitlines()[0] == "step,dice,ce"
    with pytest.raises(ValueError, match="differ from"):
        WeightsCSV(path, ["dice", "focal"], resume_step=1)
    WeightsCSV(path, TERMS)                                   # a new run starts afresh
    assert read_weights_csv(path) == []
