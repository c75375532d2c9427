"""Figures for a results page from an experiment folder: per loss, the Dice and HD pooled over all test
cases and over the cases not in ``--exclude`` (e.g. the 8 cases on which the post-processing's
constants were set in issue 4), flagged cases, and the grid's time.

    python bench/results_summary.py runs/lumbar_baseline --exclude lumbar_42,lumbar_43,lumbar_45,\\
        lumbar_46,lumbar_47,lumbar_49,lumbar_51,lumbar_52

Prints a Markdown table. Time: the sum of the runs' epoch times from ``history.csv`` (the training; each run's scoring comes on top) and the
span from the first ``run.json`` written to the last ``metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from spineloss.one_run import training_seconds


def summarize(run_dir: Path, exclude: set[str]) -> str:
    order = {s["name"]: i for i, s in enumerate(json.loads((run_dir / "experiment.json").read_text())["losses"])}
    rows, seconds, starts, ends = [], 0.0, [], []
    for loss_dir in sorted((p for p in run_dir.iterdir() if any(p.glob("fold*/metrics.json"))),
                           key=lambda p: order.get(p.name, 99)):
        dice, hd, kept_dice, kept_hd, flagged, folds = [], [], [], [], 0, 0
        for path in sorted(loss_dir.glob("fold*/metrics.json")):
            m = json.loads(path.read_text())
            folds += 1
            seconds += training_seconds(path.parent, float(m.get("train_seconds", 0.0)))
            ends.append(path.stat().st_mtime)
            if (path.parent / "run.json").exists():
                starts.append((path.parent / "run.json").stat().st_mtime)
            flagged += sum(1 for v in m.get("flags", {}).values() if v)
            for case, values in m["cases"].items():
                dice.append(values["mean"]["dice"])
                hd.append(values["mean"]["hd"])
                if case not in exclude:
                    kept_dice.append(values["mean"]["dice"])
                    kept_hd.append(values["mean"]["hd"])
        rows.append((loss_dir.name, folds, len(dice), _mean(dice), _mean(hd), len(kept_dice), _mean(kept_dice),
                     _mean(kept_hd), flagged))
    lines = ["| loss | folds | cases | Dice (all) | HD mm (all) | cases kept | Dice (kept) | HD mm (kept) | "
             "flagged |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4f} | {r[4]:.2f} | {r[5]} | {r[6]:.4f} | {r[7]:.2f} | {r[8]} |"
              for r in rows]
    span = (max(ends) - min(starts)) / 3600 if starts and ends else float("nan")
    lines.append(f"\nruns: {sum(r[1] for r in rows)}; training time in runs {seconds / 3600:.2f} h; first start to last "
                 f"result {span:.2f} h (includes any pause between sessions)")
    return "\n".join(lines)


def _mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--exclude", default="", help="comma-separated case ids left out of the 'kept' columns")
    args = parser.parse_args()
    print(summarize(args.run_dir, {c for c in args.exclude.split(",") if c}))


if __name__ == "__main__":
    main()
