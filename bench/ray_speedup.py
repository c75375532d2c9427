#!/usr/bin/env python
"""Wall time of one experiment grid run one run after the other (local backend) against the same grid as
Ray tasks on a local Ray instance of this machine's CPUs (docs/cluster.md quotes it).

The grid: the demo's network and phantom (24 lumbar cases of 64 x 64 x 32, binary), ``--losses`` x 2 folds,
``--epochs`` of 16 steps. What differs between the two sides:

* local: the runs one after the other in this process, PyTorch on all the machine's cores (its default);
* ray: ``cpus_per_task`` = 1, so as many runs side by side as there are cores, each on one thread.

Each side trains from scratch in its own folder (the phantom and the preprocessing cache are written
first, outside the timings); the Ray figure is given with and without starting the Ray instance. Run it
on an otherwise idle machine.

    python bench/ray_speedup.py [--epochs 4] [--losses dice,ce,focal,tversky] [--out runs/bench_ray]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def _config(losses: list[str], epochs: int, name: str):
    from spineloss.experiment import config_from_dict
    return config_from_dict({
        "experiment": {"name": name, "folds": 2, "seed": 0},
        "data": {"phantom": {"region": "lumbar", "cases": 24, "shape": [64, 64, 32], "seed": 0},
                 "label_mode": "binary"},
        "model": {"depth": 4, "base_channels": 8, "max_channels": 64},
        "training": {"epochs": epochs, "iterations_per_epoch": 16, "batch_size": 2, "lr": 1e-2},
        "augment": {"p_affine": 0.2, "p_noise": 0.2},
        "losses": losses})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--losses", default="dice,ce,focal,tversky")
    parser.add_argument("--out", default="runs/bench_ray")
    args = parser.parse_args()
    from spineloss.backends import get_backend
    from spineloss.experiment import run_experiment

    load_at_start = [round(x, 2) for x in os.getloadavg()]   # the machine must be otherwise idle
    losses = args.losses.split(",")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    # data and cache first, outside the timings: a grid of one 1-epoch run writes both
    run_experiment(_config(losses[:1], 1, "warm"), out / "warm", progress=False, pictures=False)
    for side in ("local", "ray"):
        (out / side).mkdir(parents=True)
        for item in ("data", "cache"):
            shutil.copytree(out / "warm" / item, out / side / item)
    config = _config(losses, args.epochs, "grid")

    t = time.perf_counter()
    run_experiment(config, out / "local", progress=False, pictures=False)
    local = time.perf_counter() - t

    t = time.perf_counter()
    backend = get_backend("ray", cpus_per_task=1)
    started = time.perf_counter() - t
    t2 = time.perf_counter()
    run_experiment(config, out / "ray", progress=False, pictures=False, backend=backend)
    ray_grid = time.perf_counter() - t2
    slots = backend.slots
    backend.close()
    ray_total = started + ray_grid
    runs = len(losses) * 2
    result = {"load_average_at_start": load_at_start, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              "cores": os.cpu_count(), "runs": runs, "epochs": args.epochs, "steps_per_run": args.epochs * 16,
              "local_seconds": round(local, 1), "ray_seconds_with_start": round(ray_total, 1),
              "ray_start_seconds": round(started, 1), "ray_slots": slots,
              "speedup_with_start": round(local / ray_total, 2), "speedup_grid_only": round(local / ray_grid, 2)}
    print(json.dumps(result, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
