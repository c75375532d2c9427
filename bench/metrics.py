"""Benchmark: spineloss.metrics.compute_metrics against MONAI computing the same numbers.

Run from the repository root::

    .venv/bin/python bench/metrics.py [LABEL_MAP.nii.gz] [--repeats 5] [--spacing 1.0 0.8 2.5] [--threads 1]

A real lumbar label map (5 vertebra labels) is the reference; the prediction is a deterministic
perturbation of it (label 1 dilated with a spurious blob, label 2 eroded, label 4 shifted, labels 3
and 5 swapped). Both sides compute all nine metrics (accuracy, Dice, F2, IoU, precision, recall,
HD, HD95, ASSD) for every label plus the merged foreground. MONAI uses one-hot tensors,
``compute_dice``, ``compute_hausdorff_distance`` (percentile None and 95),
``compute_average_surface_distance(symmetric=True)`` and the confusion-matrix metrics (F2 from its
counts). Times are the median of ``--repeats`` runs; the target is spineloss/MONAI <= 0.1 with a
maximum absolute difference <= 1e-4.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np

DEFAULT = "../shared/data/lumbar/labelsTr/lumbar_01.nii.gz"
KEYS_METRICS = ("accuracy", "dice", "f2", "iou", "precision", "recall", "hd", "hd95", "assd")


def perturb(ref: np.ndarray) -> np.ndarray:
    """A realistic wrong prediction made from the reference (deterministic)."""
    from scipy import ndimage as ndi

    labels = [int(v) for v in np.unique(ref) if v != 0]
    pred = ref.copy()
    if len(labels) >= 1:
        a = labels[0]
        grow = ndi.binary_dilation(ref == a, iterations=2) & (ref == 0)
        pred[grow] = a
        c = np.array(ndi.center_of_mass(ref == a)).round().astype(int)
        c[-1] = min(c[-1] + 8, ref.shape[-1] - 4)
        c[0] = max(c[0] - 15, 3)
        pred[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = a  # spurious blob
    if len(labels) >= 2:
        b = labels[1]
        m = ref == b
        pred[m & ~ndi.binary_erosion(m, iterations=2)] = 0
    if len(labels) >= 4:
        d = labels[3]
        m = ref == d
        pred[m] = 0
        pred[np.roll(m, 3, axis=0) & (pred == 0)] = d
    if len(labels) >= 5:
        c3, c5 = labels[2], labels[4]
        s3, s5 = ref == c3, ref == c5
        pred[s3], pred[s5] = c5, c3
    return pred


def run_spineloss(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict:
    from spineloss.metrics import compute_metrics

    return compute_metrics(pred, ref, spacing=spacing)


def run_monai(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], labels: list[int]):
    """MONAI's numbers (channels: labels..., foreground) and per-part times."""
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        get_confusion_matrix,
    )

    times = {}
    t = time.perf_counter()
    p_t, r_t = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(ref.astype(np.int64))
    yp = torch.stack([p_t == 0] + [p_t == lab for lab in labels] + [p_t > 0])[None].float()
    yr = torch.stack([r_t == 0] + [r_t == lab for lab in labels] + [r_t > 0])[None].float()
    times["one-hot"] = time.perf_counter() - t

    res = {}
    t = time.perf_counter()
    res["dice"] = compute_dice(yp, yr, include_background=False)[0]
    times["dice"] = time.perf_counter() - t

    t = time.perf_counter()
    cm = get_confusion_matrix(yp, yr, include_background=False)
    res["accuracy"] = compute_confusion_matrix_metric("accuracy", cm)[0]
    res["precision"] = compute_confusion_matrix_metric("precision", cm)[0]
    res["recall"] = compute_confusion_matrix_metric("sensitivity", cm)[0]
    res["iou"] = compute_confusion_matrix_metric("threat score", cm)[0]
    tp, fp, _tn, fn = cm[0].double().unbind(-1)
    res["f2"] = 5 * tp / (5 * tp + 4 * fn + fp)
    times["confusion (acc, prec, rec, iou, f2)"] = time.perf_counter() - t

    t = time.perf_counter()
    res["hd"] = compute_hausdorff_distance(yp, yr, include_background=False, spacing=spacing)[0]
    times["hd"] = time.perf_counter() - t
    t = time.perf_counter()
    res["hd95"] = compute_hausdorff_distance(yp, yr, include_background=False, percentile=95, spacing=spacing)[0]
    times["hd95"] = time.perf_counter() - t
    t = time.perf_counter()
    res["assd"] = compute_average_surface_distance(yp, yr, include_background=False, symmetric=True, spacing=spacing)[0]
    times["assd"] = time.perf_counter() - t
    return {k: v.double().numpy() for k, v in res.items()}, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=DEFAULT, help=f"reference label map (default {DEFAULT})")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    ap.add_argument("--spacing", type=float, nargs="+", default=None,
                    help="voxel spacing in mm (default: from the NIfTI header)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for both sides (spineloss's EDT uses the same count); "
                         "default: torch's default. On a busy shared CPU, 1 is the fairest to MONAI.")
    args = ap.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    import nibabel as nib

    img = nib.load(args.path)
    ref = np.asarray(img.dataobj)
    if not np.issubdtype(ref.dtype, np.integer):
        ref = np.rint(ref).astype(np.int16)
    spacing = tuple(args.spacing) if args.spacing else tuple(float(z) for z in img.header.get_zooms()[:3])
    pred = perturb(ref)
    labels = [int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0]
    keys = labels + ["foreground"]
    import torch

    print(f"{args.path}: shape {ref.shape}, labels {labels}, spacing {spacing}, repeats {args.repeats}, "
          f"threads {torch.get_num_threads()}")

    warnings.filterwarnings("ignore")
    ours_t, theirs_t, theirs_parts = [], [], []
    ours = theirs = None
    run_spineloss(pred, ref, spacing)  # warm-up (imports, first-touch)
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours = run_spineloss(pred, ref, spacing)
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs, parts = run_monai(pred, ref, spacing, labels)
        theirs_t.append(time.perf_counter() - t)
        theirs_parts.append(parts)

    diffs = {}
    for m in KEYS_METRICS:
        a = np.array([ours[k][m] for k in keys], dtype=np.float64)
        b = theirs[m]
        diffs[m] = float(np.max(np.abs(a - b)))
    max_diff = max(diffs.values())

    med_ours = statistics.median(ours_t)
    med_theirs = statistics.median(theirs_t)
    print()
    print(f"{'part':<40}{'time [ms]':>12}")
    print("-" * 52)
    print(f"{'spineloss compute_metrics (all)':<40}{1e3 * med_ours:>12.1f}")
    for name in theirs_parts[0]:
        print(f"{'MONAI ' + name:<40}{1e3 * statistics.median(p[name] for p in theirs_parts):>12.1f}")
    print(f"{'MONAI total':<40}{1e3 * med_theirs:>12.1f}")
    print("-" * 52)
    print("per-repeat totals [ms]: spineloss " + " ".join(f"{1e3 * t:.0f}" for t in ours_t)
          + " | MONAI " + " ".join(f"{1e3 * t:.0f}" for t in theirs_t))
    # the CPU may be shared: report the ratio of medians and of best times, judge the worse one
    ratio_med = med_ours / med_theirs
    ratio_min = min(ours_t) / min(theirs_t)
    ratio = max(ratio_med, ratio_min)
    print(f"ratio spineloss / MONAI: {ratio_med:.3f} (medians), {ratio_min:.3f} (best times)   (target <= 0.1)")
    print("max |spineloss - MONAI| per metric: " + ", ".join(f"{m} {d:.2e}" for m, d in diffs.items()))
    print(f"max abs difference: {max_diff:.2e}   (target <= 1e-4)")
    ok = ratio <= 0.1 and max_diff <= 1e-4
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
