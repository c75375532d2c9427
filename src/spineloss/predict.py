"""Segment an image with a trained model: the preprocessing stored in the checkpoint, fp32 inference
(mirrored at test time along the axes the checkpoint names), the inverse transform to the input's
grid, the checkpoint's post-processing, and a label map written with the input's affine."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["predict_array", "predict_file"]


def predict_array(model, checkpoint: dict, image: np.ndarray, affine: np.ndarray,
                  device: str = "cpu", name: str = "the image") -> np.ndarray:
    """Label map (``D x H x W`` uint8, the image's grid) for ``image`` (``C x D x H x W``); the
    post-processing's flags, if any, are logged as a warning naming ``name``."""
    import dataclasses

    from .data.preprocess import PreprocessConfig, preprocess_case
    from .training import checkpoint_mirror_axes, checkpoint_postprocess, postprocessed_prediction, predict_logits

    config = PreprocessConfig.from_dict(checkpoint["preprocess"])
    expected = checkpoint["model"]["in_channels"]
    if image.shape[0] != expected:
        raise ValueError(f"the model expects {expected} image channel(s), got {image.shape[0]}")
    prepared, _, geometry = preprocess_case(image, None, affine, config)
    logits, pad = predict_logits(model, prepared, device, checkpoint_mirror_axes(checkpoint))
    label, flags = postprocessed_prediction(logits, dataclasses.replace(geometry, pad=pad),
                                            checkpoint_postprocess(checkpoint))
    if flags:
        import logging
        logging.getLogger("spineloss.predict").warning("%s: the post-processing's assumptions do not hold: %s",
                                                       name, ", ".join(flags))
    return label


def predict_file(model_path: str | Path, inputs: Sequence[str | Path] | str | Path,
                 output: str | Path, device: str = "auto") -> Path:
    """Read the image file(s) (one per channel), predict, write ``output`` with the input's affine."""
    import nibabel as nib

    from .training import load_checkpoint, resolve_device

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(model_path, dev)
    channels, affine, header = [], None, None
    for path in inputs:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such image file")
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path}: cannot read the image ({exc})") from exc
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise ValueError(f"{path}: the image has NaN or infinite values")
        if affine is not None and (data.shape != channels[0].shape or not np.allclose(img.affine, affine, atol=1e-3)):
            raise ValueError(f"{path}: shape or affine differs from {inputs[0]}")
        affine, header = (img.affine, img.header) if affine is None else (affine, header)
        channels.append(data)
    label = predict_array(model, ckpt, np.stack(channels), affine, dev, name=str(inputs[0]))
    out = nib.Nifti1Image(label.astype(np.uint8), affine)
    out.header.set_xyzt_units(*header.get_xyzt_units())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(output))
    return output
