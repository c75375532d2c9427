"""Genetic programming over loss expressions (GLO, Gonzalez & Miikkulainen 2020) with DEAP.

Individuals are expression trees over the primitives and terminals of :mod:`.expression` (``+ - * /``
protected, protected ``log`` and ``sqrt``, ``square``, negation; ``p``, ``g``, ephemeral constants and, unless
``region_terminals = false``, the region soft counts ``TP``, ``FP``, ``FN``). The search, with DEAP's
operators (``deap.gp``, ``deap.tools``):

1. generation 0: ``population`` trees, half grown / half full (``genHalfAndHalf``) of height
   ``init_min_height .. init_max_height``;
2. each following generation: ``population - elite`` parents by tournament (``selTournament``,
   ``tournament`` entrants), one-point crossover (``cxOnePoint``) of consecutive pairs with probability
   ``crossover``, uniform mutation (``mutUniform``, a random subtree of height 0..2) with probability
   ``mutation``, both under a static height limit ``max_height`` (``staticLimit``: an over-tall child is
   replaced by its parent); then the ``elite`` best distinct trees seen so far (the hall of fame) join them;
3. every new tree is screened (:func:`~spineloss.learning.screening.screen`: ignores p or g, NaN/Inf, no
   gradient, not minimised by the perfect prediction -> worst fitness) and otherwise trained on the proxy task
   (:mod:`.fitness`); a canonical text of the tree (:func:`~spineloss.learning.expression.canonical`) keys a
   cache, so no tree is trained twice;
4. finally CMA-ES (:mod:`.cmaes`) tunes the numbers of the best tree for ``cma_generations`` generations.

The search's random numbers come from its own ``random.Random`` (DEAP draws from Python's global generator,
which is swapped in and out around each use), saved in the checkpoint with the population after every
generation, so an interrupted search resumes with the same numbers.

Reference: S. Gonzalez, R. Miikkulainen, "Improved training speed, accuracy, and data utilization through loss
function optimization", IEEE Congress on Evolutionary Computation (CEC) 2020.
"""
from __future__ import annotations

import contextlib
import functools
import operator
import random
from collections.abc import Iterator
from typing import Any

from deap import base, gp, tools

from .cmaes import CMAES
from .expression import (PRIMITIVES, canonical, constant_values, formula_string, name_constants, parse_formula,
                         readable, replace_numbers)
from .search import SearchContext

__all__ = ["HallOfFame", "Individual", "expression_document", "primitive_set", "run_genetic", "tree_formula",
           "tree_from_formula"]


class _Fitness(base.Fitness):
    weights = (1.0,)


class Individual(gp.PrimitiveTree):
    """An expression tree with a (maximised) fitness."""

    def __init__(self, content) -> None:
        super().__init__(content)
        self.fitness = _Fitness()


def _ephemeral(low: float, high: float) -> float:
    return round(random.uniform(low, high), 2)


def primitive_set(region_terminals: bool = True, constant_range: tuple[float, float] = (-2.0, 2.0)) -> gp.PrimitiveSet:
    """DEAP's primitive set of the loss expressions (names as in :mod:`.expression`)."""
    names = ["p", "g"] + (["TP", "FP", "FN"] if region_terminals else [])
    pset = gp.PrimitiveSet("LOSS", len(names))
    pset.renameArguments(**{f"ARG{i}": n for i, n in enumerate(names)})
    for name, (arity, fn, _) in PRIMITIVES.items():
        pset.addPrimitive(fn, arity, name=name)
    low, high = constant_range
    pset.addEphemeralConstant(f"const_{low:g}_{high:g}", functools.partial(_ephemeral, float(low), float(high)))
    return pset


def tree_formula(tree: gp.PrimitiveTree) -> str:
    """The prefix-call formula of a DEAP tree (numbers written exactly), checked by the formula parser."""
    return formula_string(parse_formula(str(tree)))


def tree_from_formula(formula: str, pset: gp.PrimitiveSet) -> Individual:
    """The DEAP tree of a formula (parsed by the whitelist parser, never ``eval``-ed)."""
    out: list = []

    def walk(node) -> None:
        if node[0] == "op":
            out.append(pset.mapping[node[1]])
            for child in node[2]:
                walk(child)
        elif node[0] == "var":
            if node[1] not in pset.mapping:
                raise ValueError(f"formula {formula!r} uses {node[1]}, which this search's terminals lack")
            out.append(pset.mapping[node[1]])
        elif node[0] == "num":
            out.append(gp.Terminal(node[1], False, object))
        else:
            raise ValueError(f"formula {formula!r}: named constants are not allowed in a tree; write numbers")

    walk(parse_formula(formula))
    return Individual(out)


def expression_document(formula: str) -> dict:
    """The learned-loss document of a formula with numbers: its numbers become named constants ``c0, ...``."""
    named, values = name_constants(parse_formula(formula))
    return {"kind": "expression", "formula": formula_string(named), "constants": values,
            "readable": readable(named, values)}


class HallOfFame:
    """The ``size`` best distinct trees (by canonical text) seen so far, best first (ties: the earlier one)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.entries: list[tuple[float, str, str]] = []  # (fitness, key, formula)

    def update(self, individuals) -> None:
        for ind in individuals:
            formula = tree_formula(ind)
            key = canonical(parse_formula(formula))
            if any(k == key for _, k, _ in self.entries):
                continue
            self.entries.append((float(ind.fitness.values[0]), key, formula))
            self.entries.sort(key=lambda e: -e[0])  # stable: ties keep their order
            del self.entries[self.size:]

    def state(self) -> list:
        return [list(e) for e in self.entries]

    @classmethod
    def from_state(cls, size: int, state: list) -> "HallOfFame":
        hof = cls(size)
        hof.entries = [(float(f), str(k), str(s)) for f, k, s in state]
        return hof


@contextlib.contextmanager
def _own_random(rng: random.Random) -> Iterator[None]:
    """Run DEAP (which draws from Python's global generator) on ``rng``; the global state is put back."""
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)


def _random_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_random_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(v) for v in internal), gauss))


def _toolbox(cfg, pset: gp.PrimitiveSet) -> base.Toolbox:
    tb = base.Toolbox()
    tb.register("expr", gp.genHalfAndHalf, pset=pset, min_=cfg.init_min_height, max_=cfg.init_max_height)
    tb.register("individual", tools.initIterate, Individual, tb.expr)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("select", tools.selTournament, tournsize=cfg.tournament)
    tb.register("mate", gp.cxOnePoint)
    tb.register("expr_mut", gp.genFull, min_=0, max_=2)
    tb.register("mutate", gp.mutUniform, expr=tb.expr_mut, pset=pset)
    limit = gp.staticLimit(key=operator.attrgetter("height"), max_value=cfg.max_height)
    tb.decorate("mate", limit)
    tb.decorate("mutate", limit)
    return tb


def _evaluate_population(ctx: SearchContext, individuals, generation: int) -> None:
    """Give every individual without a fitness its (cached or new) fitness."""
    todo = [ind for ind in individuals if not ind.fitness.valid]
    formulas = [tree_formula(ind) for ind in todo]
    docs = [expression_document(f) for f in formulas]
    keys = [canonical(parse_formula(f)) for f in formulas]
    results = ctx.evaluate(docs, keys, generation, labels=[d["readable"] for d in docs])
    for ind, res in zip(todo, results):
        ind.fitness.values = (res["fitness"],)


def run_genetic(ctx: SearchContext, cfg, seed: int, state: dict[str, Any] | None) -> dict:
    """Run (or resume, from ``state``) the genetic search of :class:`~spineloss.learning.config.GeneticConfig`
    ``cfg``; returns ``{"document", "fitness"}`` of the best loss found."""
    pset = primitive_set(cfg.region_terminals, cfg.constant_range)
    tb = _toolbox(cfg, pset)
    rng = random.Random(seed)
    hof = HallOfFame(max(cfg.elite, 1))
    state = dict(state or {})
    if state:
        _set_random_state(rng, state["random"])
        population = []
        for formula, fitness in state["population"]:
            ind = tree_from_formula(formula, pset)
            ind.fitness.values = (float(fitness),)
            population.append(ind)
        hof = HallOfFame.from_state(max(cfg.elite, 1), state["hall_of_fame"])
        generation = int(state["generation"])
    else:
        ctx.start_generation("generation 0", cfg.population)
        with _own_random(rng):
            population = tb.population(n=cfg.population)
        _evaluate_population(ctx, population, 0)
        hof.update(population)
        generation = 0
        _end(ctx, 0, "gp", population, hof, rng, None)

    while generation < cfg.generations:
        generation += 1
        ctx.start_generation(f"generation {generation}", cfg.population - cfg.elite)
        with _own_random(rng):
            offspring = [tb.clone(ind) for ind in tb.select(population, cfg.population - cfg.elite)]
            for i in range(1, len(offspring), 2):
                if random.random() < cfg.crossover:
                    offspring[i - 1], offspring[i] = tb.mate(offspring[i - 1], offspring[i])
                    del offspring[i - 1].fitness.values, offspring[i].fitness.values
            for i in range(len(offspring)):
                if random.random() < cfg.mutation:
                    (offspring[i],) = tb.mutate(offspring[i])
                    del offspring[i].fitness.values
        _evaluate_population(ctx, offspring, generation)
        elite = []
        for fitness, _, formula in hof.entries[:cfg.elite]:
            ind = tree_from_formula(formula, pset)
            ind.fitness.values = (fitness,)
            elite.append(ind)
        population = elite + offspring
        hof.update(offspring)
        _end(ctx, generation, "gp", population, hof, rng, None)

    best_fitness, _, best_formula = hof.entries[0]
    best = {"document": expression_document(best_formula), "fitness": best_fitness}
    return _tune_constants(ctx, cfg, seed, best, state, population, hof, rng)


def _end(ctx: SearchContext, generation: int, phase: str, population, hof: HallOfFame, rng: random.Random,
         cma: dict | None, extra_fitness: list[float] | None = None) -> None:
    fitness, _, formula = hof.entries[0]
    best_fitness = max(fitness, cma["best_fitness"]) if cma and cma.get("best_fitness") is not None else fitness
    label = readable(parse_formula(formula))
    if cma and cma.get("best_fitness") is not None and cma["best_fitness"] > fitness:
        label = cma["best_readable"]
    state = {"generation": generation if phase == "gp" else ctx_generation(ctx), "random": _random_state(rng),
             "population": [[tree_formula(ind), ind.fitness.values[0]] for ind in population],
             "hall_of_fame": hof.state(), "cma": cma}
    fits = extra_fitness if extra_fitness is not None else [ind.fitness.values[0] for ind in population]
    ctx.end_generation(generation, phase, fits, best_fitness, label, state)


def ctx_generation(ctx: SearchContext) -> int:
    """The last GP generation recorded in the history (the CMA-ES phase keeps it in the checkpoint)."""
    gp_rows = [r["generation"] for r in ctx.history if r["phase"] == "gp"]
    return max(gp_rows) if gp_rows else 0


def _tune_constants(ctx: SearchContext, cfg, seed: int, best: dict, state: dict, population, hof: HallOfFame,
                    rng: random.Random) -> dict:
    """CMA-ES on the numbers of the best tree (kept as they are when it has none)."""
    tree = parse_formula(hof.entries[0][2])
    values = constant_values(tree)
    if not values or cfg.cma_generations == 0:
        return best
    saved = state.get("cma") if state else None
    if saved:
        es = CMAES.from_state(saved["es"])
        cma_best = {"fitness": saved["best_fitness"], "formula": saved["best_formula"]}
    else:
        es = CMAES(values, cfg.cma_sigma, cfg.cma_population, seed)
        cma_best = {"fitness": None, "formula": None}
    gp_generations = ctx_generation(ctx)
    while es.generation < cfg.cma_generations:
        generation = gp_generations + es.generation + 1
        ctx.start_generation(f"constants {es.generation + 1}/{cfg.cma_generations}", es.population)
        xs = es.ask()
        formulas = [formula_string(replace_numbers(tree, x)) for x in xs]
        docs = [expression_document(f) for f in formulas]
        keys = [canonical(parse_formula(f)) for f in formulas]
        results = ctx.evaluate(docs, keys, generation, labels=[d["readable"] for d in docs])
        fits = [r["fitness"] for r in results]
        es.tell(xs, fits)
        for f, formula in zip(fits, formulas):
            if cma_best["fitness"] is None or f > cma_best["fitness"]:
                cma_best = {"fitness": f, "formula": formula}
        cma = {"es": es.state_dict(), "best_fitness": cma_best["fitness"], "best_formula": cma_best["formula"],
               "best_readable": readable(parse_formula(cma_best["formula"]))}
        _end(ctx, generation, "cma", population, hof, rng, cma, extra_fitness=fits)
    if cma_best["fitness"] is not None and cma_best["fitness"] > best["fitness"]:
        return {"document": expression_document(cma_best["formula"]), "fitness": cma_best["fitness"]}
    return best

