#!/usr/bin/env python
"""Training-step speed at equal batch and volume: spineloss's lumbar settings against the MONAI peer.

Both take a batch of 2 volumes of 112 x 112 x 48 voxels (the peer's padded 2 mm lumbar volume) with
6 classes; the peer is MONAI's ``UNet(16..256, strides 2x4, 2 residual units, instance norm)`` with
``DiceCELoss`` in fp32 (as in ``bench/peer_monai.py``); spineloss uses the network, loss, precision and
memory layout of ``configs/lumbar_multiclass.toml``. The two alternate in one process; each figure is a
median over ``--rounds`` rounds of ``--steps`` steps after a warm-up.

    python bench/step_speed.py [--rounds 5] [--steps 3] [--config configs/lumbar_multiclass.toml]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _timer(model, loss_fn, x, y, amp_dtype, channels_last):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "lumbar_multiclass.toml"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from monai.losses import DiceCELoss
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet

    from spineloss.experiment import load_config
    from spineloss.model import build_model
    from spineloss.training import resolve_amp

    cfg = load_config(args.config)
    torch.manual_seed(0)
    x = torch.randn(2, 1, 112, 112, 48)
    y = torch.randint(0, 6, (2, 1, 112, 112, 48))
    peer = UNet(spatial_dims=3, in_channels=1, out_channels=6, channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.INSTANCE)
    ours = build_model(1, 6, **{k: v for k, v in vars(cfg.model).items()})
    amp = resolve_amp(cfg.training.amp, torch.device("cpu"))
    steps = {"monai peer (fp32)": _timer(peer, DiceCELoss(to_onehot_y=True, softmax=True), x, y, None, False),
             f"spineloss ({amp or 'fp32'}, channels_last={cfg.training.channels_last})":
                 _timer(ours, cfg.losses[0].build(), x, y, amp, cfg.training.channels_last)}
    for step in steps.values():  # warm-up: kernel selection, allocator
        step(), step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t) / args.steps)
    print(f"# batch 2 x 1 x 112 x 112 x 48, 6 classes, torch {torch.__version__}, {args.threads} threads")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(f"{name:45s} {med[name]:.3f} s/step  ({1 / med[name]:.2f} steps/s)  "
              f"[{min(ts):.3f} .. {max(ts):.3f}]")
    peer_t, ours_t = list(med.values())
    print(f"steps/s ratio spineloss / peer = {peer_t / ours_t:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
