"""spineloss.geometry.bounding_box: the one bounding-box helper of metrics and post-processing."""
import numpy as np
import pytest

from spineloss.geometry import bounding_box


def _brute(mask, margin=0):
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    margin = np.broadcast_to(margin, (mask.ndim,))
    return tuple(slice(max(int(lo) - m, 0), min(int(hi) + 1 + m, n))
                 for lo, hi, m, n in zip(idx.min(0), idx.max(0), margin, mask.shape))


def test_box_of_a_block():
    mask = np.zeros((10, 12, 7), bool)
    mask[2:5, 3:9, 6] = True
    assert bounding_box(mask) == (slice(2, 5), slice(3, 9), slice(6, 7))
    assert mask[bounding_box(mask)].all()


def test_margin_is_clipped_at_the_border():
    mask = np.zeros((10, 12, 7), bool)
    mask[0, 5, 6] = True
    assert bounding_box(mask, margin=1) == (slice(0, 2), slice(4, 7), slice(5, 7))
    assert bounding_box(mask, margin=100) == (slice(0, 10), slice(0, 12), slice(0, 7))
    assert bounding_box(mask, margin=(0, 2, 1)) == (slice(0, 1), slice(3, 8), slice(5, 7))
    with pytest.raises(ValueError, match="margin"):
        bounding_box(mask, margin=-1)


def test_empty_mask_has_no_box():
    assert bounding_box(np.zeros((4, 5, 6), bool)) is None
    assert bounding_box(np.zeros((4, 5, 6), np.uint8), margin=2) is None
    assert bounding_box(np.zeros((0, 5, 6), bool)) is None
    with pytest.raises(ValueError, match="scalar"):
        bounding_box(np.bool_(True))


def test_label_maps_count_every_non_zero_value():
    labels = np.zeros((6, 6), np.int16)
    labels[1, 4] = 3
    labels[4, 2] = 1
    assert bounding_box(labels) == (slice(1, 5), slice(2, 5))


@pytest.mark.parametrize("shape", [(9,), (7, 11), (6, 9, 5), (3, 4, 5, 6)])
def test_matches_brute_force(shape):
    rng = np.random.default_rng(len(shape))
    for _ in range(20):
        mask = rng.random(shape) > 0.97
        margin = int(rng.integers(0, 3))
        assert bounding_box(mask, margin) == _brute(mask, margin)
        # a non-contiguous view gives the same box as its copy
        view = np.asfortranarray(mask)[..., ::-1]
        assert bounding_box(view, margin) == _brute(np.ascontiguousarray(view), margin)
