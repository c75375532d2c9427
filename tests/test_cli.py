"""End-to-end through the command line on tiny phantom volumes."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from spineloss.cli import main

TINY = """
[experiment]
name = "tiny"
folds = 2
seed = 0

[data]
path = "{data}"
label_mode = "{mode}"

[preprocess]
target_spacing = [2.0, 2.0, 2.0]

[model]
depth = 2
base_channels = 4
max_channels = 8

[training]
epochs = 1
iterations_per_epoch = 2
batch_size = 2

losses = {losses}
"""


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    assert main(["data", "phantom", "--region", "lumbar", "--cases", "4", "--out", str(out),
                 "--shape", "40", "40", "24", "--seed", "3"]) == 0
    return out


def _config(tmp_path, data, mode="multiclass", losses='["ce", "dice"]'):
    path = tmp_path / "tiny.toml"
    text = TINY.format(data=data, mode=mode, losses=losses)
    # `losses` must come before any table in TOML: move it to the top
    lines = text.splitlines()
    loss_line = [l for l in lines if l.startswith("losses")][0]
    path.write_text(loss_line + "\n" + "\n".join(l for l in lines if l != loss_line))
    return path


def test_phantom_and_check(phantom, capsys):
    assert len(list((phantom / "imagesTr").glob("*.nii.gz"))) == 4
    assert main(["data", "check", str(phantom)]) == 0
    out = capsys.readouterr().out
    assert "4" in out and "cases" in out.lower()


def test_check_names_bad_file(phantom, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(phantom, bad)
    victim = sorted((bad / "labelsTr").glob("*.nii.gz"))[1]
    img = nib.load(str(victim))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 9  # undeclared label
    nib.save(nib.Nifti1Image(data, img.affine), str(victim))
    (bad / "imagesTr" / "extra_999_0000.nii.gz").write_bytes(b"junk")
    rc = main(["data", "check", str(bad)])
    err = capsys.readouterr().err
    assert rc != 0
    assert victim.name in err and "extra_999" in err


def test_experiment_predict_and_restart(phantom, tmp_path, capsys):
    cfg = _config(tmp_path, phantom)
    out = tmp_path / "run"
    assert main(["experiment", str(cfg), "--out", str(out), "--no-progress"]) == 0
    for loss in ("ce", "dice"):
        for k in (0, 1):
            d = out / loss / f"fold{k}"
            assert (d / "history.csv").exists() and (d / "model.pt").exists()
            metrics = json.loads((d / "metrics.json").read_text())
            assert set(metrics["mean"]["mean"]) >= {"accuracy", "dice", "f2", "iou", "precision", "recall", "hd", "hd95", "assd"}
    for ext in ("md", "csv", "tex"):
        assert (out / f"summary.{ext}").exists()
    table = capsys.readouterr().out
    assert "Dice (%)" in table and "Hausdorff" in table
    # a restart runs nothing again
    stamp = (out / "ce" / "fold0" / "metrics.json").stat().st_mtime_ns
    assert main(["experiment", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "done already" in capsys.readouterr().out
    assert (out / "ce" / "fold0" / "metrics.json").stat().st_mtime_ns == stamp
    # predict: same shape and affine as the input
    image = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    seg = tmp_path / "seg.nii.gz"
    assert main(["predict", "--model", str(out / "dice" / "fold0" / "model.pt"), "--input", str(image),
                 "--output", str(seg)]) == 0
    a, b = nib.load(str(image)), nib.load(str(seg))
    assert a.shape == b.shape and np.allclose(a.affine, b.affine)
    assert set(np.unique(np.asarray(b.dataobj))) <= set(range(6))
    # report rewrites the table
    assert main(["report", str(out), "--distance", "hd95"]) == 0
    assert "HD95" in capsys.readouterr().out


def test_binary_mode(phantom, tmp_path):
    cfg = _config(tmp_path, phantom, mode="binary", losses='["dice_ce"]')
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "bin"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "bin" / "dice_ce" / "fold0" / "metrics.json").read_text())
    assert set(m["mean"]) == {"1", "foreground", "mean"}


def test_foreground_network_with_levels_counted(phantom, tmp_path, monkeypatch):
    """train_label_mode = "binary" + number_levels: a 2-class network, L1-L5 output and metrics."""
    import torch

    from spineloss.postprocess import PostprocessConfig

    calls = []
    original = PostprocessConfig.apply

    def recording_apply(self, label_map, affine, spacing):
        calls.append((self.caudal_bodies, self.number_levels, label_map.shape))
        return original(self, label_map, affine, spacing)

    monkeypatch.setattr(PostprocessConfig, "apply", recording_apply)

    cfg = _config(tmp_path, phantom, losses='["dice_ce"]')
    cfg.write_text(cfg.read_text().replace('label_mode = "multiclass"', 'label_mode = "multiclass"\n'
                                           'train_label_mode = "binary"')
                   + "\n[postprocess]\ncaudal_bodies = 5\nnumber_levels = true\n")
    out = tmp_path / "levels"
    assert main(["experiment", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert len(calls) == 4 and all(c[:2] == (5, True) for c in calls)  # every validation case, both folds
    m = json.loads((out / "dice_ce" / "fold0" / "metrics.json").read_text())
    assert set(m["mean"]) == {"1", "2", "3", "4", "5", "foreground", "mean"}
    ckpt = torch.load(out / "dice_ce" / "fold0" / "model.pt", weights_only=False)
    assert ckpt["model"]["out_channels"] == 2 and ckpt["label_mode"] == "multiclass"
    assert ckpt["inference"]["postprocess"] == {"caudal_bodies": 5, "number_levels": True}
    image = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    seg = tmp_path / "levels.nii.gz"
    assert main(["predict", "--model", str(out / "dice_ce" / "fold0" / "model.pt"), "--input", str(image),
                 "--output", str(seg)]) == 0
    assert set(np.unique(np.asarray(nib.load(str(seg)).dataobj))) <= set(range(6))
    assert len(calls) == 5 and calls[-1][2] == nib.load(str(image)).shape  # predict applied it too
    # without the numbering the config is refused
    cfg.write_text(cfg.read_text().replace("number_levels = true", "number_levels = false"))
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "refused"), "--no-progress"]) == 2


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["experiment", str(tmp_path / "missing.toml")]) == 2
    assert "no such config" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none.pt"), "--input", "x.nii.gz", "--output", "y.nii.gz"]) == 2
    cfg = _config(tmp_path, tmp_path / "nodata")
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "r")]) == 2


def test_demo_quick_console_script(tmp_path):
    """`spineloss demo --quick` through the installed console script (the smoke test of `make run`)."""
    exe = sys.executable.replace("python", "spineloss")
    cmd = [exe] if __import__("os").path.exists(exe) else [sys.executable, "-m", "spineloss.cli"]
    proc = subprocess.run(cmd + ["demo", "--quick", "--out", str(tmp_path / "dq"), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Dice (%)" in proc.stdout and (tmp_path / "dq" / "summary.md").exists()
    assert len(list((tmp_path / "dq").glob("*/fold*/metrics.json"))) == 9
