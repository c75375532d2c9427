"""Training: determinism, resume after an interruption, non-finite loss handling, checkpoints."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spineloss.data.augment import AugmentConfig
from spineloss.data.loader import PatchDataset, PreparedCase, make_train_loader
from spineloss.data.preprocess import CaseGeometry, PreprocessConfig
from spineloss.training import (ModelConfig, TrainConfig, evaluate_cases, load_checkpoint, resolve_amp,
                                train_fold)


class SoftCE(torch.nn.Module):
    """Cross-entropy accepting integer or soft targets (a stand-in independent of the loss library)."""

    def forward(self, logits, target, dist_map=None):
        if target.is_floating_point():
            return -(target * F.log_softmax(logits, 1)).sum(1).mean()
        return F.cross_entropy(logits, target[:, 0] if target.ndim == 5 else target)


def _cases(n=4, shape=(16, 16, 8), seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        c = rng.integers(4, 10, size=3)
        lab[c[0]:c[0] + 5, c[1]:c[1] + 5, 2:6] = 1
        lab[c[0] + 5:c[0] + 7, c[1]:c[1] + 5, 2:6] = 2
        img = (lab[None] * 1.0 + rng.normal(0, 0.3, (1,) + shape)).astype(np.float32)
        geo = CaseGeometry(shape, (1.0, 1.0, 1.0), np.eye(4).tolist(), shape, (1.0, 1.0, 1.0))
        cases.append(PreparedCase(f"c{i}", img, lab, geo))
    return cases


CFG = dict(model_config=ModelConfig(depth=2, base_channels=4, max_channels=8),
           augment=AugmentConfig(p_affine=0.5, p_noise=0.5, p_mixup=0.5), progress=False)
TRAIN = TrainConfig(epochs=4, iterations_per_epoch=2, batch_size=2, lr=3e-3, seed=1)


def _metrics(out):
    model, ckpt = load_checkpoint(out / "model.pt")
    return evaluate_cases(model, _cases()[2:], "multiclass", labels=[1, 2]), ckpt


def test_same_seed_same_numbers(tmp_path):
    cases = _cases()
    a = train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path / "a", train_config=TRAIN, **CFG)
    b = train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path / "b", train_config=TRAIN, **CFG)
    assert a["train_loss"] == b["train_loss"] and a["best_val_dice"] == b["best_val_dice"]
    ma, _ = _metrics(tmp_path / "a")
    mb, _ = _metrics(tmp_path / "b")
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)
    other = TrainConfig(**{**TRAIN.__dict__, "seed": 2})
    c = train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path / "c", train_config=other, **CFG)
    assert c["train_loss"] != a["train_loss"]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    cases = _cases()
    full = train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path / "full", train_config=TRAIN, **CFG)

    def crash(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path / "cut", train_config=TRAIN,
                   on_epoch_end=crash, **CFG)
    with open(tmp_path / "cut" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    resumed = train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path / "cut", train_config=TRAIN, **CFG)
    assert resumed["train_loss"] == full["train_loss"]
    assert resumed["best_val_dice"] == full["best_val_dice"]
    m_full, _ = _metrics(tmp_path / "full")
    m_cut, _ = _metrics(tmp_path / "cut")
    assert json.dumps(m_full, sort_keys=True) == json.dumps(m_cut, sort_keys=True)
    with open(tmp_path / "cut" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


class NaNOnce(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.inner = SoftCE()

    def forward(self, logits, target, dist_map=None):
        self.calls += 1
        value = self.inner(logits, target)
        return value * float("nan") if self.calls == 2 else value


def test_non_finite_loss_is_skipped_and_logged(tmp_path, caplog):
    cases = _cases()
    cfg = TrainConfig(epochs=1, iterations_per_epoch=3, batch_size=2, seed=0)
    with caplog.at_level("WARNING"):
        row = train_fold(cases[:2], cases[2:], NaNOnce(), 3, tmp_path, train_config=cfg, **CFG)
    assert row["skipped_steps"] == 1 and np.isfinite(row["train_loss"])
    assert "non-finite loss" in caplog.text
    model, _ = load_checkpoint(tmp_path / "model.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_has_what_predict_needs(tmp_path):
    cases = _cases()
    cfg = TrainConfig(epochs=1, iterations_per_epoch=1, batch_size=2, seed=0)
    train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path, train_config=cfg,
               preprocess=PreprocessConfig(target_spacing=(2, 2, 2)), label_names={0: "bg", 1: "a", 2: "b"}, **CFG)
    _, ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["preprocess"]["target_spacing"] == (2.0, 2.0, 2.0)
    assert ckpt["model"]["out_channels"] == 3 and ckpt["labels"][1] == "a"


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="no such model"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(bad)


def test_loader_is_independent_of_worker_count():
    cases = _cases()
    ds = PatchDataset(cases, (8, 8, 8), 4, AugmentConfig(p_affine=1.0, p_noise=1.0), 5, 3)
    l0, s0 = make_train_loader(ds, 2, 2, num_workers=0)
    l1, s1 = make_train_loader(ds, 2, 2, num_workers=1)
    for s in (s0, s1):
        s.set_epoch(3)
    for a, b in zip(l0, l1):
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["label"], b["label"])
    assert a["image"].shape == (2, 1, 8, 8, 8)


def test_foreground_oversampling_finds_foreground():
    cases = _cases()
    ds = PatchDataset(cases, (4, 4, 4), 4, AugmentConfig.none(), 0, 3, foreground_oversample=1.0)
    assert all(ds[(0, k)]["label"].sum() > 0 for k in range(8))


def test_amp_resolution():
    assert resolve_amp("off", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_amp("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")


def test_test_time_mirroring_averages_flipped_passes():
    from spineloss.model import UNet3D
    from spineloss.training import predict_logits

    torch.manual_seed(0)
    model = UNet3D(1, 3, depth=2, base_channels=4).eval()
    image = np.random.default_rng(0).normal(size=(1, 8, 6, 5)).astype(np.float32)
    plain, pad = predict_logits(model, image)
    assert pad == (0, 0, 1)
    mirrored, _ = predict_logits(model, image, mirror_axes=(2,))
    x = torch.from_numpy(np.pad(image, [(0, 0), (0, 0), (0, 0), (0, 1)], constant_values=image.min()))[None]
    with torch.no_grad():
        expected = (model(x) + model(x.flip(4)).flip(4))[0] / 2
    torch.testing.assert_close(mirrored, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, mirrored)
    two, _ = predict_logits(model, image, mirror_axes=(0, 2))
    assert two.shape == plain.shape
    with pytest.raises(ValueError, match="mirror_axes"):
        predict_logits(model, image, mirror_axes=(3,))


def test_checkpoint_asks_for_the_trained_mirror_axes(tmp_path):
    from spineloss.training import checkpoint_mirror_axes

    cases = _cases()
    cfg = TrainConfig(epochs=1, iterations_per_epoch=1, batch_size=2, seed=0)
    train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path, train_config=cfg,
               model_config=CFG["model_config"], augment=AugmentConfig(mirror_axes=(2,)), progress=False)
    _, ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["inference"]["mirror_axes"] == [2] and checkpoint_mirror_axes(ckpt) == (2,)
    assert checkpoint_mirror_axes({"model": {}}) == ()  # checkpoints written before the entry


def test_resume_with_another_model_config_says_what_to_do(tmp_path):
    cases = _cases()
    cfg = TrainConfig(epochs=2, iterations_per_epoch=1, batch_size=2, seed=0)
    small = ModelConfig(depth=2, base_channels=4, max_channels=8)
    train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path, train_config=TrainConfig(epochs=1, iterations_per_epoch=1,
               batch_size=2, seed=0), model_config=small, progress=False)
    other = ModelConfig(depth=2, base_channels=4, max_channels=8, bottleneck_blocks=1)
    with pytest.raises(ValueError, match=r"different \[model\] configuration"):
        train_fold(cases[:2], cases[2:], SoftCE(), 3, tmp_path, train_config=cfg, model_config=other, progress=False)
