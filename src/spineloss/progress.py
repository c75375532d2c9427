"""A progress view of an experiment grid on one line that updates in place.

    grid 4/30 done, 1 running, 25 left | dice fold 1: epoch 7/16 | ~31 min left

The time left is the grid's remaining epochs (the running run's and every run not yet started) times
the mean wall time of an epoch trained in this invocation, evaluation and checkpointing included
(runs finished before, and skipped, do not count). On a terminal the line is redrawn with a carriage
return; in a log file (not a TTY) nothing is redrawn: one line per finished run, so a log stays short.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["GridProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"2 h 05 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class GridProgress:
    """Done / running / left and the estimated time left of ``total_runs`` runs of ``epochs`` each.

    Call :meth:`skip` for a run finished before, :meth:`start` when one begins (``start_epoch``: the
    epochs it already has when it resumes), :meth:`epoch` after each epoch, :meth:`finish` with a
    one-line result when its scores are written (:meth:`fail` when it gave up). Several runs may be
    running at once (a parallel backend): name the run in :meth:`epoch` / :meth:`finish`; with one run
    running the name may be left out. The time left is the epochs left divided by the rate at which
    this invocation has trained epochs while any run was running (one run at a time: the mean time of
    an epoch; ``n`` runs side by side: about ``n`` times faster).
    """

    def __init__(self, total_runs: int, epochs: int, stream: TextIO | None = None,
                 interactive: bool | None = None, clock=time.perf_counter) -> None:
        self.total, self.epochs = int(total_runs), int(epochs)
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.clock = clock
        self.done = 0
        self.failed = 0
        self.running: dict[str, int] = {}   # name -> epochs it has finished
        self.trained_epochs = 0      # epochs trained in this invocation
        self.busy_seconds = 0.0      # wall time while any run was running, evaluation included
        self._since: float | None = None
        self._width = 0

    @property
    def current(self) -> str | None:
        """The running run (the first one when several are)."""
        return next(iter(self.running), None)

    @property
    def current_epoch(self) -> int:
        return self.running[self.current] if self.running else 0

    @property
    def left(self) -> int:
        return self.total - self.done - len(self.running)

    def seconds_left(self) -> float | None:
        """The estimate, or ``None`` before the first epoch of this invocation has finished."""
        if self.trained_epochs == 0:
            return None
        per_epoch = self.busy_seconds / self.trained_epochs
        remaining = self.left * self.epochs + sum(self.epochs - e for e in self.running.values())
        return per_epoch * remaining

    def line(self) -> str:
        parts = [f"grid {self.done}/{self.total} done, {len(self.running)} running, {self.left} left"
                 + (f", {self.failed} failed" if self.failed else "")]
        shown = list(self.running.items())[:3]
        if shown:
            parts.append(", ".join(f"{name}: epoch {e}/{self.epochs}" for name, e in shown)
                         + (f" and {len(self.running) - 3} more" if len(self.running) > 3 else ""))
        eta = self.seconds_left()
        parts.append("time left unknown yet" if eta is None else f"~{format_duration(eta)} left")
        return " | ".join(parts)

    def _tick(self) -> None:
        now = self.clock()
        if self._since is not None:
            self.busy_seconds += now - self._since
        self._since = now if self.running else None

    def _draw(self) -> None:
        if not self.interactive:
            return
        text = self.line()
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
        self.stream.flush()
        self._width = len(text)

    def _say(self, message: str) -> None:
        """A permanent line (above the progress line on a terminal)."""
        if self.interactive and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(message + "\n")
        self.stream.flush()
        self._draw()

    def _name(self, name: str | None) -> str:
        if name is not None:
            if name not in self.running:
                raise ValueError(f"GridProgress: {name!r} is not running (running: {list(self.running)})")
            return name
        if len(self.running) != 1:
            raise ValueError(f"GridProgress: name the run, {len(self.running)} are running")
        return self.current

    def skip(self, name: str, why: str = "done already, skipped") -> None:
        self.done += 1
        self._say(f"[{name}] {why}")

    def start(self, name: str, start_epoch: int = 0) -> None:
        self._tick()
        self.running[name] = int(start_epoch)
        if self._since is None:
            self._since = self.clock()
        self._draw()

    def epoch(self, epoch: int, name: str | None = None) -> None:
        """``epoch``: the number of epochs the run has finished (1-based)."""
        name = self._name(name)
        self._tick()
        self.trained_epochs += max(0, int(epoch) - self.running[name])
        self.running[name] = max(self.running[name], int(epoch))
        self._draw()

    def finish(self, message: str, name: str | None = None) -> None:
        name = self._name(name)
        self._tick()
        del self.running[name]
        self._tick()
        self.done += 1
        self._say(f"{message}  [{self.line()}]" if not self.interactive else message)

    def fail(self, message: str, name: str | None = None) -> None:
        """A run that gave up: it counts as done (nothing more will run for it) and as failed."""
        self.failed += 1
        self.finish(message, name)

    def close(self) -> None:
        if self.interactive and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
