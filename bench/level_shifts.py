#!/usr/bin/env python
"""Level shifts in an L1-L5 grid: cases whose bodies were found (foreground Dice high) but numbered wrongly
(mean level Dice low), and whether the post-processing flagged them.

A level shift costs a whole level's Dice while the foreground stays good; the issue asks that none passes
silently. For each (loss, fold) test case of every run folder given, from its ``cases.csv``:

    shifted  = dice_foreground >= --fg and dice_mean <= dice_foreground - --gap
    (a shifted case that kept T12 and lost L5 scores about 0.7 on the foreground: hence --fg 0.6)
    silent   = shifted and the case has no flag

    python bench/level_shifts.py runs/lumbar_levels [runs/lumbar_levels_argmax ...] [--fg 0.6] [--gap 0.2]

Prints one summary line per run folder (cases, L1-L5 mean Dice, shifted, silent) and the silent cases.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def scan(run_dir: Path, fg: float, gap: float) -> dict:
    rows = []
    for path in sorted(run_dir.glob("*/fold*/cases.csv")):
        with open(path) as f:
            for r in csv.DictReader(f):
                rows.append({"loss": path.parent.parent.name, "fold": path.parent.name, "case": r["case"],
                             "fg": float(r["dice_foreground"]), "mean": float(r["dice_mean"]),
                             "flags": r.get("flags", "")})
    shifted = [r for r in rows if r["fg"] >= fg and r["mean"] <= r["fg"] - gap]
    means = [r["mean"] for r in rows if not math.isnan(r["mean"])]
    return {"cases": len(rows), "mean": sum(means) / len(means) if means else float("nan"),
            "shifted": shifted, "silent": [r for r in shifted if not r["flags"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--fg", type=float, default=0.6, help="foreground Dice at least this (default 0.6)")
    parser.add_argument("--gap", type=float, default=0.2, help="level Dice this much lower (default 0.2)")
    args = parser.parse_args()
    print("| run | test cases | L1-L5 mean Dice (pooled) | level shifts | silent |")
    print("|---|---:|---:|---:|---:|")
    silent = []
    for run in args.runs:
        s = scan(run, args.fg, args.gap)
        print(f"| {run.name} | {s['cases']} | {s['mean']:.4f} | {len(s['shifted'])} | {len(s['silent'])} |")
        silent += [(run.name, r) for r in s["silent"]]
    for name, r in silent:
        print(f"silent shift: {name} {r['loss']} {r['fold']} {r['case']}: foreground {r['fg']:.3f}, "
              f"levels {r['mean']:.3f}")


if __name__ == "__main__":
    main()
