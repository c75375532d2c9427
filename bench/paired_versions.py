#!/usr/bin/env python
"""Two versions of a loss (or of a post-processing) on the same test cases: a paired two-sided Wilcoxon
signed-rank test per pair and metric, Holm-corrected over the pairs, and what each version cost.

Each side is a loss folder of a run folder (``RUN_DIR/LOSS``, holding ``fold<k>/metrics.json``); the two
sides may come from different run folders (a fixed loss of the baseline grid against its adapted version,
or one network scored with two post-processings). Only the cases both sides scored are compared.

    python bench/paired_versions.py runs/lumbar_greedy/tversky_g:runs/lumbar_greedy/tversky \\
        runs/lumbar_greedy/effectiveness_g:runs/lumbar_greedy/effectiveness [--label mean]

Prints Markdown: per metric (Dice, HD; ``--metric`` for others), one row per pair ``A:B`` with the cases,
the means, the median of A - B, the cases A won and lost, the p-value and its Holm correction over the
pairs; then the cost: per run, the mean training time (epoch wall times in ``history.csv``) and, for a
tuned loss, the tuning's own time and passes (``tuning.json``), as a ratio to the other side's training.
The time ratio compares runs that may have shared the machine with other work: read it as a bound.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from spineloss.one_run import training_seconds
from spineloss.report.stats import collect_case_values, holm, paired_tests

HIGHER_IS_BETTER = {"dice": True, "iou": True, "f2": True, "precision": True, "recall": True, "accuracy": True,
                    "hd": False, "hd95": False, "assd": False}


def side(path: str) -> tuple[Path, str]:
    """``RUN_DIR/LOSS`` -> ``(RUN_DIR, LOSS)``, checked."""
    folder = Path(path)
    if not any(folder.glob("fold*/metrics.json")):
        raise SystemExit(f"{folder}: no fold*/metrics.json (give RUN_DIR/LOSS of a finished run)")
    return folder.parent, folder.name


def values_of(path: str, metric: str, label: str) -> dict[str, float]:
    run_dir, loss = side(path)
    return collect_case_values(run_dir, metric, label)[loss]


def compare(pairs: list[tuple[str, str]], metric: str, label: str) -> list[str]:
    rows = []
    tests = []
    for a, b in pairs:
        va, vb = values_of(a, metric, label), values_of(b, metric, label)
        comparison = paired_tests({"a": va, "b": vb}, HIGHER_IS_BETTER[metric], best="b", metric=metric, label=label)[0]
        both = [c for c in va if c in vb]
        shared = [c for c in both if math.isfinite(va[c]) and math.isfinite(vb[c])]
        nan_a = sum(1 for c in both if not math.isfinite(va[c]))     # e.g. HD of a case that lost a level
        nan_b = sum(1 for c in both if not math.isfinite(vb[c]))
        diff = np.array([va[c] - vb[c] for c in shared])
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        tests.append(comparison.p)
        rows.append([a, b, len(shared), nan_a, nan_b, comparison.mean, comparison.mean_best, comparison.median_diff,
                     int(np.sum(sign * diff > 0)), int(np.sum(sign * diff < 0)), comparison.p])
    adjusted = holm(tests)
    scale = 100.0 if HIGHER_IS_BETTER[metric] else 1.0             # overlap metrics in %, distances in mm
    unit = "%" if scale == 100.0 else "mm"
    out = [f"**{metric} ({label}, {unit})** (cases: both finite; NaN A / B: cases left out because that side's "
           "value is NaN, e.g. a distance to a level it did not find)", "",
           "| A | B | cases | NaN A | NaN B | mean A | mean B | median A - B | A better | B better | p | p (Holm) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, p_adj in zip(rows, adjusted):
        a, b, n, nan_a, nan_b, ma, mb, md, won, lost, p = row
        out.append(f"| {a} | {b} | {n} | {nan_a} | {nan_b} | {ma * scale:.2f} | {mb * scale:.2f} | {md * scale:+.2f} | "
                   f"{won} | {lost} | "
                   f"{p:.3g} | {'**' if p_adj < 0.05 else ''}{p_adj:.3g}{'**' if p_adj < 0.05 else ''} |")
    return out + [""]


def cost(path: str) -> dict:
    """Mean training seconds per run, and the tuning's seconds and passes per run (if tuned)."""
    folder = Path(path)
    runs = sorted(p.parent for p in folder.glob("fold*/metrics.json"))
    train, tuning, passes = [], [], {}
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        train.append(training_seconds(run, float(metrics.get("train_seconds", 0.0))))
        if (run / "tuning.json").exists():
            t = json.loads((run / "tuning.json").read_text())
            tuning.append(float(t.get("seconds", 0.0)))
            for k in ("adaptations", "trial_steps", "forward_passes", "backward_passes"):
                passes.setdefault(k, []).append(float(t.get(k, 0)))
    return {"runs": len(runs), "train": float(np.mean(train)) if train else math.nan,
            "tuning": float(np.mean(tuning)) if tuning else 0.0,
            "passes": {k: float(np.mean(v)) for k, v in passes.items()}}


def costs(pairs: list[tuple[str, str]]) -> list[str]:
    out = ["**cost per run** (training: the epochs' wall time; tuning: the part of it spent adapting)", "",
           "| A | runs | training A (s) | training B (s) | A / B | tuning in A (s) | adaptations | trial steps | "
           "extra forward passes | extra backward passes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a, b in pairs:
        ca, cb = cost(a), cost(b)
        p = ca["passes"]
        ratio = ca["train"] / cb["train"] if cb["train"] > 0 else math.nan
        out.append(f"| {a} | {ca['runs']} | {ca['train']:.0f} | {cb['train']:.0f} | {ratio:.2f} | "
                   f"{ca['tuning']:.0f} | {p.get('adaptations', 0):.0f} | {p.get('trial_steps', 0):.0f} | "
                   f"{p.get('forward_passes', 0):.0f} | {p.get('backward_passes', 0):.0f} |")
    return out + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", metavar="A:B", help="two loss folders, RUN_DIR/LOSS:RUN_DIR/LOSS")
    parser.add_argument("--metric", action="append", default=None, choices=sorted(HIGHER_IS_BETTER),
                        help="metrics to test (default: dice and hd)")
    parser.add_argument("--label", default="mean", help="label entry of metrics.json (default: mean)")
    parser.add_argument("--no-cost", action="store_true", help="leave out the cost table")
    args = parser.parse_args()
    pairs = []
    for item in args.pairs:
        if item.count(":") != 1:
            raise SystemExit(f"{item!r}: give a pair as RUN_DIR/LOSS:RUN_DIR/LOSS")
        pairs.append(tuple(item.split(":")))
    lines = []
    for metric in args.metric or ["dice", "hd"]:
        lines += compare(pairs, metric, args.label)
    if not args.no_cost:
        lines += costs(pairs)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
