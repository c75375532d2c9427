"""The local backend: grid runs one after the other in this process, evaluations in a process pool."""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Sequence

from . import Job, JobEvents

__all__ = ["LocalBackend"]


class LocalBackend:
    """Runs jobs sequentially in this process; an exception in a job propagates at once (nothing is
    retried: on one machine a failure is a bug or a bad config, not a lost worker).

    Args:
        workers: processes for :meth:`map` (1: in this process, no pool). The pool starts processes with
            ``spawn`` (a forked PyTorch process can deadlock in its thread pools).
    """

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"local backend: workers must be an integer >= 1, got {workers!r}")
        self.workers = workers

    def run_jobs(self, jobs: Sequence[Job], events: JobEvents | None,
                 on_done: Callable[[Job, Any], None],
                 on_failed: Callable[[Job, str], None] | None = None) -> None:
        for job in jobs:
            if events is not None:
                events.start(job.key, job.start_epoch)
            tick = None if events is None else (lambda epoch, key=job.key: events.epoch(epoch, key))
            on_done(job, job.fn(*job.args, on_epoch_end=tick, **job.kwargs))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with multiprocessing.get_context("spawn").Pool(min(self.workers, len(items))) as pool:
            return pool.map(fn, items)

    def close(self) -> None:
        pass
