"""Where the work of a grid or a search runs: this process (``local``) or a Ray cluster (``ray``).

Both backends take the same two kinds of work:

* :meth:`run_jobs`: long jobs with a progress view, each one (loss, fold) training run of an experiment
  grid. A job is a plain function and its arguments (:class:`Job`); the backend reports
  start / epoch / done / failed to a :class:`JobEvents` (``spineloss.progress.GridProgress`` in the CLI).
* :meth:`map`: many short evaluations (the fitness of loss candidates in a search), results in order.

    from spineloss.backends import get_backend
    backend = get_backend("ray", address="auto", cpus_per_task=2)
    fitness = backend.map(evaluate, candidates)

``local`` runs jobs one after the other in this process (a failing job raises at once, as it always
did) and maps with a pool of worker processes. ``ray`` (``pip install spineloss[ray]``) makes each job
a Ray task with its resources (one GPU where the cluster has GPUs, else ``cpus_per_task`` CPUs), retries a
job whose task failed or whose worker died once, and goes on with the others when it fails again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

__all__ = ["BACKENDS", "Backend", "Job", "JobEvents", "GridFailed", "add_backend_arguments", "backend_from_arguments",
           "get_backend", "map_with_results"]

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args, **kwargs)``, named ``key`` (e.g. ``"dice fold 0"``).

    ``watch``: a run folder whose ``history.csv`` rows tell how many epochs the job has finished (the
    progress of a job running elsewhere); ``start_epoch``: the epochs it had before this invocation;
    ``retry_kwargs``: what a retry changes in ``kwargs`` (a grid run retried resumes from its checkpoint).
    ``fn`` must be importable by name where it runs (a module-level function) and take the keyword
    ``on_epoch_end`` (called with the 1-based number of finished epochs; a backend may pass ``None``).
    """

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    watch: Path | None = None
    start_epoch: int = 0
    retry_kwargs: dict = field(default_factory=dict)


class JobEvents(Protocol):
    """What a backend reports while it runs jobs (``GridProgress`` has these methods)."""

    def start(self, name: str, start_epoch: int = 0) -> None: ...
    def epoch(self, epoch: int, name: str | None = None) -> None: ...


class GridFailed(RuntimeError):
    """Some jobs failed twice; ``failures`` maps each one's key to its last error. The others finished."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = dict(failures)
        lines = "\n".join(f"  {k}: {v}" for k, v in self.failures.items())
        super().__init__(f"{len(self.failures)} run(s) failed twice (the finished runs are kept; run the "
                         f"same command again to retry them):\n{lines}")


class Backend(Protocol):
    name: str

    def run_jobs(self, jobs: Sequence[Job], events: JobEvents | None,
                 on_done: Callable[[Job, Any], None],
                 on_failed: Callable[[Job, str], None] | None = None) -> None: ...

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            on_result: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(item) for item in items]`` in order; ``on_result(index, result)`` as each arrives. (Use
        :func:`map_with_results` to call a backend whose ``map`` takes no ``on_result``.)"""
        ...

    def probe(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` where the jobs run (what a worker resolves "auto" devices to, for instance)."""
        ...

    def close(self) -> None: ...


def map_with_results(backend: Any, fn: Callable[[Any], Any], items: Sequence[Any],
                     on_result: Callable[[int, Any], None] | None = None) -> list:
    """``backend.map(fn, items)`` with ``on_result(index, result)`` called for each result: passed on to a
    ``map`` that takes the keyword (as each result arrives), else called in order once ``map`` returns
    (any executor with ``map(fn, items) -> list`` works)."""
    import inspect
    items = list(items)
    if on_result is None:
        return list(backend.map(fn, items))
    try:
        params = inspect.signature(backend.map).parameters
        takes = "on_result" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        takes = False
    if takes:
        return list(backend.map(fn, items, on_result=on_result))
    results = list(backend.map(fn, items))
    if len(results) != len(items):
        raise RuntimeError(f"{type(backend).__name__}.map returned {len(results)} results for {len(items)} items")
    for i, result in enumerate(results):
        on_result(i, result)
    return results


def get_backend(name: str | Backend = "local", **options: Any) -> Backend:
    """The backend ``name`` (``"local"`` or ``"ray"``) built with ``options``, or ``name`` itself when
    it is a backend already. ``local``: ``workers`` (processes for :meth:`map`, default 1),
    ``threads_per_worker`` (PyTorch threads of each pool worker, default ``cores // workers``).
    ``ray``: ``address`` (None starts a local Ray instance; ``"auto"`` or ``HOST:PORT`` joins a cluster),
    ``cpus_per_task`` (default 1), ``gpus_per_task`` (default: 1 where the cluster has GPUs, else 0),
    ``num_cpus`` (of a local instance)."""
    if not isinstance(name, str):
        return name
    if name == "local":
        from .local import LocalBackend
        return LocalBackend(**options)
    if name == "ray":
        from .ray import RayBackend
        return RayBackend(**options)
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")


def add_backend_arguments(parser, what: str) -> None:
    """``--backend``, ``--address`` and ``--cpus-per-task`` on a command's argparse ``parser``; ``what`` names
    one unit of work ("run", "evaluation")."""
    parser.add_argument("--backend", choices=list(BACKENDS), default="local",
                        help=f"local: here (default); ray: every {what} a Ray task "
                             "(pip install 'spineloss[ray]'; docs/cluster.md)")
    parser.add_argument("--address", default=None,
                        help="with --backend ray: 'auto' or HOST:PORT of a running cluster (default: start a local "
                             "Ray instance on this machine)")
    parser.add_argument("--cpus-per-task", type=float, default=1, metavar="N",
                        help=f"with --backend ray: CPUs (and PyTorch threads, unless [training] threads is set) per "
                             f"{what} (default 1); where the cluster has GPUs each {what} also takes one GPU")


def backend_from_arguments(args) -> Backend | None:
    """The backend the parsed ``--backend`` / ``--address`` / ``--cpus-per-task`` ask for (``None``: local)."""
    if args.backend == "ray":
        return get_backend("ray", address=args.address, cpus_per_task=args.cpus_per_task)
    if args.address is not None:
        raise ValueError("--address is for --backend ray")
    return None


def epochs_in(run_dir: Path | None) -> int:
    """Epochs a run folder's ``history.csv`` has (0 when there is none yet)."""
    if run_dir is None:
        return 0
    path = Path(run_dir) / "history.csv"
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0
