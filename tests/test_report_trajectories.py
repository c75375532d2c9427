"""The plots of a loss's parameters and weights while training (``<loss>/tuning.png``)."""
import csv

from spineloss.report.trajectories import SMOOTH_STEPS, _moving_average, plot_trajectories


def test_only_noisy_weights_are_smoothed():
    rebalance = [0.01 + 0.99 * i / 999 for i in range(1000)]           # a line: drawn as it is
    settling = [0.5 + 0.4 * (1 - 0.99 ** i) for i in range(1000)]       # CoV-like: drawn as it is
    jumping = [0.88 if i % 2 else 0.12 for i in range(1000)]             # SoftAdapt-like: its running mean
    assert _moving_average(rebalance, SMOOTH_STEPS) is rebalance
    assert _moving_average(settling, SMOOTH_STEPS) is settling
    mean = _moving_average(jumping, SMOOTH_STEPS)
    assert mean[:2] == [0.12, 0.5] and abs(mean[-1] - 0.5) < 1e-12 and len(mean) == 1000
    assert _moving_average([], SMOOTH_STEPS) == []


def test_the_plot_has_one_panel_per_weight(tmp_path):
    for fold in ("fold0", "fold1"):
        (tmp_path / fold).mkdir()
        with open(tmp_path / fold / "weights.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "dice", "ce"])
            for i in range(200):
                w.writerow([i, 0.88 if i % 2 else 0.12, 0.12 if i % 2 else 0.88])
    path = plot_trajectories(tmp_path)
    assert path == tmp_path / "tuning.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert plot_trajectories(tmp_path / "fold0" / "nothing") is None
