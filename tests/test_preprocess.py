import numpy as np
import pytest
import torch

from spineloss.data.layout import load_case, read_dataset
from spineloss.data.preprocess import (CaseGeometry, PreprocessCache, PreprocessConfig, crop_padding,
                                       normalize_intensity, pad_to_multiple, preprocess_case,
                                       restore_to_original)


def _one_hot_scores(label, num_classes):
    return torch.nn.functional.one_hot(torch.from_numpy(label.astype(np.int64)), num_classes).permute(3, 0, 1, 2).float()


def test_normalize_clips_then_zscores():
    rng = np.random.default_rng(0)
    img = rng.normal(5.0, 2.0, size=(1, 20, 20, 20)).astype(np.float32)
    img[0, 0, 0, 0] = 1e6  # an outlier beyond the 99.5th percentile
    out = normalize_intensity(img, (0.5, 99.5))
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3
    lo, hi = np.percentile(img, [0.5, 99.5])
    clipped = np.clip(img, lo, hi)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out.max() < 4  # the outlier is clipped to the 99.5th percentile


def test_constant_channel_is_zero():
    out = normalize_intensity(np.full((1, 4, 4, 4), 7.0, np.float32))
    assert np.all(out == 0)


def test_resampling_shapes_and_spacing():
    img = np.zeros((1, 40, 30, 10), np.float32)
    lab = np.zeros((40, 30, 10), np.uint8)
    lab[10:20, 10:20, 3:7] = 2
    affine = np.diag([0.5, 1.0, 3.0, 1.0])
    out, olab, geo = preprocess_case(img, lab, affine, PreprocessConfig(target_spacing=(1.0, 1.0, 1.5)))
    assert out.shape == (1, 20, 30, 20) and olab.shape == (20, 30, 20)
    assert geo.resampled_spacing == pytest.approx((1.0, 1.0, 1.5))
    assert set(np.unique(olab)) == {0, 2}  # no interpolated label values


def test_label_resampling_keeps_the_label_centred_on_the_image_grid():
    """Halving the grid: a ball's centre of mass stays put (nearest neighbour moved it half a voxel)."""
    from spineloss.data.preprocess import resample_label

    idx = np.indices((41, 37, 30)).astype(np.float64)
    ball = ((idx[0] - 20.0) ** 2 + (idx[1] - 17.0) ** 2 + (idx[2] - 14.0) ** 2) <= 8.0 ** 2
    lab = ball.astype(np.uint8) * 3
    lab[:, :, :3] = 1  # a second label at the border
    small = resample_label(lab, (20, 18, 15))
    assert set(np.unique(small)) == {0, 1, 3}

    def centre_mm(mask, spacing):  # voxel centres at (i + 0.5) * spacing
        return np.array([(np.nonzero(mask)[a].mean() + 0.5) * spacing[a] for a in range(3)])

    fine = centre_mm(lab == 3, (1.0, 1.0, 1.0))
    coarse = centre_mm(small == 3, (41 / 20, 37 / 18, 2.0))
    assert np.abs(fine - coarse).max() < 0.2
    assert abs((small == 3).sum() * (41 / 20) * (37 / 18) * 2.0 / (lab == 3).sum() - 1) < 0.06


def test_label_resampling_breaks_half_covered_ties_without_bias():
    """Halving a box whose faces fall mid-voxel keeps its length (ties to one side changed it 2 mm)."""
    from spineloss.data.preprocess import resample_label

    lab = np.zeros((40, 40, 40), np.uint8)
    lab[11:29, 11:29, 11:29] = 2  # 18 voxels per side, both faces half-cover a coarse voxel
    small = resample_label(lab, (20, 20, 20))
    for axis in range(3):  # 9 coarse voxels = 18 fine ones (ties to background: 8, to the label: 10)
        others = tuple(a for a in range(3) if a != axis)
        np.testing.assert_array_equal(np.nonzero((small == 2).any(others))[0], np.arange(5, 14))
    assert abs((small == 2).sum() * 8 / (lab == 2).sum() - 1) < 0.04  # edge voxels a quarter covered: background


def test_padding_roundtrip():
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    p, pad = pad_to_multiple(a, 4)
    assert p.shape == (1, 8, 8, 8) and pad == (3, 2, 1)
    np.testing.assert_array_equal(crop_padding(p, pad), a)
    t, pad_t = pad_to_multiple(torch.from_numpy(a), 4, value=-1.0)
    assert pad_t == pad and float(t[0, 7, 7, 7]) == -1.0


def test_restore_to_original_after_resampling_is_close():
    lab = np.zeros((40, 40, 20), np.uint8)
    lab[8:30, 10:28, 4:16] = 1
    lab[30:36, 10:28, 4:16] = 2
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    img = lab[None].astype(np.float32)
    _, small, geo = preprocess_case(img, lab, affine, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)))
    scores, pad = pad_to_multiple(_one_hot_scores(small, 3), 8)
    geo.pad = pad
    back = restore_to_original(scores, geo)
    assert back.shape == lab.shape
    assert (back == lab).mean() > 0.97


def test_restore_rejects_wrong_grid():
    geo = CaseGeometry((4, 4, 4), (1, 1, 1), np.eye(4).tolist(), (4, 4, 4), (1, 1, 1))
    with pytest.raises(ValueError, match="does not match"):
        restore_to_original(torch.zeros(2, 5, 4, 4), geo)


def test_bad_config_values():
    with pytest.raises(ValueError, match="target_spacing"):
        PreprocessConfig(target_spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="clip_percentiles"):
        PreprocessConfig(clip_percentiles=(99.0, 1.0))


def test_real_lumbar_roundtrip_same_spacing_is_exact(lumbar_dir, tmp_path):
    info = read_dataset(lumbar_dir)
    case = info.cases[0]
    image, label, affine = load_case(case, info)
    out, plabel, geo = preprocess_case(image, label, affine, PreprocessConfig())
    np.testing.assert_array_equal(plabel, label)
    scores, pad = pad_to_multiple(_one_hot_scores(plabel, 6), 16)
    geo.pad = pad
    back = restore_to_original(scores, geo)
    np.testing.assert_array_equal(back, label)
    # the cache returns the same arrays and geometry
    cache = PreprocessCache(tmp_path, PreprocessConfig())
    sources = list(case.image_paths) + [case.label_path]
    assert cache.load(case.case_id, sources) is None
    cache.store(case.case_id, sources, out, plabel, geo)
    img2, lab2, geo2 = cache.load(case.case_id, sources)
    np.testing.assert_array_equal(img2, out)
    np.testing.assert_array_equal(lab2, plabel)
    assert geo2.original_shape == geo.original_shape
    # another setting is another cache entry
    assert PreprocessCache(tmp_path, PreprocessConfig(target_spacing=(2, 2, 2))).load(case.case_id, sources) is None
