"""What every loss search shares: the evaluation cache, the logs, the checkpoint and the progress line.

A search (:mod:`.genetic`, :mod:`.taylor_search`) proposes learned-loss documents generation by generation and
hands them to :meth:`SearchContext.evaluate` with a cache key each (a canonical formula, rounded
coefficients): a key seen before is never trained again, also after a resume. After each generation the
search calls :meth:`SearchContext.end_generation`, which appends the history row and writes, atomically::

    <out>/checkpoint.json     the search's state (population / CMA-ES state, random generator), the cache,
                              the history and every evaluation: the resume point
    <out>/history.csv         one row per generation: best fitness so far, the best and mean of its members that
                              trained (a rejected or failed one scores WORST_FITNESS = -1), counts
    <out>/evaluations.csv     one row per trained or rejected candidate: formula, fitness, status, reason, seconds
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..progress import GridProgress, format_duration
from .fitness import WORST_FITNESS, candidate_spec

__all__ = ["CHECKPOINT", "HISTORY_FIELDS", "SearchContext", "SearchProgress", "load_checkpoint"]

CHECKPOINT = "checkpoint.json"
HISTORY_FIELDS = ["generation", "phase", "evaluated", "cached", "rejected", "best_fitness", "generation_best",
                  "generation_mean", "best", "seconds"]
EVALUATION_FIELDS = ["generation", "fitness", "status", "seconds", "candidate", "reason"]


class SearchProgress(GridProgress):
    """One updating line: ``genetic: 3/9 generations done | generation 4: 5/12 evaluated | best Dice 0.8123 |
    ~6 min left`` (the grid's view, :class:`spineloss.progress.GridProgress`, counting generations and
    evaluations instead of runs and epochs)."""

    def __init__(self, method: str, generations: int, evaluations: int, interactive: bool | None = None) -> None:
        super().__init__(generations, evaluations, interactive=interactive)
        self.method = method
        self.best: float | None = None

    def line(self) -> str:
        parts = [f"{self.method}: {self.done}/{self.total} generations done"]
        if self.current is not None:
            parts.append(f"{self.current}: {self.current_epoch}/{self.epochs} evaluated")
        if self.best is not None:
            parts.append(f"best Dice {self.best:.4f}")
        eta = self.seconds_left()
        parts.append("time left unknown yet" if eta is None else f"~{format_duration(eta)} left")
        return " | ".join(parts)


def load_checkpoint(out_dir: Path) -> dict | None:
    """The saved state of a search in ``out_dir``, or ``None``."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable search checkpoint ({exc}); start over with --no-resume") from None


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


class SearchContext:
    """Shared state of one search run (module docstring).

    Args:
        method: ``"genetic"`` or ``"taylor"`` (written into the checkpoint and the progress line).
        out_dir: the search's folder.
        task: the proxy task as a dict (:meth:`~spineloss.learning.fitness.ProxyTask.to_dict`).
        evaluator: an :class:`~spineloss.learning.parallel.Evaluator`.
        generations: the number of generations the search will run (for the progress line).
        evaluations: candidates per generation (for the progress line's estimate).
        state: a checkpoint to resume from (:func:`load_checkpoint`), or ``None``.
        progress: show the progress line on stderr.
        on_generation_end: called with the generation's history row after the checkpoint is written.
    """

    def __init__(self, method: str, out_dir: Path, task: Mapping[str, Any], evaluator, generations: int,
                 evaluations: int, state: Mapping[str, Any] | None = None, progress: bool = True,
                 on_generation_end: Callable[[dict], None] | None = None) -> None:
        self.method, self.out_dir, self.task, self.evaluator = method, Path(out_dir), dict(task), evaluator
        state = dict(state or {})
        if state and state.get("method") != method:
            raise ValueError(f"{self.out_dir / CHECKPOINT} belongs to a {state.get('method')!r} search, not "
                             f"{method!r}; use another --out, or --no-resume to start over")
        self.cache: dict[str, dict] = dict(state.get("cache", {}))
        self.history: list[dict] = list(state.get("history", []))
        self.evaluations: list[dict] = list(state.get("evaluations", []))
        self.on_generation_end = on_generation_end
        self.view = SearchProgress(method, generations, evaluations, interactive=None if progress else False)
        self.show = progress
        best = [r["best_fitness"] for r in self.history if r.get("best_fitness") is not None]
        self.view.best = max(best) if best else None
        for _ in self.history:
            self.view.done += 1
        self._t0: float | None = None
        self._counts = {"evaluated": 0, "cached": 0, "rejected": 0}

    # -- one generation ---------------------------------------------------------------------------------
    def start_generation(self, label: str, count: int) -> None:
        """Begin a generation of ``count`` candidates (``label`` names it in the progress line)."""
        self._t0 = time.perf_counter()
        self._counts = {"evaluated": 0, "cached": 0, "rejected": 0}
        self.view.epochs = max(1, count)
        if self.show:
            self.view.start(label)

    def evaluate(self, docs: Sequence[Mapping[str, Any]], keys: Sequence[str], generation: int,
                 labels: Sequence[str] | None = None, screen: bool = True) -> list[dict]:
        """The result (``fitness``, ``status``, ``reason``, ``seconds``) of each document; a key in the cache
        is not evaluated again, a key repeated within ``docs`` once. ``labels``: readable text per document
        for the logs (default: the key)."""
        labels = list(labels) if labels is not None else list(keys)
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in self.cache and key not in todo:
                todo[key] = i
        self._counts["cached"] += len(keys) - len(todo)
        specs = [candidate_spec(docs[i], self.task, screen) for i in todo.values()]
        order = list(todo)
        done = 0

        def on_result(_: int, __: dict) -> None:
            nonlocal done
            done += 1
            if self.show:
                self.view.epoch(len(keys) - len(todo) + done)

        results = self.evaluator.map(specs, on_result=on_result) if specs else []
        for key, res in zip(order, results):
            res = {k: _finite(v) for k, v in dict(res).items()}
            self.cache[key] = res
            i = todo[key]
            self.evaluations.append({"generation": generation, "fitness": res["fitness"], "status": res["status"],
                                     "seconds": res.get("seconds"), "candidate": labels[i],
                                     "reason": res.get("reason", "")})
            self._counts["evaluated" if res["status"] == "trained" else "rejected"] += 1
        return [self._fitness_of(self.cache[k]) for k in keys]

    @staticmethod
    def _fitness_of(res: Mapping[str, Any]) -> dict:
        out = dict(res)
        out["fitness"] = float(res["fitness"]) if res.get("fitness") is not None else WORST_FITNESS
        return out

    def end_generation(self, generation: int, phase: str, fitnesses: Sequence[float], best_fitness: float,
                       best_label: str, state: Mapping[str, Any]) -> dict:
        """Record the generation (history row), write the checkpoint and the CSVs, update the progress line;
        returns the row."""
        fits = [float(f) for f in fitnesses if float(f) > WORST_FITNESS]  # the members that trained
        row = {"generation": generation, "phase": phase, **self._counts,
               "best_fitness": round(float(best_fitness), 6),
               "generation_best": round(max(fits), 6) if fits else None,
               "generation_mean": round(sum(fits) / len(fits), 6) if fits else None,
               "best": best_label, "seconds": round(time.perf_counter() - (self._t0 or time.perf_counter()), 2)}
        self.history.append(row)
        self.save(state)
        self.view.best = row["best_fitness"]
        message = (f"[{self.method} {phase} generation {generation}] best Dice {row['best_fitness']:.4f} "
                   f"({row['evaluated']} trained, {row['rejected']} rejected, {row['cached']} cached, "
                   f"{row['seconds']:.0f} s): {best_label}")
        if self.show:
            self.view.finish(message)
        if self.on_generation_end is not None:
            self.on_generation_end(row)
        return row

    # -- files ------------------------------------------------------------------------------------------
    def save(self, state: Mapping[str, Any]) -> None:
        """Write the checkpoint (``state`` plus the cache, history and evaluations) and the two CSVs."""
        doc = {"method": self.method, **state, "cache": self.cache, "history": self.history,
               "evaluations": self.evaluations}
        atomic_write_text(self.out_dir / CHECKPOINT, json.dumps(doc, allow_nan=False))
        _write_csv(self.out_dir / "history.csv", HISTORY_FIELDS, self.history)
        _write_csv(self.out_dir / "evaluations.csv", EVALUATION_FIELDS, self.evaluations)

    def close(self) -> None:
        if self.show:
            self.view.close()

    def cost(self) -> dict:
        """The search's cost so far: trainings, rejections, wall time of the generations."""
        return {"trained": sum(1 for e in self.evaluations if e["status"] == "trained"),
                "rejected_or_failed": sum(1 for e in self.evaluations if e["status"] != "trained"),
                "generations": len(self.history),
                "seconds": round(sum(r["seconds"] for r in self.history), 1)}


def _write_csv(path: Path, fieldnames: list[str], rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fieldnames})
    atomic_write_text(path, buf.getvalue())

