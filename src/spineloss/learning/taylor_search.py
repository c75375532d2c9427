"""CMA-ES over the coefficients of the TaylorGLO-style family (Gonzalez & Miikkulainen 2021).

The search vector is the family's coefficients in :meth:`~spineloss.learning.taylor.TaylorFamily.names` order
(Tversky's ``alpha``, ``beta`` through a logit, so every vector is a valid loss). Generation 0 evaluates the
``start`` point alone (by default spineloss's ``dice_ce``: the baseline the search must beat, scored on the
same proxy); then CMA-ES (:mod:`.cmaes`, mean = the start, step ``sigma``) runs ``generations`` generations of
``population`` points. Every point is screened (:func:`~spineloss.learning.screening.screen`) before it is
trained; the coefficients rounded to 6 significant digits key the evaluation cache. The best point over all
generations (the start included) is the result.

Reference: S. Gonzalez, R. Miikkulainen, "Optimizing loss functions through multi-variate Taylor polynomial
parameterization", GECCO 2021.
"""
from __future__ import annotations

from typing import Any

from .cmaes import CMAES
from .search import SearchContext
from .taylor import TaylorLoss

__all__ = ["run_taylor", "taylor_document"]


def taylor_document(family, coefficients: dict[str, float]) -> dict:
    """The learned-loss document of one member of the family."""
    loss = TaylorLoss(coefficients, family)
    return {"kind": "taylor", "family": family.to_dict(), "coefficients": dict(loss.coefficients),
            "readable": loss.readable()}


def _key(coefficients: dict[str, float]) -> str:
    return ",".join(f"{k}={v:.6g}" for k, v in coefficients.items())


def run_taylor(ctx: SearchContext, cfg, seed: int, state: dict[str, Any] | None) -> dict:
    """Run (or resume from ``state``) the search of :class:`~spineloss.learning.config.TaylorSearchConfig`
    ``cfg``; returns ``{"document", "fitness"}`` of the best member found."""
    family = cfg.family()
    state = dict(state or {})
    if state:
        best = state["best"]
        es = CMAES.from_state(state["es"])
    else:
        start = cfg.start_coefficients()
        ctx.start_generation("start point", 1)
        doc = taylor_document(family, start)
        (res,) = ctx.evaluate([doc], [_key(doc["coefficients"])], 0, labels=[doc["readable"]])
        best = {"document": doc, "fitness": res["fitness"]}
        es = CMAES(family.encode(start), cfg.sigma, cfg.population, seed)
        ctx.end_generation(0, "start", [res["fitness"]], best["fitness"], doc["readable"],
                           {"best": best, "es": es.state_dict()})
    while es.generation < cfg.generations:
        generation = es.generation + 1
        ctx.start_generation(f"generation {generation}", es.population)
        xs = es.ask()
        docs = [taylor_document(family, family.decode(x)) for x in xs]
        results = ctx.evaluate(docs, [_key(d["coefficients"]) for d in docs], generation,
                               labels=[d["readable"] for d in docs])
        fits = [r["fitness"] for r in results]
        es.tell(xs, fits)
        for doc, fit in zip(docs, fits):
            if fit > best["fitness"]:
                best = {"document": doc, "fitness": fit}
        ctx.end_generation(generation, "cma", fits, best["fitness"], best["document"]["readable"],
                           {"best": best, "es": es.state_dict()})
    return best
