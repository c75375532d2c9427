"""Tests of the synthetic spine MRI phantom (spineloss.data.phantom)."""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from spineloss.data.phantom import (
    CERVICAL_LABELS,
    LUMBAR_LABELS,
    generate_case,
    write_phantom_dataset,
)

DEFAULT = (96, 96, 40)
NLAB = {"lumbar": 5, "cervical": 7}


@lru_cache(maxsize=None)
def case(region: str, seed: int, shape=DEFAULT):
    image, label, spacing = generate_case(region, seed, shape)
    image.setflags(write=False)
    label.setflags(write=False)
    return image, label, spacing


def centroids(label, n):
    return [np.argwhere(label == k).mean(axis=0) for k in range(1, n + 1)]


# ------------------------------------------------------------------------------------------- basics

def test_label_dicts():
    assert LUMBAR_LABELS == {"background": 0, "L1": 1, "L2": 2, "L3": 3, "L4": 4, "L5": 5}
    assert CERVICAL_LABELS == {"background": 0, **{f"C{k}": k for k in range(1, 8)}}


def test_same_seed_same_volume_different_seed_different():
    a_img, a_lab, a_sp = generate_case("lumbar", 7)
    b_img, b_lab, b_sp = generate_case("lumbar", 7)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab) and a_sp == b_sp
    c_img, c_lab, c_sp = case("lumbar", 8)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)
    assert a_sp != c_sp


def test_no_global_rng_use():
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    generate_case("cervical", 1, (48, 48, 24))
    assert np.random.random() == before


@pytest.mark.parametrize("region", ["lumbar", "cervical"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_types_shapes_values(region, seed):
    image, label, spacing = case(region, seed)
    assert image.shape == label.shape == DEFAULT
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.isfinite(image).all() and image.min() >= 0.0
    assert set(np.unique(label).tolist()) == set(range(NLAB[region] + 1))
    assert len(spacing) == 3 and all(isinstance(s, float) for s in spacing)
    assert 0.9 <= spacing[0] == spacing[1] <= 1.3
    assert spacing[1] <= spacing[2] <= 1.5 * spacing[1] + 1e-9
    # background air near 0, tissue far above it
    assert np.percentile(image, 2) < 15.0 < np.percentile(image, 60)


@pytest.mark.parametrize("shape", [(48, 48, 24), (224, 224, 80), (64, 96, 32)])
def test_other_shapes_hold_all_levels(shape):
    image, label, _ = case("lumbar", 3, shape)
    assert image.shape == shape
    assert set(np.unique(label).tolist()) == set(range(6))
    # the labelled bodies never touch the top or bottom of the field of view (context above/below)
    rows = np.nonzero(label.any(axis=(1, 2)))[0]
    assert rows[0] > 0 and rows[-1] < shape[0] - 1


# ------------------------------------------------------------------------------------------ anatomy

@pytest.mark.parametrize("shape,seeds", [(DEFAULT, (0, 1, 2, 3, 4)), ((224, 224, 77), (0,))])
def test_lumbar_foreground_fraction_like_real_mri(shape, seeds):
    for seed in seeds:
        _, label, _ = case("lumbar", seed, shape)
        frac = float((label > 0).mean())
        assert 0.01 < frac < 0.10, (seed, frac)


@pytest.mark.parametrize("region", ["lumbar", "cervical"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_levels_ordered_head_to_feet_and_each_one_piece(region, seed):
    _, label, _ = case(region, seed)
    n = NLAB[region]
    c = centroids(label, n)
    assert all(c[k][0] < c[k + 1][0] for k in range(n - 1)), [round(x[0], 1) for x in c]
    for k in range(1, n + 1):
        assert ndimage.label(label == k)[1] == 1, f"label {k} is not one connected component"


@pytest.mark.parametrize("region", ["lumbar", "cervical"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discs_brighter_than_bodies(region, seed):
    """T2: the disc between two consecutive labelled bodies (sampled half-way between their
    centroids) is brighter than the bodies themselves."""
    image, label, _ = case(region, seed)
    n = NLAB[region]
    c = centroids(label, n)
    bodies = np.mean([image[label == k].mean() for k in range(1, n + 1)])
    first = 1 if region == "lumbar" else 2          # no disc between C1 (arch) and C2 (dens)
    discs = []
    for k in range(first, n):
        i, j, l = np.round((c[k - 1] + c[k]) / 2).astype(int)
        patch = image[i - 1:i + 2, j - 1:j + 2, l - 1:l + 2]
        assert label[i, j, l] == 0
        discs.append(patch.mean())
    assert np.mean(discs) > 1.2 * bodies, (np.round(discs), bodies)


def test_lumbar_canal_behind_bodies_is_bright():
    """CSF in the canal, a few mm behind the posterior wall of L3, is brighter than L3."""
    image, label, spacing = case("lumbar", 0)
    m = label == 3
    i, _, l = np.round(np.argwhere(m).mean(axis=0)).astype(int)
    back = np.nonzero(m[i, :, l])[0].max()           # posterior wall at the mid row / slice
    profile = image[i, back + 1:back + 1 + int(20 / spacing[1]), l]
    assert profile.max() > 1.5 * image[m].mean()


def test_cervical_c1_is_anterior_arch_in_front_of_c2():
    _, label, _ = case("cervical", 0)
    c = centroids(label, 7)
    c1, c2 = c[0], c[1]
    assert c1[0] < c2[0]                     # above the C2 body
    assert c1[1] < c2[1]                     # in front of the dens/C2
    assert (label == 1).sum() < 0.75 * (label == 3).sum()  # a small arch, not a body


def test_position_varies_between_subjects():
    tops = {int(np.nonzero(case("lumbar", s)[1].any(axis=(1, 2)))[0][0]) for s in range(5)}
    assert len(tops) > 1


# ------------------------------------------------------------------------------------------ dataset

def _read(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine, img.header.get_zooms()


def test_write_dataset_nnunet_v2(tmp_path):
    shape = (48, 48, 24)
    out = write_phantom_dataset(tmp_path / "ds", region="cervical", cases=2, seed=5, shape=shape)
    assert out == tmp_path / "ds"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"] == CERVICAL_LABELS
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert isinstance(meta["name"], str) and isinstance(meta["description"], str)
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert images == ["cervical_000_0000.nii.gz", "cervical_001_0000.nii.gz"]
    assert labels == ["cervical_000.nii.gz", "cervical_001.nii.gz"]
    for k in range(2):
        im, im_aff, zooms = _read(out / "imagesTr" / f"cervical_{k:03d}_0000.nii.gz")
        lb, lb_aff, _ = _read(out / "labelsTr" / f"cervical_{k:03d}.nii.gz")
        assert im.shape == lb.shape == shape
        assert im.dtype == np.float32 and lb.dtype == np.uint8
        assert np.array_equal(im_aff, lb_aff)
        assert set(np.unique(lb).tolist()) <= set(CERVICAL_LABELS.values())
        # spacing lives in the affine (column norms) and the header zooms
        col = np.linalg.norm(im_aff[:3, :3], axis=0)
        assert np.allclose(col, zooms, atol=1e-5)
        assert 0.9 <= col[0] <= 1.3 and col[0] <= col[2]


def test_adding_cases_keeps_earlier_ones(tmp_path):
    shape = (48, 48, 24)
    a = write_phantom_dataset(tmp_path / "a", cases=2, seed=11, shape=shape)
    b = write_phantom_dataset(tmp_path / "b", cases=3, seed=11, shape=shape)
    for k in range(2):
        names = (("imagesTr", f"lumbar_{k:03d}_0000.nii.gz"), ("labelsTr", f"lumbar_{k:03d}.nii.gz"))
        for sub, name in names:
            xa, aa, _ = _read(a / sub / name)
            xb, ab, _ = _read(b / sub / name)
            assert np.array_equal(xa, xb) and np.array_equal(aa, ab)
    x0, _, _ = _read(b / "imagesTr" / "lumbar_000_0000.nii.gz")
    x2, _, _ = _read(b / "imagesTr" / "lumbar_002_0000.nii.gz")
    assert not np.array_equal(x0, x2)


def test_orientation_matches_real_data(tmp_path, lumbar_dir):
    import nibabel as nib

    out = write_phantom_dataset(tmp_path / "ds", cases=1, shape=(48, 48, 24))
    mine = nib.load(str(out / "imagesTr" / "lumbar_000_0000.nii.gz")).affine
    real = nib.load(str(next((lumbar_dir / "imagesTr").glob("*_0000.nii.gz")))).affine
    assert nib.aff2axcodes(mine) == nib.aff2axcodes(real)


@pytest.mark.parametrize("kwargs", [
    {"region": "thoracic"},
    {"shape": (8, 96, 40)},
    {"shape": (96, 96)},
    {"shape": (96.0, 96, 40)},
    {"seed": -1},
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        generate_case(**kwargs)


def test_bad_case_count_raises(tmp_path):
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "x", cases=0)
