"""Adaptive weights of compound losses ``L = sum_i alpha_i L_i`` (a :class:`~spineloss.losses.WeightedSumLoss`).

Three schemes, one interface (:class:`LossWeighting`), built by name with :func:`build_weighting`:

* ``"rebalance"`` (:class:`RebalanceWeighting`): two terms, ``alpha`` moves linearly from ``start`` to ``end``
  over the run, e.g. Dice + 0.01 Boundary -> Dice + Boundary, or Kervadec et al. 2019's
  ``(1 - a) GDL + a BL`` with ``a`` rising.
* ``"softadapt"`` (:class:`SoftAdaptWeighting`): Heydari, Thompson & Mehmood 2019, a softmax of the terms'
  recent slopes (original, normalised and loss-weighted variants).
* ``"cov"`` (:class:`CoVWeighting`): Groenendijk, Karaoglu, Gevers & Mensink 2021, weights proportional to the
  coefficient of variation of each term's loss ratio.

How a trainer uses them (steps are counted from 0; ``step`` is the index of the optimiser step)::

    loss = build_loss({"dice": 1.0, "ce": 1.0})
    scheme = build_weighting("cov", list(loss.weights), total_steps)
    rows = WeightsCSV(out / "weights.csv", scheme.term_names, resume_step=None)  # or the resumed step
    for step in range(first_step, total_steps):
        applied = apply_weights(loss, scheme.weights())   # the alphas of this step
        rows.write(step, applied)
        ... forward, loss(logits, target), backward, optimiser step ...
        scheme.update(step, term_values(loss))            # unweighted term values of this step
    checkpoint["weighting"] = scheme.state_dict()       # plain data; load_state_dict() resumes exactly

The weights a scheme returns apply to the *next* step: they are computed after a step from the term values
of that step and the ones before it (the loss of a step is computed once, with the weights set before it).
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from math import comb
from pathlib import Path
from typing import Any, ClassVar

from ..atomic import atomic_write_text
from ..losses.base import check_choice

__all__ = [
    "CoVWeighting", "LossWeighting", "RebalanceWeighting", "SoftAdaptWeighting", "WeightsCSV", "apply_weights",
    "available_weightings", "backward_difference_coefficients", "build_weighting", "read_weights_csv",
    "term_values", "weighting_from_state",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# validators


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _finite(name: str, value: Any, owner: str) -> float:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def _int(name: str, value: Any, owner: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _term_names(term_names: Any, owner: str) -> list[str]:
    if isinstance(term_names, (str, bytes)) or not isinstance(term_names, (Sequence, Mapping)):
        raise ValueError(f"{owner}: term_names must be a sequence of term names (e.g. list(loss.weights)), "
                         f"got {term_names!r}")
    names = list(term_names)
    bad = [n for n in names if not isinstance(n, str) or not n or n != n.strip() or "," in n]
    if bad:
        raise ValueError(f"{owner}: term names must be non-empty strings without commas or surrounding spaces, "
                         f"got {bad!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: term names must be distinct, got {names}")
    if len(names) < 2:
        raise ValueError(f"{owner}: weighting needs at least two terms, got {names}")
    return names


# ---------------------------------------------------------------------------------------------------------
# the interface


class LossWeighting:
    """Base class of the weighting schemes: the alphas of ``L = sum_i alpha_i L_i``, updated after each step.

    Args:
        term_names: the terms, in order (for a :class:`~spineloss.losses.WeightedSumLoss`:
            ``list(loss.weights)``); at least two, distinct.
        total_steps: the number of optimiser steps of the run (>= 1); Rebalance spreads its ramp over it.

    ``weights()`` gives the alphas for the next step, ``update(step, term_values)`` is called after step
    ``step`` (0-based, strictly increasing) with the unweighted term values of that step and returns the new
    alphas; ``state_dict()`` / ``load_state_dict()`` save and restore everything as plain data (lists, dicts,
    floats, ints, strings), so a resumed run continues with the same numbers.
    """

    name: ClassVar[str] = "weighting"

    def __init__(self, term_names: Sequence[str], total_steps: int) -> None:
        owner = self._owner()
        self.term_names: list[str] = _term_names(term_names, owner)
        self.total_steps: int = _int("total_steps", total_steps, owner, 1)
        #: the last step passed to :meth:`update` (None before the first)
        self.last_step: int | None = None
        self._weights: dict[str, float] = self._equal()

    # -- helpers ------------------------------------------------------------------------------------------
    def _owner(self) -> str:
        return f"{self.name} weighting"

    def _equal(self) -> dict[str, float]:
        k = len(self.term_names)
        return {n: 1.0 / k for n in self.term_names}

    def _check_step(self, step: Any) -> int:
        step = _int("step", step, self._owner(), 0)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"{self._owner()}: steps must increase; got step {step} after step {self.last_step} "
                             "(a resumed run must load the state of the step it resumes after)")
        return step

    def _check_values(self, term_values: Any) -> dict[str, float]:
        owner = self._owner()
        if not isinstance(term_values, Mapping):
            raise ValueError(f"{owner}: term_values must be a mapping {{term: value}}, got {term_values!r}")
        missing = [n for n in self.term_names if n not in term_values]
        extra = sorted(str(k) for k in term_values if k not in self.term_names)
        if missing or extra:
            raise ValueError(f"{owner}: term_values must have exactly the terms {self.term_names}; "
                             f"missing {missing}, unexpected {extra}")
        return {n: _finite(f"the value of term {n!r}", term_values[n], owner) for n in self.term_names}

    # -- public interface -----------------------------------------------------------------------------------
    def weights(self) -> dict[str, float]:
        """The alphas to use for the next step, ``{term: alpha}`` in term order."""
        return dict(self._weights)

    def update(self, step: int, term_values: Mapping[str, float]) -> dict[str, float]:
        """Record the unweighted term values of step ``step`` and return the alphas for the next step."""
        step = self._check_step(step)
        values = self._check_values(term_values)
        self._update(step, values)
        self.last_step = step
        return self.weights()

    def params(self) -> dict[str, Any]:
        """The scheme's parameters as plain data (what :func:`build_weighting` takes)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Configuration and running state as plain data (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {"scheme": self.name, "term_names": list(self.term_names), "total_steps": self.total_steps,
                "params": self.params(), "last_step": self.last_step, "weights": dict(self._weights),
                "state": self._state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the scheme, terms, total steps and parameters must be the same."""
        owner = self._owner()
        if not isinstance(state, Mapping):
            raise ValueError(f"{owner}: a state must be a mapping (from state_dict()), got {type(state).__name__}")
        keys = ("scheme", "term_names", "total_steps", "params", "last_step", "weights", "state")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"{owner}: the state lacks {missing}; it was not written by state_dict()")
        mine = {"scheme": self.name, "term_names": list(self.term_names), "total_steps": self.total_steps,
                "params": self.params()}
        theirs = {"scheme": state["scheme"], "term_names": list(state["term_names"]),
                  "total_steps": state["total_steps"], "params": dict(state["params"])}
        diff = [f"{k}: saved {theirs[k]!r}, now {mine[k]!r}" for k in mine if theirs[k] != mine[k]]
        if diff:
            raise ValueError(f"{owner}: the saved state belongs to another configuration ({'; '.join(diff)}); "
                             "resume with the configuration it was written with")
        last = state["last_step"]
        if last is not None:
            _int("the saved last_step", last, owner, 0)
        weights = state["weights"]
        if not isinstance(weights, Mapping) or list(weights) != self.term_names:
            raise ValueError(f"{owner}: the saved weights must have the terms {self.term_names}, got {weights!r}")
        self._load_state(state["state"])
        self._weights = {n: _finite(f"the saved weight of {n!r}", weights[n], owner) for n in self.term_names}
        self.last_step = last

    # -- what subclasses implement --------------------------------------------------------------------------
    def _update(self, step: int, values: dict[str, float]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: Any) -> None:
        return None

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(terms={self.term_names}, total_steps={self.total_steps}, {ps})"


# ---------------------------------------------------------------------------------------------------------
# Rebalance


class RebalanceWeighting(LossWeighting):
    """Linear ramp of two term weights from ``start`` to ``end`` over the run (registry name ``"rebalance"``).

    For step ``t`` (0-based) of a run of ``T`` steps::

        f(t) = min(t, T - 1) / (T - 1)        (f = 0 when T = 1)
        alpha_i(t) = (1 - f(t)) * start_i + f(t) * end_i

    so the first step uses ``start`` exactly, the last step (``t = T - 1``) uses ``end`` exactly, step
    ``(T - 1) / 2`` the midpoint, and steps past the end keep ``end``. The term values are not used.

    Examples: ``start=(1, 0.01), end=(1, 1)`` raises a boundary term from 0.01 to 1 beside a fixed Dice term;
    ``start=(0.99, 0.01), end=(0.01, 0.99)`` is the "rebalance" strategy ``(1 - a) L_GDL + a L_B`` of Kervadec
    et al. 2019 ("Boundary loss for highly unbalanced segmentation", MIDL), with ``a`` rising linearly over the
    run (they raise it by 0.01 per epoch).

    Args:
        start, end: the two weights at the first and the last step, as a pair in term order or a mapping
            ``{term: weight}``; finite and >= 0. Defaults ``(1, 0.01)`` and ``(1, 1)``.
    """

    name = "rebalance"

    def __init__(self, term_names: Sequence[str], total_steps: int, *,
                 start: Sequence[float] | Mapping[str, float] = (1.0, 0.01),
                 end: Sequence[float] | Mapping[str, float] = (1.0, 1.0)) -> None:
        super().__init__(term_names, total_steps)
        if len(self.term_names) != 2:
            raise ValueError(f"{self._owner()}: rebalance moves the weights of exactly two terms, got "
                             f"{len(self.term_names)} ({self.term_names}); use softadapt or cov for more")
        self.start = self._pair("start", start)
        self.end = self._pair("end", end)
        self._weights = self.weights_at(0)

    def _pair(self, what: str, value: Any) -> list[float]:
        owner = self._owner()
        if isinstance(value, Mapping):
            if set(value) != set(self.term_names):
                raise ValueError(f"{owner}: {what} must give the weights of the terms {self.term_names}, "
                                 f"got {dict(value)!r}")
            items = [value[n] for n in self.term_names]
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 2:
            items = list(value)
        else:
            raise ValueError(f"{owner}: {what} must be two weights (in term order {self.term_names}) or a "
                             f"mapping {{term: weight}}, got {value!r}")
        out = [_finite(f"{what} weight of {n!r}", v, owner) for n, v in zip(self.term_names, items)]
        if any(v < 0 for v in out):
            raise ValueError(f"{owner}: {what} weights must be >= 0, got {out}")
        return out

    def fraction(self, step: int) -> float:
        """``f(t) = min(t, T - 1) / (T - 1)``, how far along the ramp step ``t`` is (0 when ``T = 1``)."""
        if self.total_steps == 1:
            return 0.0
        return min(step, self.total_steps - 1) / (self.total_steps - 1)

    def weights_at(self, step: int) -> dict[str, float]:
        """The alphas of step ``step`` (0-based)."""
        f = self.fraction(_int("step", step, self._owner(), 0))
        return {n: (1.0 - f) * s + f * e for n, s, e in zip(self.term_names, self.start, self.end)}

    def params(self) -> dict[str, Any]:
        return {"start": list(self.start), "end": list(self.end)}

    def _update(self, step: int, values: dict[str, float]) -> None:
        self._weights = self.weights_at(step + 1)


# ---------------------------------------------------------------------------------------------------------
# SoftAdapt


def backward_difference_coefficients(n: int) -> list[float]:
    """Weights ``c_0 .. c_{n-1}`` of the backward finite difference ``f'(t) ~ sum_j c_j f(t - j)`` on ``n``
    equally spaced points (unit spacing), exact for polynomials of degree ``n - 1`` (accuracy order ``n - 1``).

    From ``h D = -ln(1 - nabla) = sum_{m >= 1} nabla^m / m`` truncated at ``m = n - 1``, with
    ``nabla^m f(t) = sum_{j=0}^{m} (-1)^j C(m, j) f(t - j)``. ``n = 2``: ``(1, -1)``; ``n = 3``:
    ``(3/2, -2, 1/2)``; ``n = 4``: ``(11/6, -3, 3/2, -1/3)``.
    """
    n = _int("n", n, "backward_difference_coefficients", 2)
    coef = [Fraction(0)] * n
    for m in range(1, n):
        for j in range(m + 1):
            coef[j] += Fraction((-1) ** j * comb(m, j), m)
    return [float(c) for c in coef]


class SoftAdaptWeighting(LossWeighting):
    """SoftAdapt (registry name ``"softadapt"``): a softmax of the terms' recent rates of change.

    Heydari, Thompson & Mehmood 2019, "SoftAdapt: techniques for adaptive loss weighting of neural networks with
    multi-part loss functions", arXiv:1912.12355. With ``s_i`` the slope of term ``i`` over its last ``n`` values
    ``L_i(t - n + 1) .. L_i(t)`` (backward finite difference of accuracy order ``n - 1``, unit step, see
    :func:`backward_difference_coefficients`; ``n = 2``: ``s = L(t) - L(t - 1)``, ``n = 3``:
    ``s = (3 L(t) - 4 L(t - 1) + L(t - 2)) / 2``; computed as ``sum_{m=1}^{n-1} nabla^m L(t) / m`` from
    successive differences, so a constant series has slope exactly 0)::

        original:       alpha_i = exp(beta s_i) / sum_j exp(beta s_j)
        normalized:     alpha_i = exp(beta ns_i) / sum_j exp(beta ns_j),   ns_i = s_i / sum_j |s_j|
        loss_weighted:  alpha_i = f_i exp(beta s_i) / sum_j f_j exp(beta s_j)

    where ``f_i`` is the term's loss value: with ``loss_value="mean"`` (default, as the authors' ``softadapt``
    package) the mean of the same ``n`` values, with ``"last"`` the last value ``L_i(t)``. ``beta > 0`` favours
    the terms that decrease slowest (or rise); ``beta < 0`` the fastest-decreasing ones; ``beta = 0`` gives equal
    weights (or, loss-weighted, weights proportional to the loss values). The softmax is computed with the
    maximum of ``beta s`` subtracted (the same value, no overflow). The weights sum to 1.

    Updates happen after steps ``k - 1, 2k - 1, ...`` (``(step + 1) % k == 0``, ``k = update_every``) once ``n``
    values are recorded; in between, and before the first update, the weights stay constant (equal weights
    ``1/K`` at the start). Term values are recorded after every step (the slope uses the last ``n`` per-step
    values). When all slopes are 0 (normalised variant) ``ns = 0``; when every ``f_i exp(...)`` is 0
    (loss-weighted with zero losses) the weights are equal.

    Args:
        variant: "original", "normalized" or "loss_weighted".
        beta: the softmax's focus parameter (finite; default 0.1 as the authors' package).
        n: values per slope, >= 2 (default 3).
        update_every: ``k``, steps between updates (>= 1; default 1).
        loss_value: "mean" or "last", the ``f_i`` of the loss-weighted variant (ignored by the others).
    """

    name = "softadapt"
    VARIANTS: ClassVar[tuple[str, ...]] = ("original", "normalized", "loss_weighted")

    def __init__(self, term_names: Sequence[str], total_steps: int, *, variant: str = "original",
                 beta: float = 0.1, n: int = 3, update_every: int = 1, loss_value: str = "mean") -> None:
        super().__init__(term_names, total_steps)
        owner = self._owner()
        self.variant = check_choice("variant", variant, self.VARIANTS, owner)
        self.beta = _finite("beta", beta, owner)
        self.n = _int("n", n, owner, 2)
        self.update_every = _int("update_every", update_every, owner, 1)
        self.loss_value = check_choice("loss_value", loss_value, ("mean", "last"), owner)
        #: the last ``n`` recorded values of each term, oldest first
        self.history: list[dict[str, float]] = []

    def params(self) -> dict[str, Any]:
        return {"variant": self.variant, "beta": self.beta, "n": self.n, "update_every": self.update_every,
                "loss_value": self.loss_value}

    def slopes(self) -> dict[str, float]:
        """The slopes ``s_i`` of the recorded window (needs ``n`` values)."""
        if len(self.history) < self.n:
            raise ValueError(f"{self._owner()}: slopes need {self.n} recorded values, have {len(self.history)}")
        out = {}
        for name in self.term_names:
            # sum_m nabla^m f / m with the differences taken one after the other (the same value as
            # sum_j c_j f(t - j), but exactly 0 for a constant series, which the normalised variant needs)
            diffs = [row[name] for row in self.history]
            slope = 0.0
            for m in range(1, self.n):
                diffs = [b - a for a, b in zip(diffs, diffs[1:])]
                slope += diffs[-1] / m
            out[name] = slope
        return out

    def _update(self, step: int, values: dict[str, float]) -> None:
        self.history.append(values)
        del self.history[:-self.n]
        if (step + 1) % self.update_every == 0 and len(self.history) == self.n:
            self._weights = self._compute()

    def _compute(self) -> dict[str, float]:
        s = self.slopes()
        names = self.term_names
        if self.variant == "normalized":
            norm = sum(abs(v) for v in s.values())
            s = {k: (v / norm if norm > 0 else 0.0) for k, v in s.items()}
        z = {k: self.beta * v for k, v in s.items()}
        zmax = max(z.values())
        e = {k: math.exp(v - zmax) for k, v in z.items()}
        if self.variant == "loss_weighted":
            if self.loss_value == "mean":
                f = {k: sum(row[k] for row in self.history) / len(self.history) for k in names}
            else:
                f = dict(self.history[-1])
            negative = {k: v for k, v in f.items() if v < 0}
            if negative:
                raise ValueError(f"{self._owner()}: the loss-weighted variant needs loss values >= 0, got "
                                 f"{negative} (use variant='original' or 'normalized' for signed terms)")
            e = {k: f[k] * e[k] for k in names}
        total = sum(e.values())
        if total <= 0:
            return self._equal()
        return {k: e[k] / total for k in names}

    def _state(self) -> dict[str, Any]:
        return {"history": [[row[k] for k in self.term_names] for row in self.history]}

    def _load_state(self, state: Any) -> None:
        owner = self._owner()
        hist = state.get("history") if isinstance(state, Mapping) else None
        if not isinstance(hist, list) or len(hist) > self.n or any(
                not isinstance(r, (list, tuple)) or len(r) != len(self.term_names) for r in hist):
            raise ValueError(f"{owner}: the saved history must be at most {self.n} rows of "
                             f"{len(self.term_names)} values, got {hist!r}")
        self.history = [{k: _finite("a saved value", v, owner) for k, v in zip(self.term_names, r)} for r in hist]


# ---------------------------------------------------------------------------------------------------------
# CoV weighting


class CoVWeighting(LossWeighting):
    """Coefficient-of-variation weighting (registry name ``"cov"``).

    Groenendijk, Karaoglu, Gevers & Mensink 2021, "Multi-loss weighting with coefficient of variations", WACV
    (arXiv:2009.01717). For each term, with ``t = 0, 1, ...`` the observations so far:

    * loss ratio ``l_t = L_t / mu_L(t - 1)``, the value over the mean of the term's *past* values
      (``l_0 = 1``: the first value over itself);
    * running means, ``mu_x(t) = c_t mu_x(t - 1) + (1 - c_t) x_t`` for ``x = L`` and ``x = l``, with ``c_0 = 0``
      and for ``t >= 1`` ``c_t = t / (t + 1)`` (``mean="full"``: the arithmetic mean of all values) or
      ``c_t = decay`` (``mean="decayed"``: an exponential moving average);
    * Welford's sum of squares ``S(t) = S(t - 1) + (l_t - mu_l(t - 1)) (l_t - mu_l(t))``, ``S(0) = 0``, and
      ``sigma_l(t) = sqrt(S(t) / (t + 1))`` (the population standard deviation for the full mean);
    * ``alpha_i = (sigma_l,i / mu_l,i) / sum_j (sigma_l,j / mu_l,j)`` (weights sum to 1).

    First-step rule (the paper's): equal weights ``1/K`` until the statistics exist, i.e. for steps 0 and 1
    (after one observation ``l_0 = 1`` and ``sigma = 0``); from step 2 on the weights come from the statistics
    of all steps before. As in the authors' code the alphas used at step ``t`` come from the statistics up to
    ``t - 1`` (here they must: the alphas are set before the step's loss is computed); the decayed variant uses
    ``decay`` for both means and keeps ``S / (t + 1)`` as the variance, as the authors' code does. If every
    ``sigma`` is 0 (no variation yet) the weights are equal. Loss values must be >= 0, and a term's running
    mean must be > 0 to divide by (a ``ValueError`` says which term otherwise).

    Args:
        mean: "full" (default) or "decayed".
        decay: ``c`` of the decayed mean, in [0, 1] (the weight of the old mean; default 0.9). Only with
            ``mean="decayed"``.
    """

    name = "cov"

    def __init__(self, term_names: Sequence[str], total_steps: int, *, mean: str = "full",
                 decay: float | None = None) -> None:
        super().__init__(term_names, total_steps)
        owner = self._owner()
        self.mean = check_choice("mean", mean, ("full", "decayed"), owner)
        if self.mean == "full":
            if decay is not None:
                raise ValueError(f"{owner}: decay applies only to mean='decayed' (got decay={decay!r} with "
                                 "mean='full')")
            self.decay: float | None = None
        else:
            d = _finite("decay", 0.9 if decay is None else decay, owner)
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"{owner}: decay must be in [0, 1], got {decay!r}")
            self.decay = d
        #: observations so far
        self.count = 0
        self.mean_L = {k: 0.0 for k in self.term_names}
        self.mean_l = {k: 0.0 for k in self.term_names}
        self.sum_sq_l = {k: 0.0 for k in self.term_names}

    def params(self) -> dict[str, Any]:
        return {"mean": self.mean, "decay": self.decay}

    def _update(self, step: int, values: dict[str, float]) -> None:
        owner = self._owner()
        negative = {k: v for k, v in values.items() if v < 0}
        if negative:
            raise ValueError(f"{owner}: CoV weighting needs loss values >= 0 (loss ratios), got {negative}")
        t = self.count
        if t > 0:
            zero = [k for k in self.term_names if self.mean_L[k] <= 0]
            if zero:
                raise ValueError(f"{owner}: the running mean of term(s) {zero} is 0, so the loss ratio "
                                 "L_t / mean(L) is undefined; CoV weighting needs terms with positive values")
        c = 0.0 if t == 0 else (self.decay if self.mean == "decayed" else t / (t + 1))
        for k in self.term_names:
            L = values[k]
            ratio = 1.0 if t == 0 else L / self.mean_L[k]
            old = self.mean_l[k]
            new = c * old + (1.0 - c) * ratio
            self.sum_sq_l[k] += (ratio - old) * (ratio - new)
            self.mean_l[k] = new
            self.mean_L[k] = c * self.mean_L[k] + (1.0 - c) * L
        self.count = t + 1
        if self.count >= 2:
            self._weights = self._compute()

    def coefficients_of_variation(self) -> dict[str, float]:
        """``sigma_l / mu_l`` of each term from the statistics so far."""
        out = {}
        for k in self.term_names:
            if self.mean_l[k] <= 0:
                raise ValueError(f"{self._owner()}: the mean loss ratio of term {k!r} is {self.mean_l[k]!r}; "
                                 "its coefficient of variation is undefined")
            out[k] = math.sqrt(max(self.sum_sq_l[k], 0.0) / self.count) / self.mean_l[k]
        return out

    def _compute(self) -> dict[str, float]:
        cv = self.coefficients_of_variation()
        total = sum(cv.values())
        if total <= 0:
            return self._equal()
        return {k: cv[k] / total for k in self.term_names}

    def _state(self) -> dict[str, Any]:
        return {"count": self.count, "mean_L": dict(self.mean_L), "mean_l": dict(self.mean_l),
                "sum_sq_l": dict(self.sum_sq_l)}

    def _load_state(self, state: Any) -> None:
        owner = self._owner()
        if not isinstance(state, Mapping) or any(k not in state for k in ("count", "mean_L", "mean_l", "sum_sq_l")):
            raise ValueError(f"{owner}: the saved state must have count, mean_L, mean_l and sum_sq_l, got {state!r}")
        count = _int("the saved count", state["count"], owner, 0)
        stats = {}
        for key in ("mean_L", "mean_l", "sum_sq_l"):
            d = state[key]
            if not isinstance(d, Mapping) or set(d) != set(self.term_names):
                raise ValueError(f"{owner}: the saved {key} must have the terms {self.term_names}, got {d!r}")
            stats[key] = {k: _finite(f"the saved {key}", d[k], owner) for k in self.term_names}
        self.count = count
        self.mean_L, self.mean_l, self.sum_sq_l = stats["mean_L"], stats["mean_l"], stats["sum_sq_l"]


# ---------------------------------------------------------------------------------------------------------
# registry


_SCHEMES: dict[str, type[LossWeighting]] = {cls.name: cls for cls in
                                            (RebalanceWeighting, SoftAdaptWeighting, CoVWeighting)}


def available_weightings() -> list[str]:
    """Names :func:`build_weighting` knows, sorted."""
    return sorted(_SCHEMES)


def _scheme_params(cls: type[LossWeighting]) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return sorted(p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def build_weighting(name: str, term_names: Sequence[str], total_steps: int, **params: Any) -> LossWeighting:
    """The weighting scheme ``name`` ("rebalance", "softadapt" or "cov"; case and '-'/'_' ignored).

    Unknown names and parameters raise ``ValueError`` listing the known ones; bad values raise ``ValueError``
    from the scheme.
    """
    if not isinstance(name, str):
        raise ValueError(f"a weighting scheme name must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if key not in _SCHEMES:
        raise ValueError(f"unknown weighting scheme {name!r}; known schemes: {', '.join(available_weightings())}")
    cls = _SCHEMES[key]
    known = _scheme_params(cls)
    unknown = sorted(k for k in params if k not in known)
    if unknown:
        raise ValueError(f"weighting {key!r} does not take parameter(s) {unknown}; it takes {known}")
    return cls(term_names, total_steps, **params)


def weighting_from_state(state: Mapping[str, Any]) -> LossWeighting:
    """Rebuild a scheme from its :meth:`LossWeighting.state_dict` and load the state."""
    if not isinstance(state, Mapping) or not all(k in state for k in ("scheme", "term_names", "total_steps", "params")):
        raise ValueError("weighting_from_state: expected the mapping written by state_dict() (scheme, term_names, "
                         f"total_steps, params, ...), got {state!r}")
    scheme = build_weighting(state["scheme"], state["term_names"], state["total_steps"], **dict(state["params"]))
    scheme.load_state_dict(state)
    return scheme


# ---------------------------------------------------------------------------------------------------------
# the loss side


def term_values(loss: Any) -> dict[str, float]:
    """The unweighted term values of the loss's last call, ``{term: float}``.

    Reads :attr:`WeightedSumLoss.last_term_values <spineloss.losses.WeightedSumLoss>` (detached tensors set in
    each forward); an unreduced term (``reduction="none"``) is averaged to one number.
    """
    values = getattr(loss, "last_term_values", None)
    if not isinstance(values, Mapping):
        raise ValueError(f"term_values: {type(loss).__name__} keeps no term values (not a weighted sum of losses)")
    if not values:
        raise ValueError("term_values: the loss has not been called yet; call it on a batch first")
    out = {}
    for k, v in values.items():
        out[k] = float(v.float().mean()) if hasattr(v, "float") else float(v)
    return out


def apply_weights(loss: Any, weights: Mapping[str, float]) -> dict[str, float]:
    """Set the term weights of a weighted-sum loss: ``loss.set_parameter("weight.<term>", alpha)`` for each term.

    ``weights`` must name exactly the loss's terms (``ValueError`` otherwise, and for NaN). A weight outside the
    parameter's bounds (``[0, 1000]`` for a :class:`~spineloss.losses.WeightedSumLoss`) is clipped to the
    nearest bound, with a warning in the log; the schemes here give weights in ``[0, 1]`` except Rebalance,
    whose ``start``/``end`` are the user's. Returns the weights actually set.
    """
    if not hasattr(loss, "tunable_parameters") or not hasattr(loss, "set_parameter"):
        raise ValueError(f"apply_weights: {type(loss).__name__} has no tunable parameters to set")
    specs = {k[len("weight."):]: spec for k, spec in loss.tunable_parameters().items() if k.startswith("weight.")}
    if not specs:
        raise ValueError(f"apply_weights: {type(loss).__name__} has no term weights (weight.<term>); "
                         "weighting applies to weighted sums of losses")
    if not isinstance(weights, Mapping):
        raise ValueError(f"apply_weights: weights must be a mapping {{term: weight}}, got {weights!r}")
    missing = [k for k in specs if k not in weights]
    extra = sorted(str(k) for k in weights if k not in specs)
    if missing or extra:
        raise ValueError(f"apply_weights: the loss has the terms {list(specs)}; weights are missing {missing} "
                         f"and name unknown terms {extra}")
    applied: dict[str, float] = {}
    clipped = []
    for term, spec in specs.items():
        value = weights[term]
        if not _is_number(value) or math.isnan(float(value)):
            raise ValueError(f"apply_weights: the weight of term {term!r} must be a number, got {value!r}")
        v = float(value)
        if not spec.contains(v):
            lo = spec.low if spec.low_inclusive else math.nextafter(spec.low, math.inf)
            hi = spec.high if spec.high_inclusive else math.nextafter(spec.high, -math.inf)
            new = min(max(v, lo), hi)
            clipped.append(f"weight.{term}={v:g} -> {new:g} (bounds {spec.interval()})")
            v = new
        loss.set_parameter(f"weight.{term}", v)
        applied[term] = v
    if clipped:
        log.warning("apply_weights: weight(s) outside the loss's bounds clipped: %s", "; ".join(clipped))
    return applied


# ---------------------------------------------------------------------------------------------------------
# weights.csv


def _csv_line(fields: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def _parse_weights(text: str, path: Path) -> tuple[list[str], list[tuple[int, list[float]]]]:
    """Header and complete rows of a weights.csv; a torn last line (no newline: an interrupted write) is
    dropped, any other malformed line is an error."""
    lines = text.split("\n")
    lines = lines[:-1]  # the part after the last newline is empty or a torn line
    if not lines:
        raise ValueError(f"{path}: no header line")
    header = next(csv.reader([lines[0]]))
    rows: list[tuple[int, list[float]]] = []
    for i, line in enumerate(lines[1:], start=2):
        fields = next(csv.reader([line]), [])
        try:
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, expected {len(header)}")
            step, vals = int(fields[0]), [float(x) for x in fields[1:]]
        except ValueError as exc:
            raise ValueError(f"{path}, line {i}: not a weights row ({exc}): {line!r}") from None
        if rows and step <= rows[-1][0]:
            raise ValueError(f"{path}, line {i}: step {step} after step {rows[-1][0]}")
        rows.append((step, vals))
    return header, rows


def read_weights_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a weights.csv as dicts (``"step"`` an int, one float per term); a torn last line is ignored."""
    path = Path(path)
    header, rows = _parse_weights(path.read_text(), path)
    return [{"step": step, **dict(zip(header[1:], vals))} for step, vals in rows]


class WeightsCSV:
    """``weights.csv``: one row per step, ``step,<term>,<term>,...``, written line by line.

    Each :meth:`write` appends one complete line and flushes it (``fsync=True`` also syncs it to the disk), so
    an interrupted run leaves every row written before the interruption, at worst plus one torn last line,
    which readers drop. The header is written atomically (temporary file + rename).

    Args:
        path: the file.
        term_names: the columns after ``step``.
        resume_step: None for a new run (the file is started afresh with its header); for a resumed run, the
            first step that will be run again: rows of steps ``>= resume_step`` (the steps being redone) and a
            torn last line are dropped (the file is rewritten atomically), so no step appears twice. The header
            of an existing file must match. A missing file is started afresh.
        fsync: ``os.fsync`` after each row (survives a power cut, costs a disk sync per step).
    """

    def __init__(self, path: str | Path, term_names: Sequence[str], resume_step: int | None = None,
                 fsync: bool = False) -> None:
        self.path = Path(path)
        owner = f"weights.csv {self.path}"
        self.term_names = _term_names(term_names, owner)
        self.columns = ["step", *self.term_names]
        self.fsync = bool(fsync)
        self.last_step: int | None = None
        if resume_step is None or not self.path.exists():
            atomic_write_text(self.path, _csv_line(self.columns))
            return
        resume_step = _int("resume_step", resume_step, owner, 0)
        header, rows = _parse_weights(self.path.read_text(), self.path)
        if header != self.columns:
            raise ValueError(f"{owner}: its columns {header} differ from {self.columns}; a resumed run must "
                             "weight the same terms")
        kept = [(s, v) for s, v in rows if s < resume_step]
        atomic_write_text(self.path, "".join([_csv_line(self.columns)] +
                                             [_csv_line([s, *map(repr, v)]) for s, v in kept]))
        self.last_step = kept[-1][0] if kept else None

    def write(self, step: int, weights: Mapping[str, float]) -> None:
        """Append the row of step ``step`` (steps must increase; ``weights`` must name exactly the terms)."""
        owner = f"weights.csv {self.path}"
        step = _int("step", step, owner, 0)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"{owner}: step {step} written after step {self.last_step}; steps must increase")
        if not isinstance(weights, Mapping) or set(weights) != set(self.term_names):
            raise ValueError(f"{owner}: weights must name exactly the terms {self.term_names}, got {weights!r}")
        vals = [repr(_finite(f"the weight of {k!r}", weights[k], owner)) for k in self.term_names]
        with open(self.path, "a", newline="") as fh:
            fh.write(_csv_line([step, *vals]))
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        self.last_step = step
