"""The main job (``make run``): three losses x three folds on a built-in synthetic lumbar data set.

The task is the study's: vertebral bodies against background (``label_mode = "binary"``, L1..L5
merged), on 24 phantom cases of 64 x 64 x 32 voxels at their own spacing (no resampling).

The settings below were chosen on 2 CPU cores so that the full demo stays under 10 minutes; the
README quotes the measured time and Dice. ``quick`` is the same pipeline on tiny volumes, a smoke
test of under a minute.
"""
from __future__ import annotations

import copy

from .experiment import config_from_dict

__all__ = ["demo_config"]

_DEMO = {
    "experiment": {"name": "demo", "folds": 3, "seed": 0},
    "data": {"phantom": {"region": "lumbar", "cases": 24, "shape": [64, 64, 32], "seed": 0},
             "label_mode": "binary"},
    "preprocess": {},
    "model": {"depth": 4, "base_channels": 8, "max_channels": 64},
    "training": {"epochs": 16, "iterations_per_epoch": 16, "batch_size": 2, "lr": 1e-2, "val_every": 2},
    "augment": {"p_affine": 0.2, "p_noise": 0.2, "p_mixup": 0.0},
    "losses": ["ce", "dice", "dice_ce"],
}

_QUICK = {
    "data": {"phantom": {"region": "lumbar", "cases": 6, "shape": [48, 48, 24], "seed": 0},
             "label_mode": "binary"},
    "model": {"depth": 3, "base_channels": 4, "max_channels": 16},
    "training": {"epochs": 2, "iterations_per_epoch": 3, "batch_size": 2, "lr": 3e-3, "val_every": 1},
}


def demo_config(quick: bool = False, seed: int = 0):
    """The demo's :class:`~spineloss.experiment.ExperimentConfig` (``quick``: tiny, < 1 minute)."""
    raw = copy.deepcopy(_DEMO)
    if quick:
        raw["experiment"]["name"] = "demo_quick"
        for section, values in _QUICK.items():
            raw[section].update(copy.deepcopy(values))
    raw["experiment"]["seed"] = seed
    return config_from_dict(raw)
