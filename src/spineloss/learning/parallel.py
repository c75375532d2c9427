"""Running candidate evaluations in parallel on the machine's cores (a local process pool).

:class:`Evaluator` maps a plain function (default :func:`spineloss.learning.fitness.evaluate_detailed`) over
plain-data candidate specs. With one worker it runs in this process; with more, in a pool of ``spawn``-ed
processes (a fresh interpreter each: no forked OpenMP state), each limited to ``cores // workers`` torch
threads so the workers do not fight over the cores. Results come back in the order of the specs whatever
order they finish in, so a search's numbers do not depend on the number of workers scheduling-wise (the
evaluations themselves are seeded; on the CPU a different thread count can change the last bits).
Any executor with ``map(fn, items)`` (:mod:`spineloss.backends`, e.g. Ray) can run the same function on the
same specs instead (``backend=``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Evaluator", "available_cores"]


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(int(threads))


class Evaluator:
    """Evaluate candidate specs with ``fn`` on ``workers`` processes (0: one per core; 1: in this process).

    Use as a context manager (the pool starts on the first parallel call and stops on exit)::

        with Evaluator(workers=2) as ev:
            results = ev.map(specs, on_result=lambda i, r: ...)
    """

    def __init__(self, workers: int = 0, fn: Callable[[Mapping[str, Any]], dict] | None = None,
                 backend: Any = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0: one per core), got {workers!r}")
        if fn is None:
            from .fitness import evaluate_detailed
            fn = evaluate_detailed
        self.fn = fn
        #: another executor (e.g. ``spineloss.backends.get_backend("ray")``): any object with
        #: ``map(fn, items) -> list`` in order; then ``workers`` is not used
        self.backend = backend
        self.workers = workers or available_cores()
        self.threads = max(1, available_cores() // self.workers)
        self._pool = None

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (running evaluations are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _get_pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads,))
        return self._pool

    def map(self, specs: Sequence[Mapping[str, Any]],
            on_result: Callable[[int, dict], None] | None = None) -> list[dict]:
        """``[fn(spec) for spec in specs]``, in parallel when there are several workers and specs;
        ``on_result(index, result)`` is called as each one finishes (for a progress view)."""
        results: list[dict | None] = [None] * len(specs)
        if self.backend is not None and specs:
            results = list(self.backend.map(self.fn, list(specs)))
            for i, res in enumerate(results):
                if on_result is not None:
                    on_result(i, res)
            return results  # type: ignore[return-value]
        if self.workers <= 1 or len(specs) <= 1:
            for i, spec in enumerate(specs):
                results[i] = self.fn(spec)
                if on_result is not None:
                    on_result(i, results[i])
            return results  # type: ignore[return-value]
        from concurrent.futures import as_completed
        pool = self._get_pool()
        futures = {pool.submit(self.fn, spec): i for i, spec in enumerate(specs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_result is not None:
                    on_result(i, results[i])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return results  # type: ignore[return-value]
