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


@pytest.mark.parametrize("bad", [dict(p_affine=1.5), dict(noise_std=-1), dict(scale=1.0), dict(mixup_alpha=0)])
def test_invalid_config(bad):
    with pytest.raises(ValueError):
        AugmentConfig(**bad)
