"""Paired Wilcoxon tests with Holm's correction across losses (spineloss.report.stats)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from spineloss.report.stats import (Comparison, collect_case_values, holm, paired_tests, read_stats,
                                    significance_marks, write_stats)


def test_holm_hand_computed():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01 = 0.03, max(0.03, 2*0.03) = 0.06, max(0.06, 1*0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], abs=1e-12)
    # 4 tests: 4*0.001, 3*0.02=0.06, max(0.06, 2*0.025=0.05)=0.06, min(1, max(0.06, 0.5))=0.5
    assert holm([0.5, 0.001, 0.025, 0.02]) == pytest.approx([0.5, 0.004, 0.06, 0.06], abs=1e-12)
    # capped at 1; NaN stays NaN and does not count in m (m = 2 here)
    out = holm([0.6, float("nan"), 0.4])
    assert out[0] == pytest.approx(0.8) and out[2] == pytest.approx(0.8) and math.isnan(out[1])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    # equal p-values get equal adjusted values, in any order
    assert holm([0.02, 0.02, 0.001]) == pytest.approx([0.04, 0.04, 0.003])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def _cases(n: int) -> list[str]:
    return [f"case_{i:03d}" for i in range(n)]


def test_worse_loss_significant_and_noise_not():
    rng = np.random.default_rng(0)
    ids = _cases(20)
    best = 0.85 + 0.05 * rng.standard_normal(20)
    # symmetric noise: the same magnitudes once positive and once negative -> no shift at all
    mags = np.linspace(0.001, 0.02, 10)
    noise = np.concatenate([mags, -mags])[rng.permutation(20)]
    values = {
        "dice": dict(zip(ids, best)),
        "worse": dict(zip(ids, best - 0.05 + 0.01 * rng.standard_normal(20))),
        "same": dict(zip(ids, best + noise)),
    }
    comps = {c.loss: c for c in paired_tests(values, higher_is_better=True, metric="dice", label="mean")}
    assert set(comps) == {"worse", "same"}
    worse, same = comps["worse"], comps["same"]
    assert worse.best == same.best == "dice"
    assert worse.n == 20 and worse.n_nan == 0 and worse.p_method == "exact"
    assert worse.p < 1e-4 and worse.significant and worse.median_diff < 0
    assert worse.mean < worse.mean_best
    assert not same.significant and same.p > 0.5
    # Holm over the family of two: the smaller p doubled, the larger at least that
    assert worse.p_holm == pytest.approx(2 * worse.p)
    assert same.p_holm == pytest.approx(max(2 * worse.p, same.p))
    assert worse.metric == "dice" and worse.label == "mean" and worse.alpha == 0.05


def test_best_chosen_per_direction():
    ids = _cases(12)
    base = np.linspace(5.0, 16.0, 12)
    step = 0.01 * np.arange(12)  # distinct differences: no ties, so the exact null distribution is used
    values = {"a": dict(zip(ids, base + 3.0 + step)), "b": dict(zip(ids, base)),
              "c": dict(zip(ids, base + 1.0 + 0.5 * step))}
    hd = paired_tests(values, higher_is_better=False, metric="hd")
    assert {c.best for c in hd} == {"b"} and [c.loss for c in hd] == ["a", "c"]
    assert all(c.median_diff > 0 for c in hd)  # both worse = larger distance
    dice = paired_tests(values, higher_is_better=True, metric="dice")
    assert {c.best for c in dice} == {"a"} and [c.loss for c in dice] == ["b", "c"]
    # 'b' below 'a' on all 12 cases, no ties: exact two-sided p = 2 / 2^12
    assert dice[0].p == pytest.approx(2 / 2 ** 12) and all(c.p_method == "exact" for c in dice + hd)


def test_nan_pairs_counted_and_left_out():
    ids = _cases(15)
    rng = np.random.default_rng(1)
    best = rng.uniform(2, 6, 15)
    other = best + rng.uniform(0.5, 1.5, 15)
    best_with_nan, other_with_nan = best.copy(), other.copy()
    best_with_nan[[0, 1]] = np.nan
    other_with_nan[[1, 2, 3]] = np.nan  # case 1 NaN in both: one pair
    values = {"best": dict(zip(ids, best_with_nan)), "other": dict(zip(ids, other_with_nan))}
    (comp,) = paired_tests(values, higher_is_better=False)
    assert comp.best == "best" and comp.n_shared == 15 and comp.n_nan == 4 and comp.n == 11
    keep = np.ones(15, bool)
    keep[[0, 1, 2, 3]] = False
    assert comp.mean == pytest.approx(other[keep].mean())
    assert comp.mean_best == pytest.approx(best[keep].mean())
    assert comp.median_diff == pytest.approx(np.median(other[keep] - best[keep]))
    assert comp.p == pytest.approx(2 / 2 ** 11) and comp.significant  # all 11 differences positive


def test_degenerate_cases_never_raise():
    ids = _cases(6)
    same = dict(zip(ids, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]))
    (c,) = paired_tests({"a": same, "b": dict(same)}, True)
    assert c.p == 1.0 and c.p_holm == 1.0 and not c.significant and "zero" in c.reason
    one = {"a": {"x": 1.0, "y": float("nan")}, "b": {"x": 2.0, "y": 3.0}}
    (c,) = paired_tests(one, True)
    assert c.n == 1 and c.n_nan == 1 and math.isnan(c.p) and math.isnan(c.p_holm) and "only 1" in c.reason
    disjoint = {"a": {"x": 1.0}, "b": {"y": 2.0}}
    (c,) = paired_tests(disjoint, True)
    assert c.n_shared == 0 and math.isnan(c.p) and "no case" in c.reason
    all_nan = {"a": {"x": float("nan")}, "b": {"x": None}}
    (c,) = paired_tests(all_nan, False)
    assert math.isnan(c.p) and c.reason
    assert paired_tests({"only": same}, True) == []


def test_zeros_kept_by_pratt_and_only_shared_cases():
    # n = 8 (scipy's exhaustive permutation test is slow, ~2.5 s, at n = 13: keep tests small)
    from scipy.stats import wilcoxon

    ids = _cases(8)
    best = dict(zip(ids, np.arange(8, dtype=float)))
    diff = np.array([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, -4.0, 5.0])
    other = {k: v + d for (k, v), d in zip(best.items(), diff)}
    other["extra_case"] = 100.0  # only this loss has it: not shared, not used
    (c,) = paired_tests({"best": best, "other": other}, higher_is_better=False)
    assert c.n_shared == 8 and c.n == 8 and c.n_zero == 3
    assert c.p_method == "permutation" and 0 < c.p < 1
    assert c.p == pytest.approx(wilcoxon(diff, zero_method="pratt").pvalue)
    assert c.p != pytest.approx(wilcoxon(diff, zero_method="wilcox").pvalue)  # zeros kept in the ranking


def _write_run(root, losses: dict[str, np.ndarray], folds: int = 2, nan_case: int | None = None):
    n = len(next(iter(losses.values())))
    ids = _cases(n)
    (root / "experiment.json").write_text(json.dumps({"losses": [{"name": k} for k in losses]}))
    for loss, dice in losses.items():
        for k in range(folds):
            cases = {}
            for i in range(k, n, folds):
                hd = float("nan") if i == nan_case and loss == "worse" else 10.0 * (1.0 - dice[i]) + 0.01 * i
                per_label = {"dice": float(dice[i]), "hd": hd, "iou": float(dice[i]) / (2 - float(dice[i]))}
                cases[ids[i]] = {"1": per_label, "foreground": per_label, "mean": per_label}
            d = root / loss / f"fold{k}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"cases": cases, "mean": {}}))
    (root / "unfinished" / "fold0").mkdir(parents=True)  # no metrics.json: ignored


def test_write_stats_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    best = rng.uniform(0.7, 0.9, 10)
    _write_run(tmp_path, {"worse": best - rng.uniform(0.02, 0.08, 10), "dice_ce": best,
                          "close": best - 0.002 + rng.uniform(-0.01, 0.01, 10)}, nan_case=4)
    values = collect_case_values(tmp_path, "dice")
    assert list(values) == ["worse", "dice_ce", "close"] and len(values["worse"]) == 10
    comps = write_stats(tmp_path)
    assert [(c.metric, c.loss) for c in comps] == [("dice", "worse"), ("dice", "close"),
                                                   ("hd", "worse"), ("hd", "close")]
    assert all(c.best == "dice_ce" for c in comps)
    assert comps[2].n_nan == 1 and comps[2].n == 9
    back = read_stats(tmp_path / "stats.csv")
    assert len(back) == len(comps)
    for a, b in zip(comps, back):
        for name, va in vars(a).items():
            vb = getattr(b, name)
            assert (math.isnan(va) and math.isnan(vb)) if isinstance(va, float) and math.isnan(va) else va == vb, name
    with open(tmp_path / "stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["p"]) == comps[0].p  # full precision in the file
    assert not list(tmp_path.glob(".stats.csv.*"))  # no temporary file left behind
    marks = significance_marks(comps)
    assert marks[("worse", "dice")] is True and ("dice_ce", "dice") not in marks
    assert set(marks) == {("worse", "dice"), ("close", "dice"), ("worse", "hd"), ("close", "hd")}


def test_collect_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no finished runs"):
        collect_case_values(tmp_path, "dice")
    _write_run(tmp_path, {"a": np.array([0.5, 0.6, 0.7])})
    with pytest.raises(ValueError, match=r"no metric 'f3'.*dice, hd, iou"):
        collect_case_values(tmp_path, "f3")
    with pytest.raises(ValueError, match=r"no label entry '7'"):
        collect_case_values(tmp_path, "dice", label="7")
    with pytest.raises(ValueError, match="not a folder"):
        collect_case_values(tmp_path / "missing", "dice")


def test_significance_marks_rejects_mixed_labels():
    kw = dict(metric="dice", loss="a", best="b", higher_is_better=True, n_shared=3, n=3, n_nan=0, n_zero=0,
              mean=0.5, mean_best=0.6, median_diff=-0.1, statistic=0.0, p=0.25, p_holm=0.25, alpha=0.05,
              significant=False, p_method="exact")
    with pytest.raises(ValueError, match="one label entry"):
        significance_marks([Comparison(label="mean", **kw), Comparison(label="1", **kw)])


def test_an_unfinished_loss_limits_only_its_own_comparison():
    from spineloss.report.stats import paired_tests
    cases = [f"c{i:02d}" for i in range(20)]
    best = {c: 0.9 for c in cases}
    worse = {c: 0.8 + 0.001 * i for i, c in enumerate(cases)}
    partial = {c: 0.85 for c in cases[:5]}
    out = {c.loss: c for c in paired_tests({"best": best, "worse": worse, "partial": partial}, True, best="best")}
    assert out["worse"].n_shared == 20 and out["worse"].n == 20
    assert out["partial"].n_shared == 5
