"""Forward+backward time of spineloss losses against their MONAI counterparts, same tensors, same process.

    .venv/bin/python bench/losses.py                 # B=2, C=6, 112 x 112 x 48, CPU, 2 threads
    .venv/bin/python bench/losses.py --quick         # a small volume, to check that it runs

For each loss with a MONAI counterpart it prints the median forward+backward wall time of spineloss and of
MONAI, measured alternately (ours, MONAI, MONAI, ours, ...) so that load from other processes hits both,
and the ratio of the medians; the last column is the ratio of the medians of process CPU time, which is
less sensitive to other processes taking the cores. Distance losses are timed twice: with the ground-truth
distance maps handed in by the data pipeline (``dist_map``; the prediction's maps of the Hausdorff loss are
still computed every step) and computing everything themselves. The per-sample cost of
``signed_distance_maps`` in a data-loader worker is printed at the end.

Timing protocol: ``torch.set_num_threads(2)``, ``OMP_WAIT_POLICY=PASSIVE`` (unless already set), one
warm-up round, then ``--repeats`` rounds; the reported times are medians, the ratio is
median(spineloss) / median(MONAI); "ratio (best)" is the ratio of the fastest runs.

Targets (issue): region/distribution ratio <= 0.7; Hausdorff and Boundary <= 0.05 with maps from the
pipeline, <= 0.3 computing them.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# OpenMP threads that spin after each parallel region steal the cores from the main thread when other
# processes share the machine, which distorts timings (both sides, but unevenly). Passive waiting makes the
# numbers reproducible on a busy machine; export OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spineloss.losses import build_loss  # noqa: E402
from spineloss.losses.distance_maps import signed_distance_maps  # noqa: E402


def phantom_labels(B: int, C: int, spatial: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Vertebra-like label maps B x 1 x D x H x W: C - 1 ellipsoidal bodies stacked along the first axis."""
    rng = np.random.default_rng(seed)
    D, H, W = spatial
    zz, yy, xx = np.meshgrid(np.arange(D), np.arange(H), np.arange(W), indexing="ij")
    out = np.zeros((B, 1) + spatial, dtype=np.int64)
    n = C - 1
    pitch = D / (n + 0.5)
    for b in range(B):
        for k in range(n):
            cz = pitch * (k + 0.75) + rng.uniform(-1, 1)
            cy, cx = H / 2 + rng.uniform(-3, 3), W / 2 + rng.uniform(-2, 2)
            rz, ry, rx = pitch * 0.38, H * 0.2, W * 0.3
            inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            out[b, 0][inside] = k + 1
    return torch.from_numpy(out)


def noisy_logits(labels: torch.Tensor, C: int, seed: int = 1, noise: str = "smooth") -> torch.Tensor:
    """Logits of a plausible, imperfect prediction: 4 x one-hot of the labels shifted by two voxels, plus
    Gaussian noise of std 1.5, either spatially smooth (a 5^3 box filter, like the blobby errors of a network)
    or white (independent per voxel: speckled masks, the worst case for the prediction's distance maps)."""
    g = torch.Generator().manual_seed(seed)
    shifted = torch.roll(labels, shifts=2, dims=2)
    onehot = (shifted == torch.arange(C).view(1, C, 1, 1, 1)).float()
    eps = torch.randn(onehot.shape, generator=g)
    if noise == "smooth":
        eps = torch.nn.functional.avg_pool3d(eps, 5, stride=1, padding=2, count_include_pad=False)
        eps = eps / eps.std()
    return 4.0 * onehot + 1.5 * eps


def time_pair(ours: Callable[[torch.Tensor], torch.Tensor], ref: Callable[[torch.Tensor], torch.Tensor],
              logits: torch.Tensor, repeats: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """Alternate the two functions; return wall and CPU seconds of each (forward + backward)."""
    walls: dict[int, list[float]] = {0: [], 1: []}
    cpus: dict[int, list[float]] = {0: [], 1: []}
    fns = (ours, ref)
    for r in range(repeats + 1):  # the first round warms up
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            x = logits.clone().requires_grad_(True)
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            fns[i](x).backward()
            t1, c1 = time.perf_counter(), time.process_time()
            if r:
                walls[i].append(t1 - t0)
                cpus[i].append(c1 - c0)
    return walls[0], walls[1], cpus[0], cpus[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small volume (48 x 48 x 24), 2 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per loss (default 9; distance 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated row names to run")
    ap.add_argument("--noise", choices=("smooth", "white"), default="smooth",
                    help="noise of the logits: spatially smooth (default) or white (speckled predictions)")
    args = ap.parse_args(argv)

    from monai import losses as M  # the reference; only needed here

    torch.set_num_threads(args.threads)
    B, C = 2, 6
    spatial = (48, 48, 24) if args.quick else (112, 112, 48)
    labels = phantom_labels(B, C, spatial)
    logits = noisy_logits(labels, C, noise=args.noise)
    onehot = (labels == torch.arange(C).view(1, C, 1, 1, 1)).float()

    t0 = time.perf_counter()
    maps_np = [signed_distance_maps(labels[b, 0].numpy(), C) for b in range(B)]
    per_sample_ms = (time.perf_counter() - t0) / B * 1000
    dist_map = torch.from_numpy(np.stack(maps_np))

    fast = args.repeats or (2 if args.quick else 9)
    slow = args.repeats or (1 if args.quick else 3)
    y = labels

    rows: list[tuple[str, Callable, Callable, int, float | None, str]] = []

    def add(name, ours, ref, reps, target, note=""):
        rows.append((name, ours, ref, reps, target, note))

    dice, mdice = build_loss("dice"), M.DiceLoss(softmax=True, to_onehot_y=True)
    add("dice", lambda x: dice(x, y), lambda x: mdice(x, y), fast, 0.7)
    iou, miou = build_loss("iou"), M.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True)
    add("iou", lambda x: iou(x, y), lambda x: miou(x, y), fast, 0.7, "MONAI DiceLoss(jaccard=True)")
    tv, mtv = build_loss("tversky"), M.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)
    add("tversky", lambda x: tv(x, y), lambda x: mtv(x, y), fast, 0.7)
    fo, mfo = build_loss("focal"), M.FocalLoss(use_softmax=True, to_onehot_y=True)
    add("focal", lambda x: fo(x, y), lambda x: mfo(x, y), fast, 0.7, "softmax; MONAI's value is ours / C")
    fs, mfs = build_loss("focal", activation="sigmoid"), M.FocalLoss(use_softmax=False)
    add("focal (sigmoid)", lambda x: fs(x, onehot), lambda x: mfs(x, onehot), fast, 0.7, "multi-label, one-hot")
    dce, mdce = build_loss("dice_ce"), M.DiceCELoss(softmax=True, to_onehot_y=True)
    add("dice_ce", lambda x: dce(x, y), lambda x: mdce(x, y), fast, 0.7)
    dfo, mdfo = build_loss("dice_focal"), M.DiceFocalLoss(softmax=True, to_onehot_y=True)
    add("dice_focal", lambda x: dfo(x, y), lambda x: mdfo(x, y), fast, 0.7, "MONAI's focal term is sigmoid")
    ce, tce = build_loss("ce"), torch.nn.CrossEntropyLoss()
    add("ce", lambda x: ce(x, y), lambda x: tce(x, y[:, 0]), fast, None,
        "vs torch CrossEntropyLoss (MONAI has none); information only")
    hd, mhd = build_loss("hausdorff"), M.HausdorffDTLoss(softmax=True, to_onehot_y=True)
    add("hausdorff + dist_map", lambda x: hd(x, y, dist_map), lambda x: mhd(x, y), slow, 0.05,
        "prediction maps computed each step")
    add("hausdorff (computes maps)", lambda x: hd(x, y), lambda x: mhd(x, y), slow, 0.3)
    bd, mbd = build_loss("boundary"), M.BoundaryLoss(softmax=True, to_onehot_y=True)
    add("boundary + dist_map", lambda x: bd(x, y, dist_map), lambda x: mbd(x, y), slow, 0.05)
    add("boundary (computes maps)", lambda x: bd(x, y), lambda x: mbd(x, y), slow, 0.3)

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    print(f"# spineloss vs MONAI, forward+backward, B={B}, C={C}, {'x'.join(map(str, spatial))}, CPU, "
          f"{args.threads} threads, torch {torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {os.getloadavg()[0]:.1f}, {args.noise} noise")
    print()
    print("| loss | spineloss ms | MONAI ms | ratio | ratio (best) | ratio (CPU) | target | met | note |")
    print("|---|---:|---:|---:|---:|---:|---:|:---:|---|")
    for name, ours, ref, reps, target, note in rows:
        if only and name not in only:
            continue
        w_o, w_r, c_o, c_r = time_pair(ours, ref, logits, reps)
        mo, mr = statistics.median(w_o) * 1000, statistics.median(w_r) * 1000
        ratio = mo / mr
        best = min(w_o) / min(w_r)
        cratio = statistics.median(c_o) / statistics.median(c_r)
        tgt = "-" if target is None else f"<= {target:g}"
        met = "-" if target is None else ("yes" if ratio <= target else "NO")
        print(f"| {name} | {mo:.1f} | {mr:.1f} | {ratio:.3f} | {best:.3f} | {cratio:.3f} | {tgt} | {met} | {note} |",
              flush=True)
    print()
    print(f"signed_distance_maps per sample (data-loader worker, 1 thread, C={C}): {per_sample_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
