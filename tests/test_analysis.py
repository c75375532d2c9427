"""``spineloss analyze`` (spineloss.analysis): hand-computed values, the output files, the rules."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from spineloss import analysis as an
from spineloss.cli import main


def _ball(n: int, r: float) -> np.ndarray:
    z, y, x = np.indices((n, n, n)) - (n - 1) / 2.0
    return np.sqrt(z * z + y * y + x * x) <= r


def _inner(mask: np.ndarray) -> np.ndarray:
    """Voxels whose six neighbours all lie in the mask (outside the volume = background)."""
    m = np.pad(mask, 1)
    keep = m[1:-1, 1:-1, 1:-1].copy()
    for sl in ((slice(2, None), slice(1, -1), slice(1, -1)), (slice(None, -2), slice(1, -1), slice(1, -1)),
               (slice(1, -1), slice(2, None), slice(1, -1)), (slice(1, -1), slice(None, -2), slice(1, -1)),
               (slice(1, -1), slice(1, -1), slice(2, None)), (slice(1, -1), slice(1, -1), slice(None, -2))):
        keep &= m[sl]
    return keep


def test_missed_shell_geometry():
    g = _ball(20, 6)
    assert np.array_equal(an.sphere((20, 20, 20), 6), g)
    assert np.array_equal(an.erode6(g), _inner(g))
    masks = an.shape_masks()
    n = masks["sphere"].sum()
    for name, m in masks.items():
        assert abs(m.sum() - n) / n < 0.01, name


def test_dice_of_missed_shell_by_hand():
    e = 1e-6
    g = _ball(24, 6)
    p_mask = _inner(g)
    n, n_g, n_p = g.size, int(g.sum()), int(p_mask.sum())
    value, _ = an.evaluate("dice", np.where(p_mask, 1 - e, e), g)
    # foreground: TP = |P| (P inside G); background: TP = N - |G|, sum p = N - |P|, sum t = N - |G|
    fg = 1 - 2 * n_p / (n_p + n_g)
    bg = 1 - 2 * (n - n_g) / ((n - n_p) + (n - n_g))
    assert value == pytest.approx((fg + bg) / 2, rel=1e-4)
    assert 0.2 < fg < 0.25 and value > 0.1    # a radius-6 ball loses about a third of its voxels


def test_ce_and_its_gradient_by_hand():
    g = _ball(16, 4)
    p = np.where(g, 0.8, 0.3)
    surface = g & ~_inner(g)
    value, grad = an.evaluate("ce", p, g, grad_mask=surface)
    expected = -(g.sum() * math.log(0.8) + (~g).sum() * math.log(0.7)) / g.size
    assert value == pytest.approx(expected, rel=1e-5)
    assert grad == pytest.approx((1 - 0.8) / g.size, rel=1e-4)    # softmax CE: dL/dz_fg = (p - t) / N


def test_tversky_of_over_segmentation_by_hand():
    e = 1e-7
    g = _ball(20, 4)
    pred = _ball(20, 6)                          # G inside P: FP = |P| - |G|, FN = 0
    v_fg = an.evaluate("tversky", np.where(pred, 1 - e, e), g, loss=_tversky_fg())[0]
    tp, fp = g.sum(), pred.sum() - g.sum()
    assert v_fg == pytest.approx(1 - tp / (tp + 0.3 * fp), rel=1e-4)


def _tversky_fg():
    from spineloss.losses import build_loss
    return build_loss("tversky", include_background=False)


def test_logits_give_back_the_probabilities():
    import torch
    p = np.array([0.01, 0.5, 0.99]).reshape(1, 1, 3)
    probs = torch.softmax(an.logits_from_probability(p), dim=1)
    assert probs.shape == (1, 2, 1, 1, 3)
    assert np.allclose(probs[0, 1].numpy(), p, atol=1e-6)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    assert main(["analyze", "--losses", "dice,ce", "--out", str(out)]) == 0
    return out


def test_cli_writes_every_pair_and_png(cli_run):
    with open(cli_run / "analysis.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = {(r["study"], r["loss"]) for r in rows}
    assert pairs == {(s, n) for s in an.STUDIES for n in ("dice", "ce")}
    assert all(math.isfinite(float(r["value"])) for r in rows)
    fractions = [float(r["x"]) for r in rows if r["study"] == "imbalance" and r["loss"] == "ce"]
    assert max(fractions) > 40 and min(fractions) < 0.15
    from matplotlib.image import imread
    for s in an.STUDIES:
        img = imread(cli_run / f"{s}.png")
        assert img.shape[0] > 200 and img[..., :3].std() > 0.01, s     # not blank
    summary = (cli_run / "summary.md").read_text()
    for s in an.STUDIES:
        assert f"## {s}" in summary
    assert summary.count("- **dice**") == len(an.STUDIES)
    assert "decreases with size" in summary        # Dice of a missed shell: smaller for larger balls


def test_cli_unknown_loss_exits_2(tmp_path, capsys):
    assert main(["analyze", "--losses", "dice,nope", "--out", str(tmp_path)]) == 2
    assert "unknown loss" in capsys.readouterr().err


def test_default_losses():
    names = an.default_losses()
    assert {"dice", "ce", "tversky", "hausdorff", "boundary"} <= set(names)
    assert not {"wce", "dice_ce", "weighted_sum"} & set(names)


def test_rules_follow_the_numbers():
    r = [3, 6, 9, 12]
    assert an.describe_size(r, [1.0, 1.02, 0.99, 1.01]).startswith("size-invariant")
    assert an.describe_size(r, [0.4, 0.2, 0.1, 0.05]).startswith("decreases with size")
    assert an.describe_size(r, [0.05, 0.1, 0.2, 0.4]).startswith("grows with size")
    assert an.describe_size(r, [0.05, 0.4, 0.1, 0.2]).startswith("varies non-monotonically")
    k = [-2, -1, 0, 1, 2]
    assert "symmetrically" in an.describe_symmetry(k, [0.2, 0.1, 0.0, 0.1, 0.2])
    assert "smallest at k=0" in an.describe_symmetry(k, [0.2, 0.1, 0.0, 0.1, 0.2])
    assert "over-segmentation more" in an.describe_symmetry(k, [0.2, 0.1, 0.0, 0.15, 0.3])
    assert "under-segmentation more" in an.describe_symmetry(k, [0.3, 0.15, 0.0, 0.1, 0.2])
    assert "not at the truth" in an.describe_symmetry(k, [0.3, 0.0, 0.1, 0.2, 0.3])
    f = [50, 10, 1, 0.1]
    assert an.describe_imbalance(f, [0.1, 0.2, 0.4, 0.8]).startswith("grows as the foreground shrinks")
    assert an.describe_imbalance(f, [0.8, 0.4, 0.2, 0.1]).startswith("shrinks as the foreground shrinks")
    assert an.describe_imbalance(f, [0.5, 0.5, 0.5, 0.5]).startswith("imbalance-invariant")
    assert "highest for torus" in an.describe_shape(["sphere", "torus"], [0.1, 0.2])
    assert an.describe_shape(["sphere", "torus"], [0.1, 0.101]).startswith("shape-invariant")
    rows = [an.Row("size", "x", float(ri), v) for ri, v in zip(r, [0.4, 0.2, 0.1, 0.05])]
    assert an.summary_lines(rows)[("size", "x")].startswith("decreases")


def test_the_boundary_loss_is_analysed_from_its_optimum():
    """Near-perfect predictions score ~0 and any error more, whatever the structure's size: the plain boundary
    value would be a size-dependent negative constant instead."""
    for r in (3.0, 8.0):
        gt = _ball(24, r)
        near_perfect = np.where(gt, 1 - an.EPS, an.EPS)
        missed = np.where(_inner(gt), 1 - an.EPS, an.EPS)
        best, _ = an.evaluate("boundary", near_perfect, gt)
        worse, _ = an.evaluate("boundary", missed, gt)
        assert 0 <= best < 1e-2 < worse
