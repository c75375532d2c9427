"""The search-progress picture of ``spineloss learn`` (spineloss.report.learning_curve)."""
from __future__ import annotations

import csv

from spineloss.report.learning_curve import hold_last_step, plot_learning


def test_hold_last_step_extends_the_last_value():
    points = [(0, 0.67), (1, 0.67), (2, 0.70)]
    assert hold_last_step(points) == points + [(2.5, 0.70)]   # a best found last is a visible step
    assert hold_last_step([]) == []


def test_best_so_far_line_reaches_the_last_generations_best(tmp_path, monkeypatch):
    rows = [{"generation": 0, "phase": "gp", "best_fitness": 0.6, "generation_best": 0.6, "generation_mean": 0.3},
            {"generation": 1, "phase": "gp", "best_fitness": 0.7, "generation_best": 0.7, "generation_mean": 0.4}]
    with open(tmp_path / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    drawn = {}
    from matplotlib.axes import Axes
    original = Axes.plot

    def spy(self, *args, label=None, **kwargs):
        drawn[label] = (list(args[0]), list(args[1]))
        return original(self, *args, label=label, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    path = plot_learning(tmp_path)
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    xs, ys = drawn["best so far"]
    assert xs == [0, 1, 1.5] and ys == [0.6, 0.7, 0.7]
    assert drawn["generation's best"] == ([0, 1], [0.6, 0.7])
