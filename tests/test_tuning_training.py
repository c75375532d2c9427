"""Tuning inside a training run: the greedy search and adaptive weights driven by train_fold, resumable."""
from __future__ import annotations

import json

import pytest
import torch

from spineloss.data.augment import AugmentConfig
from spineloss.data.layout import read_dataset
from spineloss.data.loader import prepare_cases
from spineloss.data.phantom import write_phantom_dataset
from spineloss.data.preprocess import PreprocessConfig
from spineloss.losses import build_loss
from spineloss.training import ModelConfig, TrainConfig, train_fold
from spineloss.tuning.greedy import read_params_csv
from spineloss.tuning.runner import TuningSpec
from spineloss.tuning.weighting import read_weights_csv

TINY = dict(model_config=ModelConfig(channels=(4, 8)), augment=AugmentConfig.none(), progress=False,
            label_mode="binary")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("ph"), "lumbar", cases=3, seed=2, shape=(32, 32, 24))
    info = read_dataset(root)
    return prepare_cases(info, info.cases, PreprocessConfig(), "binary")


def _config(epochs=2):
    return TrainConfig(epochs=epochs, iterations_per_epoch=3, batch_size=2, lr=1e-2)


def test_greedy_search_runs_inside_training_and_logs_its_parameters(cases, tmp_path):
    spec = TuningSpec.from_table({"greedy": {"every": 2, "parameters": ["alpha", "beta"]}})
    loss = build_loss("tversky")
    out = train_fold(cases[:2], [], loss, 2, tmp_path, train_config=_config(), tuning=spec, **TINY)
    rows = read_params_csv(tmp_path / "params.csv")
    assert [r["step"] for r in rows] == [0, 2, 4]                 # the start, then every 2 of the 6 steps
    assert rows[-1]["alpha"] == pytest.approx(loss.alpha) and rows[-1]["beta"] == pytest.approx(loss.beta)
    summary = json.loads((tmp_path / "tuning.json").read_text())
    assert summary == out["tuning"] and summary["adaptations"] == 2
    assert 2 * 4 <= summary["trial_steps"] <= 2 * 9                # 3^2 candidates, fewer at a bound
    assert summary["backward_passes"] == summary["trial_steps"] and summary["seconds"] > 0
    assert summary["forward_passes"] == 2 * summary["trial_steps"]  # trial step + held-out score each
    assert 0 < summary["overhead"] and summary["train_seconds_total"] > summary["seconds"]


def test_adaptive_weights_follow_the_schedule_and_resume_exactly(cases, tmp_path):
    spec = TuningSpec.from_table({"weighting": {"scheme": "rebalance", "start": [1.0, 0.01], "end": [1.0, 1.0]}})
    full = tmp_path / "full"
    train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, full, train_config=_config(), tuning=spec,
               **TINY)
    rows = read_weights_csv(full / "weights.csv")
    assert [r["step"] for r in rows] == list(range(6))
    assert rows[0]["ce"] == pytest.approx(0.01) and rows[-1]["ce"] == pytest.approx(1.0)
    assert rows[3]["ce"] == pytest.approx(0.01 + 0.99 * 3 / 5)

    cut = tmp_path / "cut"

    def stop(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, cut, train_config=_config(),
                   tuning=spec, on_epoch_end=stop, **TINY)
    train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, cut, train_config=_config(), tuning=spec,
               **TINY)
    assert (cut / "weights.csv").read_text() == (full / "weights.csv").read_text()
    a = torch.load(full / "model.pt", weights_only=True)["model_state"]
    b = torch.load(cut / "model.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cov_weights_reach_the_loss_and_resume_exactly(cases, tmp_path, monkeypatch):
    """The weights logged are the ones the loss computed with (a spy on the weighted sum), and a stateful
    scheme (CoV) resumed mid-run continues with the same numbers."""
    from spineloss.losses.compound import WeightedSumLoss
    spec = TuningSpec.from_table({"weighting": {"scheme": "cov", "mean": "decayed", "decay": 0.5}})
    used = []
    real = WeightedSumLoss.compute

    def spy(self, batch):
        used.append(dict(self.weights))
        return real(self, batch)

    monkeypatch.setattr(WeightedSumLoss, "compute", spy)
    train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, tmp_path / "full", train_config=_config(),
               tuning=spec, **TINY)
    rows = read_weights_csv(tmp_path / "full" / "weights.csv")
    assert len(used) == len(rows) == 6
    for row, weights in zip(rows, used):
        assert weights == pytest.approx({"dice": row["dice"], "ce": row["ce"]})
    assert used[-1] != used[0]                                     # CoV moved them

    def stop(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, tmp_path / "cut", train_config=_config(),
                   tuning=spec, on_epoch_end=stop, **TINY)
    train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, tmp_path / "cut", train_config=_config(),
               tuning=spec, **TINY)
    assert (tmp_path / "cut" / "weights.csv").read_text() == (tmp_path / "full" / "weights.csv").read_text()


def test_resuming_with_other_tuning_is_refused(cases, tmp_path):
    spec = TuningSpec.from_table({"weighting": {"scheme": "cov"}})

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, tmp_path / "a", train_config=_config(),
                   on_epoch_end=stop, **TINY)
    with pytest.raises(ValueError, match="without the tuning"):
        train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, tmp_path / "a", train_config=_config(),
                   tuning=spec, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, tmp_path / "b", train_config=_config(),
                   tuning=spec, on_epoch_end=stop, **TINY)
    with pytest.raises(ValueError, match="does not ask for"):
        train_fold(cases[:2], [], build_loss({"dice": 1.0, "ce": 1.0}), 2, tmp_path / "b", train_config=_config(),
                   **TINY)


def test_greedy_resume_gives_the_same_parameters(cases, tmp_path):
    spec = TuningSpec.from_table({"greedy": {"every": 2, "parameters": ["alpha"], "criterion": "recall"}})
    train_fold(cases[:2], [], build_loss("tversky"), 2, tmp_path / "full", train_config=_config(), tuning=spec,
               **TINY)

    def stop(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(cases[:2], [], build_loss("tversky"), 2, tmp_path / "cut", train_config=_config(), tuning=spec,
                   on_epoch_end=stop, **TINY)
    train_fold(cases[:2], [], build_loss("tversky"), 2, tmp_path / "cut", train_config=_config(), tuning=spec,
               **TINY)
    assert (tmp_path / "cut" / "params.csv").read_text() == (tmp_path / "full" / "params.csv").read_text()


def test_a_config_row_with_tuning_runs_in_the_experiment(tmp_path):
    from spineloss.experiment import config_from_dict, run_experiment
    raw = {"experiment": {"name": "t", "folds": 2, "seed": 0},
           "data": {"phantom": {"region": "lumbar", "cases": 4, "shape": [32, 32, 24], "seed": 0},
                    "label_mode": "binary"},
           "model": {"channels": [4, 8]},
           "training": {"epochs": 1, "iterations_per_epoch": 3, "batch_size": 2},
           "losses": [{"name": "tv_g", "loss": "tversky", "tuning": {"greedy": {"every": 2, "parameters": ["alpha"]}}},
                      {"name": "dce_r", "loss": {"dice": 1.0, "ce": 1.0},
                       "tuning": {"weighting": {"scheme": "softadapt", "beta": 0.1}}}]}
    run_experiment(config_from_dict(raw), tmp_path / "run", progress=False)
    m = json.loads((tmp_path / "run" / "tv_g" / "fold0" / "metrics.json").read_text())
    assert m["tuning"]["adaptations"] == 1 and m["run_config"]["loss.tuning.greedy.parameters"] == ["alpha"]
    assert (tmp_path / "run" / "dce_r" / "fold1" / "weights.csv").exists()
    import matplotlib.image
    for loss in ("tv_g", "dce_r"):                                  # the trajectory plots
        png = matplotlib.image.imread(str(tmp_path / "run" / loss / "tuning.png"))
        assert png.shape[0] > 100 and png.std() > 0
    with pytest.raises(ValueError, match="unknown config keys"):
        config_from_dict({**raw, "losses": [{"name": "x", "loss": "tversky", "tuning": {"greedy": {"evry": 2}}}]})
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({**raw, "losses": [{"name": "x", "loss": "tversky", "tuning": {"greedyy": {}}}]})


def test_the_readme_tuning_example_is_a_valid_config_and_typos_fail_at_load():
    import re
    import tomllib
    from pathlib import Path

    from spineloss.experiment import config_from_dict
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme[readme.index("### Changing a loss while training"):], re.S).group(1)
    config = config_from_dict({"data": {"path": "x"}, **tomllib.loads(block)})
    specs = {s.name: s.tuning_spec() for s in config.losses}
    assert specs["tversky_g"].greedy["parameters"] == ["alpha", "beta"]
    assert specs["boundary_r"].weighting["scheme"] == "rebalance"
    with pytest.raises(ValueError, match="dice_ce_sa' tuning.weighting"):
        config_from_dict({"data": {"path": "x"}, "losses": [
            {"name": "dice_ce_sa", "loss": {"dice": 1.0, "ce": 1.0},
             "tuning": {"weighting": {"scheme": "softadapt", "betta": 0.1}}}]})
    with pytest.raises(ValueError, match="has none"):
        config_from_dict({"data": {"path": "x"}, "losses": [
            {"name": "d", "loss": "dice", "tuning": {"weighting": {"scheme": "cov"}}}]})


def test_cov_takes_the_relative_boundary_and_refuses_the_signed_one():
    from spineloss.experiment import config_from_dict

    def cfg(boundary):
        return {"data": {"path": "x"}, "losses": [
            {"name": "b_cov", "loss": {"dice": 1.0, "boundary": boundary},
             "tuning": {"weighting": {"scheme": "cov"}}}]}
    with pytest.raises(ValueError, match="can be negative"):
        config_from_dict(cfg(0.01))
    spec = config_from_dict(cfg({"weight": 0.01, "relative": True})).losses[0]
    assert spec.tuning_spec().weighting["scheme"] == "cov"
