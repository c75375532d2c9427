"""The local backend: grid runs one after the other in this process, evaluations in a process pool.

The pool (:meth:`LocalBackend.map`) is the one process pool of spineloss: the loss searches of
:mod:`spineloss.learning` evaluate their candidates through it (:class:`spineloss.learning.parallel.Evaluator`),
as the grid runs its jobs through :meth:`LocalBackend.run_jobs`. Its workers are ``spawn``-ed (a fresh
interpreter each: a forked PyTorch process can deadlock in its thread pools) and each caps PyTorch to
``threads_per_worker`` threads (default ``cores // workers``), so the workers do not fight over the cores.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Any, Callable, Sequence

from . import Job, JobEvents

__all__ = ["LocalBackend", "available_cores"]


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(threads: int) -> None:
    """Runs once in each pool worker: cap PyTorch's intra-op threads."""
    import torch
    torch.set_num_threads(int(threads))


class LocalBackend:
    """Runs jobs sequentially in this process; an exception in a job propagates at once (nothing is
    retried: on one machine a failure is a bug or a bad config, not a lost worker).

    Args:
        workers: processes for :meth:`map` (1: in this process, no pool). The pool starts processes with
            ``spawn`` (a forked PyTorch process can deadlock in its thread pools) on the first :meth:`map`
            that needs it and keeps them until :meth:`close` (or the end of a ``with`` block).
        threads_per_worker: PyTorch threads of each pool worker (default ``max(1, cores // workers)``,
            :func:`available_cores`); not applied when :meth:`map` runs in this process.
    """

    name = "local"

    def __init__(self, workers: int = 1, threads_per_worker: int | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"local backend: workers must be an integer >= 1, got {workers!r}")
        if threads_per_worker is not None and (isinstance(threads_per_worker, bool)
                                               or not isinstance(threads_per_worker, int) or threads_per_worker < 1):
            raise ValueError(f"local backend: threads_per_worker must be an integer >= 1 or None (cores // "
                             f"workers), got {threads_per_worker!r}")
        self.workers = workers
        self.threads_per_worker = threads_per_worker or max(1, available_cores() // workers)
        self._pool = None

    def __enter__(self) -> "LocalBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run_jobs(self, jobs: Sequence[Job], events: JobEvents | None,
                 on_done: Callable[[Job, Any], None],
                 on_failed: Callable[[Job, str], None] | None = None) -> None:
        for job in jobs:
            if events is not None:
                events.start(job.key, job.start_epoch)
            tick = None if events is None else (lambda epoch, key=job.key: events.epoch(epoch, key))
            on_done(job, job.fn(*job.args, on_epoch_end=tick, **job.kwargs))

    def _get_pool(self):
        if self._pool is None:
            from concurrent.futures import ProcessPoolExecutor
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads_per_worker,))
        return self._pool

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            on_result: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(item) for item in items]``, in the order of ``items`` whatever order they finish in.

        With one worker, or at most one item, in this process; else on the pool (``fn`` and the items must
        pickle: a module-level function and plain data). ``on_result(index, result)`` is called here as each
        one finishes (for a progress view). An exception in ``fn`` cancels the items not started and is
        raised here.
        """
        items = list(items)
        results: list[Any] = [None] * len(items)
        if self.workers == 1 or len(items) <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                if on_result is not None:
                    on_result(i, results[i])
            return results
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool
        pool = self._get_pool()
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_result is not None:
                    on_result(i, results[i])
        except BaseException as exc:
            for future in futures:
                future.cancel()
            if isinstance(exc, BrokenProcessPool):  # a worker died (killed, out of memory): a fresh pool next time
                self.close()
                raise RuntimeError(f"local backend: a pool worker died while evaluating ({exc})") from exc
            raise
        return results

    def probe(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def close(self) -> None:
        """Stop the pool's worker processes (evaluations not started are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
