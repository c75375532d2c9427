"""End-to-end through the command line on tiny phantom volumes."""
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict

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


def test_phantom_and_check(phantom, tmp_path, capsys):
    """`data phantom` writes the N cases asked for, with the shape asked for; `data check` counts them."""
    images = sorted((phantom / "imagesTr").glob("*.nii.gz"))
    labels = sorted((phantom / "labelsTr").glob("*.nii.gz"))
    assert [p.name for p in images] == [f"lumbar_{i:03d}_0000.nii.gz" for i in range(4)]
    assert [p.name for p in labels] == [f"lumbar_{i:03d}.nii.gz" for i in range(4)]
    assert json.loads((phantom / "dataset.json").read_text())["numTraining"] == 4
    for image, label in zip(images, labels):
        a, b = nib.load(str(image)), nib.load(str(label))
        assert a.shape == b.shape == (40, 40, 24) and np.allclose(a.affine, b.affine)
        assert set(np.unique(np.asarray(b.dataobj)).tolist()) == {0, 1, 2, 3, 4, 5}  # L1..L5 in every case
    assert main(["data", "check", str(phantom)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Cases: 4\b", out, re.M) and "40x40x24: 4 cases" in out
    assert "OK: 4 cases passed all checks." in out
    # another count and shape (cervical), through the same two commands
    other = tmp_path / "cervical"
    assert main(["data", "phantom", "--region", "cervical", "--cases", "2", "--out", str(other),
                 "--shape", "32", "36", "26"]) == 0
    assert f"wrote 2 cervical phantom cases to {other}" in capsys.readouterr().out
    shapes = [nib.load(str(p)).shape for p in sorted((other / "imagesTr").glob("*.nii.gz"))]
    assert shapes == [(32, 36, 26)] * 2
    assert main(["data", "check", str(other)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Cases: 2\b", out, re.M) and "OK: 2 cases passed all checks." in out


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
    assert rc == 2  # an error in what the user gave: status 2, as the README documents
    assert victim.name in err and "extra_999" in err
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _untrained_model_file(path, seed=0):
    """A model.pt as training writes it (metadata + weights), without training: seeded random weights
    whose arg-max varies over the image, so the comparison below has several labels to get right."""
    import torch

    from spineloss.data.preprocess import PreprocessConfig
    from spineloss.model import build_model
    from spineloss.training import ModelConfig, atomic_save, checkpoint_meta

    args = dict(in_channels=1, out_channels=6, **asdict(ModelConfig(depth=2, base_channels=4, max_channels=8)))
    torch.manual_seed(seed)
    model = build_model(**args)
    meta = checkpoint_meta(args, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)), "multiclass",
                           {i: f"L{i}" for i in range(1, 6)}, patch_size=(16, 16, 16))
    atomic_save({**meta, "model_state": model.state_dict(), "epoch": 0, "val_dice": 0.0}, path)
    return path


def _expected_prediction(model_path, image_path):
    from spineloss.predict import predict_array
    from spineloss.training import load_checkpoint

    model, ckpt = load_checkpoint(model_path)
    img = nib.load(str(image_path))
    return predict_array(model, ckpt, np.asarray(img.dataobj, dtype=np.float32)[None], img.affine)


def test_predict_equals_predict_array(phantom, tmp_path, capsys):
    model_path = _untrained_model_file(tmp_path / "model.pt")
    image = sorted((phantom / "imagesTr").glob("*.nii.gz"))[1]
    seg = tmp_path / "out" / "seg.nii.gz"
    assert main(["predict", "--model", str(model_path), "--input", str(image), "--output", str(seg),
                 "--device", "cpu"]) == 0
    assert f"wrote {seg}" in capsys.readouterr().out
    a, b = nib.load(str(image)), nib.load(str(seg))
    assert b.shape == a.shape and np.allclose(b.affine, a.affine, atol=1e-6)
    got = np.asarray(b.dataobj)
    expected = _expected_prediction(model_path, image)
    assert expected.shape == a.shape and len(np.unique(expected)) >= 2
    np.testing.assert_array_equal(got, expected)
    # another model predicts other labels, and predict writes those
    other = _untrained_model_file(tmp_path / "other.pt", seed=1)
    assert main(["predict", "--model", str(other), "--input", str(image), "--output", str(seg)]) == 0
    assert not np.array_equal(_expected_prediction(other, image), expected)
    np.testing.assert_array_equal(np.asarray(nib.load(str(seg)).dataobj), _expected_prediction(other, image))


def test_predict_device_option(phantom, tmp_path, capsys):
    import torch

    model_path = _untrained_model_file(tmp_path / "model.pt")
    image = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    with pytest.raises(SystemExit):  # argparse: not one of auto, cpu, cuda
        main(["predict", "--model", str(model_path), "--input", str(image), "--output", "x.nii.gz",
              "--device", "tpu"])
    assert "--device" in capsys.readouterr().err
    seg = tmp_path / "seg.nii.gz"
    rc = main(["predict", "--model", str(model_path), "--input", str(image), "--output", str(seg),
               "--device", "cuda"])
    if torch.cuda.is_available():
        assert rc == 0
        got = np.asarray(nib.load(str(seg)).dataobj)
        # the GPU's convolutions may differ in the last bits: nearly every voxel agrees with the CPU
        assert (got == _expected_prediction(model_path, image)).mean() > 0.99
    else:
        assert rc == 2 and not seg.exists()
        assert "no CUDA device" in capsys.readouterr().err


class _WritesMarker:
    """Unpickling this runs ``touch MARKER`` (what a malicious model file could do instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_predict_refuses_a_model_file_with_python_objects(phantom, tmp_path, capsys):
    import torch

    good = _untrained_model_file(tmp_path / "good.pt")
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({**torch.load(good, weights_only=True), "val_dice": _WritesMarker(marker)}, evil)
    image = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    seg = tmp_path / "seg.nii.gz"
    assert main(["predict", "--model", str(evil), "--input", str(image), "--output", str(seg)]) == 2
    err = capsys.readouterr().err
    assert f"spineloss: error: {evil}: refused to load: the file contains Python objects other than tensors" in err
    assert "posix.system" in err and "only load checkpoints you trust" in err.lower()
    assert not marker.exists() and not seg.exists()
    # a damaged file is reported as unreadable, not as malicious
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:200])
    assert main(["predict", "--model", str(broken), "--input", str(image), "--output", str(seg)]) == 2
    err = capsys.readouterr().err
    assert "cannot read the checkpoint" in err and "refused" not in err


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
    assert "done already" in capsys.readouterr().err  # the progress view writes to stderr
    assert (out / "ce" / "fold0" / "metrics.json").stat().st_mtime_ns == stamp
    # predict: same shape and affine as the input
    image = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    seg = tmp_path / "seg.nii.gz"
    assert main(["predict", "--model", str(out / "dice" / "fold0" / "model.pt"), "--input", str(image),
                 "--output", str(seg)]) == 0
    a, b = nib.load(str(image)), nib.load(str(seg))
    assert a.shape == b.shape and np.allclose(a.affine, b.affine)
    np.testing.assert_array_equal(np.asarray(b.dataobj),
                                  _expected_prediction(out / "dice" / "fold0" / "model.pt", image))
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
    original = PostprocessConfig.apply_with_flags

    def recording_apply(self, label_map, affine, spacing, probabilities=None):
        calls.append((self.caudal_bodies, self.number_levels, label_map.shape))
        return original(self, label_map, affine, spacing, probabilities)

    monkeypatch.setattr(PostprocessConfig, "apply_with_flags", recording_apply)

    cfg = _config(tmp_path, phantom, losses='["dice_ce"]')
    cfg.write_text(cfg.read_text().replace('label_mode = "multiclass"', 'label_mode = "multiclass"\n'
                                           'train_label_mode = "binary"')
                   + "\n[postprocess]\ncaudal_bodies = 5\nnumber_levels = true\n")
    out = tmp_path / "levels"
    assert main(["experiment", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert len(calls) == 4 and all(c[:2] == (5, True) for c in calls)  # every test case, both folds
    m = json.loads((out / "dice_ce" / "fold0" / "metrics.json").read_text())
    assert set(m["mean"]) == {"1", "2", "3", "4", "5", "foreground", "mean"}
    ckpt = torch.load(out / "dice_ce" / "fold0" / "model.pt", weights_only=True)  # plain data only
    assert ckpt["model"]["out_channels"] == 2 and ckpt["label_mode"] == "multiclass"
    assert ckpt["inference"]["postprocess"] == {"caudal_bodies": 5, "number_levels": True, "levels": "none"}
    image = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    seg = tmp_path / "levels.nii.gz"
    assert main(["predict", "--model", str(out / "dice_ce" / "fold0" / "model.pt"), "--input", str(image),
                 "--output", str(seg)]) == 0
    assert len(calls) == 5 and calls[-1][2] == nib.load(str(image)).shape  # predict applied it too
    np.testing.assert_array_equal(np.asarray(nib.load(str(seg)).dataobj),  # the post-processed labels
                                  _expected_prediction(out / "dice_ce" / "fold0" / "model.pt", image))
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
