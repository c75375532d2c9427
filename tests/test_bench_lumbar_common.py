"""The lumbar bench's shared evaluation: grid mapping back to the original voxels and the Dice scores."""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import lumbar_common as lc  # noqa: E402


def test_resample_matches_grid_sample_align_corners_true():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 6, 4)
    out_shape = (10, 12, 7)
    scale = (0.5, 0.5, 0.5)
    got = lc.resample_scores_to_original(scores, out_shape, scale, 0.0)
    # reference: grid_sample at coarse index j * 0.5 (normalised with align_corners=True)
    axes = [torch.arange(n, dtype=torch.float64) * s for n, s in zip(out_shape, scale)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    norm = lambda v, n: (v.clamp(0, n - 1) / (n - 1)) * 2 - 1
    grid = torch.stack([norm(x, 4), norm(y, 6), norm(z, 5)], dim=-1)[None].float()
    ref = F.grid_sample(scores[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    np.testing.assert_array_equal(got, ref.argmax(0).numpy().astype(np.uint8))


def test_align_corners_false_map_matches_interpolate():
    torch.manual_seed(1)
    scores = torch.randn(2, 6, 6, 5)
    out_shape = (12, 11, 9)
    scale, offset = lc.align_corners_false_index_map(out_shape, scores.shape[1:])
    got = lc.resample_scores_to_original(scores, out_shape, scale, offset)
    ref = F.interpolate(scores[None], size=out_shape, mode="trilinear", align_corners=False)[0].argmax(0)
    assert (got == ref.numpy()).mean() > 0.999


def test_evaluate_binary_and_multiclass(tmp_path):
    import nibabel as nib
    from spineloss.data.layout import Case
    ref = np.zeros((10, 10, 6), np.uint8)
    ref[1:4, 2:8, 1:5] = 1
    ref[5:8, 2:8, 1:5] = 2
    path = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(ref, np.eye(4)), str(path))
    case = Case("c", (path,), path)
    perfect = lc.evaluate(lambda c: ref, [case], "multiclass", num_classes=3)
    assert perfect["binary_dice"] == 1.0 and perfect["multiclass_dice"] == 1.0
    swapped = np.where(ref == 1, 2, np.where(ref == 2, 1, 0)).astype(np.uint8)
    res = lc.evaluate(lambda c: swapped, [case], "multiclass", num_classes=3)
    assert res["binary_dice"] == 1.0 and res["multiclass_dice"] == 0.0
    assert res["neighbour_confusion"][1] == 1.0
    binary = lc.evaluate(lambda c: (ref > 0).astype(np.uint8), [case], "binary")
    assert binary["binary_dice"] == 1.0 and np.isnan(binary["multiclass_dice"])


def test_curve_csv_round_trip_and_plot_spec(tmp_path):
    import pytest

    log = lc.CurveLog(name="x", label_mode="binary", stream=None)
    log.add(60.0, 65.0, 300, 0.3, 0.8, float("nan"), 0.2, 4.0)
    log.add(120.0, 130.0, 610, 0.2, 0.83, float("nan"), 0.19, 4.5)
    back = lc.CurveLog.from_csv(log.to_csv(tmp_path / "c.csv"), "x", "binary")
    assert [r.steps for r in back.rows] == [300, 610] and back.best().binary_dice == 0.83
    assert np.isnan(back.last.multiclass_dice)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a curve CSV"):
        lc.CurveLog.from_csv(tmp_path / "bad.csv")
    from plot_curves import parse_curve
    assert parse_curve("peer 4 min=runs/a.csv:binary") == ("peer 4 min", Path("runs/a.csv"), "binary")
    with pytest.raises(ValueError, match="LABEL=CSV:MODE"):
        parse_curve("runs/a.csv")


def test_level_positions_in_mm():
    from lumbar_levels import level_positions

    ref = np.zeros((40, 4, 4), np.uint8)
    ref[5:10] = 1
    ref[30:36] = 5
    pos = level_positions(ref, (2.0, 1.0, 1.0))
    assert pos == {"l1_top_mm": 10.0, "l5_bottom_mm": 72.0, "length_mm": 62.0, "fov_mm": 80.0}
    import pytest
    with pytest.raises(ValueError, match="L1"):
        level_positions(np.zeros((4, 4, 4), np.uint8), (1, 1, 1))


def test_plot_reference_line_spec():
    import pytest
    from plot_curves import parse_line

    assert parse_line("multiclass:0.68:peer peak (issue)") == ("multiclass", 0.68, "peer peak (issue)")
    for bad in ("binary:x:label", "both:0.5:label", "binary:0.5"):
        with pytest.raises(ValueError, match="MODE:Y:LABEL"):
            parse_line(bad)
