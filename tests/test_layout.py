"""Tests for spineloss.data.layout: nnU-Net v2 / MSD reading and validation."""

from __future__ import annotations

import gzip
import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from spineloss.data.layout import (
    AFFINE_ATOL_MM,
    Case,
    DatasetInfo,
    check_dataset,
    load_case,
    read_dataset,
    run_check,
    spacing_from_affine,
    to_label_mode,
    validate_dataset,
)

SHAPE = (8, 8, 6)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
LABELS = {"background": 0, "L1": 1, "L2": 2}
LUMBAR = pathlib.Path("/work/shared/data/lumbar")


# ------------------------------------------------------------------------------------------------
# Builders for tiny synthetic data sets
# ------------------------------------------------------------------------------------------------
def save(path: pathlib.Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    nib.save(nib.Nifti1Image(data, affine, dtype=data.dtype), str(path))
    return path


def volumes(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:5, 2:5, 1:3] = 1
    label[2:5, 2:5, 3:5] = 2
    return image, label


def make_nnunet(root: pathlib.Path, n_cases: int = 3, channels: int = 1,
                labels: dict | None = None, **json_extra) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        image, label = volumes(i)
        for c in range(channels):
            save(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", image + c)
        save(root / "labelsTr" / f"case_{i:03d}.nii.gz", label)
    meta = {
        "name": "Tiny",
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": labels if labels is not None else LABELS,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    meta.update(json_extra)
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    return root


def make_msd(root: pathlib.Path, n_cases: int = 3, image_shape=SHAPE) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n_cases):
        image, label = volumes(i)
        image = np.broadcast_to(image.reshape(SHAPE + (1,) * (len(image_shape) - 3)), image_shape)
        save(root / "imagesTr" / f"spine_{i}.nii.gz", np.ascontiguousarray(image))
        save(root / "labelsTr" / f"spine_{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/spine_{i}.nii.gz", "label": f"./labelsTr/spine_{i}.nii.gz"})
    meta = {
        "name": "TinyMSD",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "vertebra", "2": "disc"},
        "numTraining": n_cases,
        "tensorImageSize": "3D",
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def edit_json(root: pathlib.Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------------
# Good data sets
# ------------------------------------------------------------------------------------------------
def test_good_nnunet_reads_and_validates(tmp_path):
    root = make_nnunet(tmp_path / "ds", channels=2)
    (root / "imagesTr" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    (root / "labelsTr" / "._case_000.nii.gz").write_bytes(b"junk")
    info = read_dataset(root)
    assert info.layout == "nnunetv2"
    assert info.name == "Tiny"
    assert [c.case_id for c in info.cases] == ["case_000", "case_001", "case_002"]
    assert info.cases[0].image_paths == (
        root / "imagesTr" / "case_000_0000.nii.gz",
        root / "imagesTr" / "case_000_0001.nii.gz",
    )
    assert info.num_classes == 3 and info.num_channels == 2
    assert info.label_names("multiclass") == {0: "background", 1: "L1", 2: "L2"}
    assert info.label_names("binary") == {0: "background", 1: "foreground"}
    assert info.num_classes_for("binary") == 2

    image, label, affine = load_case(info.cases[0], info)
    assert image.dtype == np.float32 and image.shape == (2,) + SHAPE
    assert label.dtype == np.uint8 and label.shape == SHAPE
    assert set(np.unique(label)) == {0, 1, 2}
    np.testing.assert_allclose(affine, AFFINE)
    np.testing.assert_allclose(image[1] - image[0], 1.0, atol=1e-4)

    report = validate_dataset(root)
    assert report.ok, report.problems
    assert report.n_cases == 3
    assert report.shapes == {SHAPE: 3}
    assert report.spacings == {(0.8, 0.8, 2.5): 3}
    assert report.label_voxels[1] == 3 * 18 and report.label_cases == {0: 3, 1: 3, 2: 3}
    text = report.summary_text()
    assert "Cases: 3" in text and "8x8x6" in text and "0.8x0.8x2.5" in text and "L2" in text
    assert check_dataset(root).cases == info.cases
    # dataset.json path works as root too
    assert read_dataset(root / "dataset.json").cases == info.cases


def test_good_msd_reads_and_validates(tmp_path):
    root = make_msd(tmp_path / "Task99_Spine")
    info = read_dataset(root)
    assert info.layout == "msd"
    assert info.labels == {"background": 0, "vertebra": 1, "disc": 2}
    assert info.channel_names == {"0": "MRI"}
    assert info.file_ending == ".nii.gz"
    assert [c.case_id for c in info.cases] == ["spine_0", "spine_1", "spine_2"]
    image, label, _ = load_case(info.cases[1], info)
    assert image.shape == (1,) + SHAPE and label.shape == SHAPE
    report = validate_dataset(root, max_workers=2)
    assert report.ok, report.problems
    assert report.n_cases == 3


def test_msd_image_with_trailing_singleton_axis_is_3d(tmp_path):
    root = make_msd(tmp_path / "ds", n_cases=1, image_shape=SHAPE + (1,))
    image, _, _ = load_case(read_dataset(root).cases[0])
    assert image.shape == (1,) + SHAPE


def test_integer_image_and_float_integer_label_are_accepted(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    save(root / "imagesTr" / "case_000_0000.nii.gz", np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE))
    _, label = volumes(0)
    save(root / "labelsTr" / "case_000.nii.gz", label.astype(np.float32))
    image, out, _ = load_case(read_dataset(root).cases[0], read_dataset(root))
    assert image.dtype == np.float32 and image.max() == np.prod(SHAPE) - 1
    assert out.dtype == np.uint8 and np.array_equal(out, label)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64, np.int64, np.int8])
def test_any_integer_label_dtype(tmp_path, dtype):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    _, label = volumes(0)
    save(root / "labelsTr" / "case_000.nii.gz", label.astype(dtype))
    info = read_dataset(root)
    _, out, _ = load_case(info.cases[0], info)
    assert out.dtype == np.uint8 and np.array_equal(out, label)


def test_large_label_values_give_int16(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1, labels={"background": 0, "big": 300})
    label = np.zeros(SHAPE, dtype=np.int16)
    label[1, 1, 1] = 300
    save(root / "labelsTr" / "case_000.nii.gz", label)
    info = read_dataset(root)
    _, out, _ = load_case(info.cases[0], info)
    assert out.dtype == np.int16 and out.max() == 300
    assert info.num_classes == 301


def test_background_is_added_when_not_declared(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1, labels={"L1": 1, "L2": 2})
    assert read_dataset(root).labels == {"background": 0, "L1": 1, "L2": 2}


# ------------------------------------------------------------------------------------------------
# Each bad input: a ValueError naming the file and the problem
# ------------------------------------------------------------------------------------------------
def test_image_without_label(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case_001_0000\.nii\.gz: image without label"):
        read_dataset(root)


def test_label_without_image(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    (root / "imagesTr" / "case_002_0000.nii.gz").unlink()
    edit_json(root, numTraining=2)
    with pytest.raises(ValueError, match=r"labelsTr/case_002\.nii\.gz: label without image"):
        read_dataset(root)


def test_missing_channel_file(tmp_path):
    root = make_nnunet(tmp_path / "ds", channels=2)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case_001_0001\.nii\.gz: missing channel 1"):
        read_dataset(root)


def test_undeclared_channel_file(tmp_path):
    root = make_nnunet(tmp_path / "ds", channels=1)
    save(root / "imagesTr" / "case_000_0001.nii.gz", volumes(0)[0])
    with pytest.raises(ValueError, match=r"case_000_0001\.nii\.gz: channel 1 is not declared"):
        read_dataset(root)


def test_badly_named_image_and_wrong_ending(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    save(root / "imagesTr" / "stray.nii.gz", volumes(0)[0])
    save(root / "imagesTr" / "case_009_0000.nii", volumes(0)[0])
    (root / "imagesTr" / "README.txt").write_text("not an image, ignored")
    with pytest.raises(ValueError) as err:
        read_dataset(root)
    msg = str(err.value)
    assert "stray.nii.gz: image file name must be <case>_<4-digit channel>" in msg
    assert "case_009_0000.nii: file ending does not match" in msg
    assert "README" not in msg


def test_msd_image_without_label_and_label_without_image(tmp_path):
    root = make_msd(tmp_path / "ds")
    (root / "labelsTr" / "spine_1.nii.gz").unlink()
    save(root / "labelsTr" / "orphan.nii.gz", volumes(0)[1])
    with pytest.raises(ValueError) as err:
        read_dataset(root)
    msg = str(err.value)
    assert "imagesTr/spine_1.nii.gz: image without label" in msg
    assert "labelsTr/orphan.nii.gz: label without image" in msg


def test_msd_listed_image_missing(tmp_path):
    root = make_msd(tmp_path / "ds")
    (root / "imagesTr" / "spine_0.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"imagesTr/spine_0\.nii\.gz: listed in dataset\.json "
                                         r"training\[0\] but the file does not exist"):
        read_dataset(root)


def test_shape_mismatch(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    save(root / "labelsTr" / "case_001.nii.gz", np.zeros((8, 8, 5), np.uint8))
    info = read_dataset(root)  # cheap reading does not load volumes
    with pytest.raises(ValueError, match=r"labelsTr/case_001\.nii\.gz: shape mismatch: label shape "
                                         r"\(8, 8, 5\) differs from case_001_0000\.nii\.gz"):
        load_case(info.cases[1], info)
    with pytest.raises(ValueError, match=r"case_001\.nii\.gz: shape mismatch"):
        check_dataset(root)


def test_shape_mismatch_between_channels(tmp_path):
    root = make_nnunet(tmp_path / "ds", channels=2)
    save(root / "imagesTr" / "case_000_0001.nii.gz", np.zeros((8, 7, 6), np.float32))
    info = read_dataset(root)
    with pytest.raises(ValueError, match=r"case_000_0001\.nii\.gz: shape mismatch: image shape"):
        load_case(info.cases[0], info)


def test_affine_mismatch(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5
    save(root / "labelsTr" / "case_002.nii.gz", volumes(2)[1], shifted)
    info = read_dataset(root)
    with pytest.raises(ValueError, match=r"labelsTr/case_002\.nii\.gz: affine mismatch.*0\.5 mm"):
        load_case(info.cases[2], info)


def test_affine_within_tolerance_is_accepted(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    nudged = AFFINE.copy()
    nudged[:3, 3] += AFFINE_ATOL_MM / 10  # float32 header round-off, not a real mismatch
    save(root / "labelsTr" / "case_000.nii.gz", volumes(0)[1], nudged)
    load_case(read_dataset(root).cases[0])


def test_spacing_mismatch_is_an_affine_mismatch(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    save(root / "labelsTr" / "case_000.nii.gz", volumes(0)[1], np.diag([0.8, 0.8, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"affine mismatch.*spacing 0\.8x0\.8x2 vs 0\.8x0\.8x2\.5"):
        load_case(read_dataset(root).cases[0])


def test_undeclared_label_value(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    label = volumes(1)[1]
    label[0, 0, 0] = 7
    save(root / "labelsTr" / "case_001.nii.gz", label)
    info = read_dataset(root)
    with pytest.raises(ValueError, match=r"labelsTr/case_001\.nii\.gz: label values \[7\] are not declared"):
        load_case(info.cases[1], info)
    load_case(info.cases[1])  # without info there is nothing to compare with


def test_non_integer_label(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    label = volumes(0)[1].astype(np.float32)
    label[1, 1, 1] = 0.5
    save(root / "labelsTr" / "case_000.nii.gz", label)
    with pytest.raises(ValueError, match=r"case_000\.nii\.gz: label has non-integer values \(e\.g\. 0\.5\)"):
        load_case(read_dataset(root).cases[0])


def test_negative_label(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    label = volumes(0)[1].astype(np.int16)
    label[1, 1, 1] = -1
    save(root / "labelsTr" / "case_000.nii.gz", label)
    with pytest.raises(ValueError, match=r"case_000\.nii\.gz: label has negative values"):
        load_case(read_dataset(root).cases[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image(tmp_path, bad):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    image = volumes(0)[0]
    image[3, 3, 3] = bad
    save(root / "imagesTr" / "case_000_0000.nii.gz", image)
    with pytest.raises(ValueError, match=r"case_000_0000\.nii\.gz: image has non-finite values"):
        load_case(read_dataset(root).cases[0])


def test_4d_image_where_3d_expected(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    save(root / "imagesTr" / "case_000_0000.nii.gz", np.zeros(SHAPE + (2,), np.float32))
    with pytest.raises(ValueError, match=r"case_000_0000\.nii\.gz: image is 4D \(shape \(8, 8, 6, 2\)\) "
                                         r"where a 3D volume is expected; nnU-Net v2 expects one 3D file"):
        load_case(read_dataset(root).cases[0])


def test_4d_label(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    save(root / "labelsTr" / "case_000.nii.gz", np.zeros(SHAPE + (3,), np.uint8))
    with pytest.raises(ValueError, match=r"case_000\.nii\.gz: label is 4D"):
        load_case(read_dataset(root).cases[0])


def test_msd_multichannel_4d_image(tmp_path):
    root = make_msd(tmp_path / "ds", n_cases=1, image_shape=SHAPE + (2,))
    info = read_dataset(root)
    with pytest.raises(ValueError, match=r"spine_0\.nii\.gz: image is 4D.*multi-channel 4D MSD images "
                                         r"are not supported"):
        load_case(info.cases[0], info)
    edit_json(root, modality={"0": "T1", "1": "T2"})
    with pytest.raises(ValueError, match=r"dataset\.json: 2 modalities.*multi-channel 4D MSD"):
        read_dataset(root)


@pytest.mark.parametrize("content", ["garbage", "truncated_gz", "empty"])
def test_unreadable_file(tmp_path, content):
    root = make_nnunet(tmp_path / "ds")
    path = root / "imagesTr" / "case_001_0000.nii.gz"
    if content == "garbage":
        path.write_bytes(b"this is not a nifti file at all" * 10)
    elif content == "truncated_gz":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"")
    info = read_dataset(root)
    with pytest.raises(ValueError, match=r"case_001_0000\.nii\.gz: unreadable"):
        load_case(info.cases[1], info)


def test_unreadable_label_gzip_garbage(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    (root / "labelsTr" / "case_000.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    with pytest.raises(ValueError, match=r"labelsTr/case_000\.nii\.gz: unreadable"):
        check_dataset(root)


def test_empty_dataset(tmp_path):
    root = make_nnunet(tmp_path / "ds", n_cases=0)
    with pytest.raises(ValueError, match=r"imagesTr: empty dataset"):
        read_dataset(root)
    msd = make_msd(tmp_path / "msd", n_cases=0)
    with pytest.raises(ValueError, match=r"dataset\.json: empty dataset"):
        read_dataset(msd)


def test_missing_dataset_json(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    (root / "dataset.json").unlink()
    with pytest.raises(ValueError, match=r"ds/dataset\.json: missing"):
        read_dataset(root)
    with pytest.raises(ValueError, match=r"does not exist"):
        read_dataset(tmp_path / "nowhere")


def test_invalid_json_and_unknown_layout(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset\.json: unreadable: not valid JSON"):
        read_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    with pytest.raises(ValueError, match=r"dataset\.json: layout not recognised"):
        read_dataset(root)


def test_missing_labels_folder(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    for p in (root / "labelsTr").iterdir():
        p.unlink()
    (root / "labelsTr").rmdir()
    with pytest.raises(ValueError, match=r"labelsTr: folder missing"):
        read_dataset(root)


def test_region_based_labels(tmp_path):
    root = make_nnunet(tmp_path / "ds", labels={"background": 0, "whole": [1, 2], "core": 2})
    with pytest.raises(ValueError, match=r"dataset\.json: label 'whole' is \[1, 2\]: region-based labels"):
        read_dataset(root)


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"background": 0, "ignore": 3}, "'ignore' label"),
        ({"background": 0, "a": 1, "b": 1}, "both have value 1"),
        ({"background": 0, "a": "one"}, "must be an integer"),
        ({"background": 0, "a": -2}, "has value -2"),
        ({}, "non-empty object"),
    ],
)
def test_bad_label_declarations(tmp_path, labels, message):
    root = make_nnunet(tmp_path / "ds", labels=labels)
    with pytest.raises(ValueError, match=message):
        read_dataset(root)


def test_num_training_mismatch(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    edit_json(root, numTraining=5)
    with pytest.raises(ValueError, match=r"dataset\.json: numTraining is 5 but 3 complete case"):
        read_dataset(root)
    report = validate_dataset(root)
    assert not report.ok and report.n_cases == 3
    assert any("numTraining is 5" in p for p in report.problems)


def test_unsupported_file_ending(tmp_path):
    root = make_nnunet(tmp_path / "ds", file_ending=".mha")
    with pytest.raises(ValueError, match=r"file_ending '\.mha' is not supported"):
        read_dataset(root)


# ------------------------------------------------------------------------------------------------
# Collecting every problem at once; the check command
# ------------------------------------------------------------------------------------------------
def make_broken(tmp_path) -> pathlib.Path:
    root = make_nnunet(tmp_path / "ds", n_cases=5)
    (root / "labelsTr" / "case_000.nii.gz").unlink()                                    # no label
    image = volumes(1)[0]
    image[0, 0, 0] = np.nan
    save(root / "imagesTr" / "case_001_0000.nii.gz", image)                             # NaN
    save(root / "labelsTr" / "case_002.nii.gz", np.zeros((8, 8, 5), np.uint8))          # shape
    label = volumes(3)[1]
    label[0, 0, 0] = 9
    save(root / "labelsTr" / "case_003.nii.gz", label)                                  # undeclared
    return root


def test_validate_collects_all_problems(tmp_path):
    root = make_broken(tmp_path)
    report = validate_dataset(root, max_workers=2)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "case_000_0000.nii.gz: image without label" in text
    assert "case_001_0000.nii.gz: image has non-finite values (1 NaN" in text
    assert "case_002.nii.gz: shape mismatch" in text
    assert "case_003.nii.gz: label values [9] are not declared" in text
    assert "numTraining is 5 but 4 complete case(s)" in text
    assert len(report.problems) == 5
    assert report.n_cases == 4  # the four paired cases were all loaded
    with pytest.raises(ValueError, match=r"has 5 problems") as err:
        check_dataset(root)
    for name in ("case_000_0000", "case_001_0000", "case_002.nii", "case_003.nii"):
        assert name in str(err.value)


def test_validate_same_result_with_threads(tmp_path):
    root = make_broken(tmp_path)
    assert validate_dataset(root).problems == validate_dataset(root, max_workers=3).problems
    with pytest.raises(ValueError, match="max_workers"):
        validate_dataset(root, max_workers=0)


def test_validate_accepts_info(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    report = validate_dataset(read_dataset(root))
    assert report.ok and report.n_cases == 3


def test_validate_fatal_problem_is_reported_not_raised(tmp_path):
    report = validate_dataset(tmp_path / "nowhere")
    assert not report.ok and report.info is None
    assert "does not exist" in report.problems[0]
    assert "could not be used" in report.summary_text()


def test_run_check_good_and_bad(tmp_path, capsys):
    good = make_nnunet(tmp_path / "good")
    assert run_check(good) == 0
    out = capsys.readouterr().out
    assert "Cases: 3" in out and "OK" in out

    bad = make_broken(tmp_path / "bad")
    assert run_check(bad) == 2  # an error in what the user gave: exit status 2, as documented
    captured = capsys.readouterr()
    assert "FAILED: 5 problem(s)" in captured.err
    for name in ("case_000_0000", "case_001_0000", "case_002.nii", "case_003.nii"):
        assert name in captured.err

    assert run_check(tmp_path / "nowhere") == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def test_to_label_mode():
    label = np.array([[[0, 1], [2, 5]]], dtype=np.uint8)
    assert to_label_mode(label, "multiclass") is label
    binary = to_label_mode(label, "binary")
    assert binary.dtype == np.uint8 and binary.tolist() == [[[0, 1], [1, 1]]]
    with pytest.raises(ValueError, match="Unknown label mode 'regions'"):
        to_label_mode(label, "regions")


def test_label_names_unknown_mode():
    info = DatasetInfo(pathlib.Path("."), "x", "nnunetv2", {"background": 0, "a": 3}, {"0": "MRI"},
                       ".nii.gz", (Case("c", (pathlib.Path("c_0000.nii.gz"),), None),))
    assert info.num_classes == 4
    assert info.label_names("multiclass") == {0: "background", 3: "a"}
    with pytest.raises(ValueError, match="Unknown label mode"):
        info.label_names("soft")


def test_spacing_from_affine():
    assert spacing_from_affine(AFFINE) == pytest.approx((0.8, 0.8, 2.5))
    # rotation + flip: the spacing is the column norm, not the diagonal
    lumbar_like = np.array([[0, 0, 1.5, 0], [0, -0.7, 0, 0], [-0.7, 0, 0, 0], [0, 0, 0, 1]])
    assert spacing_from_affine(lumbar_like) == pytest.approx((0.7, 0.7, 1.5))
    theta = 0.3
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    assert spacing_from_affine(rot @ AFFINE) == pytest.approx((0.8, 0.8, 2.5))
    with pytest.raises(ValueError, match="4x4"):
        spacing_from_affine(np.eye(2))


def test_case_without_label_loads(tmp_path):
    image = save(tmp_path / "x_0000.nii.gz", volumes(0)[0])
    img, label, affine = load_case(Case("x", (image,), None))
    assert img.shape == (1,) + SHAPE and label is None and affine.shape == (4, 4)


# ------------------------------------------------------------------------------------------------
# The real data set (loads 40 volumes: a few seconds)
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (LUMBAR / "dataset.json").is_file(), reason="lumbar data set not available")
def test_real_lumbar_dataset_passes():
    info = read_dataset(LUMBAR)
    assert info.layout == "nnunetv2" and len(info.cases) == 40
    assert info.num_classes == 6
    report = validate_dataset(info, max_workers=2)
    assert report.ok, report.problems
    assert report.n_cases == 40
    assert report.shapes == {(224, 224, 77): 40}
    assert report.spacings == {(1.0, 1.0, 1.0): 40}
    assert set(report.label_voxels) == {0, 1, 2, 3, 4, 5}
    assert "Cases: 40" in report.summary_text()
    image, label, _ = load_case(info.cases[0], info)
    assert image.shape == (1, 224, 224, 77) and label.dtype == np.uint8
