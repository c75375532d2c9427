"""Shared fixtures: tiny synthetic volumes and the real lumbar data set (read in place)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LUMBAR = Path(os.environ.get("SPINELOSS_LUMBAR", REPO.parent / "shared" / "data" / "lumbar"))


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def lumbar_dir() -> Path:
    if not (LUMBAR / "dataset.json").exists():
        pytest.skip(f"real lumbar data not found at {LUMBAR}")
    return LUMBAR


def write_nnunet(root: Path, images: list[np.ndarray], labels: list[np.ndarray],
                 spacing=(1.0, 1.0, 1.0), label_names=None) -> Path:
    """A tiny nnU-Net v2 data set for tests."""
    import json

    import nibabel as nib
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag(list(spacing) + [1.0])
    for i, (im, lb) in enumerate(zip(images, labels)):
        nib.save(nib.Nifti1Image(im.astype(np.float32), affine), str(root / "imagesTr" / f"c_{i:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lb.astype(np.uint8), affine), str(root / "labelsTr" / f"c_{i:03d}.nii.gz"))
    names = label_names or {"background": 0, **{f"l{k}": k for k in range(1, int(max(l.max() for l in labels)) + 1)}}
    (root / "dataset.json").write_text(json.dumps({
        "name": "test", "channel_names": {"0": "MRI"}, "labels": names,
        "numTraining": len(images), "file_ending": ".nii.gz"}))
    return root
