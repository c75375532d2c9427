"""One training run: fit a 3D U-Net with one loss on one fold, validate, checkpoint, resume.

The loop (Adam, polynomial learning-rate decay ``lr_e = lr_0 (1 - e / E)^0.9`` per epoch as in nnU-Net):

    for each epoch e:   sampler.set_epoch(e)
        for each batch: [MixUp] -> autocast forward -> loss in fp32 -> backward -> step
        with inner validation cases, every ``val_every`` epochs: fp32 inference on them, the
        table's Dice (original grid, post-processed) -> ``model.pt`` when it is the best so far;
        without them: ``model.pt`` = the last epoch (no selection)
        ``last.pt`` (model, optimiser, scaler, history) written atomically -> ``--resume`` point

Mixed precision: CUDA uses fp16 autocast with a ``GradScaler``; the CPU uses bf16 autocast when
the processor has native bf16 instructions (measured 1.5-2.8x faster than fp32 for this U-Net on an
AVX512-BF16 EPYC, see README), else fp32. Validation always runs in fp32. A non-finite loss skips the
step and is counted in the history. Randomness depends only on ``(seed, epoch, sample)``, so an
interrupted run resumed from ``last.pt`` ends with the same numbers as an uninterrupted one (CPU).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .data.augment import AugmentConfig, check_mirror_axes, mixup
from .data.loader import PatchDataset, PreparedCase, class_voxel_counts, make_train_loader
from .data.preprocess import (PreprocessConfig, crop_padding, pad_to_multiple, restore_probabilities,
                              restore_to_original)
from .atomic import atomic_path, atomic_write_text
from .model import build_model
from .postprocess import PostprocessConfig

__all__ = ["TrainConfig", "ModelConfig", "Trainer", "checkpoint_meta", "checkpoint_mirror_axes", "resolve_device",
           "resolve_amp", "train_fold", "predict_logits", "evaluate_cases", "load_checkpoint", "atomic_save",
           "plain_data", "safe_torch_load"]

log = logging.getLogger("spineloss.training")


@dataclass(frozen=True)
class ModelConfig:
    """3D U-Net shape (see :class:`spineloss.model.UNet3D`)."""

    depth: int = 4
    base_channels: int = 16
    max_channels: int = 256
    channels: tuple[int, ...] | None = None
    stem_stride: int = 1
    bottleneck_blocks: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Args:
        epochs: number of epochs; ``iterations_per_epoch`` batches each.
        batch_size: samples per batch.
        lr: initial Adam learning rate; ``weight_decay`` its L2 term; decays as ``(1 - e/E)^0.9``.
        amp: ``"auto"`` (CUDA fp16, CPU bf16 when supported), ``"bf16"``, ``"fp16"`` or ``"off"``.
        val_every: score the inner validation cases (when the run has any) every this many epochs
            (and always after the last).
        patch_size: training patch size, or ``None`` for whole (padded) volumes.
        foreground_oversample: probability that a patch is centred on foreground.
        num_workers: ``DataLoader`` worker processes (0 = in the training process).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        channels_last: keep activations in the ``channels_last_3d`` layout (oneDNN's and cuDNN's
            preferred one; measured 1.4-1.7x faster per step on this CPU, fp32 and bf16 alike).
        threads: torch intra-op threads on the CPU (``None``: leave torch's default).
        seed: the run's seed (model init, sampling, augmentation, MixUp).
    """

    epochs: int = 20
    iterations_per_epoch: int = 25
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    amp: str = "auto"
    val_every: int = 1
    patch_size: tuple[int, int, int] | None = None
    foreground_oversample: float = 0.33
    num_workers: int = 0
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    channels_last: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations_per_epoch", "batch_size", "val_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be > 0, got {self.lr}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"training.amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"training.device must be auto, cpu or cuda, got {self.device!r}")
        if self.patch_size is not None:
            object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for (training.device, or --device of spineloss predict) but "
                         "no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training, or ``None`` for fp32 (see the module docstring)."""
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if cpu_bf16 else None


def plain_data(obj, where: str = "checkpoint"):
    """``obj`` as tensors and plain data only, so that ``torch.load(..., weights_only=True)`` reads it.

    Dicts, lists and tuples are rebuilt element by element (an ``OrderedDict``, e.g. a state dict,
    stays one, with its ``_metadata``); ``bool``/``int``/``float``/``str``/``None``, tensors and
    ``torch.Size`` pass; numpy scalars (``np.float64`` too, although it subclasses ``float``) and
    other subclasses of those types become the plain type, numpy arrays nested lists, paths strings.
    Anything else (a dataclass, an arbitrary object) raises ``TypeError`` naming where it sits: a
    checkpoint must never need arbitrary Python objects to be read back.
    """
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, (torch.Tensor, torch.Size)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    for plain in (bool, int, float, str):  # e.g. an IntEnum
        if isinstance(obj, plain):
            return plain(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, collections.OrderedDict):
        out = collections.OrderedDict((plain_data(k, where), plain_data(v, f"{where}[{k!r}]"))
                                      for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # module versions, read by load_state_dict
            out._metadata = plain_data(obj._metadata, f"{where}._metadata")
        return out
    if isinstance(obj, dict):
        return {plain_data(k, where): plain_data(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
                    "tensors and plain data (dict, list, tuple, str, int, float, bool, None)")


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` through :func:`spineloss.atomic.atomic_path`: never a half-written file.

    ``obj`` is first reduced to tensors and plain data (:func:`plain_data`), so every file written
    here loads with ``weights_only=True`` (:func:`safe_torch_load`).
    """
    obj = plain_data(obj, Path(path).name)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_torch_load(path: str | Path, device: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never arbitrary code.

    Raises ``ValueError``: "refused to load" (naming the Python objects it holds) for a file that
    needs anything else to be unpickled, e.g. a crafted model file whose unpickling would run a
    command; "cannot read the checkpoint" for a missing, truncated or otherwise unreadable file.
    """
    import pickle
    import re

    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        names: list[str] = []
        try:
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - e.g. the legacy (non-zip) format: use torch's message
            pass
        names = names or sorted(set(re.findall(r"GLOBAL (\S+)", str(exc))))
        if names:
            raise ValueError(
                f"{path}: refused to load: the file contains Python objects other than tensors and plain "
                f"data ({', '.join(names)}); unpickling them could run arbitrary code. Only load checkpoints "
                "you trust; spineloss writes checkpoints that need none of them") from None
        raise ValueError(f"{path}: cannot read the checkpoint ({str(exc).strip().splitlines()[-1]})") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read the checkpoint ({exc})") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Load a ``model.pt`` written by :func:`train_fold`; returns ``(model, checkpoint dict)``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    ckpt = safe_torch_load(path, device)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a spineloss model checkpoint (missing model_state/model)")
    model = build_model(**ckpt["model"])
    model.load_state_dict(ckpt["model_state"])
    model.to(device).to(memory_format=torch.channels_last_3d).eval()
    return model, ckpt


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                   mirror_axes: Sequence[int] = ()) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """fp32 whole-volume inference: pad to the network divisor, return ``(logits C x d' x h' x w', pad)``.

    ``mirror_axes`` (spatial axes 0..2) turns on test-time mirroring as in nnU-Net (Isensee et al.
    2021): the logits are averaged over every combination of flips of these axes (``2 ** len``
    forward passes), each flipped back before averaging.
    """
    axes = sorted(check_mirror_axes(mirror_axes))
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    low = float(x.amin())
    x, pad = pad_to_multiple(x, model.divisor, value=low)
    x = x.to(device)
    flips = [[a + 2 for a, on in zip(axes, bits) if on] for bits in itertools.product((0, 1), repeat=len(axes))]
    total = None
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        for dims in flips:
            xi = (x.flip(dims) if dims else x).contiguous(memory_format=torch.channels_last_3d)
            out = model(xi).float()
            out = out.flip(dims) if dims else out
            total = out if total is None else total + out
    logits = (total / len(flips)).cpu().contiguous()[0]
    return logits, pad


def evaluate_cases(model, cases: Sequence[PreparedCase], label_mode: str, device="cpu",
                   labels: Sequence[int] | None = None, mirror_axes: Sequence[int] = (),
                   postprocess: PostprocessConfig | None = None, *, distances: bool = True,
                   predictions_dir: str | Path | None = None, warn: bool = True) -> dict:
    """Predict each case, map it back to the original grid and compare with the original label file.

    The one scoring path of spineloss: the final test scores and the checkpoint selection
    (:func:`selection_dice`) both come from here, with the same Dice
    (:func:`spineloss.metrics.compute_metrics`) on the same grid after the same post-processing.

    ``mirror_axes``: test-time mirroring (:func:`predict_logits`); ``postprocess``: applied to the
    label map on the original grid (:class:`~spineloss.postprocess.PostprocessConfig`);
    ``distances=False`` skips the surface distances (overlap metrics only); ``predictions_dir``:
    also write each prediction there as ``<case_id>.nii.gz`` (uint8, the original affine); ``warn``:
    log the post-processing's flags (off for checkpoint selection, which scores every few epochs).

    Returns ``{"cases": {case_id: compute_metrics(...)}, "mean": {label: {metric: mean over cases}},
    "nan_counts": {label: {metric: cases whose value is NaN}}, "flags": {case_id: [flag, ...]}}``
    (flags: what broke the post-processing's assumptions, also logged as warnings naming the case).
    NaN values are excluded from the mean and counted, never dropped silently.

    In a distributed run (:mod:`spineloss.distributed`) every rank calls this with the same cases, scores
    its share and gets everyone's results back (in the order of ``cases``).
    """
    from . import distributed
    from .data.layout import to_label_mode
    from .metrics import compute_metrics
    import nibabel as nib

    per_case, flags = {}, {}
    for case in distributed.share(list(cases)):
        logits, pad = predict_logits(model, case.image, device, mirror_axes)
        geometry = dataclasses.replace(case.geometry, pad=pad)
        prediction, case_flags = postprocessed_prediction(logits, geometry, postprocess)
        if case_flags:
            flags[case.case_id] = case_flags
        if case_flags and warn:
            log.warning("%s: the post-processing's assumptions do not hold: %s", case.case_id, ", ".join(case_flags))
        if case.source_label is not None:
            reference = np.asarray(nib.load(str(case.source_label)).dataobj)
            reference = to_label_mode(np.rint(reference).astype(np.int64), label_mode)
        else:
            reference = case.label
        if predictions_dir is not None:
            Path(predictions_dir).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.asarray(prediction, dtype=np.uint8), geometry.original_affine),
                     str(Path(predictions_dir) / f"{case.case_id}.nii.gz"))
        metrics = compute_metrics(prediction, reference, spacing=tuple(geometry.original_spacing),
                                  labels=labels, distances=distances)
        per_case[case.case_id] = {str(k): v for k, v in metrics.items()}  # JSON keys: "1", "mean", ...
    if distributed.world()[1] > 1:
        parts = distributed.gather_objects((per_case, flags))
        merged = {k: v for part, _ in parts for k, v in part.items()}
        per_case = {c.case_id: merged[c.case_id] for c in cases}
        flagged = {k: v for _, part in parts for k, v in part.items()}
        flags = {c.case_id: flagged[c.case_id] for c in cases if c.case_id in flagged}
    return {"cases": per_case, **aggregate_case_metrics(per_case), "flags": flags}


def postprocessed_prediction(logits: torch.Tensor, geometry, postprocess: PostprocessConfig | None
                             ) -> tuple[np.ndarray, list[str]]:
    """The label map on the original grid from the network's logits (padding cropped, resampled,
    arg-max), post-processed, and the post-processing's flags (:meth:`PostprocessConfig.apply_with_flags`;
    the probabilities are restored only when it needs them)."""
    prediction = restore_to_original(logits, geometry)
    if postprocess is None or not postprocess.active:
        return prediction, []
    probabilities = restore_probabilities(logits, geometry) if postprocess.needs_probabilities else None
    return postprocess.apply_with_flags(prediction, geometry.original_affine, geometry.original_spacing,
                                        probabilities)


def selection_dice(model, cases: Sequence[PreparedCase], label_mode: str, device="cpu",
                   labels: Sequence[int] | None = None, mirror_axes: Sequence[int] = (),
                   postprocess: PostprocessConfig | None = None) -> float:
    """The checkpoint-selection score: the mean over ``cases`` of the label-mean Dice that the
    results table reports (:func:`evaluate_cases`, without surface distances).

    ``cases`` must be drawn from the training cases of the fold (an inner validation split); the
    experiment never passes a test case here (``tests/test_protocol.py`` checks it).
    """
    result = evaluate_cases(model, cases, label_mode, device, labels, mirror_axes, postprocess, distances=False,
                            warn=False)
    return float(result["mean"]["mean"]["dice"])


def aggregate_case_metrics(per_case: dict) -> dict:
    """Mean over cases of every (label, metric), NaNs excluded and counted."""
    mean, nans = {}, {}
    keys = {k for m in per_case.values() for k in m}
    for key in sorted(keys):
        names = sorted({n for m in per_case.values() if key in m for n in m[key]})
        mean[key], nans[key] = {}, {}
        for name in names:
            vals = np.array([m[key][name] for m in per_case.values() if key in m], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            mean[key][name] = float(finite.mean()) if finite.size else float("nan")
            nans[key][name] = int(vals.size - finite.size)
    return {"mean": mean, "nan_counts": nans}


class Trainer:
    """Model, optimiser, gradient scaler and loss of one run, and :meth:`step`: one training step.

    The model is initialised from ``torch.manual_seed(train_config.seed)``. ``step`` applies MixUp
    (when drawn), runs the forward pass under autocast, the loss in fp32, and the optimiser step;
    it returns the loss value, or ``None`` when the loss is not finite (the step is skipped).
    """

    def __init__(self, in_channels: int, num_classes: int, loss_fn, model_config: ModelConfig,
                 train_config: TrainConfig, augment: AugmentConfig,
                 train_cases: Sequence[PreparedCase] | None = None) -> None:
        self.config, self.augment, self.loss_fn = train_config, augment, loss_fn
        if train_cases is not None and hasattr(loss_fn, "prepare"):  # e.g. inverse-frequency CE weights
            loss_fn.prepare(class_voxel_counts(train_cases, max(num_classes, 2)))
        self.num_classes = num_classes
        self.device = resolve_device(train_config.device)
        self.amp_dtype = resolve_amp(train_config.amp, self.device)
        torch.manual_seed(train_config.seed)
        self.model_args = dict(in_channels=in_channels, out_channels=num_classes, **asdict(model_config))
        self.model = build_model(**self.model_args).to(self.device)
        if isinstance(loss_fn, torch.nn.Module):  # a loss with parameters or buffers (a learned loss network)
            loss_fn.to(self.device)
        if train_config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_config.lr,
                                          weight_decay=train_config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(self.device.type == "cuda"
                                                            and self.amp_dtype == torch.float16))
        self.needs_dist = bool(getattr(loss_fn, "needs_distance_maps", False))
        self.forward_model = self.model
        from . import distributed
        if distributed.world()[1] > 1:  # gradients averaged over the ranks (spineloss.distributed)
            import warnings

            from torch.nn.parallel import DistributedDataParallel
            # the 1x1x1 output convolution's weight is channels_last with size-1 dims, whose strides are
            # equivalent but not equal to the bucket's: PyTorch warns on every step, harmlessly
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[torch.cuda.current_device()] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True)   # no gradient copies (and no stride warnings with channels_last)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, batch: dict, mix_gen: torch.Generator | None = None) -> float | None:
        from . import distributed
        device, model = self.device, self.forward_model
        model.train()
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        dist = batch["dist_map"].to(device) if "dist_map" in batch else None
        if (self.augment.p_mixup > 0 and mix_gen is not None
                and float(torch.rand(1, generator=mix_gen)) < self.augment.p_mixup):
            x, y, dist = mixup(x, y, max(self.num_classes, 1), mix_gen, self.augment.mixup_alpha, dist)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = model(x)
        try:
            if self.needs_dist:  # ground-truth maps and each sample's own spacing from the pipeline
                spacing = batch.get("spacing")
                extra = {} if spacing is None else {"spacing": spacing.to(device)}
                loss = self.loss_fn(logits.float(), y, dist_map=dist, **extra)
            else:
                loss = self.loss_fn(logits.float(), y)
        except ValueError:
            if torch.isfinite(logits.detach()).all():
                raise
            loss = None                             # the loss refuses NaN/inf logits: skip
        finite = loss is not None and bool(torch.isfinite(loss))
        if not distributed.all_true(finite):      # every rank skips together (DDP's backward syncs)
            return None
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())


def checkpoint_meta(model_args: dict, preprocess: PreprocessConfig | None, label_mode: str,
                    label_names: dict[int, str] | None, patch_size=None,
                    mirror_axes: Sequence[int] = (), postprocess: PostprocessConfig | None = None) -> dict:
    """What a ``model.pt`` carries besides the weights, so :mod:`spineloss.predict` can repeat the
    preprocessing, rebuild the network, mirror at test time along the axes it was trained to be
    mirror-invariant on (``inference.mirror_axes``) and post-process (``inference.postprocess``)."""
    meta = {"model": dict(model_args), "preprocess": (preprocess or PreprocessConfig()).to_dict(),
            "label_mode": label_mode, "labels": {int(k): v for k, v in (label_names or {}).items()},
            "num_classes": int(model_args["out_channels"]),
            "patch_size": tuple(patch_size) if patch_size is not None else None,
            "inference": {"mirror_axes": [int(a) for a in mirror_axes],
                          "postprocess": (postprocess or PostprocessConfig()).to_dict()}}
    return plain_data(meta, "checkpoint metadata")  # loads with weights_only=True


def checkpoint_mirror_axes(checkpoint: dict) -> tuple[int, ...]:
    """The test-time mirroring axes a checkpoint asks for (none for checkpoints without the entry)."""
    return check_mirror_axes((checkpoint.get("inference") or {}).get("mirror_axes", ()),
                             "the checkpoint's inference.mirror_axes")


def checkpoint_postprocess(checkpoint: dict) -> PostprocessConfig:
    """The post-processing a checkpoint asks for (none for checkpoints without the entry)."""
    try:
        return PostprocessConfig.from_dict((checkpoint.get("inference") or {}).get("postprocess"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the checkpoint's inference.postprocess is not valid: {exc}") from exc


_HISTORY_FIELDS = ["epoch", "lr", "train_loss", "val_dice", "skipped_steps", "seconds"]


def train_fold(train_cases: Sequence[PreparedCase], val_cases: Sequence[PreparedCase], loss_fn,
               num_classes: int, out_dir: str | Path, *, model_config: ModelConfig = ModelConfig(),
               train_config: TrainConfig = TrainConfig(), augment: AugmentConfig = AugmentConfig(),
               preprocess: PreprocessConfig | None = None, label_mode: str = "multiclass",
               label_names: dict[int, str] | None = None, resume: bool = True, progress: bool = True,
               postprocess: PostprocessConfig | None = None,
               on_epoch_end: Callable[[int, dict], None] | None = None, tuning=None) -> dict:
    """Train one model and write ``history.csv``, ``model.pt`` and ``last.pt`` (the resume point).

    Checkpoint selection: with ``val_cases`` (an inner validation split drawn from the fold's
    training cases, never its test cases), every ``val_every`` epochs the model is scored with
    :func:`selection_dice` (the table's Dice: original grid, post-processing applied) and ``model.pt``
    keeps the best epoch. With no ``val_cases`` nothing is selected: ``model.pt`` is the last epoch.
    The checkpoint records which rule made it (``selection``).

    ``label_mode``/``label_names`` describe what the pipeline outputs and ``postprocess`` how it gets
    there; both are recorded in the checkpoints (prediction applies the post-processing).
    Returns the last history row plus ``best_val_dice`` and ``best_epoch`` (NaN and the last epoch
    without selection). With ``resume`` and a ``last.pt`` in ``out_dir``, training continues after its
    epoch (a finished run returns at once). ``on_epoch_end(epoch, row)`` is called after each epoch's
    checkpoint is on disk.

    ``tuning`` (a :class:`spineloss.tuning.runner.TuningSpec`): the loss changes while training (greedy
    parameter search, adaptive weights), logged to ``params.csv`` / ``weights.csv``; its held-out batches
    come from ``val_cases`` when there are any, else from ``train_cases`` (never from test cases), and
    its cost is returned under ``tuning`` and written to ``tuning.json``.
    """
    from . import distributed
    cfg = train_config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = distributed.world()
    main = rank == 0
    if world > 1 and tuning is not None:
        raise ValueError("loss tuning (greedy search, adaptive weights) does not run under DDP yet: its trial "
                         "steps would have to agree across the processes; train this loss in one process")
    device = resolve_device(cfg.device)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(int(cfg.threads))
    in_channels = int(train_cases[0].image.shape[0])

    trainer = Trainer(in_channels, num_classes, loss_fn, model_config, cfg, augment, train_cases)
    model, optimizer, scaler = trainer.model, trainer.optimizer, trainer.scaler
    model_args = trainer.model_args
    needs_dist = trainer.needs_dist

    history: list[dict] = []
    start_epoch, best_dice, best_epoch = 0, -math.inf, -1
    last_path = out_dir / "last.pt"
    if not resume and main:   # a fresh start: nothing of an earlier run may be resumed or reported later
        for stale in ("last.pt", "model.pt", "history.csv", "metrics.json", "cases.csv", "params.csv",
                      "weights.csv", "tuning.json"):
            (out_dir / stale).unlink(missing_ok=True)
    distributed.barrier()
    if resume and last_path.exists():
        state = safe_torch_load(last_path, device)
        try:
            model.load_state_dict(state["model_state"])
        except RuntimeError as exc:
            raise ValueError(f"{last_path} was written by a different [model] configuration than the one now "
                             "asked for; resume with the old config, or start over (--no-resume, or another "
                             f"output folder): {str(exc).splitlines()[0]}") from exc
        optimizer.load_state_dict(state["optimizer_state"])
        scaler.load_state_dict(state["scaler_state"])
        history = state["history"]
        start_epoch, best_dice, best_epoch = state["epoch"] + 1, state["best_dice"], state["best_epoch"]
        log.info("resuming %s after epoch %d", out_dir, state["epoch"])

    dataset = PatchDataset(train_cases, cfg.patch_size, model.divisor, augment, cfg.seed, num_classes,
                           distance_maps=needs_dist, foreground_oversample=cfg.foreground_oversample)
    loader, sampler = make_train_loader(dataset, cfg.batch_size, cfg.iterations_per_epoch, cfg.num_workers,
                                        rank, world)
    meta = checkpoint_meta(model_args, preprocess, label_mode, label_names, dataset.patch_size,
                           augment.mirror_axes, postprocess)
    select = len(val_cases) > 0
    labels = sorted(int(k) for k in label_names if int(k) > 0) if label_names else None
    meta["selection"] = {"rule": "best_inner_val_dice" if select else "last_epoch",
                         "cases": [c.case_id for c in val_cases]}
    mix_gen = torch.Generator()
    tuner = None
    if tuning is not None:
        from .tuning.runner import LossTuner
        held_cases = list(val_cases) or list(train_cases)
        held_set = PatchDataset(held_cases, cfg.patch_size, model.divisor, AugmentConfig.none(), cfg.seed + 7919,
                                num_classes, foreground_oversample=cfg.foreground_oversample)

        def held_out(k: int) -> dict:
            items = [held_set[(k, i)] for i in range(cfg.batch_size)]
            return {"image": torch.stack([it["image"] for it in items]), "label": torch.stack([it["label"] for it in items]),
                    "spacing": [held_cases[0].spacing]}

        tuner = LossTuner(tuning, loss_fn, cfg.epochs * cfg.iterations_per_epoch, out_dir, held_out,
                          resume_step=start_epoch * cfg.iterations_per_epoch if start_epoch else None)
        if start_epoch and state.get("tuning") is None:
            raise ValueError(f"{last_path} was trained without the tuning now asked for; resume without it, or "
                             "start over (--no-resume, or another output folder)")
        if start_epoch:
            tuner.load_state_dict(state["tuning"])
    elif start_epoch and state.get("tuning") is not None:
        raise ValueError(f"{last_path} was trained with loss tuning that this call does not ask for; resume "
                         "with it, or start over (--no-resume, or another output folder)")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = cfg.lr * (1 - epoch / cfg.epochs) ** 0.9
        trainer.set_lr(lr)
        sampler.set_epoch(epoch)
        mix_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
        losses, skipped = [], 0
        bar = _progress(loader, progress, f"epoch {epoch + 1}/{cfg.epochs}")
        for i, batch in enumerate(bar):
            step = epoch * cfg.iterations_per_epoch + i
            if tuner is not None:
                tuner.before_step(step, model, optimizer, scaler, lambda: trainer.step(batch, mix_gen),
                                  generators=(mix_gen,), train_batch=batch)
            value = trainer.step(batch, mix_gen)
            if tuner is not None and value is not None:
                tuner.after_step(step)
            if value is None:
                skipped += 1
                log.warning("epoch %d: non-finite loss, step skipped", epoch)
                continue
            losses.append(value)
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses):.4f}",
                                dice="-" if best_epoch < 0 else f"{best_dice:.3f}")
        val_dice = float("nan")
        if select and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            val_dice = selection_dice(model, val_cases, label_mode, device, labels, augment.mirror_axes,
                                      postprocess)
            if val_dice > best_dice:
                best_dice, best_epoch = val_dice, epoch
                if main:
                    atomic_save({**meta, "model_state": model.state_dict(), "epoch": epoch,
                                 "val_dice": val_dice}, out_dir / "model.pt")
        elif not select and epoch + 1 == cfg.epochs:
            best_epoch = epoch
            if main:
                atomic_save({**meta, "model_state": model.state_dict(), "epoch": epoch,
                             "val_dice": float("nan")}, out_dir / "model.pt")
        # the epoch's loss: the mean over every rank's steps
        train_loss = distributed.all_mean(float(np.mean(losses)) if losses else 0.0, len(losses))
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss if losses or world > 1 else float("nan"),
               "val_dice": val_dice, "skipped_steps": skipped, "seconds": time.perf_counter() - t0}
        history.append(row)
        if progress and main:
            print(f"  epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                  f"val Dice {val_dice:.4f}  ({row['seconds']:.1f} s)", flush=True)
        if main:
            atomic_save({"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                         "scaler_state": scaler.state_dict(), "history": history, "epoch": epoch,
                         "best_dice": best_dice, "best_epoch": best_epoch,
                         "tuning": tuner.state_dict() if tuner is not None else None}, last_path)
            _write_history(out_dir / "history.csv", history)
        distributed.barrier()                     # every rank sees this epoch's checkpoint
        if on_epoch_end is not None and main:
            on_epoch_end(epoch, row)
    if main:
        _write_history(out_dir / "history.csv", history)
    last = history[-1] if history else {}
    out = {**last, "best_val_dice": best_dice if select else float("nan"), "best_epoch": best_epoch + 1}
    if tuner is not None:
        total = float(sum(row["seconds"] for row in history))       # every session's epochs, tuning included
        tuned = tuner.summary()
        out["tuning"] = {**tuned, "train_seconds_total": total,
                         "overhead": tuned["seconds"] / max(total - tuned["seconds"], 1e-9)}
        write_json(out_dir / "tuning.json", out["tuning"])
    distributed.barrier()
    return out


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in _HISTORY_FIELDS})
    atomic_write_text(path, buf.getvalue())


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def write_json(path: str | Path, obj) -> None:
    """Atomic JSON write (NaN written as ``NaN``, which Python's json reads back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float))
