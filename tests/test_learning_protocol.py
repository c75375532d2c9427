"""Learned losses and the evaluation protocol: the cases that chose a learned loss are never its test cases."""
import json
from types import SimpleNamespace

import pytest
import torch

from spineloss.data.layout import check_dataset
from spineloss.data.phantom import write_phantom_dataset
from spineloss.experiment import config_from_dict, data_fingerprints, fold_splits, resolve_data, run_experiment
from spineloss.learning.format import document_of, save_learned_loss
from spineloss.learning.protocol import check_learned_losses, leaked_cases
from spineloss.learning.taylor import TaylorLoss


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


PHANTOM = {"region": "lumbar", "cases": 6, "shape": [32, 32, 24], "seed": 0}


def _config(losses):
    return config_from_dict({
        "experiment": {"name": "p", "folds": 2, "seed": 0},
        "data": {"phantom": dict(PHANTOM), "label_mode": "binary"},
        "model": {"channels": [4, 8]},
        "training": {"epochs": 1, "iterations_per_epoch": 1, "batch_size": 1, "threads": 1, "amp": "off"},
        "augment": {"p_affine": 0.0, "p_noise": 0.0},
        "losses": losses})


def _learned_file(path, fit, val, fingerprints):
    """A hand-written learned loss (Dice + CE of the Taylor family) said to be found on ``fit``/``val``."""
    source = {"method": "hand", "task": {"fit_cases": list(fit), "val_cases": list(val),
                                         "fingerprints": dict(fingerprints) if fingerprints is not None else None}}
    if fingerprints is None:
        del source["task"]["fingerprints"]
    return save_learned_loss(path, TaylorLoss({"ce": 1.0, "dice": 1.0}), source=source)


def _rows(path):
    return {"plain": f"learned:{path}",
            "sum": {"name": "mix", "loss": {"dice": 1.0, f"learned:{path}": 1.0}},
            "sum_weight": {"name": "mixw", "loss": {"dice": 1.0, f"learned:{path}": {"weight": 0.5}}}}


@pytest.mark.parametrize("form", ["plain", "sum", "sum_weight"])
def test_a_loss_chosen_on_test_cases_of_the_same_data_is_refused(tmp_path, form):
    out = tmp_path / "run"
    probe = _config(["dice"])
    info = check_dataset(resolve_data(probe, out))        # the phantom the experiment will read
    fps = data_fingerprints(info.cases)
    test0 = list(fold_splits(probe, list(fps))[0].test)
    path = tmp_path / "search" / "learned_loss.json"
    _learned_file(path, test0[:2], test0[2:3], {c: fps[c] for c in test0})
    config = _config(["dice", _rows(path)[form]])
    row = config.losses[1].name
    with pytest.raises(ValueError, match=rf"row '{row}' uses .*learned_loss.json.*same image and label files: "
                                         rf"fold 0 tests {test0[0]} \(fit\), {test0[1]} \(fit\), {test0[2]} \(val\)\n"
                                         r"(.|\n)*data outside this experiment") as err:
        run_experiment(config, out, progress=False, pictures=False)
    assert "fold 1" not in str(err.value)
    assert not (out / row).exists() and not (out / "dice").exists()      # refused before any run


def test_spineloss_train_refuses_it_too(tmp_path, capsys):
    """One run of the grid trained alone (``spineloss train``) goes through the grid's planning and checks."""
    from spineloss.cli import main
    out = tmp_path / "run"
    probe = _config(["dice"])
    fps = data_fingerprints(check_dataset(resolve_data(probe, out)).cases)
    test0 = list(fold_splits(probe, list(fps))[0].test)
    path = tmp_path / "search" / "learned_loss.json"
    _learned_file(path, test0[:2], test0[2:3], {c: fps[c] for c in test0})
    config_path = tmp_path / "grid.toml"
    config_path.write_text(f"""losses = ["dice", "learned:{path}"]
[experiment]
name = "p"
folds = 2
seed = 0
[data]
phantom = {{ region = "lumbar", cases = 6, shape = [32, 32, 24], seed = 0 }}
label_mode = "binary"
[model]
channels = [4, 8]
[training]
epochs = 1
iterations_per_epoch = 1
batch_size = 1
threads = 1
amp = "off"
""")
    for fold in ("1", "all"):                                          # fold 1 is clean, but the grid is not
        assert main(["train", str(config_path), "--loss", "dice", "--fold", fold, "--out", str(out)]) == 2
        assert "same image and label files: fold 0 tests" in capsys.readouterr().err
    assert not (out / "dice").exists()


def test_a_loss_learned_on_other_data_with_the_same_ids_runs(tmp_path):
    out = tmp_path / "run"
    probe = _config(["dice"])
    info = check_dataset(resolve_data(probe, out))
    other = check_dataset(write_phantom_dataset(tmp_path / "other", region="lumbar", cases=6, shape=(32, 32, 24),
                                                seed=1))
    assert sorted(c.case_id for c in other.cases) == sorted(c.case_id for c in info.cases)   # same ids ...
    theirs = data_fingerprints(other.cases)
    assert theirs != data_fingerprints(info.cases)                                            # ... other data
    test0 = list(fold_splits(probe, list(theirs))[0].test)
    path = tmp_path / "search" / "learned_loss.json"
    _learned_file(path, test0[:2], test0[2:3], {c: theirs[c] for c in test0})
    config = _config([f"learned:{path}", _rows(path)["sum"]])
    run_experiment(config, out, progress=False, pictures=False)
    for row in ("learned_search", "mix"):
        for fold in (0, 1):
            assert (out / row / f"fold{fold}" / "metrics.json").exists()


def test_which_cases_count():
    fps = {"a": "1", "b": "2", "c": "3", "d": "4"}
    splits = [SimpleNamespace(fold=0, test=("a", "b")), SimpleNamespace(fold=1, test=("c", "d"))]
    doc = document_of(TaylorLoss({"ce": 1.0}))
    same = {**doc, "source": {"task": {"fit_cases": ["a"], "val_cases": ["c"], "fingerprints": {"a": "1", "c": "x"}}}}
    assert leaked_cases(same, ("a", "b"), fps) == ["a (fit)"]
    assert leaked_cases(same, ("c", "d"), fps) == []                   # same id, other file: another case
    by_id = {**doc, "source": {"task": {"fit_cases": ["a"], "val_cases": ["c"]}}}
    assert leaked_cases(by_id, ("c", "d"), fps) == ["c (val)"]         # no fingerprints recorded: ids decide
    assert leaked_cases(doc, ("a", "b"), fps) == []                    # no cases recorded (a hand-written file)


def test_check_reads_the_files_of_every_row(tmp_path):
    fps = {"a": "1", "b": "2"}
    splits = [SimpleNamespace(fold=0, test=("a",)), SimpleNamespace(fold=1, test=("b",))]
    clean = _learned_file(tmp_path / "clean.json", ["a"], [], {"a": "elsewhere"})
    by_id = _learned_file(tmp_path / "old.json", ["b"], [], None)
    spec = SimpleNamespace
    check_learned_losses([spec(name="clean", loss=f"learned:{clean}", params={}),
                          spec(name="dice", loss="dice", params={})], splits, fps)
    with pytest.raises(ValueError, match=r"row 'ws' uses .*old.json.*by id \(the file records no fingerprints"
                                         r".*fold 1 tests b \(fit\)"):
        check_learned_losses([spec(name="ws", loss="weighted_sum",
                                   params={"terms": {"dice": 1.0, f"learned:{by_id}": 1.0}})], splits, fps)
    assert json.loads(clean.read_text())["source"]["task"]["fingerprints"] == {"a": "elsewhere"}


def test_a_learned_loss_is_screened_again_for_the_experiments_classes(tmp_path):
    from spineloss.learning.expression import ExpressionLoss
    fps = {"a": "1"}
    splits = [SimpleNamespace(fold=0, test=("a",))]
    spec = SimpleNamespace
    good = _learned_file(tmp_path / "good.json", [], [], {})
    for C in (2, 6):
        check_learned_losses([spec(name="good", loss=f"learned:{good}", params={})], splits, fps, num_classes=C)
    # maximised, not minimised, by the perfect prediction: a hand-edited file the search would have rejected
    bad = save_learned_loss(tmp_path / "bad.json", ExpressionLoss("neg(square(sub(p, g)))", {}))
    rows = [spec(name="upside_down", loss=f"learned:{bad}", params={})]
    check_learned_losses(rows, splits, fps)  # without a class count only the protocol is checked
    with pytest.raises(ValueError, match=r"row 'upside_down' uses .*bad.json, which fails the screening for 6 "
                                         r"output channels: not minimised by the perfect prediction"):
        check_learned_losses(rows, splits, fps, num_classes=6)
