"""One (loss, fold) run of an experiment, wherever it executes, and ``spineloss train``.

:func:`execute_run` is what every backend runs for a grid cell (in this process, or in a Ray task that
reads the preprocessed cases from the grid's cache), and what ``spineloss train`` runs on its own, also
under ``torchrun`` (:mod:`spineloss.distributed`)::

    spineloss train configs/lumbar_baseline.toml --loss dice --fold 0      # the grid's run, same folder
    spineloss train configs/lumbar_baseline.toml --loss dice --fold all    # the model to deploy
    torchrun --nproc_per_node=2 -m spineloss.cli train CONFIG --loss dice --fold 1

``--fold all`` trains on every case (with ``selection = "inner"``, minus an inner split drawn from all of
them) and scores nothing: nnU-Net's ``all`` fold, the model a user deploys once the study has chosen its
loss. It lands in ``<out>/<loss>/all/model.pt``, ready for ``spineloss predict``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

__all__ = ["collapse_warning", "empty_predictions", "execute_run", "train_command", "prepared_for", "training_seconds"]

log = logging.getLogger("spineloss.one_run")


def prepared_for(config, out_dir: Path, case_ids) -> dict:
    """``{case_id: PreparedCase}`` for ``case_ids``, from the grid's preprocessing cache (written on a miss)."""
    from .data.layout import check_dataset
    from .data.loader import prepare_cases
    from .experiment import resolve_data
    info = check_dataset(resolve_data(config, Path(out_dir)))
    wanted = set(case_ids)
    cases = [c for c in info.cases if c.case_id in wanted]
    prepared = prepare_cases(info, cases, config.preprocess, config.data.network_label_mode,
                             cache_dir=config.data.cache or Path(out_dir) / "cache")
    return {p.case_id: p for p in prepared}


def empty_predictions(cases: dict) -> int:
    """How many scored cases the network predicted no foreground in: their foreground precision is NaN (no
    predicted voxel), as :func:`spineloss.metrics.compute_metrics` writes it. ``cases``: ``metrics.json``'s
    ``"cases"`` (case id -> label entry -> metric -> value)."""
    count = 0
    for entries in cases.values():
        precision = entries.get("foreground", {}).get("precision")
        if isinstance(precision, float) and precision != precision:
            count += 1
    return count


def collapse_warning(result: dict) -> str:
    """The warning for a run that predicted no foreground in some of its test cases (``""`` if none): a loss
    dominated by a distance term (e.g. CoV or Rebalance weighting) can teach the network the empty map, and
    the mean Dice alone does not say why it is low."""
    empty, scored = int(result.get("empty_cases", 0)), int(result.get("test_cases", 0))
    if not empty:
        return ""
    return (f"no foreground predicted in {empty} of {scored} test cases: the network collapsed to the empty map "
            "(look at the loss: a distance term or an adaptive weighting that favours it, weights.csv)")


def execute_run(config, loss_name: str, split, out_dir: str | Path, current: dict, full_config: dict, *,
                resume: bool = True, prepared: dict | None = None, run_name: str | None = None,
                on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Train ``loss_name`` on ``split`` (a :class:`~spineloss.experiment.FoldSplit`) and score it once on
    the split's test cases; writes ``<out_dir>/<loss>/<run_name or fold<k>>/`` (``run.json`` first,
    ``metrics.json`` last). ``current``: the run's :func:`~spineloss.experiment.run_config`;
    ``prepared``: the preprocessed cases (loaded from the cache when ``None``). ``on_epoch_end(n)`` gets
    the number of finished epochs. Returns ``{"dice", "hd", "train_seconds"}`` (NaN when nothing was scored)
    and, when the split has test cases, ``"test_cases"`` and ``"empty_cases"`` (:func:`empty_predictions`).
    """
    from . import distributed
    from .data.layout import check_dataset
    from .experiment import _score_run, resolve_data, resolved_settings
    from .training import checkpoint_postprocess, load_checkpoint, train_fold, write_json

    out_dir = Path(out_dir)
    spec = next((s for s in config.losses if s.name == loss_name), None)
    if spec is None:
        raise ValueError(f"the config has no loss {loss_name!r}; it has {[s.name for s in config.losses]}")
    here = resolved_settings(config.training)
    planned = {k: current.get(k) for k in here}
    if planned != here:   # the run record must say how this run was made
        raise ValueError(f"this worker resolves training.device / amp to {here}, but the grid planned {planned} "
                         "(probed on another worker): give the workers the same hardware, or set "
                         "[training] device and amp explicitly")
    if prepared is None:
        prepared = prepared_for(config, out_dir, split.train + split.inner_val + split.test)
    run_dir = out_dir / spec.name / (run_name or f"fold{split.fold}")
    if distributed.is_main():
        write_json(run_dir / "run.json", {"run_config": current, "config": full_config})
    distributed.barrier()
    info = check_dataset(resolve_data(config, out_dir))
    label_names = info.label_names(config.data.label_mode)
    train_cases = [prepared[i] for i in split.train]
    t = time.perf_counter()
    trained = train_fold(train_cases, [prepared[i] for i in split.inner_val], spec.build(train_cases[0].spacing),
                         info.num_classes_for(config.data.network_label_mode), run_dir, model_config=config.model,
                         train_config=config.training, augment=config.augment, preprocess=config.preprocess,
                         label_mode=config.data.label_mode, label_names=label_names, progress=False, resume=resume,
                         postprocess=config.postprocess, tuning=spec.tuning_spec(),
                         on_epoch_end=None if on_epoch_end is None else (lambda epoch, row: on_epoch_end(epoch + 1)))
    seconds = training_seconds(run_dir, time.perf_counter() - t)
    if not split.test:
        return {"dice": float("nan"), "hd": float("nan"), "train_seconds": seconds}
    model, ckpt = load_checkpoint(run_dir / "model.pt")
    labels = sorted(k for k in label_names if k > 0)
    metrics = _score_run(model, ckpt, checkpoint_postprocess(ckpt), [prepared[i] for i in split.test],
                         config.data.label_mode, labels, run_dir, config, current, full_config,
                         train_seconds=seconds, **({"tuning": trained["tuning"]} if "tuning" in trained else {}))
    mean = metrics["mean"].get("mean", {})
    result = {"dice": mean.get("dice", float("nan")), "hd": mean.get("hd", float("nan")),
              "train_seconds": metrics["train_seconds"], "test_cases": len(metrics["cases"]),
              "empty_cases": empty_predictions(metrics["cases"])}
    if result["empty_cases"]:
        log.warning("%s: %s", run_dir, collapse_warning(result))
    return result


def train_command(config_path: str | Path, loss_name: str, fold: str, out_dir: str | Path | None = None, *,
                  ddp: bool = False, resume: bool = True, data: str | None = None) -> Path | None:
    """``spineloss train``: one run of ``config_path``'s grid (``fold`` = ``"0"``..``"k-1"``), or the
    final model on every case (``fold = "all"``). Under torchrun (or with ``ddp``) it runs with DDP.
    Returns the run folder (``None`` on the ranks other than 0)."""
    import dataclasses

    from . import distributed
    from .experiment import (FoldSplit, _check_run_folder, inner_split, load_config, plan_grid, resolve_data,
                             run_config)

    config = load_config(config_path)
    if data:
        if not Path(data).is_dir():
            raise ValueError(f"--data {data}: no such folder")
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=data, phantom=None))
    if loss_name not in {s.name for s in config.losses}:
        raise ValueError(f"--loss {loss_name!r}: the config has {[s.name for s in config.losses]}")
    if fold != "all":
        try:
            k = int(fold)
        except ValueError:
            raise ValueError(f"--fold must be a fold number or 'all', got {fold!r}") from None
        if not 0 <= k < config.folds:
            raise ValueError(f"--fold {k}: the config has folds 0..{config.folds - 1}")
    out = Path(out_dir or config.output or f"runs/{config.name}")
    use_ddp = ddp or (distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1)
    if use_ddp:
        distributed.init_from_env(config.training.device)
    try:
        if distributed.is_main():
            out.mkdir(parents=True, exist_ok=True)
            resolve_data(config, out)              # a phantom is written once, by rank 0
        distributed.barrier()
        grid = plan_grid(config, out)              # the grid's data, folds and checks, on every rank
        if fold == "all":
            ids = [c.case_id for c in grid.info.cases]
            fit, inner = (inner_split(ids, config.inner_val_fraction, config.seed, config.folds)
                          if config.selection == "inner" else (ids, []))
            split, run_name = FoldSplit(-1, tuple(fit), tuple(inner), ()), "all"
        else:
            split, run_name = grid.splits[int(fold)], None
        spec = next(s for s in config.losses if s.name == loss_name)
        current = run_config(config, spec, split, grid.fingerprints)
        # read-only checks on every rank, so that all of them stop together
        if run_name is None:   # a run of the grid's folder: the same checks as the grid's
            _check_run_folder(out, grid.run_configs(), force=False, resume=resume)
        else:
            _check_all_run(out / loss_name / run_name, current, resume)
        run_dir = out / loss_name / (run_name or f"fold{split.fold}")
        if resume and (run_dir / "metrics.json").exists():
            log.warning("%s is finished (its config is unchanged): nothing to train; --no-resume trains it "
                        "again", run_dir)
            return run_dir if distributed.is_main() else None
        full_config = grid.full_config
        if distributed.is_main() and run_name is None:   # an `all` run leaves the grid's records alone
            grid.write_records()
        result = execute_run(config, loss_name, split, out, current, full_config, resume=resume, run_name=run_name)
        if not distributed.is_main():
            return None
        scored = "" if fold == "all" else f"; test Dice {result['dice']:.4f}, HD {result['hd']:.2f} mm"
        log.info("trained %s in %.0f s%s", run_dir, result["train_seconds"], scored)
        return run_dir
    finally:
        if use_ddp:
            distributed.shutdown()


def _check_all_run(run_dir: Path, current: dict, resume: bool) -> None:
    """An ``all`` run folder left by another config is not resumed or overwritten without a word."""
    from .experiment import config_differences
    path = run_dir / "run.json"
    if not resume or not path.exists():
        return
    diffs = config_differences(json.loads(path.read_text()).get("run_config"), current)
    if diffs:
        raise ValueError(f"{run_dir} holds a model trained with another config: " + "; ".join(diffs[:6])
                         + ". Use another --out folder, or --no-resume to train it again from scratch.")


def training_seconds(run_dir: Path, this_call: float) -> float:
    """The run's training time: its epochs' wall times in ``history.csv``, summed over every session that
    trained them (a run resumed, or only scored again, is not counted as the few seconds of this call)."""
    import csv
    try:
        with open(run_dir / "history.csv") as f:
            total = sum(float(row["seconds"]) for row in csv.DictReader(f))
    except (OSError, KeyError, ValueError):
        return this_call
    return total if total > 0 else this_call
