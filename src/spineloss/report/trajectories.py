"""Plots of how a loss changed while training: the greedy search's parameters (``params.csv``) and the
adaptive weights of a compound loss (``weights.csv``) against the training step, one line per fold,
one panel per parameter or weight, in ``<loss>/tuning.png``."""
from __future__ import annotations

from pathlib import Path

__all__ = ["plot_trajectories"]


#: the window of the running mean drawn over weights that move every step
SMOOTH_STEPS = 50


def _moving_average(values: list[float], window: int) -> list[float]:
    """The mean of the last ``window`` values at each step (fewer at the start); ``values`` itself unless the
    series is noisy: its path (the sum of the step-to-step changes) is over 10 times its range, as SoftAdapt's
    weights, which jump every step (Rebalance's line and CoV's settling curve are drawn as they are)."""
    path = sum(abs(b - a) for a, b in zip(values, values[1:]))
    if path <= 10.0 * (max(values, default=0.0) - min(values, default=0.0)):
        return values
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_trajectories(loss_dir: str | Path) -> Path | None:
    """Write ``loss_dir/tuning.png`` from its folds' ``params.csv`` / ``weights.csv``; ``None`` when the
    loss was not tuned."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plots import write_png
    from ..tuning.greedy import read_params_csv
    from ..tuning.weighting import read_weights_csv

    loss_dir = Path(loss_dir)
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}   # panel -> fold -> (steps, values)
    for fold_dir in sorted(p for p in loss_dir.glob("fold*") if p.is_dir()):
        for name, reader, kind in (("params.csv", read_params_csv, "parameter"),
                                   ("weights.csv", read_weights_csv, "weight")):
            if not (fold_dir / name).exists():
                continue
            rows = reader(fold_dir / name)
            for key in (k for k in (rows[0] if rows else {}) if k != "step"):
                steps = [int(r["step"]) for r in rows]
                series.setdefault(f"{kind} {key}", {})[fold_dir.name] = (steps, [float(r[key]) for r in rows])
    if not series:
        return None
    fig = Figure(figsize=(4.2 * len(series), 3.4))
    FigureCanvasAgg(fig)
    for i, (panel, folds) in enumerate(sorted(series.items())):
        ax = fig.add_subplot(1, len(series), i + 1)
        for k, (fold, (steps, values)) in enumerate(folds.items()):
            if panel.startswith("parameter"):
                ax.plot(steps, values, drawstyle="steps-post", label=fold, linewidth=1.5)
                continue
            mean = _moving_average(values, SMOOTH_STEPS)
            if mean is not values:  # weights that change every step (SoftAdapt): the raw values faint, their mean
                ax.plot(steps, values, color=f"C{k}", linewidth=0.5, alpha=0.15)
                label = f"{fold} (mean of {SMOOTH_STEPS} steps)"
            else:
                label = fold
            ax.plot(steps, mean, color=f"C{k}", label=label, linewidth=1.5)
        ax.set_title(panel, fontsize=11)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{loss_dir.name}: the loss while training", fontsize=12)
    fig.tight_layout()
    return write_png(fig, loss_dir / "tuning.png")
