#!/usr/bin/env python
"""spineloss on the real lumbar data for a fixed training-time budget, evaluated at the original grid.

The peer's protocol (``bench/peer_monai.py``): cases sorted by id, the last 8 validate; the clock
counts training only (data loading, augmentation, forward/backward/step); every ``--eval-every-s``
seconds of training the model predicts the 8 validation volumes, the logits go back to the ORIGINAL
1 mm grid (``restore_to_original``) and are scored against the original label files. The settings
(preprocessing, network, patch, augmentation, loss, learning rate, post-processing) are those of
``configs/lumbar_<label-mode>.toml``; the learning rate decays polynomially over the time budget,
``lr(t) = lr_0 (1 - t / T)^0.9``. The config's ``[postprocess]`` (counting the bodies from the
sacrum, :mod:`spineloss.postprocess`) is part of the pipeline that is scored; the last evaluation
also prints the scores without it, and ``--no-postprocess`` turns it off.

Usage (from the repository root)::

    python bench/train_lumbar.py --minutes 4 --label-mode binary [--save-model runs/lumbar.pt]
        [--data ../shared/data/lumbar] [--config configs/lumbar_binary.toml] [--eval-every-s 60]
        [--seed 0] [--no-postprocess] [--csv curve.csv]

The last line is ``binary_dice=X multiclass_dice=Y steps=N minutes=M`` (the last evaluation).
``--save-model`` writes a checkpoint ``spineloss predict`` takes.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lumbar_common as lc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_spineloss(minutes: float, label_mode: str, data_dir=lc.DEFAULT_DATA, config_path=None, seed: int = 0,
                  eval_every_s: float = 60.0, threads: int = 2, n_val: int = 8, save_model=None,
                  stream=sys.stdout, postprocess: bool = True) -> lc.CurveLog:
    """Train spineloss for ``minutes`` of training time; returns the curve (one row per evaluation)."""
    import torch

    from spineloss.data.layout import read_dataset
    from spineloss.data.loader import PatchDataset, make_train_loader, prepare_cases
    from spineloss.data.preprocess import restore_to_original
    from spineloss.experiment import load_config
    from spineloss.postprocess import PostprocessConfig
    from spineloss.training import Trainer, atomic_save, checkpoint_meta, predict_logits

    def say(msg: str) -> None:
        if stream is not None:
            print(msg, file=stream, flush=True)

    torch.set_num_threads(threads)
    config = load_config(config_path or REPO / "configs" / f"lumbar_{label_mode}.toml")
    train_cfg = dataclasses.replace(config.training, seed=seed)
    post = config.postprocess if postprocess else PostprocessConfig()
    network_mode = config.data.train_label_mode or label_mode     # a foreground network for levels: counting
    if network_mode != label_mode and not post.number_levels:
        raise SystemExit(f"the config trains a {config.data.train_label_mode} network and numbers the levels in "
                         "post-processing; it cannot be scored in multiclass mode without it (drop --no-postprocess)")
    t_start = time.perf_counter()
    data_dir = lc.resolve_data_dir(data_dir)
    info = read_dataset(data_dir)
    train_cases, val_cases = lc.lumbar_split(data_dir, n_val=n_val)
    if post.number_levels:
        post.check_labels(info.num_classes_for("multiclass") - 1, f"the data set {data_dir}")
    num_classes = info.num_classes_for(network_mode)
    t0 = time.perf_counter()
    prepared = {p.case_id: p for p in prepare_cases(info, train_cases + val_cases, config.preprocess, network_mode,
                                                    cache_dir=REPO / "runs" / "cache")}
    cache_s = time.perf_counter() - t0
    loss_fn = config.losses[0].build(prepared[train_cases[0].case_id].spacing)
    train_prepared = [prepared[c.case_id] for c in train_cases]
    trainer = Trainer(1, num_classes, loss_fn, config.model, train_cfg, config.augment, train_prepared)
    dataset = PatchDataset(train_prepared, train_cfg.patch_size,
                           trainer.model.divisor, config.augment, seed, num_classes,
                           distance_maps=trainer.needs_dist, foreground_oversample=train_cfg.foreground_oversample)
    loader, sampler = make_train_loader(dataset, train_cfg.batch_size, train_cfg.iterations_per_epoch,
                                        train_cfg.num_workers)
    n_par = sum(p.numel() for p in trainer.model.parameters())
    say(f"# spineloss | torch {torch.__version__} threads {torch.get_num_threads()} mode {label_mode} "
        f"(network trained on {network_mode} labels) seed {seed} "
        f"budget {minutes:g} min | config {config_path or f'configs/lumbar_{label_mode}.toml'}")
    say(f"# prepared {len(prepared)} cases in {cache_s:.1f} s; grid {prepared[val_cases[0].case_id].image.shape[1:]} "
        f"at {config.preprocess.target_spacing} mm; patch {dataset.patch_size}; batch {train_cfg.batch_size}; "
        f"UNet widths {trainer.model.widths} ({n_par / 1e6:.2f} M params); "
        f"loss {config.losses[0].name}; amp {trainer.amp_dtype}; workers {train_cfg.num_workers}; "
        f"bottleneck blocks {trainer.model_args.get('bottleneck_blocks', 0)}; augment {config.augment}; "
        f"postprocess {post}")

    raw_predictions: dict[str, np.ndarray] = {}

    def predict(case) -> np.ndarray:
        p = prepared[case.case_id]
        logits, pad = predict_logits(trainer.model, p.image, trainer.device, config.augment.mirror_axes)
        label = restore_to_original(logits, dataclasses.replace(p.geometry, pad=pad))
        raw_predictions[case.case_id] = label
        return post.apply(label, p.geometry.original_affine, p.geometry.original_spacing)

    log = lc.CurveLog(name="spineloss", label_mode=label_mode, stream=stream)
    budget = minutes * 60.0
    train_s = eval_s = 0.0
    steps = epoch = 0
    next_eval = eval_every_s
    loss_acc, loss_n, last_steps, last_train_s = 0.0, 0, 0, 0.0
    mix_gen = torch.Generator()
    t_train0 = time.perf_counter()
    done = False
    while not done:
        sampler.set_epoch(epoch)
        mix_gen.manual_seed(seed * 1_000_003 + epoch)
        epoch += 1
        t_it = time.perf_counter()
        for batch in loader:
            trainer.set_lr(train_cfg.lr * max(0.0, 1 - train_s / budget) ** 0.9)
            value = trainer.step(batch, mix_gen)
            steps += 1
            if value is not None:
                loss_acc, loss_n = loss_acc + value, loss_n + 1
            now = time.perf_counter()
            train_s += now - t_it
            t_it = now
            last = train_s >= budget
            if train_s >= next_eval or last:
                te = time.perf_counter()
                with torch.no_grad():
                    result = lc.evaluate(predict, val_cases, label_mode)
                dt = time.perf_counter() - te
                eval_s += dt
                log.add(train_s, time.perf_counter() - t_train0, steps, loss_acc / max(1, loss_n),
                        result["binary_dice"], result["multiclass_dice"],
                        (train_s - last_train_s) / max(1, steps - last_steps), dt, details=result)
                loss_acc, loss_n, last_steps, last_train_s = 0.0, 0, steps, train_s
                while next_eval <= train_s:
                    next_eval += eval_every_s
                t_it = time.perf_counter()
                if last:
                    done = True
                    break
    log.info = {"steps": steps, "train_s": train_s, "eval_s": eval_s, "cache_s": cache_s,
                "steps_per_s": steps / train_s, "wall_s": time.perf_counter() - t_start}
    say(lc.format_evaluation(log.last.details))
    if post.active:
        raw = lc.evaluate(lambda case: raw_predictions[case.case_id], val_cases, network_mode)
        say("# without post-processing:\n" + lc.format_evaluation(raw, prefix="#   "))
    say(f"# steps {steps} in {train_s:.0f} s of training = {steps / train_s:.3f} steps/s; eval {eval_s:.0f} s; "
        f"cache {cache_s:.0f} s")
    if save_model:
        meta = checkpoint_meta(trainer.model_args, config.preprocess, label_mode,
                               info.label_names(label_mode), dataset.patch_size, config.augment.mirror_axes, post)
        atomic_save({**meta, "model_state": trainer.model.state_dict(), "epoch": epoch,
                     "val_dice": log.last.binary_dice if label_mode == "binary" else log.last.multiclass_dice},
                    save_model)
        say(f"# model written to {save_model}")
    return log


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="training-time budget")
    p.add_argument("--label-mode", choices=["binary", "multiclass"], required=True)
    p.add_argument("--data", default=lc.DEFAULT_DATA)
    p.add_argument("--config", help="settings (default configs/lumbar_<label-mode>.toml)")
    p.add_argument("--save-model", help="write the final model here (for `spineloss predict`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every-s", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--csv", help="write the curve as CSV")
    p.add_argument("--no-postprocess", action="store_true", help="score the network's label maps as they are")
    args = p.parse_args(argv)
    log = run_spineloss(args.minutes, args.label_mode, args.data, args.config, args.seed, args.eval_every_s,
                        args.threads, save_model=args.save_model, postprocess=not args.no_postprocess)
    if args.csv:
        log.to_csv(args.csv)
    print(log.summary_line(args.minutes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
