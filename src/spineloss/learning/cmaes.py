"""A seeded, checkpointable CMA-ES (maximisation) on top of ``deap.cma.Strategy``.

CMA-ES (Hansen & Ostermeier 2001) samples ``lambda`` points ``x_k = m + sigma B D z_k``, ``z_k ~ N(0, I)``,
ranks them by fitness and moves the mean ``m``, the step size ``sigma`` and the covariance ``C = B D^2 B^T``
towards the best ``mu = lambda / 2`` (weighted recombination, cumulative step-size adaptation, rank-one
and rank-mu covariance updates). DEAP's :class:`deap.cma.Strategy` does the arithmetic; this wrapper adds:

* a seed: DEAP draws from numpy's global generator, so each :meth:`CMAES.ask` swaps in this search's own
  ``RandomState`` and puts the global one back (nothing else's random numbers move);
* :meth:`CMAES.state_dict` / :meth:`CMAES.from_state`: the whole state as JSON-ready lists (the mean, step
  size, evolution paths, covariance and its eigen-decomposition, the generator), so a search resumes after an
  interruption with the same numbers;
* fitness to **maximise**; non-finite fitness ranks last; the best point seen is kept.

Used for the constants of the best genetic-programming tree and for the TaylorGLO coefficients
(Gonzalez & Miikkulainen 2021 searched their Taylor parameters with CMA-ES).

Reference: N. Hansen, A. Ostermeier, "Completely derandomized self-adaptation in evolution strategies",
Evolutionary Computation 9(2), 2001.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CMAES"]

_ARRAYS = ("centroid", "pc", "ps", "C", "B", "diagD", "BD")


class _Point(list):
    """One sampled point; ``fitness`` is what ``deap.cma.Strategy.update`` sorts by (a float here)."""

    fitness: float = -math.inf


class CMAES:
    """CMA-ES maximising a fitness from ``x0`` with step size ``sigma``.

    Args:
        x0: the initial mean (at least one number).
        sigma: the initial step size (> 0), in the units of ``x0``.
        population: ``lambda``, points per generation (default ``4 + floor(3 ln n)``, at least 2).
        seed: the seed of the search's own random generator.

    Loop: ``xs = es.ask(); es.tell(xs, [f(x) for x in xs])``.
    """

    def __init__(self, x0: Sequence[float], sigma: float, population: int | None = None, seed: int = 0) -> None:
        from deap import cma

        x0 = [float(v) for v in x0]
        if not x0 or not all(math.isfinite(v) for v in x0):
            raise ValueError(f"CMA-ES: x0 must be at least one finite number, got {x0}")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"CMA-ES: sigma must be a positive number, got {sigma!r}")
        lam = int(population) if population is not None else 4 + int(3 * math.log(len(x0)))
        if lam < 2:
            raise ValueError(f"CMA-ES: the population (lambda) must be >= 2, got {population!r}")
        self.strategy = cma.Strategy(centroid=x0, sigma=float(sigma), lambda_=lam)
        self.rng = np.random.RandomState(int(seed) % 2**32)
        self.generation = 0
        self.best_x: list[float] | None = None
        self.best_fitness = -math.inf

    @property
    def population(self) -> int:
        return int(self.strategy.lambda_)

    @property
    def mean(self) -> list[float]:
        return [float(v) for v in self.strategy.centroid]

    @property
    def sigma(self) -> float:
        return float(self.strategy.sigma)

    def ask(self) -> list[list[float]]:
        """This generation's ``lambda`` points (from the search's own generator)."""
        saved = np.random.get_state()
        np.random.set_state(self.rng.get_state())
        try:
            points = self.strategy.generate(_Point)
        finally:
            self.rng.set_state(np.random.get_state())
            np.random.set_state(saved)
        return [[float(v) for v in p] for p in points]

    def tell(self, xs: Sequence[Sequence[float]], fitnesses: Sequence[float]) -> None:
        """Update the distribution with the points of :meth:`ask` and their fitness (higher is better)."""
        if len(xs) != len(fitnesses) or len(xs) != self.population:
            raise ValueError(f"CMA-ES: tell needs the {self.population} points of ask() and as many fitness values, "
                             f"got {len(xs)} and {len(fitnesses)}")
        points = []
        for x, f in zip(xs, fitnesses):
            p = _Point(float(v) for v in x)
            f = float(f)
            p.fitness = f if math.isfinite(f) else -math.inf
            points.append(p)
            if p.fitness > self.best_fitness:
                self.best_fitness, self.best_x = p.fitness, list(p)
        self.strategy.update(points)
        self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search, as JSON-ready plain data."""
        s = self.strategy
        kind, keys, pos, has_gauss, cached = self.rng.get_state()
        return {"arrays": {k: np.asarray(getattr(s, k)).tolist() for k in _ARRAYS},
                "sigma": float(s.sigma), "cond": float(s.cond), "update_count": int(s.update_count),
                "lambda": int(s.lambda_), "rng": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                "generation": self.generation, "best_x": self.best_x,
                "best_fitness": self.best_fitness if math.isfinite(self.best_fitness) else None}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CMAES":
        """The search saved by :meth:`state_dict`, ready to continue exactly where it stopped."""
        try:
            arrays = state["arrays"]
            es = cls(arrays["centroid"], state["sigma"], state["lambda"])
            s = es.strategy
            for k in _ARRAYS:
                setattr(s, k, np.asarray(arrays[k], dtype=np.float64))
            s.cond, s.update_count = float(state["cond"]), int(state["update_count"])
            kind, keys, pos, has_gauss, cached = state["rng"]
            es.rng.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
            es.generation = int(state["generation"])
            es.best_x = state["best_x"]
            es.best_fitness = -math.inf if state["best_fitness"] is None else float(state["best_fitness"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"CMA-ES: not a saved CMA-ES state ({exc!r})") from None
        return es
