"""The study's ten baseline losses train end to end on the phantom (tiny volumes, a few steps each).

Distance losses get their ground-truth distance maps from the data pipeline (``dist_map`` in the batch);
the run must finish with finite losses, write a checkpoint and evaluate on the original grid.
"""
import json

import numpy as np
import pytest
import torch

from spineloss.data.augment import AugmentConfig
from spineloss.data.layout import read_dataset
from spineloss.data.loader import PatchDataset, make_train_loader, prepare_cases
from spineloss.data.phantom import write_phantom_dataset
from spineloss.data.preprocess import PreprocessConfig
from spineloss.experiment import LossSpec
from spineloss.training import ModelConfig, TrainConfig, evaluate_cases, load_checkpoint, train_fold

BASELINE = ["ce", "focal", "dice", "tversky", "asymmetric", "boundary", "hausdorff", "dice_ce",
            "tversky_focal", "dice_focal"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("ph"), "lumbar", cases=3, seed=1, shape=(32, 32, 24))
    info = read_dataset(root)
    return prepare_cases(info, info.cases, PreprocessConfig(), "multiclass")


@pytest.mark.parametrize("name", BASELINE)
def test_baseline_loss_trains(name, cases, tmp_path):
    loss = LossSpec(name, name).build(cases[0].spacing)
    assert loss.needs_distance_maps == (name in ("boundary", "hausdorff"))
    row = train_fold(cases[:2], cases[2:], loss, 6, tmp_path,
                     model_config=ModelConfig(channels=(4, 8)),
                     train_config=TrainConfig(epochs=1, iterations_per_epoch=2, batch_size=2),
                     augment=AugmentConfig(p_affine=0.5, p_noise=0.5, p_mixup=0.5), progress=False)
    assert row["skipped_steps"] == 0 and np.isfinite(row["train_loss"])
    model, _ = load_checkpoint(tmp_path / "model.pt")
    metrics = evaluate_cases(model, cases[2:], "multiclass", labels=[1, 2, 3, 4, 5])
    json.dumps(metrics)
    assert 0.0 <= metrics["mean"]["mean"]["accuracy"] <= 1.0


def test_pipeline_hands_distance_maps_only_when_needed(cases):
    ds = PatchDataset(cases, None, 4, AugmentConfig.none(), 0, 6, distance_maps=True)
    loader, sampler = make_train_loader(ds, 2, 1)
    batch = next(iter(loader))
    assert batch["dist_map"].shape == (2, 6) + tuple(batch["image"].shape[2:])
    lab = batch["label"][:, 0]
    for c in range(1, 6):
        inside = batch["dist_map"][:, c][lab == c]
        if inside.numel():
            assert (inside < 0).all()
        assert (batch["dist_map"][:, c][lab != c] >= 0).all()
    plain = PatchDataset(cases, None, 4, AugmentConfig.none(), 0, 6)
    assert "dist_map" not in plain[(0, 0)]
    torch.testing.assert_close(plain[(0, 0)]["image"], ds[(0, 0)]["image"])
