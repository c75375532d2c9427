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
    assert split_bodies(mask, spacing=(1.0, 1.0, 1.0), erosion_mm=2.0)[1] == 2
    # 3 mm voxels across the bridge: it is 6 mm wide, more than the 2 mm erosion takes away
    assert split_bodies(mask, spacing=(1.0, 3.0, 3.0), erosion_mm=2.0)[1] == 1


def test_split_bodies_gives_each_voxel_a_seed_of_its_own_piece():
    mask = np.zeros((40, 20, 20), dtype=bool)
    mask[2:14, 4:16, 4:16] = True                                       # body A
    mask[20:32, 4:16, 4:16] = True                                      # body B
    mask[14:18, 9, 9] = True                                            # a thin arm of A reaching towards B
    parts, n = split_bodies(mask, erosion_mm=2.0)
    assert n == 2 and ((parts > 0) == mask).all()
    assert len(np.unique(parts[2:18][mask[2:18]])) == 1


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
    # a disc predicted as bone, 6 to 14 voxels wide (the bodies are 16): split by a deeper erosion
    # or across the long axis at the waist
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
    out = keep_caudal_bodies(pred, 5)
    assert out[4:14].sum() == 0 and (out[18:] == pred[18:]).all()


@pytest.mark.parametrize("length", [30, 42, 45, 48, 54])
def test_a_long_box_at_sub_millimetre_spacing_is_not_cut(length):
    from spineloss.postprocess import _split_across_axis
    parts = np.zeros((length + 4, 14, 14), dtype=np.int32)
    parts[2:2 + length, 2:12, 2:12] = 1
    for spacing in ((0.7, 1.0, 1.0), (0.8, 1.0, 1.0), (0.5, 0.5, 0.5)):
        assert _split_across_axis(parts.copy(), 1, 1, np.asarray(spacing)) == 1


def test_a_partly_segmented_t12_above_five_bodies_is_removed():
    pred = _stack([0, 1, 1, 1, 1, 1])
    pred[10:14, 6:18, 6:18] = 1                                         # the lower third of T12
    out = keep_caudal_bodies(pred, 5)
    assert out[:14].sum() == 0 and (out[14:] == pred[14:]).all()
    levels = keep_caudal_bodies(pred, 5, relabel=True)
    assert (levels == _stack([0, 1, 2, 3, 4, 5])).all()


def test_a_half_segmented_t12_counted_as_l1_with_l5_missed_is_flagged():
    """lumbar_32 of the study: T12 half segmented, L1-L4 whole, L5 missed. Five bodies in order, so the
    count is one level off; only the small top body can tell (and the flag says so)."""
    pred = _stack([1, 1, 1, 1, 1])
    pred[4:8] = 0                                                       # the top body: its lower 6 of 10 rows
    flags: list[str] = []
    out = keep_caudal_bodies(pred, 5, relabel=True, flags=flags)
    assert flags == ["partial_top_body"] and (out == _stack([1, 2, 3, 4, 5]) * (pred > 0)).all()
    for whole in (_stack([1] * 5), _stack([1] * 6)):                    # a whole top body: nothing to say
        flags = []
        keep_caudal_bodies(whole, 5, relabel=True, flags=flags)
        assert "partial_top_body" not in flags


def test_two_levels_in_one_piece_that_cannot_be_split_are_flagged():
    """A piece as tall as two bodies and a disc, without a waist and of a body's volume: no split can
    find the disc, so the count above it may be one off."""
    pred = _stack([1, 1, 1, 1])
    top = 4 + 4 * (BODY + GAP)
    pred[top:top + 2 * BODY + GAP, 8:16, 4:20] = 1                     # 24 rows of 8 x 16: 1.2 bodies' volume
    flags: list[str] = []
    keep_caudal_bodies(pred, 5, relabel=True, flags=flags)
    assert flags == ["oversized_body"]
    flags = []
    keep_caudal_bodies(_stack([1] * 5), 5, relabel=True, flags=flags)
    assert flags == []


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
    with pytest.raises(ValueError, match="the model and its post-processing do not match"):
        PostprocessConfig(3, True).apply(pred, lumbar, (1.0, 1.0, 1.0))


def test_keep_caudal_bodies_rejects_bad_arguments():
    pred = _stack([1] * 6)
    with pytest.raises(ValueError, match="3D"):
        keep_caudal_bodies(pred[0], 5)
    with pytest.raises(ValueError, match="n_bodies"):
        keep_caudal_bodies(pred, 0)
    with pytest.raises(ValueError, match="caudal_sign"):
        keep_caudal_bodies(pred, 5, caudal_sign=0)


def test_checkpoints_without_postprocess_do_nothing():
    from spineloss.training import checkpoint_postprocess
    assert not checkpoint_postprocess({}).active
    assert not checkpoint_postprocess({"inference": {"mirror_axes": []}}).active
    assert checkpoint_postprocess({"inference": {"postprocess": {"caudal_bodies": 5}}}).caudal_bodies == 5
    with pytest.raises(ValueError, match="inference.postprocess"):
        checkpoint_postprocess({"inference": {"postprocess": {"caudal_bodies": "five"}}})
    with pytest.raises(ValueError, match="inference.postprocess"):
        checkpoint_postprocess({"inference": {"postprocess": {"levels": 5}}})


def test_check_labels():
    PostprocessConfig(5, True).check_labels(5)
    PostprocessConfig(5, False).check_labels(3)
    with pytest.raises(ValueError, match="set caudal_bodies = 4"):
        PostprocessConfig(5, True).check_labels(4, "the data set")
    with pytest.raises(ValueError, match="true or false"):
        PostprocessConfig(5, "false")
