"""Checkpoints hold tensors and plain data only and are read with ``weights_only=True``: a model file
carrying a pickled Python object (which could run any code when unpickled) is refused."""
import os
import pathlib
from dataclasses import asdict

import numpy as np
import pytest
import torch

from spineloss.data.preprocess import PreprocessConfig
from spineloss.model import build_model
from spineloss.postprocess import PostprocessConfig
from spineloss.training import (ModelConfig, atomic_save, checkpoint_meta, load_checkpoint, plain_data,
                                safe_torch_load)

MODEL_ARGS = dict(in_channels=1, out_channels=3, **asdict(ModelConfig(depth=2, base_channels=4, max_channels=8)))


class ShellPayload:
    """Unpickling this runs ``touch MARKER`` through the shell (``os.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class FilePayload:
    """Unpickling this writes MARKER through ``pathlib.Path.write_text`` (a module torch does not block)."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "pwned")


def _checkpoint(extra=None):
    torch.manual_seed(0)
    model = build_model(**MODEL_ARGS)
    meta = checkpoint_meta(MODEL_ARGS, PreprocessConfig(target_spacing=(2, 2, 2)), "multiclass",
                           {0: "background", 1: "a", 2: "b"}, patch_size=(np.int64(16), 16, 8),
                           mirror_axes=(np.int64(2),), postprocess=PostprocessConfig())
    return {**meta, "model_state": model.state_dict(), "epoch": 0, "val_dice": 0.5, **(extra or {})}


def write_malicious_checkpoint(path, marker, payload=ShellPayload):
    """A model.pt that is valid in every other way, written with plain ``torch.save``."""
    torch.save(_checkpoint({"val_dice": payload(marker)}), path)
    return path


@pytest.mark.parametrize("payload", [ShellPayload, FilePayload])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "marker"
    bad = write_malicious_checkpoint(tmp_path / "model.pt", marker, payload)
    with pytest.raises(ValueError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: refused to load: the file contains Python objects other than tensors")
    assert "only load checkpoints you trust" in message.lower()
    assert ("posix.system" if payload is ShellPayload else "pathlib.Path") in message  # names the objects
    assert not marker.exists()
    # the same file through the resume path's loader
    with pytest.raises(ValueError, match="refused to load"):
        safe_torch_load(bad)
    assert not marker.exists()
    # the payload is real: the unsafe loader the code used before runs it
    torch.load(bad, weights_only=False)
    assert marker.exists()


def test_unreadable_file_is_not_called_malicious(tmp_path):
    good = tmp_path / "good.pt"
    atomic_save(_checkpoint(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    for path in (truncated, text):
        with pytest.raises(ValueError, match="cannot read the checkpoint") as info:
            load_checkpoint(path)
        assert "refused" not in str(info.value)


def test_written_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "model.pt"
    ckpt = _checkpoint({"history": [{"epoch": 1, "lr": np.float64(1e-3), "val_dice": np.float32(0.25),
                                     "skipped_steps": np.int64(0)}]})
    atomic_save(ckpt, path)
    loaded = torch.load(path, weights_only=True)  # would raise on numpy scalars
    assert loaded["patch_size"] == (16, 16, 8) and type(loaded["patch_size"][0]) is int
    assert loaded["inference"]["mirror_axes"] == [2]
    assert loaded["preprocess"]["target_spacing"] == (2.0, 2.0, 2.0)
    assert loaded["inference"]["postprocess"] == {"caudal_bodies": 0, "number_levels": False, "levels": "none"}
    assert loaded["labels"] == {0: "background", 1: "a", 2: "b"}
    row = loaded["history"][0]
    assert row == {"epoch": 1, "lr": 1e-3, "val_dice": 0.25, "skipped_steps": 0}
    assert {type(v) for v in row.values()} <= {int, float}
    model, again = load_checkpoint(path)
    assert again["model"] == MODEL_ARGS
    for name, value in ckpt["model_state"].items():
        assert torch.equal(model.state_dict()[name], value)


def test_optimizer_and_scaler_state_load_with_weights_only(tmp_path):
    model = build_model(**MODEL_ARGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(1, 1, 8, 8, 8)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    atomic_save({"optimizer_state": optimizer.state_dict(), "scaler_state": scaler.state_dict()},
                tmp_path / "last.pt")
    state = safe_torch_load(tmp_path / "last.pt")
    optimizer.load_state_dict(state["optimizer_state"])
    scaler.load_state_dict(state["scaler_state"])


def test_plain_data_refuses_objects_and_keeps_structure(tmp_path):
    class Opaque:
        pass

    assert plain_data({"a": (np.int32(1), [np.float64(2.5), None]), "b": np.array([[1, 2]]),
                       "p": pathlib.Path("x/y")}) == {"a": (1, [2.5, None]), "b": [[1, 2]], "p": "x/y"}
    t = torch.ones(2)
    assert plain_data({"t": t})["t"] is t
    with pytest.raises(TypeError, match=r"meta\['x'\]\[1\] is a .*Opaque"):
        plain_data({"x": [1, Opaque()]}, "meta")
    with pytest.raises(TypeError, match="PreprocessConfig"):
        atomic_save({"preprocess": PreprocessConfig()}, tmp_path / "never-written.pt")
    assert not list(tmp_path.iterdir())
