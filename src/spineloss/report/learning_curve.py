"""The progress of a loss search (``spineloss learn``) as a picture: ``<out>/fitness.png``.

* genetic programming and the Taylor-family search (``history.csv`` of :mod:`spineloss.learning.search`): the
  best fitness so far, and each generation's best and mean over the members that trained, against the
  generation; the phases (``start``, ``gp``, ``cma``: CMA-ES on the constants) are shaded apart.
* the meta-learned loss (``history.csv`` of :mod:`spineloss.learning.meta_search`): the meta-objective, the
  held-out soft Dice of the U-Net after its inner step, per meta-epoch; the fitness of the U-Net trained
  from scratch with the frozen loss is one number, drawn as a line.

Dotted lines: the fitness of the reference losses (Dice, CE, Dice + CE) trained the same way on the same
proxy (``references.json``), the marks a learned loss has to beat.

The fitness is the proxy task's validation Dice (never a test case).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["hold_last_step", "plot_learning"]

_PHASE_COLOURS = {"start": "#dddddd", "gp": "#e8f0fb", "cma": "#fbeee0"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "None") else None
    except ValueError:
        return None


def hold_last_step(points: list[tuple[float, float]], width: float = 0.5) -> list[tuple[float, float]]:
    """The points of a ``steps-post`` line with the last value held for ``width`` more: drawn as they are, a
    step line ends at its last x, so a new best found in the last generation would be a jump of zero width,
    hidden behind that generation's marker."""
    return points + [(points[-1][0] + width, points[-1][1])] if points else points


def plot_learning(out_dir: str | Path) -> Path | None:
    """Write ``out_dir/fitness.png`` from its ``history.csv`` (and ``learned_loss.json`` for the meta search's
    final fitness, ``references.json`` for the hand-designed losses drawn beside); ``None`` when there is no
    history yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from .plots import write_png

    out_dir = Path(out_dir)
    history = out_dir / "history.csv"
    if not history.exists():
        return None
    rows = _rows(history)
    if not rows:
        return None
    fig = Figure(figsize=(6.4, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if "generation" in rows[0]:
        x = [int(r["generation"]) for r in rows]
        for phase in dict.fromkeys(r["phase"] for r in rows):
            gens = [g for g, r in zip(x, rows) if r["phase"] == phase]
            ax.axvspan(min(gens) - 0.5, max(gens) + 0.5, color=_PHASE_COLOURS.get(phase, "#f4f4f4"), zorder=0)
            ax.text((min(gens) + max(gens)) / 2, 0.97, phase, transform=ax.get_xaxis_transform(), ha="center",
                    va="top", fontsize=8, color="#555555")
        for key, style, label in (("best_fitness", dict(drawstyle="steps-post", linewidth=2.0), "best so far"),
                                  ("generation_best", dict(marker="o", linestyle="none", markersize=4),
                                   "generation's best"),
                                  ("generation_mean", dict(linestyle="--", linewidth=1.0),
                                   "generation's mean (trained members)")):
            points = [(g, _number(r.get(key))) for g, r in zip(x, rows)]
            points = [(g, v) for g, v in points if v is not None]
            if key == "best_fitness":
                points = hold_last_step(points)
            if points:
                ax.plot(*zip(*points), label=label, **style)
        ax.set_xlabel("generation")
        ax.set_ylabel("fitness: validation Dice on the proxy")
        method = "search"
    else:
        x = [int(r["epoch"]) for r in rows]  # counted from 1
        ax.plot(x, [float(r["held_out_soft_dice"]) for r in rows], marker="o", label="held-out soft Dice after the "
                "inner step")
        learned = out_dir / "learned_loss.json"
        if learned.exists():
            fitness = json.loads(learned.read_text()).get("source", {}).get("fitness")
            if fitness is not None:
                ax.axhline(float(fitness), color="C3", linestyle="--",
                           label=f"fitness of the frozen loss: {float(fitness):.4f}")
        ax.set_xlabel("meta-epoch")
        ax.set_ylabel("Dice on the proxy")
        method = "meta"
    references = out_dir / "references.json"
    if references.exists():  # the hand-designed losses trained the same way on the same proxy
        for i, (name, value) in enumerate(json.loads(references.read_text()).items()):
            ax.axhline(float(value), color=f"C{4 + i}", linestyle=":", linewidth=1.2, label=f"{name}: {float(value):.4f}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{out_dir.name}: {method} progress", fontsize=11)
    fig.tight_layout()
    return write_png(fig, out_dir / "fitness.png")
