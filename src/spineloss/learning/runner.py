"""Run one loss search end to end: ``spineloss learn genetic|taylor|meta CONFIG.toml [--out DIR]``.

Writes into ``DIR`` (default ``[experiment] output``, else ``runs/<name>``)::

    learn.json           the method and the resolved config (a rerun with another config stops and says so)
    data/, cache/        the phantom data set (when the config asks for one) and the preprocessing cache
    checkpoint.json      genetic / taylor: the search's state after each generation (the resume point)
    meta_checkpoint.pt   meta: the loss network, its optimiser and the U-Net after each epoch
    history.csv          one row per generation (epoch for meta)
    evaluations.csv      genetic / taylor: every candidate trained or rejected, with its fitness or reason
    learned_loss.json    the best loss found: ``build_loss("learned:DIR/learned_loss.json")`` loads it
    formula.txt          the best loss in words, its fitness and the search's cost
    fitness.png          the best fitness per generation (per meta-epoch: the held-out soft Dice)
    references.json      the fitness of Dice, CE and Dice + CE trained the same way on the same proxy

The search is seeded by ``[experiment] seed``; rerunning the same command continues an interrupted search
from its last checkpoint (``resume=False``/``--no-resume`` deletes the old results and starts over).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .config import LearnConfig
from .fitness import REFERENCE_LOSSES, WORST_FITNESS, build_task, reference_spec
from .format import save_learned_loss
from .parallel import Evaluator

log = logging.getLogger("spineloss.learning")

__all__ = ["run_learning"]

_OUTPUTS = ("checkpoint.json", "meta_checkpoint.pt", "history.csv", "evaluations.csv", "learned_loss.json",
            "formula.txt", "fitness.png", "references.json")
FITNESS_DEFINITION = ("validation Dice (mean over foreground labels, original grid) of a U-Net trained from scratch "
                      "with the loss on the proxy task's training cases, on its validation cases (never test cases)")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    from ..experiment import _flatten
    a, b = _flatten(dict(old)), _flatten(dict(new))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _prepare_folder(out: Path, record: dict, resume: bool) -> None:
    """Check that ``out`` holds nothing or this very search; ``resume=False`` clears an old one."""
    path = out / "learn.json"
    if path.exists() and resume:
        old = json.loads(path.read_text())
        diffs = _differences(old, record)
        if diffs:
            raise ValueError(f"{out} holds a search with another method or config ({'; '.join(diffs[:6])}"
                             f"{'; ...' if len(diffs) > 6 else ''}); rerun with --no-resume to start over there (its "
                             "results are deleted), or use another --out")
    if not resume:
        for name in _OUTPUTS:
            (out / name).unlink(missing_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _references(out: Path, task, evaluator: Evaluator) -> dict[str, float]:
    """The fitness of each of :data:`~spineloss.learning.fitness.REFERENCE_LOSSES` on this proxy task, trained
    once and kept in ``out/references.json`` (a resumed search reads them back)."""
    path = out / "references.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    todo = [name for name in REFERENCE_LOSSES if name not in known]
    if todo:
        for name, res in zip(todo, evaluator.map([reference_spec(name, task) for name in todo])):
            known[name] = float(res["fitness"])
        atomic_write_text(path, json.dumps(known, indent=2) + "\n")
    return {name: known[name] for name in REFERENCE_LOSSES}


def run_learning(method: str, config: LearnConfig, out_dir: str | Path | None = None, *, resume: bool = True,
                 progress: bool = True, workers: int | None = None,
                 evaluate_fn: Callable[[Mapping[str, Any]], dict] | None = None,
                 on_generation_end: Callable[[dict], None] | None = None, backend: Any = None) -> dict:
    """Run (or resume) the ``method`` search of ``config``; returns ``{"out", "fitness", "document", "readable",
    "cost"}``.

    ``workers``: evaluation processes (default ``[learn] workers``; 0: one per core). ``evaluate_fn``: what
    scores a candidate spec (default :func:`spineloss.learning.fitness.evaluate_detailed`; a module-level
    function when ``workers > 1``). ``on_generation_end(row)``: called after each generation's (epoch's)
    checkpoint is written. ``backend``: where the evaluations run (:class:`~spineloss.learning.parallel.Evaluator`):
    ``None`` for the grid's local backend with ``workers`` processes, or a backend object (anything with
    ``map(fn, items)``, e.g. ``spineloss.backends.get_backend("ray")``), which the caller closes.
    """
    from .. import __version__
    config.check_method(method)
    out = Path(out_dir or config.output or f"runs/{config.name}")
    out.mkdir(parents=True, exist_ok=True)
    record = json.loads(json.dumps({"method": method, "config": config.record(method)}, default=float))
    if method == "genetic":  # a checkpoint's cached fitness values hold for the formulas' meaning of its version
        from .format import VERSION
        record["expression_format_version"] = VERSION
    _prepare_folder(out, record, resume)
    task = build_task(config, out)
    t0 = time.perf_counter()
    with Evaluator(config.workers if workers is None else workers, fn=evaluate_fn, backend=backend) as evaluator:
        if method == "meta":
            from .meta_search import run_meta
            result = run_meta(out, config.meta, task, evaluator, config.seed, resume=resume, progress=progress,
                              on_epoch_end=on_generation_end)
            cost = {"epochs": len(result["history"]),
                    "seconds": round(sum(r["seconds"] for r in result["history"]), 1),
                    "meta_steps": len(result["history"]) * config.meta.steps_per_epoch}
            extra = {"screening": result["screening"]}
        else:
            from .search import SearchContext, load_checkpoint
            state = load_checkpoint(out) if resume else None
            if method == "genetic":
                from .genetic import run_genetic as search
                cfg = config.genetic
                generations, per = 1 + cfg.generations + cfg.cma_generations, cfg.population
            else:
                from .taylor_search import run_taylor as search
                cfg = config.taylor
                generations, per = 1 + cfg.generations, cfg.population
            ctx = SearchContext(method, out, task.to_dict(), evaluator, generations, per, state, progress,
                                on_generation_end)
            try:
                result = search(ctx, cfg, config.seed, state)
            finally:
                ctx.close()
            cost, extra = ctx.cost(), {}
        references = _references(out, task, evaluator)
    if result["fitness"] <= WORST_FITNESS:
        raise ValueError(f"the {method} search found no loss that trains (every candidate was rejected or failed: "
                         f"see {out / 'evaluations.csv'} for the reasons); nothing was written to "
                         f"{out / 'learned_loss.json'}. Check the proxy task in the config ([data], [training])")
    doc = result["document"]
    source = {"method": method, "fitness": result["fitness"], "fitness_definition": FITNESS_DEFINITION,
              "cost": cost, "task": task.summary(), "config": record["config"], "spineloss": __version__,
              "seconds_this_session": round(time.perf_counter() - t0, 1), "references": references, **extra}
    save_learned_loss(out / "learned_loss.json", doc, source)
    readable = doc.get("readable", "")
    text = [f"method: {method}", f"loss: {readable}", f"fitness: {result['fitness']:.4f} ({FITNESS_DEFINITION})",
            "on the same proxy: " + ", ".join(f"{k} {v:.4f}" for k, v in references.items()),
            f"cost: {json.dumps(cost)}", f"use it: losses = [\"learned:{out / 'learned_loss.json'}\"]"]
    if extra.get("screening", "passes every rule") != "passes every rule":
        log.warning("the learned %s loss fails a screening rule: %s", method, extra["screening"])
        text.insert(3, f"WARNING, it fails a screening rule: {extra['screening']}")
    if doc["kind"] == "expression":
        text.insert(2, f"formula: {doc['formula']}  with {json.dumps(doc['constants'])}")
    atomic_write_text(out / "formula.txt", "\n".join(text) + "\n")
    from ..report.learning_curve import plot_learning
    plot_learning(out)
    return {"out": out, "fitness": result["fitness"], "document": doc, "readable": readable, "cost": cost}
