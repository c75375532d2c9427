"""Post-processing: counting vertebral bodies from the caudal end (spineloss.postprocess)."""
from __future__ import annotations

import numpy as np
import pytest

from spineloss.postprocess import PostprocessConfig, craniocaudal_axis, keep_caudal_bodies, split_bodies

BODY = 10      # body height (voxels along axis 0)
GAP = 4        # disc height


def _stack(labels, shape=(120, 24, 24), bridge: dict | None = None) -> np.ndarray:
    """Boxes stacked along axis 0 (index grows towards the feet), body ``i`` labelled ``labels[i]``.

    ``bridge = {i: width}`` fills the disc below body ``i`` with a ``width``-wide foreground column
    (a disc the network took for bone), joining body ``i`` and ``i + 1``.
    """
    out = np.zeros(shape, dtype=np.uint8)
    top = 4
    for i, lab in enumerate(labels):
        out[top:top + BODY, 4:20, 4:20] = lab
        if bridge and i in bridge:
            w = bridge[i]
            c = 12 - w // 2
            out[top + BODY:top + BODY + GAP, c:c + w, c:c + w] = lab
        top += BODY + GAP
    return out


def test_craniocaudal_axis_from_affine():
    assert craniocaudal_axis(np.eye(4)) == (2, -1)                      # RAS: index grows to the head
    lumbar = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # I, P, R
    assert craniocaudal_axis(lumbar) == (0, 1)
    oblique = np.array([[1, 0, 0, 0], [0, 0.9, 0.3, 0], [0, 0.3, -0.9, 0], [0, 0, 0, 1]], dtype=float)
    assert craniocaudal_axis(oblique) == (2, 1)
    with pytest.raises(ValueError, match="superior-inferior"):
        craniocaudal_axis(np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="4 x 4"):
        craniocaudal_axis(np.eye(2))


def test_split_bodies_cuts_a_thin_bridge_and_labels_every_voxel():
    mask = _stack([1, 1], bridge={0: 2}) > 0
    parts, n = split_bodies(mask, erosion_mm=2.0)
    assert n == 2
    assert ((parts > 0) == mask).all()
    first, second = parts[4:14, 4:20, 4:20], parts[18:28, 4:20, 4:20]
    assert len(np.unique(first)) == 1 and len(np.unique(second)) == 1 and first[0, 0, 0] != second[0, 0, 0]


def test_split_bodies_keeps_a_piece_thinner_than_the_erosion():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:12, 2:12, 2:12] = True
    mask[15, 15:18, 15] = True                                          # a 1-voxel-thin sliver
    parts, n = split_bodies(mask, erosion_mm=2.0)
    assert n == 2 and ((parts > 0) == mask).all()
    assert len(np.unique(parts[15, 15:18, 15])) == 1


def test_split_bodies_respects_anisotropic_spacing():
    mask = _stack([1, 1], bridge={0: 2}) > 0
    # 3 mm along axis 0: the 2 mm erosion is less than one voxel along it, the bridge still goes
    parts, n = split_bodies(mask, spacing=(3.0, 1.0, 1.0), erosion_mm=2.0)
    assert n == 2 and ((parts > 0) == mask).all()


def test_drops_the_extra_body_at_the_head_end():
    pred = _stack([1] * 6)
    out = keep_caudal_bodies(pred, 5, axis=0, caudal_sign=1)
    assert out[4:14].sum() == 0                                         # the most cranial body is gone
    assert (out[18:] == pred[18:]).all()
    flipped = keep_caudal_bodies(pred[::-1].copy(), 5, axis=0, caudal_sign=-1)
    assert (flipped == out[::-1]).all()


def test_nothing_changes_with_the_expected_number_of_bodies_or_fewer():
    for n in (3, 5):
        pred = _stack([1] * n)
        assert (keep_caudal_bodies(pred, 5) == pred).all()
    few = _stack([1, 1, 2])                                              # fewer bodies: the labels stay
    assert (keep_caudal_bodies(few, 5, relabel=True) == few).all()
    assert keep_caudal_bodies(np.zeros((8, 8, 8), np.uint8), 5).sum() == 0


@pytest.mark.parametrize("width", [6, 10, 14])
def test_two_bodies_joined_across_a_disc_are_counted_as_two(width):
    # 6: split by a deeper erosion; 10 and 14 (a disc nearly as wide as the bodies): cut across the
    # long axis at the waist
    pred = _stack([1] * 6, bridge={4: width})
    parts, n = split_bodies(pred > 0, erosion_mm=2.0)
    assert n == 5                                                       # the 2 mm erosion alone does not cut it
    out = keep_caudal_bodies(pred, 5)
    assert out[4:14].sum() == 0 and (out[18:] == pred[18:]).all()
    levels = keep_caudal_bodies(pred, 5, relabel=True)
    assert (levels[4 + 5 * 14:4 + 5 * 14 + BODY] == _stack([0, 0, 0, 0, 0, 5])[4 + 5 * 14:4 + 5 * 14 + BODY]).all()
    assert set(np.unique(levels[4 + 4 * 14:4 + 4 * 14 + BODY])) == {0, 4}


def test_one_body_is_never_cut():
    pred = _stack([1, 1, 1, 1, 1, 1])
    pred[4 + 5 * 14:4 + 5 * 14 + BODY + 8, 2:22, 2:22] = 1             # a large, convex last body
    parts, n = split_bodies(pred > 0)
    out = keep_caudal_bodies(pred, 5)
    assert out[4:14].sum() == 0 and (out[18:] == pred[18:]).all()


def test_a_foreground_map_is_numbered_as_far_as_the_bodies_go():
    pred = _stack([0, 1, 1, 1, 1])                                      # four bodies: the top level missed
    out = keep_caudal_bodies(pred, 5, relabel=True)
    assert (out == _stack([0, 2, 3, 4, 5])).all()


def test_fragments_beyond_the_cut_go_with_the_dropped_body():
    pred = _stack([1] * 6)
    pred[0:2, 10:12, 10:12] = 1                                         # debris above the extra body
    pred[100:102, 10:12, 10:12] = 1                                     # debris below the last body
    out = keep_caudal_bodies(pred, 5)
    assert out[0:14].sum() == 0
    assert out[100:102].sum() == pred[100:102].sum()


def test_number_levels_from_the_caudal_end():
    # a network that took T12 for L1: levels shifted by one, T12 segmented
    pred = _stack([1, 1, 2, 3, 4, 5])
    out = keep_caudal_bodies(pred, 5, relabel=True)
    expected = _stack([0, 1, 2, 3, 4, 5])
    assert (out == expected).all()
    # five bodies with mixed labels inside: each body gets one level, counted from the feet
    mixed = _stack([1, 2, 3, 4, 5])
    mixed[18:20] = np.where(mixed[18:20] > 0, 1, 0)                     # top rows of the 2nd body called L1
    assert (keep_caudal_bodies(mixed, 5, relabel=True) == _stack([1, 2, 3, 4, 5])).all()


def test_postprocess_config_validates_and_applies():
    assert not PostprocessConfig().active
    with pytest.raises(ValueError, match="number_levels needs"):
        PostprocessConfig(number_levels=True)
    with pytest.raises(ValueError, match="integer >= 0"):
        PostprocessConfig(caudal_bodies=-1)
    with pytest.raises(ValueError, match="integer >= 0"):
        PostprocessConfig(caudal_bodies=2.5)
    lumbar = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    pred = _stack([1, 1, 2, 3, 4, 5])
    cfg = PostprocessConfig.from_dict(PostprocessConfig(5, True).to_dict())
    assert (cfg.apply(pred, lumbar, (1.0, 1.0, 1.0)) == _stack([0, 1, 2, 3, 4, 5])).all()
    assert (PostprocessConfig().apply(pred, lumbar, (1.0, 1.0, 1.0)) is pred)
    with pytest.raises(ValueError, match="caudal_bodies to the number of levels"):
        PostprocessConfig(3, True).apply(pred, lumbar, (1.0, 1.0, 1.0))


def test_keep_caudal_bodies_rejects_bad_arguments():
    pred = _stack([1] * 6)
    with pytest.raises(ValueError, match="3D"):
        keep_caudal_bodies(pred[0], 5)
    with pytest.raises(ValueError, match="n_bodies"):
        keep_caudal_bodies(pred, 0)
    with pytest.raises(ValueError, match="caudal_sign"):
        keep_caudal_bodies(pred, 5, caudal_sign=0)
