"""Loss expressions: the formulas that genetic programming evolves, and the loss module that evaluates one.

A formula is written in prefix-call notation (DEAP's ``str(tree)``), e.g. ``mul(c0, square(sub(p, g)))``,
over these primitives and terminals:

==========  =====  ===============================================================================
primitive   arity  value (``eps`` guards: ``1e-6`` for division and log, ``1e-8`` for the square root)
==========  =====  ===============================================================================
add         2      ``a + b``
sub         2      ``a - b``
mul         2      ``a * b``
div         2      protected division: ``a / (sign(b) max(|b|, eps))`` with ``sign(0) = 1``
log         1      protected log: ``log |a|`` where ``|a| >= eps``, else ``log(eps) - 1 + |a| / eps``
square      1      ``a^2``
sqrt        1      protected square root: ``sqrt(max(|a|, eps))`` (finite gradient everywhere)
neg         1      ``-a``
==========  =====  ===============================================================================

The protections are continuous (format version 2; :mod:`.format`): inside the guard, division divides by
``+-eps`` instead of returning a constant, and the log continues along its tangent at ``|a| = eps`` (value and
slope continuous, still increasing in ``|a|``), so ``neg(mul(g, log(p)))`` is about ``-log(eps) = 13.8`` with a
gradient towards the target on a confidently wrong voxel (true-class ``p < eps``). Version 1 (Koza's
division returning ``1`` and a log returning ``0`` inside the guard) let a formula score a confident
mistake lower than the perfect prediction; files of that version whose formula divides or takes a log are
refused when read.

Terminals: ``p`` (per-voxel probability, softmax over C > 1 channels or sigmoid), ``g`` (per-voxel target,
one-hot or soft), ``TP``, ``FP``, ``FN`` (soft counts of the voxel's batch item and class divided by the
voxel count, :func:`spineloss.learning.features.soft_counts`, broadcast over the voxels), numbers, and named
constants ``c0, c1, ...`` whose values are stored beside the formula (so CMA-ES can tune them).

The loss (:class:`ExpressionLoss`) evaluates the formula at every voxel and channel and averages over the
voxels, then over the classes (every channel, background included) and the batch items::

    L = 1/(B C) sum_{b,c} 1/N sum_n f(p_bcn, g_bcn, TP_bc, FP_bc, FN_bc)

so ``square(sub(p, g))`` is the Brier score and ``sub(1, div(mul(2, TP), add(add(mul(2, TP), FP), FN)))``
is the soft Dice loss (without smoothing). Formulas are parsed by a whitelist over Python's ``ast``: nothing
is ever ``eval``-ed, so a learned-loss file cannot run code.

Reference: S. Gonzalez, R. Miikkulainen, "Improved training speed, accuracy, and data utilization through
loss function optimization", IEEE CEC 2020 (GLO).
"""
from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..losses.base import Loss, LossInput, ParamSpec
from .features import probabilities_and_target, soft_counts

__all__ = ["ExpressionLoss", "PRIMITIVES", "TERMINALS", "canonical", "constant_names", "constant_values", "evaluate",
           "formula_string", "name_constants", "parse_formula", "readable", "replace_numbers", "terminals_used",
           "with_constants"]

EPS_DIV = 1e-6
EPS_LOG = 1e-6
EPS_SQRT = 1e-8
_LOG_EPS = math.log(EPS_LOG)
#: terminals: per-voxel inputs and the region soft counts (fractions of the voxel count)
TERMINALS = ("p", "g", "TP", "FP", "FN")
#: terminals that depend on the prediction / on the target
DEPENDS_ON_P = frozenset({"p", "TP", "FP", "FN"})
DEPENDS_ON_G = frozenset({"g", "TP", "FP", "FN"})
REGION_TERMINALS = frozenset({"TP", "FP", "FN"})
_CONST_NAME = re.compile(r"^c[0-9]+$")
_MAX_FORMULA = 100_000

#: a parsed formula: ("op", name, children) | ("var", name) | ("num", value) | ("const", name)
Node = tuple


def _pdiv(a: Tensor, b: Tensor) -> Tensor:
    """Protected division ``a / (sign(b) max(|b|, eps))``, ``sign(0) = 1``: ``a / b`` outside the guard,
    ``+-a / eps`` inside (continuous in ``a``, and in ``b`` except where ``b`` changes sign)."""
    return a / torch.where(b >= 0, b.clamp_min(EPS_DIV), b.clamp_max(-EPS_DIV))


def _plog(a: Tensor) -> Tensor:
    """Protected log: ``log |a|`` for ``|a| >= eps``, its tangent ``log(eps) - 1 + |a| / eps`` below (value
    and derivative continuous, finite at 0, increasing in ``|a|``)."""
    m = a.abs()
    return torch.where(m >= EPS_LOG, torch.log(m.clamp_min(EPS_LOG)), (_LOG_EPS - 1.0) + m / EPS_LOG)


def _psqrt(a: Tensor) -> Tensor:
    return torch.sqrt(a.abs().clamp_min(EPS_SQRT))


def _par(text: str, prec: int, need: int) -> str:
    return f"({text})" if prec < need else text


def _w_add(a, b):
    return f"{a[0]} + {_par(*b, 2) if b[1] == 3 else b[0]}", 1


def _w_sub(a, b):
    return f"{a[0]} - {_par(*b, 2) if b[1] != 3 else '(' + b[0] + ')'}", 1


def _w_mul(a, b):
    return f"{_par(*a, 2)} * {_par(*b, 4) if b[1] != 2 else b[0]}", 2


def _w_div(a, b):
    return f"{_par(*a, 2)} / {_par(*b, 4)}", 2


#: name -> (arity, torch function, infix writer: ((text, precedence), ...) -> (text, precedence))
PRIMITIVES: dict[str, tuple[int, Callable[..., Tensor], Callable[..., tuple[str, int]]]] = {
    "add": (2, torch.add, _w_add),
    "sub": (2, torch.sub, _w_sub),
    "mul": (2, torch.mul, _w_mul),
    "div": (2, _pdiv, _w_div),
    "log": (1, _plog, lambda a: (f"log({a[0]})", 4)),
    "square": (1, torch.square, lambda a: (f"{_par(*a, 4)}^2", 4)),
    "sqrt": (1, _psqrt, lambda a: (f"sqrt({a[0]})", 4)),
    "neg": (1, torch.neg, lambda a: (f"-{_par(*a, 4)}", 3)),
}
_COMMUTATIVE = frozenset({"add", "mul"})


# ---------------------------------------------------------------------------------------------------------
# parsing and writing


def parse_formula(text: str) -> Node:
    """Parse a prefix-call formula (see the module docstring) into a tree of tuples.

    Raises ``ValueError`` naming the first thing that is not a primitive, a terminal, a number or a named
    constant ``c<k>``, or a primitive called with the wrong number of arguments.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a loss formula must be a non-empty string, got {text!r}")
    if len(text) > _MAX_FORMULA:
        raise ValueError(f"a loss formula is limited to {_MAX_FORMULA} characters, got {len(text)}")
    try:
        body = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"loss formula {text!r} is not a valid expression: {exc.msg}") from None
    return _convert(body, text)


def _convert(node: ast.AST, text: str) -> Node:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name = node.func.id
        if name not in PRIMITIVES:
            raise ValueError(f"loss formula {text!r}: unknown primitive {name!r}; primitives are "
                             f"{', '.join(PRIMITIVES)}")
        arity = PRIMITIVES[name][0]
        if len(node.args) != arity:
            raise ValueError(f"loss formula {text!r}: {name} takes {arity} argument(s), got {len(node.args)}")
        return ("op", name, tuple(_convert(a, text) for a in node.args))
    if isinstance(node, ast.Name):
        if node.id in TERMINALS:
            return ("var", node.id)
        if _CONST_NAME.match(node.id):
            return ("const", node.id)
        raise ValueError(f"loss formula {text!r}: unknown name {node.id!r}; terminals are {', '.join(TERMINALS)} "
                         "and named constants c0, c1, ...")
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return ("num", float(node.value))
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)):
        value = float(node.operand.value)
        return ("num", -value if isinstance(node.op, ast.USub) else value)
    piece = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
    raise ValueError(f"loss formula {text!r}: {piece!r} is not allowed; write calls of the primitives "
                     f"({', '.join(PRIMITIVES)}) on terminals, numbers and constants c0, c1, ...")


def _number(value: float) -> str:
    return repr(float(value))


def formula_string(node: Node) -> str:
    """The prefix-call text of ``node`` (numbers written exactly, as ``repr``): parses back to ``node``."""
    kind = node[0]
    if kind == "op":
        return f"{node[1]}({', '.join(formula_string(c) for c in node[2])})"
    if kind == "num":
        return _number(node[1])
    return node[1]


def canonical(node: Node, constants: Mapping[str, float] | None = None) -> str:
    """A canonical text of the function: named constants replaced by their values, numbers rounded to 6
    significant digits, the arguments of ``add`` and ``mul`` sorted. Two trees with the same canonical text
    compute the same loss (the search's cache key, so no tree is trained twice)."""
    kind = node[0]
    if kind == "op":
        args = [canonical(c, constants) for c in node[2]]
        if node[1] in _COMMUTATIVE:
            args.sort()
        return f"{node[1]}({','.join(args)})"
    if kind == "num":
        return f"{node[1]:.6g}"
    if kind == "const":
        if constants is None or node[1] not in constants:
            return node[1]
        return f"{float(constants[node[1]]):.6g}"
    return node[1]


def readable(node: Node, constants: Mapping[str, float] | None = None, digits: int = 4) -> str:
    """Infix text for people, e.g. ``c0 * (p - g)^2``; named constants as their names unless ``constants``
    is given (then their values, ``digits`` significant digits). ``/``, ``log`` and ``sqrt`` are the protected
    (continuous) ones of the module docstring: ``a / b`` divides by ``+-eps`` where ``|b| < eps``, ``log``
    follows its tangent below ``eps``."""
    return _readable(node, constants, digits)[0]


def _readable(node: Node, constants: Mapping[str, float] | None, digits: int) -> tuple[str, int]:
    kind = node[0]
    if kind == "op":
        return PRIMITIVES[node[1]][2](*(_readable(c, constants, digits) for c in node[2]))
    value = node[1] if kind == "num" else (constants or {}).get(node[1]) if kind == "const" else None
    if value is None:
        return node[1], 4
    text = f"{float(value):.{digits}g}"
    return text, 3 if text.startswith("-") else 4


def terminals_used(node: Node) -> set[str]:
    """The terminals (``p``, ``g``, ``TP``, ...) that occur in ``node``."""
    if node[0] == "op":
        return set().union(*(terminals_used(c) for c in node[2]))
    return {node[1]} if node[0] == "var" else set()


def constant_names(node: Node) -> list[str]:
    """The named constants of ``node`` in order of first appearance."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if n[0] == "op":
            for c in n[2]:
                walk(c)
        elif n[0] == "const" and n[1] not in out:
            out.append(n[1])

    walk(node)
    return out


def name_constants(node: Node) -> tuple[Node, dict[str, float]]:
    """Every number of ``node`` turned into a named constant ``c0, c1, ...`` (in prefix order): the tree and
    the values. Existing named constants are kept with their names."""
    values: dict[str, float] = {}
    taken = set(constant_names(node))
    counter = 0

    def walk(n: Node) -> Node:
        nonlocal counter
        if n[0] == "op":
            return ("op", n[1], tuple(walk(c) for c in n[2]))
        if n[0] == "num":
            while f"c{counter}" in taken:
                counter += 1
            name = f"c{counter}"
            taken.add(name)
            values[name] = float(n[1])
            return ("const", name)
        return n

    return walk(node), values


def with_constants(node: Node, constants: Mapping[str, float]) -> Node:
    """``node`` with each named constant replaced by its number from ``constants``."""
    if node[0] == "op":
        return ("op", node[1], tuple(with_constants(c, constants) for c in node[2]))
    if node[0] == "const":
        if node[1] not in constants:
            raise ValueError(f"constant {node[1]!r} of the formula has no value; give it in constants")
        return ("num", float(constants[node[1]]))
    return node


def constant_values(node: Node) -> list[float]:
    """The numbers of ``node`` in prefix order (what CMA-ES tunes after the genetic search)."""
    if node[0] == "op":
        return [v for c in node[2] for v in constant_values(c)]
    return [float(node[1])] if node[0] == "num" else []


def replace_numbers(node: Node, values: list[float]) -> Node:
    """``node`` with its numbers replaced, in prefix order, by ``values`` (as many as it has)."""
    it = iter(values)

    def walk(n: Node) -> Node:
        if n[0] == "op":
            return ("op", n[1], tuple(walk(c) for c in n[2]))
        if n[0] == "num":
            return ("num", float(next(it)))
        return n

    out = walk(node)
    if next(it, None) is not None:
        raise ValueError("replace_numbers: more values than numbers in the formula")
    return out


def evaluate(node: Node, env: Mapping[str, Tensor], constants: Mapping[str, float] | None = None) -> Tensor:
    """The value of ``node`` with the terminals of ``env`` (tensors that broadcast together) as a tensor."""
    ref = next(iter(env.values()))
    return _eval(node, env, constants or {}, ref)


def _eval(node: Node, env: Mapping[str, Tensor], constants: Mapping[str, float], ref: Tensor) -> Tensor:
    kind = node[0]
    if kind == "op":
        fn = PRIMITIVES[node[1]][1]
        return fn(*(_eval(c, env, constants, ref) for c in node[2]))
    if kind == "var":
        return env[node[1]]
    value = node[1] if kind == "num" else constants[node[1]]
    return torch.tensor(float(value), dtype=ref.dtype, device=ref.device)


# ---------------------------------------------------------------------------------------------------------
# the loss


class ExpressionLoss(Loss):
    """A loss given by a formula (module docstring): ``L = mean_{b,c} mean_n f(p, g, TP, FP, FN)``.

    Args:
        formula: prefix-call text over the primitives and terminals, e.g. ``"square(sub(p, g))"``.
        constants: values of the named constants ``c0, c1, ...`` of the formula (every one needed, none extra).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (B x C: one value per batch item and class).
        activation: as every loss (softmax for C > 1, sigmoid for C = 1 by default; ``"none"``: probabilities).

    The constants are the loss's tunable parameters (bounds +-1e6), so :mod:`spineloss.tuning` can move them.
    """

    name = "learned_expression"

    def __init__(self, formula: str, constants: Mapping[str, float] | None = None, reduction: str = "mean",
                 activation: str | None = None) -> None:
        super().__init__(reduction=reduction, activation=activation)
        self.tree = parse_formula(formula)
        self.formula = formula_string(self.tree)
        needed = constant_names(self.tree)
        given = dict(constants or {})
        missing = [c for c in needed if c not in given]
        extra = sorted(set(given) - set(needed))
        if missing or extra:
            raise ValueError(f"loss formula {formula!r}: constants {missing} have no value" if missing else
                             f"loss formula {formula!r}: constants {extra} are not used by the formula")
        self.constants: dict[str, float] = {}
        for k, v in given.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ValueError(f"loss formula {formula!r}: constant {k} must be a finite number, got {v!r}")
            self.constants[k] = float(v)
        self.uses = terminals_used(self.tree)

    def tunable_parameters(self) -> dict[str, ParamSpec]:
        return {k: ParamSpec(k, v, -1e6, 1e6, doc="constant of the learned formula") for k, v in self.constants.items()}

    def set_parameter(self, name: str, value: float) -> None:
        if name not in self.constants:
            raise ValueError(f"{self._owner()}: unknown tunable parameter {name!r}; the formula's constants are "
                             f"{sorted(self.constants)}")
        self.constants[name] = self.tunable_parameters()[name].check(value, self._owner())

    def compute(self, batch: LossInput) -> Tensor:
        p, g = probabilities_and_target(batch)
        env: dict[str, Any] = {"p": p, "g": g}
        if self.uses & REGION_TERMINALS:
            counts = soft_counts(p, g, normalise=True)
            env.update(TP=counts["tp"][..., None], FP=counts["fp"][..., None], FN=counts["fn"][..., None])
        value = evaluate(self.tree, env, self.constants)
        per_class = torch.broadcast_to(value, p.shape).mean(dim=2)
        return self.reduce(per_class)

    def readable(self, values: bool = True) -> str:
        """The formula in infix notation, with the constants' values (``values``) or names."""
        return readable(self.tree, self.constants if values else None)

    def extra_repr(self) -> str:
        return f"formula={self.formula!r}, constants={self.constants!r}, reduction={self.reduction!r}"

