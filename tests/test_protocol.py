"""The evaluation protocol: test folds choose nothing, runs record their config, the grid's outputs.

A tiny phantom grid (2 folds, a 2-level network, a few steps) runs in seconds.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import spineloss.training as training
from spineloss.experiment import config_from_dict, inner_split, make_folds, run_experiment


def _config(**experiment):
    raw = {"experiment": {"name": "p", "folds": 2, "seed": 0, **experiment},
           "data": {"phantom": {"region": "lumbar", "cases": 6, "shape": [32, 32, 24], "seed": 0},
                    "label_mode": "binary"},
           "model": {"channels": [4, 8]},
           "training": {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 2, "val_every": 1},
           "augment": {"p_affine": 0.0, "p_noise": 0.0},
           "losses": ["dice", "ce"]}
    return config_from_dict(raw)


@pytest.mark.parametrize("n", [2, 5, 16, 30])
def test_inner_split_is_seeded_and_inside_the_training_cases(n):
    ids = [f"c{i:02d}" for i in range(n)]
    for k, (train, test) in enumerate(make_folds(ids + [f"t{i}" for i in range(3)], 3, seed=1)):
        fit, inner = inner_split(train, 0.2, seed=1, fold=k)
        assert sorted(fit + inner) == sorted(train)
        assert not set(inner) & set(test) and not set(inner) & set(fit)
        assert 1 <= len(inner) <= len(train) - 1
        assert (fit, inner) == inner_split(list(reversed(train)), 0.2, seed=1, fold=k)
    assert inner_split(ids, 0.2, 0, 0) != inner_split(ids, 0.2, 0, 1) or n == 2
    with pytest.raises(ValueError, match="selection = \"last\""):
        inner_split(ids[:1], 0.2, 0, 0)


def test_no_test_case_reaches_checkpoint_selection(tmp_path, monkeypatch):
    seen: list[list[str]] = []
    real = training.selection_dice

    def spy(model, cases, *args, **kwargs):
        seen.append([c.case_id for c in cases])
        return real(model, cases, *args, **kwargs)

    monkeypatch.setattr(training, "selection_dice", spy)
    config = _config(selection="inner", inner_val_fraction=0.34)
    run_experiment(config, tmp_path / "inner", progress=False, pictures=False)
    folds = json.loads((tmp_path / "inner" / "folds.json").read_text())
    all_test = {c for f in folds for c in f["test"]}
    assert len(seen) == 2 * 2 * 2  # losses x folds x epochs (val_every = 1)
    for fold in folds:
        assert fold["inner_val"] and not set(fold["inner_val"]) & set(fold["test"])
        assert not set(fold["inner_val"]) & set(fold["train"])
    inner_sets = [set(f["inner_val"]) for f in folds]
    for ids in seen:
        assert set(ids) in inner_sets
    for loss in ("dice", "ce"):
        for k, fold in enumerate(folds):
            m = json.loads((tmp_path / "inner" / loss / f"fold{k}" / "metrics.json").read_text())
            assert sorted(m["cases"]) == sorted(fold["test"]) == sorted(m["test_cases"])
            assert m["selection"]["rule"] == "best_inner_val_dice"
            assert m["selection"]["cases"] == fold["inner_val"]
            assert "inner-validation" in m["protocol"]
            assert not set(m["selection"]["cases"]) & all_test & set(fold["test"])

    seen.clear()
    run_experiment(_config(selection="last"), tmp_path / "last", progress=False, pictures=False)
    assert seen == []  # no selection at all: the last epoch is scored
    m = json.loads((tmp_path / "last" / "dice" / "fold0" / "metrics.json").read_text())
    assert m["selection"] == {"rule": "last_epoch", "cases": [], "epoch": 2}
    assert "no selection" in (tmp_path / "last" / "summary.md").read_text()


def test_grid_writes_cases_stats_pictures_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    table = run_experiment(_config(), out, progress=False)
    folds = json.loads((out / "folds.json").read_text())
    assert "dice" in table and "Checkpoint: no selection" in table
    for loss in ("dice", "ce"):
        for k, fold in enumerate(folds):
            run = out / loss / f"fold{k}"
            with open(run / "cases.csv") as f:
                rows = list(csv.DictReader(f))
            metrics = json.loads((run / "metrics.json").read_text())
            assert [r["case"] for r in rows] == sorted(fold["test"])
            for r in rows:
                for key in ("dice_1", "dice_foreground", "dice_mean", "hd_1", "hd95_foreground", "assd_mean",
                            "accuracy_1", "f2_1", "iou_1", "precision_1", "recall_1"):
                    assert float(r[key]) == pytest.approx(
                        metrics["cases"][r["case"]][key.rsplit("_", 1)[1]][key.rsplit("_", 1)[0]], nan_ok=True)
            assert metrics["run_config"]["training.epochs"] == 2
            assert metrics["config"]["training"]["epochs"] == 2 and metrics["config"]["losses"]
            assert metrics["environment"]["torch"]
            assert sorted(p.name for p in (run / "predictions").iterdir()) == [f"{c}.nii.gz" for c in fold["test"]]
        pictures = sorted(p.name for p in (out / loss / "pictures").iterdir())
        assert len(pictures) == 2 and pictures[0].startswith("best_") and pictures[1].startswith("worst_")
    with open(out / "stats.csv") as f:
        stats = list(csv.DictReader(f))
    assert {(r["metric"], r["loss"]) for r in stats} in ({("dice", "ce"), ("hd", "ce")}, {("dice", "dice"), ("hd", "dice")},
                                                          {("dice", "ce"), ("hd", "dice")}, {("dice", "dice"), ("hd", "ce")})
    assert all(int(r["n"]) + int(r["n_nan"]) == 6 for r in stats)
    summary = (out / "summary.md").read_text()
    assert "test cases" in summary and "Wilcoxon" in summary and "Holm" in summary
    assert json.loads((out / "experiment.json").read_text())["protocol"].startswith("Each case is scored once")


def test_changed_config_is_refused_with_what_changed_and_force_reruns(tmp_path):
    out = tmp_path / "run"
    run_experiment(_config(), out, progress=False, pictures=False)
    before = (out / "dice" / "fold0" / "metrics.json").read_text()
    changed = config_from_dict({**_raw_override(epochs=3)})
    with pytest.raises(ValueError, match=r"dice fold 0: training.epochs: 2 -> 3") as err:
        run_experiment(changed, out, progress=False, pictures=False)
    assert "--force" in str(err.value)
    assert (out / "dice" / "fold0" / "metrics.json").read_text() == before  # nothing touched
    run_experiment(changed, out, progress=False, pictures=False, force=True)
    after = (out / "dice" / "fold0" / "metrics.json").read_text()
    assert json.loads(after)["run_config"]["training.epochs"] == 3 and json.loads(after)["selection"]["epoch"] == 3
    # Another loss added, a table setting changed: the finished runs are reused as they are.
    more = config_from_dict({**_raw_override(epochs=3), "losses": ["dice", "ce", "iou"],
                             "experiment": {"name": "p", "folds": 2, "seed": 0, "table_distance": "hd95"}})
    run_experiment(more, out, progress=False, pictures=False)
    assert (out / "dice" / "fold0" / "metrics.json").read_text() == after
    assert (out / "iou" / "fold1" / "metrics.json").exists()


def _raw_override(epochs: int) -> dict:
    return {"experiment": {"name": "p", "folds": 2, "seed": 0},
            "data": {"phantom": {"region": "lumbar", "cases": 6, "shape": [32, 32, 24], "seed": 0},
                     "label_mode": "binary"},
            "model": {"channels": [4, 8]},
            "training": {"epochs": epochs, "iterations_per_epoch": 2, "batch_size": 2, "val_every": 1},
            "augment": {"p_affine": 0.0, "p_noise": 0.0},
            "losses": ["dice", "ce"]}


def test_interrupted_grid_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    from spineloss.progress import GridProgress
    run_experiment(_config(), tmp_path / "full", progress=False, pictures=False)

    calls = {"n": 0}
    real_epoch = GridProgress.epoch

    def interrupt_once(self, epoch, name=None):
        calls["n"] += 1
        if calls["n"] == 3:  # dice fold 1, after its first epoch's checkpoint is on disk
            raise KeyboardInterrupt
        real_epoch(self, epoch, name)

    monkeypatch.setattr(GridProgress, "epoch", interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_config(), tmp_path / "cut", progress=False, pictures=False)
    assert (tmp_path / "cut" / "dice" / "fold1" / "last.pt").exists()
    assert not (tmp_path / "cut" / "dice" / "fold1" / "metrics.json").exists()
    monkeypatch.setattr(GridProgress, "epoch", real_epoch)
    run_experiment(_config(), tmp_path / "cut", progress=False, pictures=False)
    for loss in ("dice", "ce"):
        for k in (0, 1):
            a = json.loads((tmp_path / "full" / loss / f"fold{k}" / "metrics.json").read_text())
            b = json.loads((tmp_path / "cut" / loss / f"fold{k}" / "metrics.json").read_text())
            assert json.dumps(a["cases"], sort_keys=True) == json.dumps(b["cases"], sort_keys=True)
            # the training time counts every session's epochs, not only the resumed call's
            with open(tmp_path / "cut" / loss / f"fold{k}" / "history.csv") as f:
                epochs = sum(float(row["seconds"]) for row in csv.DictReader(f))
            assert b["train_seconds"] == pytest.approx(epochs)


def test_training_sees_only_its_training_cases(tmp_path, monkeypatch):
    seen = []
    real = training.train_fold

    def spy(train_cases, val_cases, *args, **kwargs):
        seen.append(({c.case_id for c in train_cases}, {c.case_id for c in val_cases}))
        return real(train_cases, val_cases, *args, **kwargs)

    monkeypatch.setattr(training, "train_fold", spy)
    run_experiment(_config(selection="inner", inner_val_fraction=0.34), tmp_path / "r", progress=False,
                   pictures=False)
    folds = json.loads((tmp_path / "r" / "folds.json").read_text())
    assert len(seen) == 4
    for (train, inner), fold in zip(seen, folds * 2):
        assert train == set(fold["train"]) and inner == set(fold["inner_val"])
        assert not (train | inner) & set(fold["test"]) and not train & inner
        assert len(train | inner | set(fold["test"])) == 6


def test_pictures_show_the_best_and_the_worst_test_case(tmp_path):
    out = tmp_path / "run"
    run_experiment(_config(), out, progress=False)
    for loss in ("dice", "ce"):
        dice = {}
        for path in (out / loss).glob("fold*/cases.csv"):
            with open(path) as f:
                dice.update({r["case"]: float(r["dice_mean"]) for r in csv.DictReader(f)})
        names = sorted(p.name for p in (out / loss / "pictures").glob("*.png"))
        best = max(sorted(dice), key=lambda c: dice[c])
        worst = min(sorted(dice), key=lambda c: dice[c])
        assert names == sorted([f"best_{best}.png", f"worst_{worst}.png"])
    # runs copied without their predictions (committed results) keep the pictures they have
    import shutil

    from spineloss.data.layout import read_dataset
    from spineloss.experiment import write_pictures
    before = {p.name: p.read_bytes() for p in (out / "dice" / "pictures").glob("*.png")}
    for pred in out.glob("dice/fold*/predictions"):
        shutil.rmtree(pred)
    write_pictures(out, read_dataset(out / "data"), "binary")
    assert {p.name: p.read_bytes() for p in (out / "dice" / "pictures").glob("*.png")} == before


def _raw(folds=2, epochs=1, losses=("dice", "ce"), data=None):
    return {"experiment": {"name": "p", "folds": folds, "seed": 0},
            "data": data or {"phantom": {"region": "lumbar", "cases": 6, "shape": [32, 32, 24], "seed": 0},
                             "label_mode": "binary"},
            "model": {"channels": [4, 8]},
            "training": {"epochs": epochs, "iterations_per_epoch": 1, "batch_size": 2},
            "augment": {"p_affine": 0.0, "p_noise": 0.0},
            "losses": list(losses)}


def test_a_table_never_mixes_configs(tmp_path):
    out = tmp_path / "run"
    run_experiment(config_from_dict(_raw(folds=3)), out, progress=False, pictures=False)
    # a --losses subset with another config: the other loss's runs are stale too
    with pytest.raises(ValueError, match=r"(?s)ce fold 0: training.epochs: 1 -> 2.*dice fold 0"):
        run_experiment(config_from_dict(_raw(folds=3, epochs=2)), out, progress=False, pictures=False,
                       only_losses=["dice"])
    # a loss removed from the config
    with pytest.raises(ValueError, match=r"ce fold 1: not part of this config"):
        run_experiment(config_from_dict(_raw(folds=3, losses=("dice",))), out, progress=False, pictures=False)
    # fewer folds: every split changes; --force deletes what does not belong, fold 2 included
    table = run_experiment(config_from_dict(_raw(folds=2, losses=("dice",))), out, progress=False, pictures=False,
                           force=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name not in ("data", "cache")) == ["dice"]
    assert sorted(p.name for p in (out / "dice").iterdir()) == ["fold0", "fold1"]
    rows = [line.split()[0] for line in table.splitlines()[2:] if line.strip() and not line.startswith("Mean")]
    assert rows == ["dice"]


def test_the_data_are_compared_by_content_not_path(tmp_path):
    import shutil

    import nibabel as nib
    import numpy as np

    from spineloss.data.phantom import write_phantom_dataset
    data = write_phantom_dataset(tmp_path / "d", "lumbar", cases=4, seed=0, shape=(32, 32, 24))
    out = tmp_path / "run"
    raw = _raw(losses=("dice",), data={"path": str(data), "label_mode": "binary"})
    run_experiment(config_from_dict(raw), out, progress=False, pictures=False)
    moved = Path(shutil.copytree(data, tmp_path / "moved"))
    for f in moved.rglob("*.nii.gz"):  # a copy with new modification times
        f.touch()
    run_experiment(config_from_dict({**raw, "data": {"path": str(moved), "label_mode": "binary"}}), out,
                   progress=False, pictures=False)  # reused: same contents
    label = next((moved / "labelsTr").glob("*.nii.gz"))
    img = nib.load(str(label))
    changed = np.asarray(img.dataobj).copy()
    changed[changed > 0] = 0
    nib.save(nib.Nifti1Image(changed, img.affine), str(label))
    with pytest.raises(ValueError, match="data.files: the image or label files differ"):
        run_experiment(config_from_dict({**raw, "data": {"path": str(moved), "label_mode": "binary"}}), out,
                       progress=False, pictures=False)


def test_an_option_added_later_at_its_default_does_not_invalidate_runs():
    from spineloss.experiment import FoldSplit, config_differences, run_config
    split = FoldSplit(0, ("a", "b"), (), ("c",))
    now = run_config(_config(), _config().losses[0], split)
    older = {k: v for k, v in now.items() if k not in ("augment.p_gamma", "postprocess.caudal_bodies")}
    assert config_differences(older, now) == []
    changed = dict(now, **{"augment.p_gamma": 0.5})
    assert config_differences(older, changed) == ["augment.p_gamma: '<absent>' -> 0.5"]
    assert config_differences(now, dict(now, **{"split.test": ["d"]})) == ["split.test: the cases differ"]
