#!/usr/bin/env python
"""The MONAI peer of the lumbar benchmark: a plain MONAI-tutorial 3D UNet, evaluated like spineloss.

What the peer is: the baseline a MONAI user would write for lumbar vertebral-body segmentation (L1..L5)
on a CPU with a fixed training budget. This script reproduces, in the project's own code, the settings
documented at the top of the shared peer script ``../shared/peers/monai_lumbar.py``, so that users can
rerun the spineloss-vs-MONAI comparison from this repository:

* split: cases sorted by id, the last 8 validate, the first 32 train (:func:`lumbar_common.lumbar_split`);
* ``LoadImaged -> EnsureChannelFirstd -> ScaleIntensityRangePercentilesd(0.5, 99.5 -> [0, 1], clip)
  -> NormalizeIntensityd -> Spacingd(2 mm, bilinear / nearest)``, cached (``CacheDataset``);
  binary mode trains on ``label > 0`` (2 classes), multiclass on 0..5 (6 classes);
* training only: ``DivisiblePadd(k=16) -> RandAffined(p=0.5, rotate +-0.1 rad, scale +-10 %)
  -> RandGaussianNoised(p=0.3, std 0.1)``;
* ``UNet(3D, channels 16..256, strides 2 x 4, num_res_units=2, INSTANCE norm)``,
  ``DiceCELoss(to_onehot_y=True, softmax=True)``, Adam lr 1e-3, batch 2, 2 torch threads,
  ``set_determinism(seed)``, loader shuffled by a generator seeded with ``seed``;
* clock: the budget counts training time only (data loading + augmentation + forward/backward/step);
  evaluation and caching are excluded (reported as wall / eval / cache seconds), as in the peer.

Evaluation differs from the peer script ON PURPOSE, to match spineloss exactly: the whole 2 mm volume is
predicted in one window (``sliding_window_inference`` with a single ROI = the volume padded to
multiples of 16, symmetric padding as in training, cropped back), the logits are mapped back to the
ORIGINAL 1 mm grid with :func:`lumbar_common.resample_scores_to_original` using MONAI's own grid
convention (coarse index = ``inv(A_2mm) @ A_original`` applied to the original index; for this data
``j -> j / 2``: ``Spacingd`` keeps the origin on voxel 0's centre), arg-max, and scored by
:func:`lumbar_common.evaluate` against the original label files (Dice; multiclass: mean over L1..L5,
per-level Dice, confusion between neighbouring levels).

Usage (from the repository root)::

    python bench/peer_monai.py --minutes 12 --label-mode multiclass [--data DIR] [--seed 0]
        [--eval-every-s 60] [--threads 2] [--csv runs/peer_curve.csv]

Prints the learning curve and, as its last line, ``binary_dice=X multiclass_dice=Y steps=N minutes=M``
(the last evaluation). :func:`run_peer` runs the same in-process and returns the
:class:`lumbar_common.CurveLog` (note: it sets the torch thread count and MONAI's global determinism).
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lumbar_common, also when imported from elsewhere
import lumbar_common as lc  # noqa: E402

__all__ = ["run_peer", "main"]

DIVISOR = 16
"""The UNet has 4 stride-2 levels: spatial sizes must be multiples of 16."""


def _binary_label(x):
    """``label > 0`` as float (the peer's ``Lambdad`` in binary mode)."""
    import torch

    return (x > 0).float() if isinstance(x, torch.Tensor) else (x > 0).astype(np.float32)


def _index_map_from_affines(image) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(index_scale, index_offset)`` of original index -> 2 mm index, read from MONAI's own affines.

    ``inv(A_resampled) @ A_original`` maps original voxel indices to resampled ones; ``Spacingd``
    keeps the axis order and orientation, so its 3x3 part is diagonal (a general rotation is refused).
    """
    a_new = np.asarray(image.affine, dtype=np.float64)
    a_old = np.asarray(image.meta["original_affine"], dtype=np.float64)
    m = np.linalg.solve(a_new, a_old)
    lin = m[:3, :3]
    if np.abs(lin - np.diag(np.diag(lin))).max() > 1e-4 or (np.diag(lin) <= 0).any():
        raise ValueError(f"{image.meta.get('filename_or_obj')}: the 2 mm grid is not an axis-aligned "
                         f"rescaling of the original grid (inv(A_new) @ A_orig = {np.round(m, 4).tolist()})")
    return tuple(float(v) for v in np.diag(lin)), tuple(float(v) + 0.0 for v in np.round(m[:3, 3], 9))


def run_peer(minutes: float, label_mode: str, data_dir: str = lc.DEFAULT_DATA, seed: int = 0,
             eval_every_s: float = 60.0, threads: int = 2, n_val: int = 8,
             stream: TextIO | None = sys.stdout) -> lc.CurveLog:
    """Train and evaluate the MONAI peer for ``minutes`` of training time; returns its curve.

    Evaluates every ``eval_every_s`` seconds of training and at the end of the budget, at the
    original grid (see the module docstring). ``stream=None`` prints nothing. The returned
    :class:`lumbar_common.CurveLog` has one row per evaluation (``details`` = the
    :func:`lumbar_common.evaluate` result) and ``info`` with the run's totals (steps, train_s,
    eval_s, cache_s, steps_per_s, ...).
    """
    import monai
    import nibabel as nib
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet
    from monai.transforms import (Compose, DivisiblePadd, EnsureChannelFirstd, EnsureTyped, Lambdad, LoadImaged,
                                  NormalizeIntensityd, RandAffined, RandGaussianNoised,
                                  ScaleIntensityRangePercentilesd, Spacingd)
    from monai.utils import set_determinism

    if label_mode not in ("binary", "multiclass"):
        raise ValueError(f"label_mode must be 'binary' or 'multiclass', got {label_mode!r}")
    if not minutes > 0 or not eval_every_s > 0:
        raise ValueError(f"minutes and eval_every_s must be > 0, got {minutes} and {eval_every_s}")

    def say(msg: str) -> None:
        if stream is not None:
            print(msg, file=stream, flush=True)

    torch.set_num_threads(threads)
    set_determinism(seed=seed)
    t_start = time.perf_counter()
    train_cases, val_cases = lc.lumbar_split(data_dir, n_val=n_val)
    say(f"# peer: MONAI tutorial UNet | monai {monai.__version__} torch {torch.__version__} "
        f"threads {torch.get_num_threads()} mode {label_mode} seed {seed} budget {minutes:g} min")
    say(f"# train {len(train_cases)} cases ({train_cases[0].case_id}..{train_cases[-1].case_id}), "
        f"val {len(val_cases)} cases ({val_cases[0].case_id}..{val_cases[-1].case_id})")

    n_classes = 6 if label_mode == "multiclass" else 2
    keys = ["image", "label"]
    base = [
        LoadImaged(keys=keys),
        EnsureChannelFirstd(keys=keys),
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        NormalizeIntensityd(keys="image"),
        Spacingd(keys=keys, pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
    ]
    if label_mode == "binary":
        base.append(Lambdad(keys="label", func=_binary_label))
    train_tf = Compose(base + [
        DivisiblePadd(keys=keys, k=DIVISOR),
        RandAffined(keys=keys, prob=0.5, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianNoised(keys="image", prob=0.3, mean=0.0, std=0.1),
        EnsureTyped(keys=keys, track_meta=False),
    ])
    # validation: the image only, same preprocessing; the MetaTensor keeps the affines we map back with
    val_tf = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        NormalizeIntensityd(keys="image"),
        Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0), mode="bilinear"),
    ])
    train_files = [{"image": str(c.image_paths[0]), "label": str(c.label_path)} for c in train_cases]
    val_files = [{"image": str(c.image_paths[0]), "case": c.case_id} for c in val_cases]

    t0 = time.perf_counter()
    train_ds = CacheDataset(train_files, transform=train_tf, cache_rate=1.0, num_workers=0, progress=False)
    val_ds = CacheDataset(val_files, transform=val_tf, cache_rate=1.0, num_workers=0, progress=False)
    val_items = {}
    for case, item in zip(val_cases, val_ds):
        img = item["image"]
        scale, offset = _index_map_from_affines(img)
        original_shape = tuple(int(s) for s in nib.load(str(case.label_path)).shape[:3])
        val_items[case.case_id] = (img.as_tensor()[None].float(), original_shape, scale, offset)
    cache_s = time.perf_counter() - t0
    g = torch.Generator()
    g.manual_seed(seed)
    train_loader = DataLoader(train_ds, batch_size=2, shuffle=True, num_workers=0, generator=g)
    first = val_items[val_cases[0].case_id]
    say(f"# cached in {cache_s:.1f} s; val volume {tuple(first[0].shape[2:])} at 2 mm -> original "
        f"{first[1]}, index map j -> j*{first[2]} + {first[3]}; train shape after pad "
        f"{tuple(train_ds[0]['image'].shape[1:])}")

    model = UNet(spatial_dims=3, in_channels=1, out_channels=n_classes, channels=(16, 32, 64, 128, 256),
                 strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.INSTANCE)
    say(f"# UNet params {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M, out_channels {n_classes}")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def predict(case: lc.Case) -> np.ndarray:
        x, original_shape, scale, offset = val_items[case.case_id]
        roi = tuple(int(math.ceil(s / DIVISOR) * DIVISOR) for s in x.shape[2:])
        logits = sliding_window_inference(x, roi, 1, model)  # one window: pads symmetrically, crops back
        return lc.resample_scores_to_original(logits[0], original_shape, scale, offset)

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad():
            result = lc.evaluate(predict, val_cases, label_mode)
        model.train()
        return result

    log = lc.CurveLog(name="monai", label_mode=label_mode, stream=stream)
    budget = minutes * 60.0
    train_s = eval_s = 0.0
    steps = epoch = 0
    next_eval = eval_every_s
    loss_acc, loss_n = 0.0, 0
    last_steps, last_train_s = 0, 0.0
    t_train0 = time.perf_counter()
    model.train()
    done = False
    while not done:
        epoch += 1
        t_it = time.perf_counter()
        for batch in train_loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            steps += 1
            loss_acc += loss.item()
            loss_n += 1
            now = time.perf_counter()
            train_s += now - t_it
            t_it = now
            if steps == 1:
                say(f"# first step {train_s:.2f} s, loss {loss.item():.4f}")
            last = train_s >= budget
            if train_s >= next_eval or last:
                te = time.perf_counter()
                result = evaluate()
                dt = time.perf_counter() - te
                eval_s += dt
                log.add(train_s, time.perf_counter() - t_train0, steps, loss_acc / max(1, loss_n),
                        result["binary_dice"], result["multiclass_dice"],
                        (train_s - last_train_s) / max(1, steps - last_steps), dt, details=result)
                loss_acc, loss_n = 0.0, 0
                last_steps, last_train_s = steps, train_s
                while next_eval <= train_s:
                    next_eval += eval_every_s
                t_it = time.perf_counter()  # evaluation is not training time
                if last:
                    done = True
                    break

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    log.info.update(pipeline="monai", label_mode=label_mode, seed=seed, minutes=minutes, epochs=epoch,
                    steps=steps, train_s=train_s, eval_s=eval_s, cache_s=cache_s,
                    steps_per_s=steps / train_s if train_s > 0 else float("nan"),
                    total_wall_s=time.perf_counter() - t_start, peak_rss_mb=peak_mb)
    final = log.last.details
    say("# final evaluation (original 1 mm grid):")
    say(lc.format_evaluation(final, prefix="#   "))
    best = log.best()
    if best is not None:
        say(f"# best: binary_dice {best.binary_dice:.4f} multiclass_dice {lc._fmt(best.multiclass_dice)} "
            f"at {best.train_seconds:.0f} s ({best.steps} steps)")
    say(f"# epochs {epoch} steps {steps} train_s {train_s:.1f} eval_s {eval_s:.1f} cache_s {cache_s:.1f} "
        f"total_wall_s {log.info['total_wall_s']:.1f} steps/s {log.info['steps_per_s']:.4f} "
        f"s/step {train_s / max(1, steps):.3f} peak_rss_mb {peak_mb:.0f}")
    return log


def main(argv=None) -> int:
    """Command line: ``python bench/peer_monai.py --minutes M --label-mode binary|multiclass ...``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="training budget (minutes, training time only)")
    p.add_argument("--label-mode", choices=["multiclass", "binary"], default="multiclass")
    p.add_argument("--data", default=lc.DEFAULT_DATA, help="nnU-Net v2 data set folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every-s", type=float, default=60.0, help="evaluate every N s of training")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the peer)")
    p.add_argument("--n-val", type=int, default=8, help="last N sorted cases validate (default 8)")
    p.add_argument("--csv", default=None, help="write the curve as CSV to this path")
    args = p.parse_args(argv)
    log = run_peer(args.minutes, args.label_mode, args.data, seed=args.seed, eval_every_s=args.eval_every_s,
                   threads=args.threads, n_val=args.n_val)
    if args.csv:
        print(f"# curve written to {log.to_csv(args.csv)}", flush=True)
    print(log.summary_line(args.minutes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
