"""bench/paired_versions.py: two versions of a loss on the same test cases, and what each cost."""
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import paired_versions as pv  # noqa: E402


def _loss(run: Path, name: str, dice: dict[str, float], seconds: float, tuning: dict | None = None) -> str:
    """A loss folder with two folds that split the cases, as an experiment writes them."""
    cases = sorted(dice)
    for k, part in enumerate((cases[::2], cases[1::2])):
        fold = run / name / f"fold{k}"
        fold.mkdir(parents=True)
        (fold / "metrics.json").write_text(json.dumps(
            {"cases": {c: {"mean": {"dice": dice[c], "hd": 10.0 * (1 - dice[c])}} for c in part}}))
        (fold / "history.csv").write_text(f"epoch,seconds\n0,{seconds / 2}\n1,{seconds / 2}\n")
        if tuning:
            (fold / "tuning.json").write_text(json.dumps(tuning))
    return str(run / name)


def test_pairs_are_tested_on_shared_cases_with_holm_and_costs(tmp_path):
    rng = np.random.default_rng(0)
    cases = [f"c{i:02d}" for i in range(12)]
    base = {c: float(v) for c, v in zip(cases, rng.uniform(0.7, 0.9, 12))}
    better = {c: base[c] + 0.01 + 0.002 * i for i, c in enumerate(cases)}           # wins every case
    mixed = {c: base[c] + (0.01 if i % 2 else -0.012) for i, c in enumerate(cases[:10])}  # 10 shared cases
    fixed = _loss(tmp_path / "a", "tversky", base, 100.0)
    tuned = _loss(tmp_path / "b", "tversky_g", better, 130.0, {"seconds": 20.0, "adaptations": 19,
                                                               "trial_steps": 171, "forward_passes": 171,
                                                               "backward_passes": 171})
    other = _loss(tmp_path / "b", "other", mixed, 90.0)
    pairs = [(tuned, fixed), (other, fixed)]
    lines = pv.compare(pairs, "dice", "mean")
    row_tuned, row_other = lines[4].split(" | "), lines[5].split(" | ")
    assert row_tuned[2:5] == ["12", "0", "0"] and row_tuned[8:10] == ["12", "0"]
    assert row_other[2] == "10" and row_other[8:10] == ["5", "5"]
    p1 = wilcoxon(np.array([better[c] - base[c] for c in cases])).pvalue
    p2 = wilcoxon(np.array([mixed[c] - base[c] for c in cases[:10]])).pvalue
    assert float(row_tuned[10]) == float(f"{p1:.3g}") and float(row_other[10]) == float(f"{p2:.3g}")
    low, high = sorted((p1, p2))                                   # Holm over the 2 pairs
    holm_tuned = min(1, 2 * low) if p1 == low else max(min(1, 2 * low), high)
    assert float(row_tuned[11].rstrip(" |").strip("*")) == float(f"{holm_tuned:.3g}")
    hd = pv.compare(pairs, "hd", "mean")[4].split(" | ")
    assert hd[8:10] == ["12", "0"]                                 # lower is better for distances
    # a NaN distance (a level not found) leaves the case out and is counted on its side
    run = Path(tuned).parent
    metrics = json.loads((run / "tversky_g" / "fold0" / "metrics.json").read_text())
    metrics["cases"]["c00"]["mean"]["hd"] = None
    (run / "tversky_g" / "fold0" / "metrics.json").write_text(json.dumps(metrics))
    hd = pv.compare(pairs, "hd", "mean")[4].split(" | ")
    assert hd[2:5] == ["11", "1", "0"]
    cost = pv.costs(pairs)[4].split(" | ")
    assert cost[2:6] == ["130", "100", "1.30", "20"] and cost[6:8] == ["19", "171"]
