"""Prediction pictures (spineloss.report.pictures)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from spineloss.report.pictures import DPI, FIGSIZE, best_and_worst, render_case, slice_indices


def _volume(shape=(10, 24, 28)):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    ref = np.zeros(shape, np.int16)
    ref[2:8, 6:18, 8:20] = 1
    ref[5:8, 6:18, 8:20] = 2
    image[ref > 0] += 3.0
    return image, ref


def test_slice_indices_through_centroid():
    ref = np.zeros((9, 20, 30), np.uint8)
    ref[2:5, 4:10, 10:25] = 1  # centroid (3, 6.5 -> 6 (round half to even), 17)
    assert slice_indices(ref) == (3, 6, 17)
    pred = np.zeros_like(ref)
    pred[6:9, 12:20, 0:4] = 3
    assert slice_indices(ref, pred) == (3, 6, 17)  # the reference wins when it has foreground
    assert slice_indices(np.zeros_like(ref), pred) == (7, 16, 2)  # else the prediction's centroid
    assert slice_indices(np.zeros_like(ref), np.zeros_like(ref)) == (4, 10, 15)  # else the centre


def test_slice_indices_skip_gap_between_pieces():
    ref = np.zeros((21, 8, 8), np.uint8)
    ref[0:4, 2:6, 2:6] = 1
    ref[14:18, 2:6, 2:6] = 2  # centroid along axis 0 is 8.5 -> 8: a "disc" with no foreground
    idx = slice_indices(ref)
    assert idx[0] == 3 and ref[idx[0]].any()  # nearest occupied plane (3 is 5 away, 14 is 6 away)
    assert idx[1:] == (4, 4)


def test_render_case_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    figs_before = plt.get_fignums()
    image, ref = _volume()
    pred_a = ref.copy()
    pred_b = np.zeros_like(ref)
    pred_b[3:9, 9:21, 4:16] = 1
    spacing = (3.0, 0.8, 0.8)
    pa = render_case(image, ref, pred_a, spacing, tmp_path / "sub" / "a.png", title="case_000  Dice 1.00")
    pb = render_case(image[None], ref, pred_b, spacing, tmp_path / "b.png")
    assert pa.exists() and pb.exists() and pa.suffix == ".png"
    a, b = mpimg.imread(pa), mpimg.imread(pb)
    height, width = round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI)
    assert a.shape[:2] == (height, width) and width > height  # three panels side by side
    assert a[..., :3].var() > 0
    assert a.shape == b.shape and np.abs(a - b).max() > 0.1  # the prediction outline shows
    assert plt.get_fignums() == figs_before  # no pyplot figure created or leaked
    assert not list(tmp_path.glob(".*.tmp"))


def test_render_case_channel_zero_and_empty(tmp_path):
    import matplotlib.image as mpimg

    image, ref = _volume((6, 12, 14))
    empty = np.zeros_like(ref)
    p3 = render_case(image, empty, empty, (1.0, 1.0, 1.0), tmp_path / "3d.png")
    p4 = render_case(np.stack([image, -image]), empty, empty, (1.0, 1.0, 1.0), tmp_path / "4d.png")
    assert np.array_equal(mpimg.imread(p3), mpimg.imread(p4))


def test_render_case_errors(tmp_path):
    image, ref = _volume((6, 12, 14))
    with pytest.raises(ValueError, match=r"shapes differ.*\(6, 12, 13\)"):
        render_case(image, ref, ref[..., :13], (1, 1, 1), tmp_path / "x.png")
    with pytest.raises(ValueError, match="D x H x W"):
        render_case(image[0], ref[0], ref[0], (1, 1, 1), tmp_path / "x.png")
    with pytest.raises(ValueError, match="integer label map"):
        render_case(image, ref, ref * 0.5, (1, 1, 1), tmp_path / "x.png")
    with pytest.raises(ValueError, match="spacing"):
        render_case(image, ref, ref, (1, 0, 1), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_best_and_worst():
    scores = {"c": 0.7, "a": 0.9, "b": 0.9, "d": float("nan"), "e": 0.1}
    assert best_and_worst(scores) == ("a", "d")  # tie 0.9: smaller id; NaN is the worst
    assert best_and_worst(scores, higher_is_better=False) == ("e", "d")  # NaN worst either way
    hd = {"z": 4.0, "y": 9.0, "x": 9.0, "w": 1.0}
    assert best_and_worst(hd, higher_is_better=False) == ("w", "x")
    assert best_and_worst({"n2": math.nan, "n1": None}) == ("n1", "n1")
    assert best_and_worst({"only": 0.5}) == ("only", "only")
    with pytest.raises(ValueError, match="no case scores"):
        best_and_worst({})
