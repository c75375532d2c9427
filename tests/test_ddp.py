"""``spineloss train``: one run of a grid or the final model on all cases, and the same command under
``torchrun`` with DistributedDataParallel (2 gloo processes on the CPU) matching one process."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spineloss.cli import main

CONFIG = """
losses = ["dice", "ce"]
[experiment]
name = "ddp"
folds = 2
seed = 0
[data]
phantom = { region = "lumbar", cases = 6, shape = [32, 32, 24], seed = 0 }
label_mode = "binary"
[model]
channels = [4, 8]
[training]
epochs = 2
iterations_per_epoch = 3
batch_size = 2
amp = "off"          # fp32: the two sides differ only in the order of floating-point sums
threads = 1
[augment]
p_affine = 0.0
p_noise = 0.0
"""

#: What "matches" means: the per-epoch training loss within this relative difference, and each test case's
#: Dice within this absolute difference (the gradient all-reduce sums in another order than one process).
LOSS_RTOL = 1e-5
DICE_ATOL = 1e-3


def _history(run: Path) -> list[float]:
    with open(run / "history.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


def _dice(run: Path) -> dict:
    cases = json.loads((run / "metrics.json").read_text())["cases"]
    return {k: v["mean"]["dice"] for k, v in cases.items()}


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(CONFIG)
    assert main(["train", str(tmp_path / "c.toml"), "--loss", "dice", "--fold", "0", "--out",
                 str(tmp_path / "one")]) == 0
    assert "scores:" in capsys.readouterr().out
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "spineloss.cli", "train",
                           str(tmp_path / "c.toml"), "--loss", "dice", "--fold", "0", "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model:") == 1                      # rank 0 speaks, and writes
    assert "Grad strides" not in done.stderr
    one, two = tmp_path / "one" / "dice" / "fold0", tmp_path / "two" / "dice" / "fold0"
    assert _history(two) == pytest.approx(_history(one), rel=LOSS_RTOL)
    d1, d2 = _dice(one), _dice(two)
    assert d1.keys() == d2.keys() and len(d1) == 3
    assert all(abs(d1[k] - d2[k]) <= DICE_ATOL for k in d1)
    # the DDP model is a normal checkpoint: spineloss predict gives the prediction the run scored
    import nibabel as nib
    import numpy as np
    case = sorted(d1)[0]
    image = next((tmp_path / "two" / "data" / "imagesTr").glob(f"{case}_0000.nii*"))
    assert main(["predict", "--model", str(two / "model.pt"), "--input", str(image), "--output",
                 str(tmp_path / "seg.nii.gz")]) == 0
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "seg.nii.gz")).dataobj),
                          np.asarray(nib.load(str(two / "predictions" / f"{case}.nii.gz")).dataobj))


def test_train_fold_all_trains_on_every_case_and_scores_nothing(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(CONFIG.replace("epochs = 2", "epochs = 1"))
    assert main(["train", str(tmp_path / "c.toml"), "--loss", "ce", "--fold", "all", "--out", str(tmp_path / "r")]) == 0
    run = tmp_path / "r" / "ce" / "all"
    assert "model:" in capsys.readouterr().out and (run / "model.pt").exists()
    assert not (run / "metrics.json").exists()
    split = json.loads((run / "run.json").read_text())["run_config"]
    assert len(json.loads(split["split.train"]) if isinstance(split["split.train"], str) else split["split.train"]) == 6
    # a changed config is not resumed silently
    (tmp_path / "c.toml").write_text(CONFIG.replace("epochs = 2", "epochs = 1").replace("batch_size = 2",
                                                                                       "batch_size = 1"))
    assert main(["train", str(tmp_path / "c.toml"), "--loss", "ce", "--fold", "all", "--out", str(tmp_path / "r")]) == 2
    assert "trained with another config" in capsys.readouterr().err


def test_train_errors_name_what_to_fix(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(CONFIG)
    assert main(["train", str(tmp_path / "c.toml"), "--loss", "nope", "--fold", "0"]) == 2
    assert "--loss 'nope'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "c.toml"), "--loss", "dice", "--fold", "7", "--out", str(tmp_path)]) == 2
    assert "folds 0..1" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "c.toml"), "--loss", "dice", "--fold", "0", "--ddp"]) == 2
    assert "torchrun" in capsys.readouterr().err
