#!/usr/bin/env python
"""Where the lumbar levels sit in each scan's field of view, for the bench's split.

    python bench/lumbar_levels.py [--data ../shared/data/lumbar]

For every case: the first and last slice (mm from the field of view's head end, axis 0) of L1 and
L5, and the L1-L5 length. It shows why level identification is the hard part of the L1-L5 task on
the peer's split: a network that learns "L1 starts about 20 mm below the top edge" from the training
scans labels T12 as L1 in a validation scan that shows more thoracic spine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lumbar_common as lc  # noqa: E402


def level_positions(ref: np.ndarray, spacing, axis: int = 0) -> dict[str, float]:
    """mm from the start of ``axis`` to the first voxel of L1 and to the last voxel of L5."""
    others = tuple(a for a in range(ref.ndim) if a != axis)
    rows = {k: np.nonzero((ref == k).any(axis=others))[0] for k in (1, 5)}
    if not len(rows[1]) or not len(rows[5]):
        raise ValueError("the label map needs both L1 (1) and L5 (5)")
    top, bottom = rows[1].min() * spacing[axis], (rows[5].max() + 1) * spacing[axis]
    return {"l1_top_mm": float(top), "l5_bottom_mm": float(bottom), "length_mm": float(bottom - top),
            "fov_mm": float(ref.shape[axis] * spacing[axis])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=lc.DEFAULT_DATA)
    args = p.parse_args(argv)
    data = lc.resolve_data_dir(args.data)
    train, val = lc.lumbar_split(data)
    table = {}
    print(f"{'case':12s} {'split':5s} {'L1 top':>7s} {'L5 end':>7s} {'L1-L5':>6s}  (mm from the head end)")
    for split, cases in (("train", train), ("val", val)):
        for case in cases:
            ref, spacing = lc.load_reference(case)
            pos = level_positions(ref, spacing)
            table.setdefault(split, []).append(pos)
            print(f"{case.case_id:12s} {split:5s} {pos['l1_top_mm']:7.0f} {pos['l5_bottom_mm']:7.0f} "
                  f"{pos['length_mm']:6.0f}")
    for split, rows in table.items():
        for key in ("l1_top_mm", "length_mm"):
            v = np.array([r[key] for r in rows])
            print(f"# {split:5s} {key:10s} min {v.min():5.0f}  median {np.median(v):5.0f}  max {v.max():5.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
