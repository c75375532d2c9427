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
    one-line result when its scores are written.
    """

    def __init__(self, total_runs: int, epochs: int, stream: TextIO | None = None,
                 interactive: bool | None = None, clock=time.perf_counter) -> None:
        self.total, self.epochs = int(total_runs), int(epochs)
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.clock = clock
        self.done = 0
        self.current: str | None = None
        self.current_epoch = 0
        self.trained_epochs = 0      # epochs trained in this invocation
        self.busy_seconds = 0.0      # their wall time, evaluation included
        self._since: float | None = None
        self._width = 0

    @property
    def left(self) -> int:
        return self.total - self.done - (self.current is not None)

    def seconds_left(self) -> float | None:
        """The estimate, or ``None`` before the first epoch of this invocation has finished."""
        if self.trained_epochs == 0:
            return None
        per_epoch = self.busy_seconds / self.trained_epochs
        remaining = self.left * self.epochs + (self.epochs - self.current_epoch if self.current else 0)
        return per_epoch * remaining

    def line(self) -> str:
        parts = [f"grid {self.done}/{self.total} done, {int(self.current is not None)} running, {self.left} left"]
        if self.current is not None:
            parts.append(f"{self.current}: epoch {self.current_epoch}/{self.epochs}")
        eta = self.seconds_left()
        parts.append("time left unknown yet" if eta is None else f"~{format_duration(eta)} left")
        return " | ".join(parts)

    def _tick(self) -> None:
        now = self.clock()
        if self._since is not None:
            self.busy_seconds += now - self._since
        self._since = now

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

    def skip(self, name: str, why: str = "done already, skipped") -> None:
        self.done += 1
        self._say(f"[{name}] {why}")

    def start(self, name: str, start_epoch: int = 0) -> None:
        self.current, self.current_epoch = name, int(start_epoch)
        self._since = self.clock()
        self._draw()

    def epoch(self, epoch: int) -> None:
        """``epoch``: the number of epochs the running run has finished (1-based)."""
        self._tick()
        self.trained_epochs += max(0, int(epoch) - self.current_epoch)
        self.current_epoch = int(epoch)
        self._draw()

    def finish(self, message: str) -> None:
        self._tick()
        self._since = None
        self.done += 1
        self.current, self.current_epoch = None, 0
        self._say(f"{message}  [{self.line()}]" if not self.interactive else message)

    def close(self) -> None:
        if self.interactive and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
