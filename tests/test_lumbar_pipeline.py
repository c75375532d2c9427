"""The lumbar study's config end to end on two real cases (read in place) with a tiny network.

Two outer folds of one case each: every output a grid writes, the refusal of a changed config, the
resume after an interruption, and ``spineloss predict`` reproducing the Dice the experiment recorded.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spineloss.cli import main
from spineloss.data.layout import to_label_mode
from spineloss.experiment import load_config, run_experiment
from spineloss.metrics import compute_metrics
from spineloss.progress import GridProgress
from spineloss.training import ModelConfig

REPO = Path(__file__).resolve().parents[1]
CASES = ("lumbar_01", "lumbar_02")


@pytest.fixture
def two_cases(lumbar_dir, tmp_path) -> Path:
    """An nnU-Net folder whose files are links to two cases of the real data set."""
    root = tmp_path / "two"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in CASES:
        (root / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(lumbar_dir / "imagesTr" / f"{case}_0000.nii.gz")
        (root / "labelsTr" / f"{case}.nii.gz").symlink_to(lumbar_dir / "labelsTr" / f"{case}.nii.gz")
    meta = json.loads((lumbar_dir / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": len(CASES)}))
    return root


def _tiny(config, data: Path, epochs: int = 2):
    return dataclasses.replace(
        config, folds=2, losses=tuple(s for s in config.losses if s.name in ("dice", "boundary")),
        data=dataclasses.replace(config.data, path=str(data)),
        model=ModelConfig(channels=(4, 8), stem_stride=2),
        training=dataclasses.replace(config.training, epochs=epochs, iterations_per_epoch=2, batch_size=1,
                                     patch_size=(48, 48, 32), num_workers=0, val_every=1))


def test_lumbar_config_on_two_real_cases(two_cases, tmp_path, monkeypatch):
    config = _tiny(load_config(REPO / "configs" / "lumbar_baseline.toml"), two_cases)
    out = tmp_path / "run"

    # interrupted after the first epoch of the second run, then resumed
    calls = {"n": 0}
    real_epoch = GridProgress.epoch

    def interrupt(self, epoch, name=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_epoch(self, epoch, name)

    monkeypatch.setattr(GridProgress, "epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, progress=False)
    monkeypatch.setattr(GridProgress, "epoch", real_epoch)
    assert (out / "dice" / "fold1" / "last.pt").exists() and not (out / "dice" / "fold1" / "metrics.json").exists()
    table = run_experiment(config, out, progress=False)

    folds = json.loads((out / "folds.json").read_text())
    assert sorted(c for f in folds for c in f["test"]) == list(CASES)
    assert "dice" in table and "boundary" in table and "Hausdorff" in table
    for loss in ("dice", "boundary"):
        for k, fold in enumerate(folds):
            run = out / loss / f"fold{k}"
            with open(run / "cases.csv") as f:
                rows = list(csv.DictReader(f))
            assert [r["case"] for r in rows] == fold["test"]
            assert {f"dice_{lab}" for lab in (1, "foreground", "mean")} <= set(rows[0])  # binary: the study's task
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["selection"]["rule"] == "last_epoch" and metrics["selection"]["epoch"] == 2
        assert len(list((out / loss / "pictures").glob("*.png"))) == 2
    assert (out / "stats.csv").read_text().startswith("metric,label,loss,best")
    assert "Each case is scored once" in (out / "summary.md").read_text()

    # the resumed run has the numbers of an uninterrupted one
    straight = run_experiment(config, tmp_path / "straight", progress=False, pictures=False, only_losses=["dice"])
    assert "dice" in straight
    for k in (0, 1):
        a = json.loads((out / "dice" / f"fold{k}" / "metrics.json").read_text())["cases"]
        b = json.loads((tmp_path / "straight" / "dice" / f"fold{k}" / "metrics.json").read_text())["cases"]
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    # a changed config is refused, naming what changed
    changed = dataclasses.replace(config, augment=dataclasses.replace(config.augment, p_noise=0.5))
    with pytest.raises(ValueError, match=r"augment.p_noise: 0.3 -> 0.5"):
        run_experiment(changed, out, progress=False)

    # spineloss predict reproduces the Dice the experiment recorded for a test case
    case = folds[0]["test"][0]
    seg = tmp_path / "seg.nii.gz"
    assert main(["predict", "--model", str(out / "dice" / "fold0" / "model.pt"), "--input",
                 str(two_cases / "imagesTr" / f"{case}_0000.nii.gz"), "--output", str(seg)]) == 0
    reference = np.asarray(nib.load(str(two_cases / "labelsTr" / f"{case}.nii.gz")).dataobj)
    image = nib.load(str(seg))
    assert config.data.label_mode == "binary"
    predicted = compute_metrics(np.asarray(image.dataobj), to_label_mode(np.rint(reference).astype(np.int64),
                                                                         "binary"),
                                spacing=tuple(float(v) for v in image.header.get_zooms()[:3]), labels=[1])
    recorded = json.loads((out / "dice" / "fold0" / "metrics.json").read_text())["cases"][case]
    for label in ("1", "mean"):
        key = label if label == "mean" else int(label)
        assert abs(predicted[key]["dice"] - recorded[label]["dice"]) <= 1e-6
        assert abs(predicted[key]["hd"] - recorded[label]["hd"]) <= 1e-6 or np.isnan(recorded[label]["hd"])
