#!/usr/bin/env python
"""Plot Dice-versus-training-time curves from the CSV files the lumbar benches write.

    python bench/plot_curves.py --out docs/lumbar_dice_vs_time.png \\
        "spineloss 20 min=runs/b20.csv:binary" "monai peer=runs/compare_b4/curve_monai_binary.csv:binary" \\
        --line "binary:0.85:target at 4 min"

Each curve is ``LABEL=CSV:MODE`` (``MODE`` binary or multiclass: one panel per mode). The CSVs come
from ``bench/train_lumbar.py --csv``, ``bench/peer_monai.py --csv`` or ``bench/compare_lumbar.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lumbar_common as lc  # noqa: E402
from compare_lumbar import _plot  # noqa: E402


def parse_curve(spec: str) -> tuple[str, Path, str]:
    """``LABEL=CSV:MODE`` -> ``(label, path, mode)``."""
    label, sep, rest = spec.partition("=")
    path, sep2, mode = rest.rpartition(":")
    if not sep or not sep2 or mode not in ("binary", "multiclass") or not label or not path:
        raise ValueError(f"curve {spec!r}: write LABEL=CSV:MODE with MODE binary or multiclass")
    return label, Path(path), mode


def parse_line(spec: str) -> tuple[str, float, str]:
    """``MODE:Y:LABEL`` -> ``(mode, y, label)``."""
    mode, _, rest = spec.partition(":")
    y, _, label = rest.partition(":")
    try:
        value = float(y)
    except ValueError:
        value = None
    if mode not in ("binary", "multiclass") or value is None or not label:
        raise ValueError(f"line {spec!r}: write MODE:Y:LABEL with MODE binary or multiclass")
    return mode, value, label


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("curves", nargs="+", help="LABEL=CSV:MODE")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--line", action="append", default=[], metavar="MODE:Y:LABEL",
                   help="a dashed reference line, e.g. 'multiclass:0.68:peer peak (issue)'")
    args = p.parse_args(argv)
    targets: dict = {}
    for spec in args.line:
        mode, y, label = parse_line(spec)
        targets.setdefault(mode, {})[label] = y
    curves = {}
    for spec in args.curves:
        label, path, mode = parse_curve(spec)
        curves[(label, mode)] = lc.CurveLog.from_csv(path, label, mode)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    _plot(curves, Path(args.out), targets)
    print(f"# plot written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
