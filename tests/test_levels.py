"""Level assignment from level probabilities and anatomical order (spineloss.levels)."""
from __future__ import annotations

import numpy as np
import pytest

from spineloss.levels import assign_levels, ordered_labelling
from spineloss.postprocess import craniocaudal_axis


def _spine(levels=(1, 2, 3, 4, 5), extra_below=False, fuse=None, shape=(84, 20, 20)):
    """Bodies of 10 voxels along axis 0 (head at index 0), 4-voxel discs between them."""
    truth = np.zeros(shape, dtype=np.uint8)
    z = 4
    rows = list(levels) + ([6] if extra_below else [])
    for lev in rows:
        truth[z:z + 10, 5:15, 5:15] = lev
        z += 10 if fuse is not None and lev == fuse else 14   # no disc after `fuse`: one piece with the next
    return truth


def _probabilities(truth: np.ndarray, belief: dict[int, dict[int, float]] | None = None, levels: int = 5,
                   seed: int = 0) -> np.ndarray:
    """Softmax-like maps: each true label k is believed as ``belief[k]`` ({label: probability}),
    default certain; a little noise."""
    rng = np.random.default_rng(seed)
    p = np.full((levels + 1,) + truth.shape, 0.01, dtype=np.float32)
    for k in np.unique(truth):
        mass = (belief or {}).get(int(k), {min(int(k), levels): 0.95})
        for lab, value in mass.items():
            p[lab][truth == k] = value
    p += rng.uniform(0, 0.02, p.shape).astype(np.float32)
    return p / p.sum(0, keepdims=True)


def test_ordered_labelling_by_hand():
    # three pieces, two levels: the middle piece is background, the others take 1 and 2
    mass = np.array([[0.0, 5.0, 1.0], [4.0, 1.0, 1.0], [0.0, 2.0, 6.0]])
    assert ordered_labelling(mass) == [(1,), (), (2,)]
    # order wins over a local arg-max: both pieces prefer level 2, the upper one gets level 1
    mass = np.array([[0.0, 4.0, 5.0], [0.0, 0.0, 9.0]])
    assert ordered_labelling(mass) == [(1,), (2,)]
    # a piece may take two consecutive levels when allowed
    fused = np.full((1, 4), np.nan)
    fused[0, 1] = 10.0
    assert ordered_labelling(np.array([[0.0, 6.0, 5.0, 0.0]]), fused) == [(1, 2)]


def test_clean_spine_is_labelled_as_it_is():
    truth = _spine()
    result = assign_levels(_probabilities(truth), 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, truth)
    assert result.flags == [] and result.pieces == [(1,), (2,), (3,), (4,), (5,)]


def test_four_bodies_with_l5_missing_keep_their_levels_and_say_so():
    truth = _spine(levels=(1, 2, 3, 4))
    result = assign_levels(_probabilities(truth), 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, truth)          # counting would have said L2..L5
    assert "missing:L5" in result.flags and "bodies:4" in result.flags


def test_two_bodies_fused_into_one_piece_are_split_where_the_levels_meet():
    truth = _spine(fuse=3)                                        # L3 and L4 touch: one piece
    from spineloss.postprocess import split_bodies
    assert split_bodies(truth > 0, (1.0, 1.0, 1.0))[1] == 4
    result = assign_levels(_probabilities(truth), 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, truth)
    assert result.flags == ["split"] and result.pieces == [(1,), (2,), (3, 4), (5,)]  # 5 bodies once split


def test_a_fused_pair_left_whole_is_flagged_with_the_shift_it_hides():
    """ce fold 3, lumbar_43 of the levels grid: T12 in view, L4 and L5 one piece that the network calls
    L5 throughout. The most probable ordered labelling shifts T12..L3 up by one level and gives the pair
    one level; nothing is dropped or skipped and counting agrees, so only the body's size can say so."""
    truth = _spine(levels=(7, 1, 2, 3, 4, 5), fuse=4)             # T12 (7) above L1; L4 and L5 touch
    belief = {7: {1: 0.6, 0: 0.35}, 1: {2: 0.9}, 2: {3: 0.9}, 3: {4: 0.9}, 4: {5: 0.9}, 5: {5: 0.9}}
    result = assign_levels(_probabilities(truth, belief), 0, 1, (1.0, 1.0, 1.0))
    assert result.pieces == [(1,), (2,), (3,), (4,), (5,)]        # the network's shift, as it believes it
    assert result.flags == ["oversized_body"]


def test_a_tall_thin_pair_left_whole_is_flagged_by_its_height():
    """As above, but the fused pair is thin: under ``fused_volume`` median bodies, so only its height
    (twice a body's and a disc) says that it holds two levels."""
    truth = _spine(levels=(7, 1, 2, 3, 4, 5), fuse=4)
    pair = (truth == 4) | (truth == 5)
    truth[pair] = 0
    truth[np.where(pair.any(axis=(1, 2)))[0][:, None, None], np.arange(8, 13)[None, :, None],
          np.arange(5, 15)[None, None, :]] = 4                     # 20 rows of 5 x 10: one body's volume
    belief = {7: {1: 0.6, 0: 0.35}, 1: {2: 0.9}, 2: {3: 0.9}, 3: {4: 0.9}, 4: {5: 0.9}}
    result = assign_levels(_probabilities(truth, belief), 0, 1, (1.0, 1.0, 1.0))
    assert result.pieces == [(1,), (2,), (3,), (4,), (5,)]
    assert result.flags == ["oversized_body"]


def test_an_uncertain_body_is_not_speckled_with_the_free_level():
    truth = _spine(levels=(1, 2, 3, 4))
    belief = {4: {4: 0.48, 5: 0.47}}                              # L4 half believes it is L5; L5 is free
    result = assign_levels(_probabilities(truth, belief), 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, truth)
    assert "missing:L5" in result.flags and "split" not in result.flags


def test_one_body_in_two_pieces_side_by_side_keeps_both():
    truth = _spine()
    truth[:, 9:11, :] = 0                                         # every body cut in two halves (left, right)
    result = assign_levels(_probabilities(truth), 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, truth)
    assert result.flags == []


def test_a_skipped_level_between_evenly_spaced_bodies_is_flagged():
    truth = _spine(levels=(1, 2, 3, 4))
    belief = {3: {4: 0.95}, 4: {5: 0.95}}                        # the network skips L3
    result = assign_levels(_probabilities(truth, belief), 0, 1, (1.0, 1.0, 1.0))
    assert result.pieces == [(1,), (2,), (4,), (5,)]             # the probabilities' labelling, kept...
    assert {"skipped_level", "missing:L3", "bodies:4"} <= set(result.flags)  # ...and said


def test_a_sacrum_taken_for_l5_is_flagged():
    truth = _spine(extra_below=True)
    belief = {6: {5: 0.95}}                                       # S1 looks exactly like L5
    result = assign_levels(_probabilities(truth, belief), 0, 1, (1.0, 1.0, 1.0))
    assert "bodies:6" in result.flags
    assert {"dropped_below", "dropped_between", "count_disagrees"} & set(result.flags)


def test_six_bodies_drop_the_extra_one_with_a_flag():
    truth = _spine(extra_below=True)                              # a segmented S1 (or an L6) below L5
    belief = {6: {5: 0.55, 0: 0.4}}                               # the network half believes it is L5
    result = assign_levels(_probabilities(truth, belief), 0, 1, (1.0, 1.0, 1.0))
    expected = np.where(truth == 6, 0, truth)
    np.testing.assert_array_equal(result.labels, expected)
    assert "dropped_below" in result.flags and "bodies:6" in result.flags


def test_t12_taken_for_l1_by_the_network_is_dropped_above():
    truth = _spine(levels=(1, 2, 3, 4, 5))
    truth = np.roll(truth, 14, axis=0)
    truth[4:14, 5:15, 5:15] = 7                                   # T12 above L1 (label 7 stands for it)
    belief = {7: {1: 0.6, 0: 0.35}}
    result = assign_levels(_probabilities(truth, belief, seed=1), 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, np.where(truth == 7, 0, truth))
    assert "dropped_above" in result.flags


def test_reversed_orientation_reads_the_axis_from_the_affine():
    truth = _spine()
    flipped = truth[::-1].copy()                                  # feet at index 0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]]          # voxel axis 0 along world z
    axis, sign = craniocaudal_axis(affine)
    assert (axis, sign) == (0, -1)                                # +z (head) with growing index
    result = assign_levels(_probabilities(flipped), axis, sign, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, flipped)
    assert result.flags == []


def test_level_confusions_are_resolved_by_order():
    truth = _spine()
    belief = {2: {3: 0.5, 2: 0.45}, 4: {4: 0.5, 5: 0.45}}         # L2 looks like L3, L4 a bit like L5
    result = assign_levels(_probabilities(truth, belief), 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, truth)


def test_empty_prediction_flags_every_level():
    p = np.zeros((6, 8, 8, 8), dtype=np.float32)
    p[0] = 1.0
    result = assign_levels(p, 0, 1, (1.0, 1.0, 1.0))
    assert not result.labels.any() and "missing:L1" in result.flags and "bodies:0" in result.flags
    with pytest.raises(ValueError, match="probabilities"):
        assign_levels(p[0], 0, 1, (1.0, 1.0, 1.0))


def test_real_cases_with_a_confused_network(lumbar_dir):
    """Real L1-L5 anatomy (lumbar_31's L3 lies in two pieces): probabilities made from the masks, with
    three levels confused; every level comes back whole."""
    import nibabel as nib
    for case in ("lumbar_01", "lumbar_02", "lumbar_31"):
        img = nib.load(str(lumbar_dir / "labelsTr" / f"{case}.nii.gz"))
        truth = np.asarray(img.dataobj).astype(np.uint8)
        spacing = tuple(float(v) for v in img.header.get_zooms()[:3])
        axis, sign = craniocaudal_axis(img.affine)
        belief = {1: {2: 0.5, 1: 0.45}, 3: {3: 0.5, 4: 0.45}, 5: {4: 0.5, 5: 0.45}}
        result = assign_levels(_probabilities(truth, belief), axis, sign, spacing)
        per_level = [np.logical_and(result.labels == k, truth == k).sum() / (truth == k).sum() for k in range(1, 6)]
        assert min(per_level) > 0.999, (case, per_level, result.flags)
        assert result.flags == [], (case, result.flags)


def test_counting_reports_its_broken_assumptions_too():
    from spineloss.postprocess import PostprocessConfig
    truth = _spine(levels=(1, 2, 3, 4))                          # one body short: counting cannot tell
    affine = np.diag([1.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]] * np.array([1, 1, -1, 1])[:, None]
    labels, flags = PostprocessConfig(caudal_bodies=5, number_levels=True).apply_with_flags(
        (truth > 0).astype(np.uint8), affine, (1.0, 1.0, 1.0))
    assert "bodies:4" in flags
    labels, flags = PostprocessConfig(caudal_bodies=5, number_levels=True).apply_with_flags(
        (_spine() > 0).astype(np.uint8), affine, (1.0, 1.0, 1.0))
    assert flags == [] and set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}


def test_thick_tilted_slices_keep_their_head_feet_axis():
    """0.9 x 0.9 x 4 mm voxels, the slices tilted 13 degrees: voxel axis 2 (the 4 mm one) runs head-feet."""
    from spineloss.postprocess import axis_obliqueness
    t = np.deg2rad(13)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 0.9, 4.0])
    assert craniocaudal_axis(affine) == (2, -1)
    assert axis_obliqueness(affine) == pytest.approx(1 - np.cos(t))


def test_restored_probabilities_agree_with_the_restored_labels():
    import torch

    from spineloss.data.preprocess import (PreprocessConfig, pad_to_multiple, preprocess_case,
                                           restore_probabilities, restore_to_original)
    image = np.random.default_rng(0).normal(size=(1, 20, 18, 14)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    _, _, geometry = preprocess_case(image, None, affine, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)))
    logits = torch.randn((6,) + tuple(geometry.resampled_shape))
    logits, pad = pad_to_multiple(logits, 8)
    import dataclasses
    geometry = dataclasses.replace(geometry, pad=pad)
    probs = restore_probabilities(logits, geometry)
    assert probs.shape == (6, 20, 18, 14)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), restore_to_original(logits, geometry))


def test_an_oblique_affine_is_flagged():
    from spineloss.postprocess import PostprocessConfig, axis_obliqueness
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    oblique = np.array([[0, 1, 0, 0], [s, 0, c, 0], [c, 0, -s, 0], [0, 0, 0, 1.0]])
    assert axis_obliqueness(oblique) == pytest.approx(1 - c)
    assert axis_obliqueness(np.diag([1.0, 1, 1, 1])[[2, 1, 0, 3]]) == 0.0
    truth = _spine()
    _, flags = PostprocessConfig(levels="probabilities").apply_with_flags(
        truth, oblique, (1.0, 1.0, 1.0), _probabilities(truth))
    assert "oblique_axis" in flags


LEVEL_RUN = {"experiment": {"name": "lv", "folds": 2, "seed": 0},
             "data": {"phantom": {"region": "lumbar", "cases": 4, "shape": [32, 32, 24], "seed": 0}},
             "model": {"channels": [4, 8]},
             "training": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2},
             "postprocess": {"levels": "probabilities"}, "losses": ["dice"]}


@pytest.fixture(scope="module")
def level_run(tmp_path_factory):
    """A 6-class phantom grid (2 folds, 2 steps each) with levels = "probabilities"."""
    from spineloss.experiment import config_from_dict, run_experiment
    run = tmp_path_factory.mktemp("levels") / "run"
    run_experiment(config_from_dict(LEVEL_RUN), run, progress=False, pictures=False)
    return run


def test_probability_levels_in_the_experiment_and_predict(level_run, tmp_path, caplog):
    """Flags land in cases.csv and metrics.json; predict gives the experiment's prediction and names
    the file in its warning."""
    import csv
    import json

    import nibabel as nib

    from spineloss.cli import main
    from spineloss.experiment import config_from_dict
    raw, out = LEVEL_RUN, level_run
    metrics = json.loads((out / "dice" / "fold0" / "metrics.json").read_text())
    with open(out / "dice" / "fold0" / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["flags"].split(";") if r["flags"] else [] for r in rows] == [metrics["flags"].get(r["case"], [])
                                                                            for r in rows]
    assert any(metrics["flags"].values())                          # an untrained network breaks assumptions
    case = next(c for c in metrics["test_cases"] if metrics["flags"].get(c))
    image = out / "data" / "imagesTr" / f"{case}_0000.nii.gz"
    with caplog.at_level("WARNING"):
        assert main(["predict", "--model", str(out / "dice" / "fold0" / "model.pt"), "--input", str(image),
                     "--output", str(tmp_path / "seg.nii.gz")]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "seg.nii.gz")).dataobj),
                                  np.asarray(nib.load(str(out / "dice" / "fold0" / "predictions" /
                                                          f"{case}.nii.gz")).dataobj))
    assert any(str(image) in r.getMessage() and metrics["flags"][case][0] in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="predicts the levels"):
        config_from_dict({**raw, "data": {**raw["data"], "label_mode": "binary"}})
    with pytest.raises(ValueError, match="leave caudal_bodies"):
        config_from_dict({**raw, "postprocess": {"levels": "probabilities", "caudal_bodies": 5}})


def test_rescore_compares_level_methods_on_the_same_networks(level_run, tmp_path):
    """One 6-class grid, scored again with the arg-max and with counting: same models, same test cases."""
    import json

    from spineloss.cli import main
    from spineloss.experiment import config_from_dict, run_experiment
    raw, run = LEVEL_RUN, level_run
    assert main(["rescore", str(run), "--out", str(tmp_path / "argmax")]) == 0
    assert main(["rescore", str(run), "--out", str(tmp_path / "count"), "--postprocess", "caudal_bodies=5",
                 "--postprocess", "number_levels=true"]) == 0
    assert main(["rescore", str(run), "--out", str(tmp_path / "same"), "--postprocess", 'levels="probabilities"']) == 0
    for k in (0, 1):  # the same post-processing again: the same scores and flags
        a = json.loads((run / "dice" / f"fold{k}" / "metrics.json").read_text())
        same = json.loads((tmp_path / "same" / "dice" / f"fold{k}" / "metrics.json").read_text())
        assert json.dumps([a["cases"], a["flags"]], sort_keys=True) == json.dumps([same["cases"], same["flags"]],
                                                                                sort_keys=True)
    assert main(["rescore", str(tmp_path / "same"), "--out", str(tmp_path / "again")]) == 2  # no models there
    # the rescored folder is not mistaken for a finished run of that config by `spineloss experiment`
    with pytest.raises(ValueError, match="rescored_from"):
        run_experiment(config_from_dict({**raw, "postprocess": {}}), tmp_path / "argmax", progress=False)
    for k in (0, 1):
        a = json.loads((run / "dice" / f"fold{k}" / "metrics.json").read_text())
        b = json.loads((tmp_path / "argmax" / "dice" / f"fold{k}" / "metrics.json").read_text())
        c = json.loads((tmp_path / "count" / "dice" / f"fold{k}" / "metrics.json").read_text())
        assert sorted(a["cases"]) == sorted(b["cases"]) == sorted(c["cases"])
        assert b["postprocess"]["levels"] == "none" and c["postprocess"]["caudal_bodies"] == 5
        assert b["selection"] == a["selection"] and b["rescored_from"].endswith(f"fold{k}")
        assert (tmp_path / "argmax" / "dice" / f"fold{k}" / "history.csv").exists()
        assert not (tmp_path / "argmax" / "dice" / f"fold{k}" / "model.pt").exists()
    # the arg-max scores equal a fresh evaluation of the same model without post-processing
    from spineloss.data.layout import read_dataset
    from spineloss.data.loader import prepare_cases
    from spineloss.data.preprocess import PreprocessConfig
    from spineloss.training import evaluate_cases, load_checkpoint
    info = read_dataset(run / "data")
    b = json.loads((tmp_path / "argmax" / "dice" / "fold0" / "metrics.json").read_text())
    cases = [p for p in prepare_cases(info, info.cases, PreprocessConfig(), "multiclass") if p.case_id in b["cases"]]
    model, ckpt = load_checkpoint(run / "dice" / "fold0" / "model.pt")
    fresh = evaluate_cases(model, cases, "multiclass", labels=[1, 2, 3, 4, 5])
    assert json.dumps(fresh["cases"], sort_keys=True) == json.dumps(b["cases"], sort_keys=True)
    assert main(["rescore", str(run), "--out", str(run)]) == 2
    inner = tmp_path / "inner"
    run_experiment(config_from_dict({**raw, "experiment": {**raw["experiment"], "selection": "inner"},
                                     "data": {**raw["data"], "phantom": {**raw["data"]["phantom"], "cases": 6}}}),
                   inner, progress=False, pictures=False)
    assert main(["rescore", str(inner), "--out", str(tmp_path / "y")]) == 2  # chosen under the old post-processing
    assert main(["rescore", str(run), "--out", str(tmp_path / "x"), "--postprocess", "caudal=5"]) == 2


def test_rescore_scores_a_binary_grid_on_the_levels_by_counting(tmp_path, capsys):
    """The counting route on a foreground grid's own networks and test folds: the levels are the bodies
    numbered from the sacrum, scored on the data set's L1-L5 labels, as a fresh evaluation would."""
    import json

    from spineloss.cli import main
    from spineloss.data.layout import read_dataset
    from spineloss.data.loader import prepare_cases
    from spineloss.data.preprocess import PreprocessConfig
    from spineloss.experiment import config_from_dict, run_experiment
    from spineloss.postprocess import PostprocessConfig
    from spineloss.training import evaluate_cases, load_checkpoint
    raw = {**LEVEL_RUN, "data": {**LEVEL_RUN["data"], "label_mode": "binary"}, "postprocess": {}}
    run = tmp_path / "binary"
    run_experiment(config_from_dict(raw), run, progress=False, pictures=False)
    count = ["--postprocess", "caudal_bodies=5", "--postprocess", "number_levels=true"]
    assert main(["rescore", str(run), "--out", str(tmp_path / "levels"), "--label-mode", "multiclass"] + count) == 0
    record = json.loads((tmp_path / "levels" / "experiment.json").read_text())
    assert record["data"]["label_mode"] == "multiclass" and record["data"]["train_label_mode"] == "binary"
    scored = json.loads((tmp_path / "levels" / "dice" / "fold0" / "metrics.json").read_text())
    info = read_dataset(run / "data")
    cases = [p for p in prepare_cases(info, info.cases, PreprocessConfig(), "binary") if p.case_id in scored["cases"]]
    model, _ = load_checkpoint(run / "dice" / "fold0" / "model.pt")
    fresh = evaluate_cases(model, cases, "multiclass", labels=[1, 2, 3, 4, 5],
                           postprocess=PostprocessConfig(caudal_bodies=5, number_levels=True))
    assert json.dumps(fresh["cases"], sort_keys=True) == json.dumps(scored["cases"], sort_keys=True)
    assert {"1", "5", "mean"} <= set(next(iter(scored["cases"].values())))
    # levels need numbering; a 6-class run scored as levels is itself, and cannot be scored as a foreground one
    assert main(["rescore", str(run), "--out", str(tmp_path / "x"), "--label-mode", "multiclass"]) == 2
    assert "number_levels = true" in capsys.readouterr().err
    six = tmp_path / "six"
    run_experiment(config_from_dict({**LEVEL_RUN, "losses": ["ce"]}), six, progress=False, pictures=False)
    assert main(["rescore", str(six), "--out", str(tmp_path / "y"), "--label-mode", "multiclass"] + count) == 0
    with pytest.raises(ValueError, match="only a binary"):
        from spineloss.experiment import rescore
        rescore(six, PostprocessConfig(), tmp_path / "z", label_mode="binary")


def test_a_body_whose_levels_share_its_probability_is_still_a_body():
    """L2's voxels: background 0.40, L2 0.32, L3 0.28. The arg-max calls them background; the body is more
    likely there than not (p_0 < 0.5), it lies between L1 and L3, and its mass says L2."""
    truth = _spine()
    p = _probabilities(truth, {2: {0: 0.40, 2: 0.32, 3: 0.28}})
    assert (p.argmax(0)[truth == 2] == 0).all()
    result = assign_levels(p, 0, 1, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(result.labels, truth)
    assert result.flags == []
    # without the anatomical prior the probabilities alone drop it (its background mass is the largest)
    alone = assign_levels(p, 0, 1, (1.0, 1.0, 1.0), anatomy_weight=0.0)
    assert (alone.labels[truth == 2] == 0).all() and "dropped_between" in alone.flags


def test_the_anatomical_prior_by_hand():
    # three neighbouring pieces; the middle one slightly prefers background, the prior makes it level 2
    mass = np.array([[0.0, 9.0, 0.0, 0.0], [4.0, 0.0, 3.5, 0.5], [0.0, 0.0, 0.0, 9.0]])
    assert ordered_labelling(mass) == [(1,), (), (3,)]
    assert ordered_labelling(mass, adjacent=[True, True], anatomy_cost=1.0) == [(1,), (2,), (3,)]
    # spread-out level evidence under a larger background mass: the order labels the bodies (counting)
    mass = np.array([[5.0, 6.0, 1.0, 1.0], [4.0, 2.0, 2.2, 2.1], [3.0, 0.0, 0.5, 9.0]])
    assert ordered_labelling(mass) == [(1,), (), (3,)]
    assert ordered_labelling(mass, adjacent=[True, True], anatomy_cost=3.0) == [(1,), (2,), (3,)]
    # more bodies than levels: the one with the most background evidence goes
    mass = np.array([[8.0, 2.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    assert ordered_labelling(mass, adjacent=[True, True], anatomy_cost=3.0) == [(), (1,), (2,)]
    # a skipped level between neighbours costs the prior, between pieces two spacings apart it does not
    mass = np.array([[0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]])
    assert ordered_labelling(mass, adjacent=[True], anatomy_cost=2.0) == [(1,), (2,)]
    assert ordered_labelling(mass, adjacent=[False], anatomy_cost=2.0) == [(1,), (3,)]
