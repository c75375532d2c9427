import numpy as np
import pytest
import torch

from spineloss.data.augment import AugmentConfig, augment_sample, mixup, one_hot, random_affine


def _blob():
    lab = np.zeros((24, 24, 16), np.uint8)
    lab[6:18, 8:16, 4:12] = 1
    lab[18:22, 8:16, 4:12] = 2
    img = lab[None].astype(np.float32) * 2.0 - 1.0
    return img, lab


def test_same_seed_same_augmentation():
    img, lab = _blob()
    cfg = AugmentConfig(p_affine=1.0, p_noise=1.0)
    a = augment_sample(img, lab, np.random.default_rng(3), cfg)
    b = augment_sample(img, lab, np.random.default_rng(3), cfg)
    c = augment_sample(img, lab, np.random.default_rng(4), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_affine_keeps_label_values_and_is_identity_at_zero():
    img, lab = _blob()
    cfg = AugmentConfig(p_affine=1.0, rotation=0.3, scale=0.1, translation=0.05)
    out_img, out_lab = random_affine(img, lab, np.random.default_rng(0), cfg, spacing=(1.0, 1.0, 2.0))
    assert set(np.unique(out_lab)) <= {0, 1, 2}
    assert out_lab.dtype == lab.dtype and out_img.shape == img.shape
    zero = AugmentConfig(p_affine=1.0, rotation=0.0, scale=0.0, translation=0.0)
    same_img, same_lab = random_affine(img, lab, np.random.default_rng(0), zero)
    np.testing.assert_array_equal(same_lab, lab)
    np.testing.assert_allclose(same_img, img, atol=1e-5)


def test_affine_moves_image_and_label_together():
    img, lab = _blob()
    cfg = AugmentConfig(p_affine=1.0, rotation=0.4, scale=0.1, translation=0.1)
    out_img, out_lab = random_affine(img, lab, np.random.default_rng(1), cfg)
    inside = out_img[0][out_lab == 1]
    outside = out_img[0][out_lab == 0]
    assert inside.mean() > 0.5 and outside.mean() < -0.5


def test_no_augmentation_is_identity():
    img, lab = _blob()
    out = augment_sample(img, lab, np.random.default_rng(0), AugmentConfig.none())
    np.testing.assert_array_equal(out[0], img)


def test_mixup_makes_soft_targets_that_sum_to_one():
    img = torch.randn(3, 1, 8, 8, 8)
    lab = torch.randint(0, 3, (3, 1, 8, 8, 8))
    g = torch.Generator().manual_seed(0)
    x, y, _ = mixup(img, lab, 3, g, alpha=0.4)
    assert y.shape == (3, 3, 8, 8, 8)
    torch.testing.assert_close(y.sum(1), torch.ones(3, 8, 8, 8))
    assert ((y > 0) & (y < 1)).any()
    g2 = torch.Generator().manual_seed(0)
    x2, y2, _ = mixup(img, lab, 3, g2, alpha=0.4)
    torch.testing.assert_close(x, x2)


def test_one_hot_binary_and_multiclass():
    lab = torch.tensor([[[[0, 1], [2, 0]]]])[:, None]
    assert one_hot(lab, 3).shape == (1, 3, 1, 2, 2)
    assert one_hot(lab, 1).sum() == 2


@pytest.mark.parametrize("bad", [dict(p_affine=1.5), dict(noise_std=-1), dict(scale=1.0), dict(mixup_alpha=0),
                                 dict(affine_padding="wrap")])
def test_invalid_config(bad):
    with pytest.raises(ValueError):
        AugmentConfig(**bad)


def test_mirroring_flips_image_and_label_together_on_the_chosen_axes_only():
    img, lab = _blob()
    lab[:, :, 12:14] = 2  # not symmetric along axis 2
    img = img + np.arange(16, dtype=np.float32)
    cfg = AugmentConfig(p_affine=0.0, p_noise=0.0, mirror_axes=(2,))
    seen = set()
    for seed in range(12):
        out_img, out_lab = augment_sample(img, lab, np.random.default_rng(seed), cfg)
        flipped = np.array_equal(out_lab, lab[:, :, ::-1])
        assert flipped or np.array_equal(out_lab, lab)
        np.testing.assert_array_equal(out_img, img[:, :, :, ::-1] if flipped else img)
        assert out_img.flags.c_contiguous and out_lab.flags.c_contiguous
        seen.add(flipped)
    assert seen == {True, False}


def test_mirroring_is_drawn_after_the_other_augmentations():
    """With mirroring on, a sample is the same affine + noise sample as without, flipped or not."""
    img, lab = _blob()
    lab[:, :, 12:14] = 2
    for seed in range(6):
        a_img, a_lab = augment_sample(img, lab, np.random.default_rng(seed), AugmentConfig(p_affine=1.0, p_noise=1.0))
        b_img, b_lab = augment_sample(img, lab, np.random.default_rng(seed),
                                      AugmentConfig(p_affine=1.0, p_noise=1.0, mirror_axes=(2,)))
        flipped = not np.array_equal(b_img, a_img)
        np.testing.assert_array_equal(b_img, a_img[..., ::-1] if flipped else a_img)
        np.testing.assert_array_equal(b_lab, a_lab[..., ::-1] if flipped else a_lab)


@pytest.mark.parametrize("axes", [(3,), (1, 1), (-1,)])
def test_invalid_mirror_axes(axes):
    with pytest.raises(ValueError, match="mirror_axes"):
        AugmentConfig(mirror_axes=axes)


def test_reflection_padding_shows_mirrored_anatomy_and_background_labels():
    lab = np.zeros((24, 8, 8), np.uint8)
    lab[2:6] = 1  # a structure at the top edge
    img = (np.arange(24, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32))[None] + 1.0
    outs = {}
    for padding in ("minimum", "reflection"):
        cfg = AugmentConfig(p_affine=1.0, rotation=0.0, scale=0.0, translation=0.25, affine_padding=padding)
        for seed in range(40):  # find a draw that shifts the content toward the feet (down axis 0)
            out_img, out_lab = random_affine(img, lab, np.random.default_rng(seed), cfg)
            if out_lab[:3].sum() == 0 and out_lab.sum() > 0:
                outs[padding] = out_img[0], out_lab
                break
    low_img, _ = outs["minimum"]
    refl_img, refl_lab = outs["reflection"]
    top = int(np.argmax(refl_lab.any((1, 2))))  # the structure's first row after the shift
    assert top >= 3
    assert np.allclose(low_img[0], img.min())  # a blank band above the shifted image...
    band = refl_img[:top, 4, 4]  # ...or the image mirrored at its edge: intensities rise again
    assert band[0] > band.min() + 1.0 and band.min() >= img.min() - 1e-5
    assert ((band >= 3.0) & (band <= 6.0)).any()  # the structure's rows (values 3-6) show up mirrored...
    assert (refl_lab[:top] == 0).all() and refl_lab[top:top + 4, 4, 4].all()  # ...labelled background


def test_gamma_keeps_mean_std_and_order_and_changes_contrast():
    from spineloss.data.augment import adjust_gamma

    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    out = adjust_gamma(img, 1.5)
    np.testing.assert_allclose(out.mean((1, 2, 3)), img.mean((1, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(out.std((1, 2, 3)), img.std((1, 2, 3)), rtol=1e-4)
    flat_in, flat_out = img[0].ravel(), out[0].ravel()
    assert (np.argsort(flat_in, kind="stable") == np.argsort(flat_out, kind="stable")).all()  # monotone
    assert np.abs(out - img).max() > 0.05
    np.testing.assert_allclose(adjust_gamma(img, 1.0), img, atol=1e-5)
    const = np.ones((1, 3, 3, 3), np.float32)
    np.testing.assert_array_equal(adjust_gamma(const, 2.0), const)


def test_isotropic_scaling_keeps_proportions():
    lab = np.zeros((32, 32, 32), np.uint8)
    lab[8:24, 12:20, 12:20] = 1  # 16 x 8 x 8
    img = lab[None].astype(np.float32)
    cfg = AugmentConfig(p_affine=1.0, rotation=0.0, scale=0.3, translation=0.0, scale_isotropic=True)
    for seed in range(5):
        _, out = random_affine(img, lab, np.random.default_rng(seed), cfg)
        ext = [int(np.ptp(np.nonzero(out)[a])) + 1 for a in range(3)]
        assert abs(ext[0] / ext[1] - 2.0) < 0.35 and abs(ext[1] - ext[2]) <= 1


@pytest.mark.parametrize("bad", [dict(gamma_range=(0.0, 1.0)), dict(gamma_range=(1.5, 0.7)), dict(p_gamma=1.2)])
def test_invalid_gamma(bad):
    with pytest.raises(ValueError, match="gamma"):
        AugmentConfig(**bad)


def test_rotation_per_axis():
    img, lab = _blob()
    scalar = AugmentConfig(p_affine=1.0, rotation=0.3, scale=0.0, translation=0.0)
    same = AugmentConfig(p_affine=1.0, rotation=(0.3, 0.3, 0.3), scale=0.0, translation=0.0)
    assert same.rotation == (0.3, 0.3, 0.3)
    a = random_affine(img, lab, np.random.default_rng(5), scalar)
    b = random_affine(img, lab, np.random.default_rng(5), same)
    np.testing.assert_array_equal(a[0], b[0])                       # the same draws, the same result
    # a rotation about one axis only moves structures in the plane of the other two: the label's
    # extent along that axis is kept, its projection onto the other two changes
    lab3 = np.zeros((32, 32, 32), np.uint8)
    lab3[8:24, 12:20, 14:18] = 1
    for axis, box in ((0, np.arange(8, 24)), (1, np.arange(12, 20))):
        limits = [0.0, 0.0, 0.0]
        limits[axis] = 0.5
        cfg = AugmentConfig(p_affine=1.0, rotation=tuple(limits), scale=0.0, translation=0.0)
        _, out_lab = random_affine(lab3[None].astype(np.float32), lab3, np.random.default_rng(2), cfg)
        others = tuple(a for a in range(3) if a != axis)
        np.testing.assert_array_equal(np.nonzero(out_lab.any(others))[0], box)
        assert not np.array_equal(out_lab.any(axis), lab3.any(axis))
    assert AugmentConfig(rotation=np.float32(0.25)).rotation == 0.25
    with pytest.raises(ValueError, match="one angle or three"):
        AugmentConfig(rotation=(0.1, 0.2))
    with pytest.raises(ValueError, match="rotation must be >= 0"):
        AugmentConfig(rotation=(0.1, -0.2, 0.0))
