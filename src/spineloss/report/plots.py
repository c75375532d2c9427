"""Figures of an experiment for the HTML report: box plots of per-fold and per-case scores, and training
curves (training loss and validation Dice per epoch).

Every function takes plain numbers (no file reading: :mod:`spineloss.report.html` gathers them) and
returns the figure as PNG bytes. Matplotlib is imported inside the functions (importing
:mod:`spineloss` stays fast) and only its object-oriented API with the Agg canvas is used (no
``pyplot``, no display, no global figure registry). The PNGs carry no ``Software`` text chunk, so a
page that embeds them names no web address.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["DPI", "WIDTH", "box_plot", "training_curves", "write_png"]

#: figure resolution and width in inches: 1280 pixels, the width of a laptop screen
DPI = 100
WIDTH = 12.8
#: per-fold colours (matplotlib's tab10, readable on white)
_FOLD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")


def _png(fig) -> bytes:
    """The figure as PNG bytes (white background, no metadata); the figure is cleared."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    finally:
        fig.clear()
    return buf.getvalue()


def write_png(fig, path):
    """Write the figure to ``path`` as PNG (as :func:`_png`), atomically; the figure is cleared. Returns the
    path (a :class:`pathlib.Path`)."""
    from pathlib import Path

    from ..atomic import atomic_path
    data = _png(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def box_plot(panels: Mapping[str, Mapping[str, Sequence[float]]], title: str = "",
             lower_is_better: Sequence[str] = ()) -> bytes:
    """Horizontal box plots side by side: one panel per metric, one row per loss.

    ``panels``: ``{panel title: {loss: values}}`` (e.g. ``{"Dice (%)": {...}, "Hausdorff (mm)": {...}}``);
    the losses are drawn top to bottom in the order of the first panel (a loss missing from a panel
    leaves its row empty). Each box spans the quartiles with the median marked and whiskers to the
    furthest value within 1.5 IQR (matplotlib's default); every value is also drawn as a dot (jittered
    vertically with a fixed seed, so the same numbers give the same picture), which keeps a box of 3-5
    fold means honest. Non-finite values (a Hausdorff distance with one empty mask) are left out of the
    box and counted in the row's label (``2 NaN``). Panels named in ``lower_is_better`` say so in
    their axis label. Returns PNG bytes.
    """
    if not panels:
        raise ValueError("box_plot needs at least one panel")
    losses: list[str] = []
    for values in panels.values():
        losses += [loss for loss in values if loss not in losses]
    if not losses:
        raise ValueError("box_plot: every panel is empty")
    height = 1.2 + 0.42 * len(losses)
    fig = _figure(WIDTH, height)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    positions = np.arange(len(losses))
    import matplotlib
    mpl_version = tuple(int(x) for x in matplotlib.__version__.split(".")[:2] if x.isdigit())
    # matplotlib 3.10 renamed vert=False to orientation="horizontal" (vert is deprecated from 3.11)
    horizontal = {"orientation": "horizontal"} if mpl_version >= (3, 10) else {"vert": False}
    for ax, (name, values) in zip(axes, panels.items()):
        data, nan_counts = [], []
        for loss in losses:
            v = np.asarray([float(x) for x in values.get(loss, [])], dtype=np.float64)
            data.append(v[np.isfinite(v)])
            nan_counts.append(int(np.sum(~np.isfinite(v))))
        drawn = [i for i, d in enumerate(data) if d.size]
        if drawn:
            ax.boxplot([data[i] for i in drawn], positions=positions[drawn], widths=0.6, **horizontal,
                       showfliers=False, patch_artist=True,
                       boxprops={"facecolor": "#dbe9f6", "edgecolor": "#3b6ea5"},
                       medianprops={"color": "#c2410c", "linewidth": 2},
                       whiskerprops={"color": "#3b6ea5"}, capprops={"color": "#3b6ea5"})
        for i in drawn:
            jitter = rng.uniform(-0.17, 0.17, size=data[i].size)
            ax.scatter(data[i], positions[i] + jitter, s=12, color="#1f2937", alpha=0.55, zorder=3,
                       linewidths=0)
        for i, n in enumerate(nan_counts):
            if n:
                ax.annotate(f"{n} NaN", (1.0, positions[i]), xycoords=("axes fraction", "data"),
                            xytext=(4, 0), textcoords="offset points", ha="left", va="center",
                            fontsize=8, color="#b91c1c", annotation_clip=False)
        better = "lower is better" if name in lower_is_better else "higher is better"
        ax.set_xlabel(f"{name}  ({better})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    counts = [max((len(panel.get(loss, [])) for panel in panels.values()), default=0) for loss in losses]
    axes[0].set_yticks(positions, [f"{loss}  (n={n})" for loss, n in zip(losses, counts)], fontsize=10)
    axes[0].set_ylim(len(losses) - 0.5, -0.5)  # the first loss on top
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _png(fig)


def training_curves(histories: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
                    unfinished: Mapping[str, Sequence[str]] | None = None, columns: int = 4) -> bytes:
    """Small multiples of training: one panel per loss, one colour per fold.

    ``histories``: ``{loss: {fold: rows}}`` where each row is a ``history.csv`` line as numbers (``epoch``,
    ``train_loss`` and, when the run scored an inner validation split, ``val_dice``). The training
    loss is drawn solid against the left axis; the validation Dice, where any value is finite, dashed
    against a right axis from 0 to 1 (runs that select no checkpoint have none). Losses differ in
    scale, hence one panel each. ``unfinished``: ``{loss: [fold, ...]}`` still training, marked in the
    legend. Returns PNG bytes.
    """
    from matplotlib.ticker import MaxNLocator

    losses = [loss for loss, folds in histories.items() if any(folds.values())]
    if not losses:
        raise ValueError("training_curves: no history rows")
    unfinished = unfinished or {}
    cols = max(1, min(columns, len(losses)))
    rows = math.ceil(len(losses) / cols)
    fig = _figure(WIDTH, 0.6 + 2.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    any_val = False
    for k, loss in enumerate(losses):
        ax = axes[k // cols][k % cols]
        right = None
        for j, (fold, rows_) in enumerate(histories[loss].items()):
            if not rows_:
                continue
            color = _FOLD_COLORS[j % len(_FOLD_COLORS)]
            epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows_)]
            label = fold + (" (running)" if fold in unfinished.get(loss, ()) else "")
            ax.plot(epochs, [r.get("train_loss", math.nan) for r in rows_], color=color, linewidth=1.6,
                    label=label)
            val = [r.get("val_dice", math.nan) for r in rows_]
            if any(math.isfinite(v) for v in val):
                any_val = True
                right = right or ax.twinx()
                right.plot(epochs, val, color=color, linewidth=1.3, linestyle="--", marker=".", markersize=4)
        if right is not None:
            right.set_ylim(0, 1)
            right.set_ylabel("val. Dice (dashed)", fontsize=8)
            right.tick_params(labelsize=8)
        ax.set_title(loss, fontsize=11)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right" if right is None else "center right")
    for k in range(len(losses), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.suptitle("Training loss per epoch (solid)" + (", validation Dice (dashed)" if any_val else ""),
                 fontsize=12)
    fig.tight_layout()
    return _png(fig)
