"""ML3 meta-training of a loss network on the proxy task, then its fitness (Bechtle et al. 2021).

Each of ``epochs x steps_per_epoch`` meta steps (fp32, on the proxy's training cases only):

    x, y     = a training batch (augmented, as training draws it)
    x', y'   = a held-out batch of the same training cases (other patches, no augmentation)
    theta'   = theta - inner_lr grad_theta L_phi(f_theta(x), y)          functional, graph kept (meta.inner_step)
    phi     <- Adam step on grad_phi [1 - softDice(f_theta'(x'), y')]      the outer, meta objective
    theta   <- theta' (detached)                                          the U-Net follows the learned loss

and every ``reset_every`` steps the U-Net starts again from a fresh initialisation, so the loss is learned for
every stage of training, not only for a network that has already converged (ML3 meta-trains over many
initialisations). Before the first step the loss network is fitted to binary cross-entropy (``start``,
:func:`~spineloss.learning.meta.imitate`; ``"random"``: ML3's random start), so the first U-Nets learn and
the held-out Dice carries a signal from the beginning. After the last epoch the frozen loss is scored like every candidate
(:func:`spineloss.learning.fitness.evaluate`: a fresh U-Net trained from scratch on it, validation Dice).

Written: ``meta_checkpoint.pt`` (loss network, its optimiser, the U-Net, the history; tensors and plain data,
``torch.load(weights_only=True)`` reads it) and ``history.csv`` after every epoch; an interrupted run resumes
after its last finished epoch with the same numbers (CPU).

Reference: S. Bechtle et al., "Meta learning via learned loss", ICPR 2020 (arXiv 1906.05374).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..atomic import atomic_write_text
from ..data.augment import AugmentConfig
from ..data.loader import PatchDataset
from ..losses.region import DiceLoss
from ..model import build_model
from ..training import atomic_save, safe_torch_load
from .fitness import ProxyTask, candidate_spec
from .format import document_of
from .meta import MetaLoss, MetaLossNet, imitate, inner_step
from .screening import screen
from .search import SearchProgress

__all__ = ["CHECKPOINT", "run_meta"]

CHECKPOINT = "meta_checkpoint.pt"
HISTORY_FIELDS = ["epoch", "meta_objective", "held_out_soft_dice", "inner_loss", "skipped", "seconds"]


def _batch(dataset: PatchDataset, epoch: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[(epoch, step * size + i)] for i in range(size)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def _fresh_unet(model_args: dict, seed: int, index: int) -> torch.nn.Module:
    torch.manual_seed(seed * 1_000_003 + 7 + index)
    return build_model(**model_args)


def run_meta(out_dir: Path, cfg, task: ProxyTask, evaluator, seed: int, *, resume: bool = True,
             progress: bool = True, on_epoch_end: Callable[[dict], None] | None = None) -> dict:
    """Meta-train a loss network (:class:`~spineloss.learning.config.MetaConfig` ``cfg``), then score it;
    returns ``{"document", "fitness", "history", "screening"}``."""
    out_dir = Path(out_dir)
    fit, _ = task.cases()
    model_cfg, train_cfg, augment, _ = task.configs()
    model_args = dict(in_channels=int(fit[0].image.shape[0]), out_channels=task.num_classes,
                      **asdict(model_cfg))
    torch.manual_seed(seed)
    net = MetaLossNet(cfg.hidden, cfg.region_features, cfg.activation)
    path = out_dir / CHECKPOINT
    if cfg.start != "random" and not (resume and path.exists()):
        imitate(net, cfg.start, seed=seed)
    meta_loss = MetaLoss(net)
    meta_loss.validate = False
    outer = DiceLoss(include_background=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.outer_lr)
    unet = _fresh_unet(model_args, seed, 0)
    divisor = unet.divisor
    train_set = PatchDataset(fit, train_cfg.patch_size, divisor, augment, seed, task.num_classes,
                             foreground_oversample=train_cfg.foreground_oversample)
    held_set = PatchDataset(fit, train_cfg.patch_size, divisor, AugmentConfig.none(), seed + 7919, task.num_classes,
                            foreground_oversample=train_cfg.foreground_oversample)
    history: list[dict] = []
    start_epoch = 0
    if resume and path.exists():
        state = safe_torch_load(path)
        try:
            net.load_state_dict(state["loss_state"])
            optimizer.load_state_dict(state["optimizer_state"])
            unet.load_state_dict(state["unet_state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ValueError(f"{path} does not match this config's meta network or U-Net ({exc}); start over with "
                             "--no-resume or use another --out") from None
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
    view = SearchProgress("meta", cfg.epochs, cfg.steps_per_epoch, interactive=None if progress else False)
    view.done = start_epoch
    batch = train_cfg.batch_size
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        if progress:
            view.start(f"epoch {epoch + 1}")
        outer_values, inner_values, skipped = [], [], 0
        for step in range(cfg.steps_per_epoch):
            k = epoch * cfg.steps_per_epoch + step
            if k and cfg.reset_every and k % cfg.reset_every == 0:
                unet = _fresh_unet(model_args, seed, k // cfg.reset_every)
            unet.train()
            x, y = _batch(train_set, epoch, step, batch)
            xv, yv = _batch(held_set, epoch, step, batch)
            updated, inner_value = inner_step(unet, meta_loss, x, y, cfg.inner_lr)
            buffers = dict(unet.named_buffers())
            logits = torch.func.functional_call(unet, {**buffers, **updated}, (xv,))
            objective = outer(logits.float(), yv)
            grads = torch.autograd.grad(objective, list(net.parameters()), allow_unused=True)
            finite = bool(torch.isfinite(objective)) and all(g is None or bool(torch.isfinite(g).all()) for g in grads)
            if not finite:
                skipped += 1
                unet = _fresh_unet(model_args, seed, 10_000 + k)  # the U-Net diverged: start it again
            else:
                optimizer.zero_grad(set_to_none=True)
                for p, g in zip(net.parameters(), grads):
                    p.grad = g
                optimizer.step()
                with torch.no_grad():
                    for name, p in unet.named_parameters():
                        p.copy_(updated[name].detach())
                outer_values.append(float(objective.detach()))
                inner_values.append(float(inner_value.detach()))
            if progress:
                view.epoch(step + 1)
        mean = (lambda v: sum(v) / len(v) if v else math.nan)
        row = {"epoch": epoch + 1, "meta_objective": round(mean(outer_values), 6),
               "held_out_soft_dice": round(1.0 - mean(outer_values), 6), "inner_loss": round(mean(inner_values), 6),
               "skipped": skipped, "seconds": round(time.perf_counter() - t0, 2)}
        history.append(row)
        atomic_save({"loss_state": net.state_dict(), "optimizer_state": optimizer.state_dict(),
                     "unet_state": unet.state_dict(), "epoch": epoch, "history": history}, path)
        _write_history(out_dir / "history.csv", history)
        if progress:
            view.finish(f"[meta epoch {epoch + 1}/{cfg.epochs}] held-out soft Dice after the inner step "
                        f"{row['held_out_soft_dice']:.4f} ({row['seconds']:.0f} s)")
        if on_epoch_end is not None:
            on_epoch_end(row)
    if progress:
        view.close()
    frozen = MetaLoss(net)
    doc = document_of(frozen)
    reason = screen(doc, task.num_classes)
    (result,) = evaluator.map([candidate_spec(doc, task, screen=False)])
    return {"document": doc, "fitness": float(result["fitness"]), "status": result["status"],
            "history": history, "screening": reason or "passes every rule"}


def _write_history(path: Path, history: list[dict]) -> None:
    lines = [",".join(HISTORY_FIELDS)] + [",".join(str(r[k]) for k in HISTORY_FIELDS) for r in history]
    atomic_write_text(path, "\n".join(lines) + "\n")

