"""Cheap rejection of a candidate loss before any training (milliseconds instead of a training run).

A candidate is rejected, with the reason, when (in this order):

1. **ignores p** / **ignores g**: a formula without any terminal that depends on the prediction (``p``,
   ``TP``, ``FP``, ``FN``) or on the target (``g``, ``TP``, ``FP``, ``FN``);
2. **not finite**: its value is NaN or Inf on one of the examples below;
3. **no gradient**: its gradient with respect to the prediction is NaN/Inf, or zero everywhere, at the random
   predictions (``add(g, sub(p, p))`` mentions p but cannot train anything);
4. **ignores g** (numerically): the same value for every target at the same random prediction;
5. **not minimised by the perfect prediction**: on each of three random targets ``g``, the value at the
   (nearly) perfect prediction is not strictly below its value at every other prediction tried: three random
   ones (softmax / sigmoid of N(0, 2) logits), the uniform one, each constant class, and a wrong one (every
   label moved to the next class; the inverse for a sigmoid). "Nearly": ``(1 - d) onehot(g) + d / C`` with
   ``d = 1e-3`` (a network never outputs exact zeros), so a log of ``p`` stays meaningful.

The examples: 2 items of 4 x 5 x 6 voxels, labels drawn i.i.d. with every class present, seeded. Rules 2-5
evaluate the candidate's own loss module on probabilities (``activation="none"``), so they test exactly the
code that trains. After GLO (Gonzalez & Miikkulainen 2020), which discards trees that cannot be losses before
paying for a training run.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["screen"]

_DELTA = 1e-3
_SHAPE = (4, 5, 6)


def _targets(num_classes: int, gen: torch.Generator, count: int = 3) -> list[Tensor]:
    classes = max(num_classes, 2)
    out = []
    for _ in range(count):
        labels = torch.randint(0, classes, (2, 1) + _SHAPE, generator=gen)
        flat = labels.view(2, -1)
        for b in range(2):  # every class present in every item
            flat[b, :classes] = torch.randperm(classes, generator=gen)
        out.append(labels)
    return out


def _onehot(labels: Tensor, num_classes: int) -> Tensor:
    if num_classes == 1:
        return labels.float()
    return torch.nn.functional.one_hot(labels[:, 0], num_classes).movedim(-1, 1).float()


def _smooth(onehot: Tensor, num_classes: int) -> Tensor:
    if num_classes == 1:
        return onehot * (1.0 - 2.0 * _DELTA) + _DELTA
    return onehot * (1.0 - _DELTA) + _DELTA / num_classes


def _random_predictions(num_classes: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Three random predictions (the same for every target): softmax / sigmoid of N(0, 2) logits."""
    C = num_classes
    out = {}
    for k in range(3):
        logits = 2.0 * torch.randn((2, C) + _SHAPE, generator=gen)
        e = logits.exp()  # (torch.softmax of a tiny 5-D tensor can wait ~10 ms on busy OpenMP threads)
        out[f"random {k + 1}"] = torch.sigmoid(logits) if C == 1 else e / e.sum(dim=1, keepdim=True)
    return out


def _predictions(labels: Tensor, num_classes: int, random: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every non-perfect prediction tried against ``labels`` (probabilities, B x C x ...)."""
    C = num_classes
    shape = (2, C) + _SHAPE
    out = dict(random)
    if C == 1:
        out["uniform"] = torch.full(shape, 0.5)
        out["all background"] = torch.full(shape, _DELTA)
        out["all foreground"] = torch.full(shape, 1.0 - _DELTA)
        out["inverted"] = _smooth(1.0 - labels.float(), 1)
    else:
        out["uniform"] = torch.full(shape, 1.0 / C)
        for c in range(C):
            const = torch.full_like(labels, c)
            out[f"all class {c}"] = _smooth(_onehot(const, C), C)
        out["wrong class"] = _smooth(_onehot((labels + 1) % C, C), C)
    return out


def _value(loss, probs: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float(loss(probs, labels))


def screen(doc: Mapping[str, Any], num_classes: int = 2, seed: int = 0) -> str | None:
    """The reason to reject the learned-loss document ``doc`` (module docstring), or ``None`` to train it.

    ``num_classes``: the network's output channels on the proxy task (1: a sigmoid, else a softmax).
    A document that cannot even be built gives its ``ValueError`` message as the reason.
    """
    from .expression import DEPENDS_ON_G, DEPENDS_ON_P, parse_formula, terminals_used
    from .format import loss_from_document

    if int(num_classes) < 1:
        raise ValueError(f"screen: num_classes must be >= 1, got {num_classes}")
    C = int(num_classes)
    if doc.get("kind") == "expression":
        try:
            used = terminals_used(parse_formula(doc.get("formula", "")))
        except ValueError as exc:
            return f"invalid: {exc}"
        if not used & DEPENDS_ON_P:
            return "ignores p: no p, TP, FP or FN in the formula"
        if not used & DEPENDS_ON_G:
            return "ignores g: no g, TP, FP or FN in the formula"
    try:
        loss = loss_from_document(doc, activation="none")
    except ValueError as exc:
        return f"invalid: {exc}"
    loss.validate = False
    gen = torch.Generator().manual_seed(int(seed) + 12345)
    targets = _targets(C, gen)
    random = _random_predictions(C, gen)
    cases = [(labels, _predictions(labels, C, random)) for labels in targets]
    # 2. finite everywhere
    values: list[tuple[float, dict[str, float]]] = []
    for labels, preds in cases:
        perfect = _value(loss, _smooth(_onehot(labels, C), C), labels)
        others = {name: _value(loss, p, labels) for name, p in preds.items()}
        bad = [n for n, v in [("perfect", perfect), *others.items()] if not torch.isfinite(torch.tensor(v))]
        if bad:
            return f"not finite: NaN or Inf at the {bad[0]} prediction"
        values.append((perfect, others))
    # 3. a usable gradient at the random predictions
    any_nonzero = False
    for labels, preds in cases:
        for name in [n for n in preds if n.startswith("random")]:
            p = preds[name].clone().requires_grad_(True)
            out = loss(p, labels)
            (grad,) = torch.autograd.grad(out, p, allow_unused=True)
            if grad is None:
                continue
            if not bool(torch.isfinite(grad).all()):
                return "no gradient: the gradient is NaN or Inf at a random prediction"
            any_nonzero = any_nonzero or bool((grad.abs() > 1e-12).any())
    if not any_nonzero:
        return "no gradient: the gradient with respect to the prediction is zero"
    # 4. depends on the target
    first = [others["random 1"] for _, others in values]
    if max(first) - min(first) <= 1e-7 * (1.0 + abs(first[0])):
        return "ignores g: the same value for every target"
    # 5. the perfect prediction is the strict minimum
    for perfect, others in values:
        name, lowest = min(others.items(), key=lambda kv: kv[1])
        if not perfect < lowest - 1e-6 * (1.0 + abs(perfect)):
            return (f"not minimised by the perfect prediction: {perfect:.4g} at the perfect prediction, "
                    f"{lowest:.4g} at the {name} prediction")
    return None
