"""Running candidate evaluations through a backend: the grid's local process pool by default, or Ray.

:class:`Evaluator` maps a plain function (default :func:`spineloss.learning.fitness.evaluate_detailed`) over
plain-data candidate specs with a :mod:`spineloss.backends` backend, the same one an experiment grid runs on:
by default :class:`spineloss.backends.local.LocalBackend` with ``workers`` processes (one: in this process;
more: a pool of ``spawn``-ed processes, each capped to ``cores // workers`` torch threads so the workers do
not fight over the cores), or the backend given (e.g. ``get_backend("ray", address="auto")``). Results come
back in the order of the specs whatever order they finish in, so a search's numbers do not depend on the
number of workers scheduling-wise (the evaluations themselves are seeded; on the CPU a different thread
count can change the last bits).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..backends.local import available_cores

__all__ = ["Evaluator", "available_cores"]


class Evaluator:
    """Evaluate candidate specs with ``fn`` through a backend.

    Args:
        workers: processes of the default local backend (0: one per core; 1: in this process). Not used
            when ``backend`` is an object.
        fn: what scores one spec (default :func:`~spineloss.learning.fitness.evaluate_detailed`); a
            module-level function when it runs in other processes.
        backend: ``None`` or ``"local"``: a :class:`~spineloss.backends.local.LocalBackend` of ``workers``
            processes, owned (closed) by the evaluator; ``"ray"``: a default Ray backend, owned too; or a
            backend object (anything with ``map(fn, items)``, optionally taking ``on_result``), which the
            caller keeps and closes.

    Use as a context manager (a local pool starts on the first parallel call and stops on exit)::

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
        self.workers = workers or available_cores()
        self._owns = backend is None or isinstance(backend, str)
        if backend is None or backend == "local":
            from ..backends.local import LocalBackend
            backend = LocalBackend(self.workers)
        elif isinstance(backend, str):
            from ..backends import get_backend
            backend = get_backend(backend)
        if not callable(getattr(backend, "map", None)):
            raise ValueError(f"backend must be 'local', 'ray' or an object with map(fn, items), got {backend!r}")
        #: where the evaluations run (:mod:`spineloss.backends`)
        self.backend = backend

    @property
    def threads(self) -> int | None:
        """PyTorch threads of each local pool worker (``None`` for another backend)."""
        return getattr(self.backend, "threads_per_worker", None)

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the backend when the evaluator made it (a local pool's workers; a Ray instance it started)."""
        if self._owns and hasattr(self.backend, "close"):
            self.backend.close()

    def map(self, specs: Sequence[Mapping[str, Any]],
            on_result: Callable[[int, dict], None] | None = None) -> list[dict]:
        """``[fn(spec) for spec in specs]`` on the backend; ``on_result(index, result)`` is called as each one
        finishes (for a progress view; in order after the map for a backend whose ``map`` cannot report)."""
        from ..backends import map_with_results
        specs = list(specs)
        if not specs:
            return []
        return map_with_results(self.backend, self.fn, specs, on_result)
