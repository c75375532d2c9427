"""The Ray backend: every grid run and every search evaluation is a Ray task (``pip install spineloss[ray]``).

Resources: a task asks for ``gpus_per_task`` GPUs (default: 1 where the cluster has any GPU, else 0) and
``cpus_per_task`` CPUs (default 1); inside, PyTorch uses that many threads. Ray schedules as many tasks at
once as the cluster's resources allow.

Storage: a task writes its run folder where the driver would (the output folder must be on storage every
node sees, as the data folder must; on one machine it always is). The driver checks each finished run's
``metrics.json`` and says so when it cannot see it.

Failures: Ray's own retries are off; a task that raises, or whose worker process dies, is submitted once
more (a grid run resumes from its ``last.pt``), with a warning naming it. A job that fails twice is
reported to ``on_failed`` and the others go on; :meth:`map` raises instead (a search needs every value).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from . import Job, JobEvents, epochs_in

__all__ = ["RayBackend", "ATTEMPT_FILE"]

log = logging.getLogger("spineloss.backends.ray")

#: Written into a job's run folder when its task starts: ``{"token", "pid", "host", "attempt"}``.
ATTEMPT_FILE = "attempt.json"


def _run_task(fn: Callable, args: tuple, kwargs: dict, threads: int, watch: str | None, token: str,
              attempt: int, job: bool) -> Any:
    """The body of every task: pin PyTorch's threads to the task's CPUs, say where it runs, call ``fn``."""
    import torch
    torch.set_num_threads(max(1, int(threads)))
    if watch is not None:
        from ..atomic import atomic_write_text
        Path(watch).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(watch) / ATTEMPT_FILE, json.dumps(
            {"token": token, "pid": os.getpid(), "host": socket.gethostname(), "attempt": attempt}))
    return fn(*args, on_epoch_end=None, **kwargs) if job else fn(*args, **kwargs)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    last = next((line for line in reversed(text) if line.strip()), "")
    return f"{type(exc).__name__}: {last[:300]}"


class RayBackend:
    """Jobs and evaluations as Ray tasks (see the module docstring).

    Args:
        address: ``None`` starts a local Ray instance on this machine (stopped by :meth:`close`);
            ``"auto"`` joins the cluster this machine belongs to; ``"HOST:PORT"`` a given head node.
        cpus_per_task: CPUs each task asks for, and PyTorch threads it uses (default 1).
        gpus_per_task: GPUs each task asks for (default: 1 where the cluster has GPUs, else 0).
        num_cpus: CPUs of a local instance (default: all of this machine's).
        poll_seconds: how often the driver looks at the running jobs' progress.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_task: float = 1, gpus_per_task: float | None = None,
                 num_cpus: int | None = None, poll_seconds: float = 2.0) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ValueError("the ray backend needs Ray, an optional extra: pip install 'spineloss[ray]'") from exc
        if not (isinstance(cpus_per_task, (int, float)) and cpus_per_task > 0):
            raise ValueError(f"ray backend: cpus_per_task must be > 0, got {cpus_per_task!r}")
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=256 * 2**20,
                         configure_logging=False)
            else:
                ray.init(address=address, configure_logging=False)
            self._owns = True
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        self.gpus_per_task = (1.0 if cluster_gpus >= 1 else 0.0) if gpus_per_task is None else float(gpus_per_task)
        self.cpus_per_task = float(cpus_per_task)
        self.poll_seconds = float(poll_seconds)
        self._task = ray.remote(max_retries=0)(_run_task).options(num_cpus=self.cpus_per_task,
                                                                 num_gpus=self.gpus_per_task)

    @property
    def slots(self) -> int:
        """How many tasks the cluster can run at once with these resources."""
        res = self._ray.cluster_resources()
        by_cpu = int(res.get("CPU", 1) // self.cpus_per_task)
        return max(1, min(by_cpu, int(res.get("GPU", 0) // self.gpus_per_task)) if self.gpus_per_task else by_cpu)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict, watch: Path | None, attempt: int, job: bool):
        token = uuid.uuid4().hex
        ref = self._task.remote(fn, args, kwargs, max(1, int(self.cpus_per_task)),
                                None if watch is None else str(watch), token, attempt, job)
        return ref, token

    def run_jobs(self, jobs: Sequence[Job], events: JobEvents | None,
                 on_done: Callable[[Job, Any], None],
                 on_failed: Callable[[Job, str], None] | None = None) -> None:
        ray = self._ray
        pending: dict[Any, tuple[Job, int, str]] = {}
        shown: dict[str, int] = {}          # jobs the progress view shows as running -> epochs seen
        for job in jobs:
            ref, token = self._submit(job.fn, job.args, job.kwargs, job.watch, 1, True)
            pending[ref] = (job, 1, token)

        def show(job: Job, token: str | None) -> None:
            if events is None:
                return
            if job.key not in shown:
                running = token is None or _attempt_token(job.watch) == token
                if not running:
                    return
                events.start(job.key, job.start_epoch)
                shown[job.key] = job.start_epoch
            epochs = epochs_in(job.watch)
            if epochs > shown[job.key]:
                events.epoch(epochs, job.key)
                shown[job.key] = epochs

        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
            for job, _, token in pending.values():
                show(job, token)
            for ref in ready:
                job, attempt, _ = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the task raised, or its worker died (RayTaskError, WorkerCrashedError)
                    why = _describe(exc)
                    if attempt == 1:
                        log.warning("%s failed (%s); retrying it once", job.key, why)
                        ref2, token2 = self._submit(job.fn, job.args, {**job.kwargs, **job.retry_kwargs},
                                                    job.watch, 2, True)
                        pending[ref2] = (job, 2, token2)
                        continue
                    log.error("%s failed again (%s); going on with the other runs", job.key, why)
                    show(job, None)
                    if on_failed is not None:
                        on_failed(job, why)
                    continue
                show(job, None)
                on_done(job, result)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            on_result: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(item) for item in items]`` as Ray tasks; a failed task is retried once, then this raises.
        ``on_result(i, result)`` is called as each result arrives, in order."""
        ray = self._ray
        refs = [self._submit(fn, (item,), {}, None, 1, False)[0] for item in items]
        out = []
        for i, (item, ref) in enumerate(zip(items, refs)):
            try:
                out.append(ray.get(ref))
            except Exception as exc:
                log.warning("an evaluation failed (%s); retrying it once", _describe(exc))
                try:
                    out.append(ray.get(self._submit(fn, (item,), {}, None, 2, False)[0]))
                except Exception as exc2:
                    raise RuntimeError(f"an evaluation failed twice on Ray: {_describe(exc2)}") from exc2
            if on_result is not None:
                on_result(i, out[-1])
        return out

    def probe(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in one task with the jobs' resources (e.g. how a worker resolves ``device = "auto"``)."""
        return self._ray.get(self._submit(fn, args, {}, None, 1, False)[0])

    def close(self) -> None:
        """Stop the local Ray instance this backend started (a cluster joined by address is left alone)."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def _attempt_token(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return None
    try:
        return json.loads((Path(run_dir) / ATTEMPT_FILE).read_text()).get("token")
    except (OSError, ValueError):
        return None


def wait_for_attempt(run_dir: Path, timeout: float = 120.0) -> dict:
    """The ``attempt.json`` of a run folder once a task has started there (for tests and tools)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            return json.loads((Path(run_dir) / ATTEMPT_FILE).read_text())
        except (OSError, ValueError):
            time.sleep(0.2)
    raise TimeoutError(f"no task started in {run_dir} within {timeout:.0f} s")
