"""Tests of spineloss.metrics: hand-computed values, the empty-mask rule, agreement with MONAI."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from spineloss import metrics as M
from spineloss.metrics import METRIC_NAMES, compute_metrics

ANISO = (1.0, 0.8, 2.5)
LUMBAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "lumbar" / "labelsTr"


# --------------------------------------------------------------------------------------------------
# hand-computed values
# --------------------------------------------------------------------------------------------------
def test_line_segments_anisotropic():
    # A line of 5 voxels (prediction) inside a line of 7 (reference) along axis 2, spacing 2.5 there.
    pred = np.zeros((3, 4, 10), dtype=np.uint8)
    ref = np.zeros_like(pred)
    pred[1, 2, 0:5] = 1
    ref[1, 2, 0:7] = 1
    m = compute_metrics(pred, ref, spacing=ANISO)[1]
    n = pred.size
    # thin lines are all surface; D(P,R) = 0 x5, D(R,P) = 0 x5, 2.5, 5.0
    assert m["hd"] == pytest.approx(5.0)
    # q95 of [0,0,0,0,0,2.5,5]: position 0.95*6 = 5.7 -> 2.5 + 0.7*2.5
    assert m["hd95"] == pytest.approx(2.5 + 0.7 * 2.5)
    assert m["assd"] == pytest.approx(7.5 / 12)
    assert m["dice"] == pytest.approx(10 / 12)
    assert m["iou"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(5 / 7)
    assert m["f2"] == pytest.approx(25 / (25 + 4 * 2 + 0))
    assert m["accuracy"] == pytest.approx((n - 2) / n)


def test_two_single_voxels_anisotropic_distance():
    pred = np.zeros((5, 6, 4), dtype=np.int64)
    ref = np.zeros_like(pred)
    pred[0, 0, 0] = 2
    ref[2, 3, 1] = 2
    m = compute_metrics(pred, ref, spacing=ANISO)
    d = math.sqrt((2 * 1.0) ** 2 + (3 * 0.8) ** 2 + (1 * 2.5) ** 2)
    for key in (2, "foreground", "mean"):
        assert m[key]["hd"] == pytest.approx(d)
        assert m[key]["hd95"] == pytest.approx(d)
        assert m[key]["assd"] == pytest.approx(d)
        assert m[key]["dice"] == 0.0 and m[key]["iou"] == 0.0 and m[key]["f2"] == 0.0
        assert m[key]["precision"] == 0.0 and m[key]["recall"] == 0.0
        assert m[key]["accuracy"] == pytest.approx((pred.size - 2) / pred.size)


def test_cube_surface_is_one_erosion_and_border_counts():
    # 4x4x4 cube touching the volume border (axis 0 = 0); its surface is the cube minus the 2x2x2
    # core, the border face included (outside the volume counts as background).
    ref = np.zeros((6, 6, 6), dtype=np.uint8)
    ref[0:4, 1:5, 1:5] = 1
    pred = ref.copy()
    pred[:, :, 4] = 0  # drop the last face -> 4x4x3 box, core 2x2x1
    d_pr, d_rp = M.surface_distances(pred == 1, ref == 1, spacing=1.0)
    assert d_pr.size == 48 - 4
    assert d_rp.size == 64 - 8
    # the 4 voxels of pred's new face that are inside ref's core are 1 away from ref's surface
    assert sorted(d_pr.tolist()) == [0.0] * 40 + [1.0] * 4
    # ref's dropped face (16 voxels) is 1 away from pred's surface, the rest coincide
    assert sorted(d_rp.tolist()) == [0.0] * 40 + [1.0] * 16
    m = compute_metrics(pred, ref, spacing=(1.0, 1.0, 2.0))[1]
    assert m["hd"] == pytest.approx(2.0)
    # with spacing 2 on axis 2: pred's 4 inner face voxels are 1 mm (axis 0/1) from ref's surface,
    # ref's 16 dropped-face voxels 2 mm (axis 2) from pred's surface
    assert m["assd"] == pytest.approx((4 * 1.0 + 16 * 2.0) / 100)
    # hd95: max of the directed 95th percentiles (MONAI's rule): D(R,P) = 40 x 0, 16 x 2
    assert m["hd95"] == pytest.approx(2.0)


def test_overlap_metrics_formulas():
    m = M.overlap_metrics(tp=30, fp=10, fn=20, tn=940)
    assert m["accuracy"] == pytest.approx(970 / 1000)
    assert m["dice"] == pytest.approx(60 / 90)
    assert m["iou"] == pytest.approx(30 / 60)
    assert m["precision"] == pytest.approx(30 / 40)
    assert m["recall"] == pytest.approx(30 / 50)
    assert m["f2"] == pytest.approx(150 / (150 + 80 + 10))
    p, r = m["precision"], m["recall"]
    assert m["f2"] == pytest.approx(5 * p * r / (4 * p + r))


def test_result_structure_and_mean():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, size=(8, 9, 7))
    pred = rng.integers(0, 4, size=(8, 9, 7))
    m = compute_metrics(pred, ref, spacing=ANISO)
    assert list(m) == [1, 2, 3, "foreground", "mean"]
    for v in m.values():
        assert list(v) == list(METRIC_NAMES)
        assert all(isinstance(x, float) for x in v.values())
    for name in METRIC_NAMES:
        assert m["mean"][name] == pytest.approx(np.mean([m[k][name] for k in (1, 2, 3)]))


# --------------------------------------------------------------------------------------------------
# empty masks
# --------------------------------------------------------------------------------------------------
def _blob(shape=(6, 7, 8)):
    a = np.zeros(shape, dtype=np.uint8)
    a[1:4, 2:5, 2:6] = 1
    return a


def test_both_empty_is_perfect():
    z = np.zeros((6, 7, 8), dtype=np.uint8)
    m = compute_metrics(z, z, labels=[1])
    for key in (1, "foreground", "mean"):
        assert m[key] == {
            "accuracy": 1.0, "dice": 1.0, "f2": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0,
            "hd": 0.0, "hd95": 0.0, "assd": 0.0,
        }
    # no labels at all: only "foreground" (both empty) and "mean" (= foreground)
    m = compute_metrics(z, z)
    assert list(m) == ["foreground", "mean"]
    assert m["mean"] == m["foreground"] and m["foreground"]["dice"] == 1.0 and m["foreground"]["hd"] == 0.0


def test_reference_empty_prediction_not():
    pred = _blob()
    ref = np.zeros_like(pred)
    m = compute_metrics(pred, ref)[1]
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["f2"] == 0.0 and m["precision"] == 0.0
    assert math.isnan(m["recall"])
    assert all(math.isnan(m[k]) for k in ("hd", "hd95", "assd"))
    assert m["accuracy"] == pytest.approx(1 - pred.sum() / pred.size)


def test_prediction_empty_reference_not():
    ref = _blob()
    pred = np.zeros_like(ref)
    m = compute_metrics(pred, ref)[1]
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["f2"] == 0.0 and m["recall"] == 0.0
    assert math.isnan(m["precision"])
    assert all(math.isnan(m[k]) for k in ("hd", "hd95", "assd"))


def test_label_missing_in_both_with_explicit_labels_and_nan_propagates_to_mean():
    ref = _blob()
    pred = ref.copy()
    ref2 = ref.copy()
    ref2[0, 0, 0] = 3  # label 3 only in the reference -> distances NaN for 3
    m = compute_metrics(pred, ref2, labels=[1, 2, 3, 9])
    assert list(m) == [1, 2, 3, 9, "foreground", "mean"]
    assert m[1]["dice"] == 1.0 and m[1]["hd"] == 0.0
    assert m[2]["dice"] == 1.0 and m[2]["hd"] == 0.0  # absent in both (within range)
    assert m[9]["dice"] == 1.0 and m[9]["hd"] == 0.0  # absent in both (above every value)
    assert m[3]["dice"] == 0.0 and math.isnan(m[3]["hd"]) and math.isnan(m[3]["precision"])
    assert math.isnan(m["mean"]["hd"]) and math.isnan(m["mean"]["hd95"]) and math.isnan(m["mean"]["assd"])
    assert math.isnan(m["mean"]["precision"])
    assert m["mean"]["dice"] == pytest.approx(3 / 4)
    # foreground: the 1 voxel of label 3 is a false negative of the merged mask, distances defined
    assert m["foreground"]["recall"] == pytest.approx(ref.sum() / (ref.sum() + 1))
    assert math.isfinite(m["foreground"]["hd"])


def test_single_label_foreground_equals_label():
    rng = np.random.default_rng(1)
    ref = (ndi.gaussian_filter(rng.random((12, 13, 11)), 2) > 0.5).astype(np.uint8) * 4
    pred = np.roll(ref, 1, axis=1)
    m = compute_metrics(pred, ref, spacing=ANISO)
    assert list(m) == [4, "foreground", "mean"]
    assert m["foreground"] == m[4] == m["mean"]


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------
def test_torch_bool_float_and_2d_inputs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 3, size=(7, 8, 9))
    pred = rng.integers(0, 3, size=(7, 8, 9))
    base = compute_metrics(pred, ref, spacing=ANISO)
    assert compute_metrics(torch.from_numpy(pred), torch.from_numpy(ref).to(torch.uint8), spacing=ANISO) == base
    assert compute_metrics(pred.astype(np.float32), ref.astype(np.float64), spacing=ANISO) == base
    assert compute_metrics(np.asfortranarray(pred), ref.astype(np.int16), spacing=ANISO) == base
    mb = compute_metrics(pred == 1, ref == 1, spacing=ANISO)
    assert mb[1] == base[1]
    m2 = compute_metrics(pred[3], ref[3], spacing=(0.8, 2.5))
    assert set(m2) == {1, 2, "foreground", "mean"}


def test_label_subset_and_large_label_values():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, size=(9, 8, 7))
    pred = rng.integers(0, 4, size=(9, 8, 7))
    sub = compute_metrics(pred, ref, spacing=ANISO, labels=[1, 2])
    # values not listed are background everywhere, including the foreground entry
    r12 = np.where(np.isin(ref, [1, 2]), ref, 0)
    p12 = np.where(np.isin(pred, [1, 2]), pred, 0)
    assert sub == compute_metrics(p12, r12, spacing=ANISO, labels=[1, 2])
    assert compute_metrics(pred, ref, spacing=ANISO, labels=[2, 1])["foreground"] == sub["foreground"]
    # same maps with large label values (renumbering paths) give the same numbers
    base = compute_metrics(pred, ref, spacing=ANISO)
    for big in (1000, 5_000_000):
        lut = np.array([0, big, big + 7, 2 * big], dtype=np.int64)
        mb = compute_metrics(lut[pred], lut[ref], spacing=ANISO)
        assert list(mb) == [big, big + 7, 2 * big, "foreground", "mean"]
        for old, new in ((1, big), (2, big + 7), (3, 2 * big), ("foreground", "foreground"), ("mean", "mean")):
            assert mb[new] == pytest.approx(base[old], nan_ok=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prediction=np.zeros((4, 4, 4), int), reference=np.zeros((4, 4, 5), int)), "shapes differ"),
        (dict(prediction=-np.ones((4, 4, 4), int), reference=np.zeros((4, 4, 4), int)), "negative"),
        (dict(prediction=np.full((4, 4, 4), 0.5), reference=np.zeros((4, 4, 4))), "integer"),
        (dict(prediction=np.zeros((4, 4, 4), int), reference=np.zeros((4, 4, 4), int), spacing=(1, 1)), "spacing"),
        (dict(prediction=np.zeros((4, 4, 4), int), reference=np.zeros((4, 4, 4), int), spacing=(1, 0, 1)), "spacing"),
        (dict(prediction=np.zeros((4, 4, 4), int), reference=np.zeros((4, 4, 4), int), labels=[0, 1]), "labels"),
        (dict(prediction=np.zeros((4, 4, 4), int), reference=np.zeros((4, 4, 4), int), labels=[1, 1]), "unique"),
        (dict(prediction=np.zeros((4, 4, 4), int), reference=np.zeros((4, 4, 4), int), labels=[]), "empty"),
        (dict(prediction=np.zeros((1, 4, 4, 4), int), reference=np.zeros((1, 4, 4, 4), int)), "2D or 3D"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(**kwargs)


def test_kdtree_and_edt_paths_agree(monkeypatch):
    rng = np.random.default_rng(4)
    ref = _random_labels(rng, (30, 26, 20), 3)
    pred = _random_labels(rng, (30, 26, 20), 3)
    pred[0, 0, 0] = 1  # far spurious voxel
    monkeypatch.setattr(M, "_KDTREE_VOXELS_PER_POINT", 10**12)
    via_edt = compute_metrics(pred, ref, spacing=ANISO)
    monkeypatch.setattr(M, "_KDTREE_VOXELS_PER_POINT", 0)
    via_tree = compute_metrics(pred, ref, spacing=ANISO)
    for k in via_edt:
        for name in METRIC_NAMES:
            assert via_tree[k][name] == pytest.approx(via_edt[k][name], abs=1e-4)


def test_threads_do_not_change_values(monkeypatch):
    rng = np.random.default_rng(5)
    ref = _random_labels(rng, (40, 40, 30), 2)
    pred = _random_labels(rng, (40, 40, 30), 2)
    monkeypatch.setattr(M, "_PARALLEL_MIN_VOXELS", 0)
    monkeypatch.setattr(M, "_PARALLEL_MIN_POINTS", 0)
    assert compute_metrics(pred, ref, num_threads=2) == compute_metrics(pred, ref, num_threads=1)


# --------------------------------------------------------------------------------------------------
# agreement with MONAI
# --------------------------------------------------------------------------------------------------
def _random_labels(rng: np.random.Generator, shape, n_labels: int) -> np.ndarray:
    """Smooth random blobs, labels 1..n_labels, touching the volume border now and then."""
    field = ndi.gaussian_filter(rng.random((n_labels + 1, *shape)), sigma=(0, 2.0, 2.0, 1.5))
    lab = field.argmax(axis=0).astype(np.uint8)
    lab[field.max(axis=0) < np.quantile(field.max(axis=0), 0.35)] = 0
    return lab


def _monai_metrics(pred: np.ndarray, ref: np.ndarray, labels, spacing) -> dict:
    torch = pytest.importorskip("torch")
    mm = pytest.importorskip("monai.metrics")

    def onehot(a):
        t = torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))
        return torch.stack([t == 0] + [t == lab for lab in labels] + [t > 0])[None].float()

    yp, yr = onehot(pred), onehot(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = mm.get_confusion_matrix(yp, yr, include_background=False)
        tp, fp, _tn, fn = cm[0].double().unbind(-1)
        res = {
            "dice": mm.compute_dice(yp, yr, include_background=False)[0],
            "iou": mm.compute_iou(yp, yr, include_background=False)[0],
            "accuracy": mm.compute_confusion_matrix_metric("accuracy", cm)[0],
            "precision": mm.compute_confusion_matrix_metric("precision", cm)[0],
            "recall": mm.compute_confusion_matrix_metric("sensitivity", cm)[0],
            "f2": 5 * tp / (5 * tp + 4 * fn + fp),
            "hd": mm.compute_hausdorff_distance(yp, yr, spacing=spacing)[0],
            "hd95": mm.compute_hausdorff_distance(yp, yr, percentile=95, spacing=spacing)[0],
            "assd": mm.compute_average_surface_distance(yp, yr, symmetric=True, spacing=spacing)[0],
        }
    keys = list(labels) + ["foreground"]
    return {k: {name: float(res[name][i]) for name in METRIC_NAMES} for i, k in enumerate(keys)}


def _assert_close_to_monai(pred, ref, spacing):
    ours = compute_metrics(pred, ref, spacing=spacing)
    labels = [k for k in ours if isinstance(k, int)]
    theirs = _monai_metrics(pred, ref, labels, spacing)
    checked = 0
    for k, vals in theirs.items():
        if not (pred[..., None] == _key_values(k, labels)).any() or not (ref[..., None] == _key_values(k, labels)).any():
            continue  # MONAI's own empty-mask conventions differ by design
        for name in METRIC_NAMES:
            assert ours[k][name] == pytest.approx(vals[name], abs=1e-4), (k, name)
        checked += 1
    return checked


def _key_values(k, labels):
    return np.asarray(labels if k == "foreground" else [k])


@pytest.mark.parametrize("seed", range(6))
def test_matches_monai_random_blobs(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(8, 30, size=3))
    n = int(rng.integers(1, 4))
    ref = _random_labels(rng, shape, n)
    pred = _random_labels(rng, shape, n) if seed % 2 else np.roll(ref, int(rng.integers(1, 3)), axis=seed % 3)
    spacing = ANISO if seed < 4 else tuple(float(s) for s in rng.uniform(0.3, 3.0, size=3))
    assert _assert_close_to_monai(pred, ref, spacing) >= 1


def test_matches_monai_2d():
    rng = np.random.default_rng(7)
    field = ndi.gaussian_filter(rng.random((3, 40, 31)), sigma=(0, 2.5, 2.5))
    ref = field.argmax(axis=0).astype(np.uint8)
    pred = np.roll(ref, 2, axis=1)
    pred[5, 5] = 2
    assert _assert_close_to_monai(pred, ref, (0.7, 1.9)) == 3


def test_matches_monai_hypothesis():
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=12, deadline=None, derandomize=True)
    @hyp.given(
        shape=st.tuples(st.integers(3, 14), st.integers(3, 14), st.integers(3, 14)),
        seed=st.integers(0, 2**31 - 1),
        spacing=st.tuples(*[st.floats(0.25, 4.0) for _ in range(3)]),
    )
    def check(shape, seed, spacing):
        rng = np.random.default_rng(seed)
        ref = rng.integers(0, 3, size=shape).astype(np.uint8)
        pred = rng.integers(0, 3, size=shape).astype(np.uint8)
        _assert_close_to_monai(pred, ref, spacing)

    check()


def _perturb(ref: np.ndarray) -> np.ndarray:
    pred = ref.copy()
    pred[ndi.binary_dilation(ref == 1, iterations=2) & (ref == 0)] = 1
    m2 = ref == 2
    pred[m2 & ~ndi.binary_erosion(m2, iterations=2)] = 0
    m4 = ref == 4
    pred[m4] = 0
    pred[np.roll(m4, 3, axis=0) & (pred == 0)] = 4
    pred[ref == 3], pred[ref == 5] = 5, 3
    return pred


@pytest.mark.skipif(not (LUMBAR / "lumbar_02.nii.gz").exists(), reason="lumbar data not available")
def test_matches_monai_real_lumbar_labels():
    nib = pytest.importorskip("nibabel")
    ref = np.asarray(nib.load(str(LUMBAR / "lumbar_02.nii.gz")).dataobj)
    assert ref.ndim == 3 and set(np.unique(ref).tolist()) <= {0, 1, 2, 3, 4, 5}
    pred = _perturb(ref)
    assert _assert_close_to_monai(pred, ref, ANISO) == 6
