"""The study's ten baseline losses train end to end on the phantom (tiny volumes, a few steps each).

For every loss: a few optimiser steps on one fixed batch change the weights and lower the loss on that batch;
the loss receives exactly what the data pipeline promises (distance losses: each sample's ground-truth distance
maps *and* its own spacing, the maps made with that spacing; the other losses: neither); a short
``train_fold`` run reports the mean of the loss values it computed, and its checkpoints round-trip to the
in-memory model's weights and identical predictions (independent of which epoch a selection rule keeps: the
run has one epoch).
"""
import dataclasses
import json

import numpy as np
import pytest
import torch

import spineloss.training as training
from spineloss.data.augment import AugmentConfig
from spineloss.data.layout import read_dataset
from spineloss.data.loader import PatchDataset, make_train_loader, prepare_cases
from spineloss.data.phantom import write_phantom_dataset
from spineloss.data.preprocess import PreprocessConfig
from spineloss.experiment import LossSpec
from spineloss.losses.distance_maps import signed_distance_maps
from spineloss.training import (
    ModelConfig,
    TrainConfig,
    Trainer,
    evaluate_cases,
    load_checkpoint,
    predict_logits,
    safe_torch_load,
    train_fold,
)

BASELINE = ["ce", "focal", "dice", "tversky", "asymmetric", "boundary", "hausdorff", "dice_ce",
            "tversky_focal", "dice_focal"]
NUM_CLASSES = 6
MODEL = ModelConfig(channels=(4, 8))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("ph"), "lumbar", cases=3, seed=1, shape=(32, 32, 24))
    info = read_dataset(root)
    prepared = prepare_cases(info, info.cases, PreprocessConfig(), "multiclass")
    # the second training case gets another (anisotropic) spacing, so per-sample spacing is visible
    geom = dataclasses.replace(prepared[1].geometry, resampled_spacing=(2.0, 0.8, 1.5))
    prepared[1] = dataclasses.replace(prepared[1], geometry=geom)
    assert prepared[0].spacing != prepared[1].spacing
    return prepared


class RecordingLoss(torch.nn.Module):
    """A loss that records what each call received (and returned) before delegating to the real one."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[dict] = []

    @property
    def needs_distance_maps(self) -> bool:
        return self.inner.needs_distance_maps

    def prepare(self, counts) -> None:
        self.inner.prepare(counts)

    def forward(self, input, target, **kw):
        value = self.inner(input, target, **kw)
        self.calls.append({"target": target.detach().clone(), "value": float(value.detach()),
                           **{k: v.detach().clone() for k, v in kw.items() if v is not None}})
        return value


def check_pipeline_inputs(loss: RecordingLoss, cases, name: str, mixed: bool) -> None:
    assert loss.calls
    spacings = {tuple(c.spacing) for c in cases}
    for call in loss.calls:
        if name not in ("boundary", "hausdorff"):
            assert "dist_map" not in call and "spacing" not in call
            continue
        maps, sp, y = call["dist_map"], call["spacing"], call["target"]
        B = y.shape[0]
        assert maps.shape == (B, NUM_CLASSES) + tuple(y.shape[2:]) and maps.dtype == torch.float32
        assert sp.shape == (B, 3) and {tuple(r) for r in sp.tolist()} <= spacings
        if not mixed:  # each sample's maps were made with its own spacing
            for b in range(B):
                expected = signed_distance_maps(y[b, 0].numpy(), NUM_CLASSES, tuple(sp[b].tolist()))
                np.testing.assert_allclose(maps[b].numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", BASELINE)
def test_training_steps_lower_the_loss_on_a_batch(name, cases):
    loss = RecordingLoss(LossSpec(name, name).build(cases[0].spacing))
    assert loss.needs_distance_maps == (name in ("boundary", "hausdorff"))
    config = TrainConfig(epochs=1, iterations_per_epoch=1, batch_size=2, lr=1e-2, amp="off", seed=0)
    trainer = Trainer(int(cases[0].image.shape[0]), NUM_CLASSES, loss, MODEL, config, AugmentConfig.none(),
                      cases[:2])
    dataset = PatchDataset(cases[:2], None, trainer.model.divisor, AugmentConfig.none(), 0, NUM_CLASSES,
                           distance_maps=loss.needs_distance_maps)
    loader, _ = make_train_loader(dataset, 2, 1)
    batch = next(iter(loader))
    if loss.needs_distance_maps:  # both cases, so both spacings, are in the batch
        assert sorted(map(tuple, batch["spacing"].tolist())) == sorted(tuple(c.spacing) for c in cases[:2])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    values = [trainer.step(batch) for _ in range(5)]  # each: the loss at the current weights, then a step
    assert all(v is not None and np.isfinite(v) for v in values), values
    assert values[-1] < values[0], values
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))
    assert changed == len(before)
    assert [c["value"] for c in loss.calls] == pytest.approx(values)
    check_pipeline_inputs(loss, cases[:2], name, mixed=False)


@pytest.mark.parametrize("name", BASELINE)
def test_train_fold_runs_and_its_checkpoints_round_trip(name, cases, tmp_path, monkeypatch):
    trainers: list[Trainer] = []

    class SpyTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(training, "Trainer", SpyTrainer)
    loss = RecordingLoss(LossSpec(name, name).build(cases[0].spacing))
    row = train_fold(cases[:2], cases[2:], loss, NUM_CLASSES, tmp_path, model_config=MODEL,
                     train_config=TrainConfig(epochs=1, iterations_per_epoch=2, batch_size=2, val_every=1),
                     augment=AugmentConfig(p_affine=0.5, p_noise=0.5, p_mixup=0.5), progress=False)
    assert row["skipped_steps"] == 0 and row["epoch"] == 1
    assert len(loss.calls) == 2
    assert row["train_loss"] == pytest.approx(np.mean([c["value"] for c in loss.calls]))
    check_pipeline_inputs(loss, cases[:2], name, mixed=True)
    (trainer,) = trainers
    model = trainer.model.eval()
    # the resume point holds exactly the final weights
    last = safe_torch_load(tmp_path / "last.pt", "cpu")
    state = model.state_dict()
    assert last["model_state"].keys() == state.keys()
    assert all(torch.equal(last["model_state"][k], state[k]) for k in state)
    # model.pt (the only epoch, whatever rule selected it) rebuilds the network with identical predictions
    loaded, ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["epoch"] == 0
    for case in cases:
        mine, _ = predict_logits(model, case.image)
        theirs, _ = predict_logits(loaded, case.image)
        assert torch.equal(mine, theirs)
    metrics = evaluate_cases(loaded, cases[2:], "multiclass", labels=[1, 2, 3, 4, 5])
    json.dumps(metrics)
    assert 0.0 <= metrics["mean"]["mean"]["dice"] <= 1.0


def test_pipeline_hands_distance_maps_and_spacing_only_when_needed(cases):
    ds = PatchDataset(cases, None, 4, AugmentConfig.none(), 0, NUM_CLASSES, distance_maps=True)
    loader, sampler = make_train_loader(ds, 2, 1)
    batch = next(iter(loader))
    assert batch["dist_map"].shape == (2, NUM_CLASSES) + tuple(batch["image"].shape[2:])
    assert batch["spacing"].shape == (2, 3) and batch["spacing"].dtype == torch.float64
    lab = batch["label"][:, 0]
    for c in range(1, NUM_CLASSES):
        inside = batch["dist_map"][:, c][lab == c]
        if inside.numel():
            assert (inside < 0).all()
        assert (batch["dist_map"][:, c][lab != c] >= 0).all()
    for key in [(0, k) for k in range(3)]:
        sample = ds[key]
        assert sample["spacing"].tolist() == list(cases[ds.case_for(*key)].spacing)
    plain = PatchDataset(cases, None, 4, AugmentConfig.none(), 0, NUM_CLASSES)
    assert "dist_map" not in plain[(0, 0)] and "spacing" not in plain[(0, 0)]
    torch.testing.assert_close(plain[(0, 0)]["image"], ds[(0, 0)]["image"])
