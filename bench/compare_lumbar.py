#!/usr/bin/env python
"""spineloss against the MONAI peer on the real lumbar data, in one invocation.

For each label mode asked for, trains the peer (``bench/peer_monai.py``) and spineloss
(``bench/train_lumbar.py``, settings from ``configs/lumbar_<mode>.toml``) for the same training-time
budget, both evaluated every minute at the original 1 mm grid, then prints both curves side by side,
the ratios (steps/s, Dice at each minute) and writes ``<out>/curve_<pipeline>_<mode>.csv`` and a plot
``<out>/lumbar_dice_vs_time.png``.

    python bench/compare_lumbar.py --minutes 4 --modes binary [--out docs] [--skip-peer]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lumbar_common as lc  # noqa: E402


def _plot(curves: dict, path: Path, targets: dict | None = None) -> None:
    """One panel per label mode; ``targets`` maps a mode to dashed horizontal lines ``{label: y}``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = sorted({mode for _, mode in curves})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for (name, m), log in curves.items():
            if m != mode:
                continue
            key = "multiclass_dice" if mode == "multiclass" else "binary_dice"
            ax.plot([r.train_seconds / 60 for r in log.rows], [getattr(r, key) for r in log.rows], "o-", label=name)
        for label, y in (targets or {}).get(mode, {}).items():
            ax.axhline(y, ls="--", lw=0.8, color="gray")
            ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="gray")
        ax.set_xlabel("training time (min, 2 CPU cores)")
        ax.set_ylabel("L1-L5 mean Dice" if mode == "multiclass" else "vertebral-body Dice (binary)")
        ax.set_title(f"lumbar, {mode}, evaluated at 1 mm")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--modes", default="binary,multiclass")
    p.add_argument("--data", default=lc.DEFAULT_DATA)
    p.add_argument("--out", default="runs/compare_lumbar")
    p.add_argument("--eval-every-s", type=float, default=60.0)
    p.add_argument("--skip-peer", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from peer_monai import run_peer
    from train_lumbar import run_spineloss

    curves = {}
    for mode in args.modes.split(","):
        if not args.skip_peer:
            curves[("monai peer", mode)] = run_peer(args.minutes, mode, args.data, eval_every_s=args.eval_every_s)
        curves[("spineloss", mode)] = run_spineloss(args.minutes, mode, args.data, eval_every_s=args.eval_every_s)
    for (name, mode), log in curves.items():
        log.to_csv(out / f"curve_{name.split()[0]}_{mode}.csv")
    print("\n# summary (training minutes budget %g)" % args.minutes)
    for mode in args.modes.split(","):
        ours = curves[("spineloss", mode)]
        line = f"{mode:10s} spineloss: {ours.summary_line(args.minutes)}  steps/s {ours.info['steps_per_s']:.3f}"
        print(line)
        if ("monai peer", mode) in curves:
            peer = curves[("monai peer", mode)]
            print(f"{mode:10s} monai peer: {peer.summary_line(args.minutes)}  steps/s {peer.info['steps_per_s']:.3f}")
            key = "multiclass_dice" if mode == "multiclass" else "binary_dice"
            print(f"{mode:10s} steps/s ratio {ours.info['steps_per_s'] / peer.info['steps_per_s']:.2f} "
                  "(different volumes: see bench/step_speed.py for equal batch and volume)")
            for r_o, r_p in zip(ours.rows, peer.rows):
                a, b = getattr(r_o, key), getattr(r_p, key)
                print(f"   t~{r_o.train_seconds / 60:4.1f} min  spineloss {a:.4f}  peer {b:.4f}  "
                      f"diff {a - b:+.4f}" if not (math.isnan(a) or math.isnan(b)) else "")
    _plot(curves, out / "lumbar_dice_vs_time.png")
    print(f"# curves and plot in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
