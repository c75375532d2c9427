"""A loss row's ``tuning`` table, and the object that applies it during one training run.

In a config, a loss row may carry how its loss changes while training::

    { name = "tversky_g", loss = "tversky", tuning = { greedy = { parameters = ["alpha", "beta"] } } }
    { name = "boundary_r", loss = { dice = 1.0, boundary = 0.01 },
      tuning = { weighting = { scheme = "rebalance", start = [1.0, 0.01], end = [1.0, 1.0] } } }

``greedy``: the fields of :class:`~spineloss.tuning.greedy.GreedyConfig` (``every``, ``step``,
``parameters``, ``criterion``, ``max_parameters``). ``weighting``: ``scheme`` (``rebalance``,
``softadapt``, ``cov``) and that scheme's parameters (:mod:`spineloss.tuning.weighting`), for a weighted
sum. :class:`LossTuner` is what :func:`spineloss.training.train_fold` drives: before a step the greedy
search when it is due (trial steps on the step's own batch, scored on a held-out batch drawn from the
fold's training cases), after a step the weights for the next one; ``params.csv`` / ``weights.csv`` get
a row each, and the time and passes spent are counted (:meth:`LossTuner.summary`).

Steps are loop iterations (epoch x iterations + i): a step skipped for a non-finite loss still counts
for ``every``, and after it the weights are not updated (the next step reuses them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["TuningSpec", "LossTuner"]


@dataclass(frozen=True)
class TuningSpec:
    """A loss row's ``tuning`` table, validated (see the module docstring)."""

    greedy: dict | None = None
    weighting: dict | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None, owner: str = "tuning") -> "TuningSpec | None":
        if not table:
            return None
        unknown = sorted(set(table) - {"greedy", "weighting"})
        if unknown:
            raise ValueError(f"{owner}: unknown key(s) {unknown}; known: greedy, weighting")
        greedy = table.get("greedy")
        weighting = table.get("weighting")
        if greedy is not None:
            if greedy is True:
                greedy = {}
            if not isinstance(greedy, Mapping):
                raise ValueError(f"{owner}.greedy must be a table of GreedyConfig fields (or true), got {greedy!r}")
            from .greedy import GreedyConfig
            GreedyConfig.from_dict(dict(greedy))                  # validates now, not mid-run
            greedy = dict(greedy)
        if weighting is not None:
            if not isinstance(weighting, Mapping) or "scheme" not in weighting:
                raise ValueError(f"{owner}.weighting must be a table with a 'scheme' (rebalance, softadapt, cov) "
                                 f"and its parameters, got {weighting!r}")
            weighting = dict(weighting)
        return cls(greedy, weighting)

    def to_dict(self) -> dict:
        return {k: v for k, v in (("greedy", self.greedy), ("weighting", self.weighting)) if v is not None}


class LossTuner:
    """Applies a :class:`TuningSpec` to one run's loss (driven by :func:`spineloss.training.train_fold`).

    Args:
        spec: what to do.
        loss: the run's loss module (a weighted sum for ``weighting``).
        total_steps: the run's optimiser steps (epochs x iterations), for schedules.
        out_dir: the run folder (``params.csv``, ``weights.csv``).
        held_out: ``held_out(k) -> batch`` (``image``, ``label``, ``spacing``), the ``k``-th held-out batch for
            the greedy search's decision metric, drawn from the fold's training cases.
        resume_step: the number of steps already taken when resuming (rows after it are dropped).
    """

    def __init__(self, spec: TuningSpec, loss, total_steps: int, out_dir: str | Path,
                 held_out: Callable[[int], dict] | None = None, resume_step: int | None = None) -> None:
        self.spec, self.loss, self.out_dir = spec, loss, Path(out_dir)
        self.held_out = held_out
        self.search = self.weighting = None
        self.params_csv = self.weights_csv = None
        self.seconds = 0.0
        self.passes = {"forward_passes": 0, "backward_passes": 0, "trial_steps": 0, "adaptations": 0}
        if spec.greedy is not None:
            from .greedy import GreedyConfig, GreedySearch, ParamsCSV
            self.search = GreedySearch(loss, GreedyConfig.from_dict(dict(spec.greedy)))
            self.params_csv = ParamsCSV(self.out_dir / "params.csv", self.search.parameters,
                                        resume_from=None if resume_step is None else resume_step - 1)
            if resume_step is None:
                self.params_csv.write(0, self.search.values())
        if spec.weighting is not None:
            from .weighting import WeightsCSV, apply_weights, build_weighting
            params = {k: v for k, v in spec.weighting.items() if k != "scheme"}
            terms = list(getattr(loss, "weights", {}) or {})
            if not terms:
                raise ValueError(f"tuning.weighting re-weights the terms of a weighted sum; {type(loss).__name__} "
                                 "has none: use loss = { dice = 1.0, ce = 1.0 } or a compound loss")
            self.weighting = build_weighting(spec.weighting["scheme"], terms, total_steps, **params)
            self.weights_csv = WeightsCSV(self.out_dir / "weights.csv", terms, resume_step=resume_step)
            apply_weights(loss, self.weighting.weights())

    def before_step(self, step: int, model, optimizer, scaler, train_step: Callable[[], Any],
                    generators=(), train_batch: dict | None = None) -> None:
        """The greedy search when due at ``step`` (steps taken so far); then log the weights used."""
        if self.search is not None and self.search.due(step):
            from .greedy import make_scorer
            t0 = time.perf_counter()
            criterion = self.search.config.criterion
            batch = train_batch if criterion == "train_error" else self.held_out(self.passes["adaptations"])
            device = next(model.parameters()).device
            spacing = tuple(float(v) for v in batch.get("spacing", [[1.0, 1.0, 1.0]])[0])
            score = make_scorer(model, batch["image"].to(device), batch["label"].to(device), criterion,
                                spacing=spacing)
            result = self.search.adapt(model, optimizer, scaler, train_step, score, generators=generators, step=step)
            self.params_csv.write(step, result["chosen"])
            self.passes["forward_passes"] += int(result["forward_passes"])
            self.passes["backward_passes"] += int(result["backward_passes"])
            self.passes["trial_steps"] += int(result["trial_steps"])
            self.passes["adaptations"] += 1
            self.seconds += time.perf_counter() - t0
        if self.weighting is not None:
            self.weights_csv.write(step, self.weighting.weights())

    def after_step(self, step: int) -> None:
        """The weights for the next step, from this step's unweighted term values."""
        if self.weighting is not None:
            from .weighting import apply_weights, term_values
            t0 = time.perf_counter()
            apply_weights(self.loss, self.weighting.update(step, term_values(self.loss)))
            self.seconds += time.perf_counter() - t0

    def state_dict(self) -> dict:
        return {"greedy": self.search.state_dict() if self.search is not None else None,
                "weighting": self.weighting.state_dict() if self.weighting is not None else None,
                "seconds": self.seconds, "passes": dict(self.passes)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.search is not None and state.get("greedy") is not None:
            self.search.load_state_dict(state["greedy"])
            for name, value in self.search.values().items():
                self.loss.set_parameter(name, value)
        if self.weighting is not None and state.get("weighting") is not None:
            from .weighting import apply_weights
            self.weighting.load_state_dict(state["weighting"])
            apply_weights(self.loss, self.weighting.weights())
        self.seconds = float(state.get("seconds", 0.0))
        self.passes.update(state.get("passes", {}))

    def summary(self) -> dict:
        """What tuning cost and where the parameters / weights ended."""
        out = {"seconds": self.seconds, **self.passes}
        if self.search is not None:
            out["final_parameters"] = self.search.values()
        if self.weighting is not None:
            out["final_weights"] = self.weighting.weights()
        return out
