"""One training on several processes: PyTorch DistributedDataParallel (DDP), as launched by ``torchrun``.

    torchrun --nproc_per_node=2 -m spineloss.cli train configs/x.toml --loss dice --fold 0

What changes in a run when the world has ``W > 1`` processes (``spineloss.training``):

* each global batch of ``batch_size`` samples is split: rank ``r`` trains on its ``batch_size / W`` of the
  same seeded samples (``EpochSampler`` slices every batch), and DDP averages the gradients, so one step
  is the single-process step on the same batch (up to the order of floating-point sums) for every loss
  that averages per-sample values (the default ``batch=False`` region losses, CE, Focal, ...);
* a step is skipped on every rank when the loss is not finite on any rank;
* the epoch's training loss, the inner-validation Dice and the test metrics are computed on each rank's
  share of the batches / cases and gathered, so every rank sees the same numbers;
* only rank 0 writes checkpoints, ``history.csv`` and results; the ranks meet after each epoch.

Process groups: gloo on the CPU, NCCL on CUDA (each rank on GPU ``LOCAL_RANK``). Not supported with DDP:
loss tuning (its trial steps would have to agree across ranks), and MixUp mixes within a rank's share.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["world", "is_main", "init_from_env", "launched_by_torchrun", "all_mean", "gather_objects",
           "all_true", "barrier", "shutdown", "share"]


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets its variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(device: str = "auto") -> tuple[int, int]:
    """Join the process group described by torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when the run uses CUDA, else gloo. Returns ``(rank, size)``."""
    if not launched_by_torchrun():
        raise ValueError("--ddp needs the variables torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): "
                         "start the command with torchrun --nproc_per_node=N -m spineloss.cli train ...")
    if dist.is_initialized():
        return world()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # NCCL for the CUDA tensors (gradients), gloo for the small CPU tensors of all_mean / all_true / objects
    dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    return world()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def all_mean(value: float, weight: float = 1.0) -> float:
    """The weighted mean of ``value`` over the ranks (``value`` itself on one process)."""
    if world()[1] == 1:
        return float(value)
    t = torch.tensor([float(value) * weight, float(weight)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / t[1]) if float(t[1]) > 0 else float("nan")


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    if world()[1] == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    size = world()[1]
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def share(items: list) -> list:
    """This rank's share of ``items`` (every ``W``-th item from its rank)."""
    rank, size = world()
    return list(items)[rank::size]
