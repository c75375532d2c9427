"""Cheap rejection of a candidate loss before any training (milliseconds instead of a training run).

A candidate is rejected, with the reason, when (in this order):

1. **ignores p** / **ignores g**: a formula without any terminal that depends on the prediction (``p``,
   ``TP``, ``FP``, ``FN``) or on the target (``g``, ``TP``, ``FP``, ``FN``);
2. **not finite**: its value is NaN or Inf on one of the examples below;
3. **no gradient**: its gradient with respect to the *logits* is NaN/Inf, or zero everywhere, at the random
   predictions, taken through the activation the training uses (softmax for C > 1, sigmoid for C = 1): the
   network trains on logits, and a gradient with respect to ``p`` that the softmax projects away (the same
   for every channel of a voxel) trains nothing (``add(g, sub(p, p))``, and ``add(p, g)`` under a softmax,
   mention p but cannot train anything). "Zero": below float32's rounding of the chain rule;
4. **ignores g** (numerically): the same value for every target at the same random prediction;
5. **not minimised by the perfect prediction**: on each of three random targets ``g``, the value at the
   (nearly) perfect prediction is not strictly below its value at every other prediction tried: three random
   ones (softmax / sigmoid of N(0, 2) logits), the uniform one, each constant class, a wrong one (every
   label moved to the next class; the inverse for a sigmoid), and a *confidently* wrong one (the same, with
   true-class probability ``1e-8`` everywhere, as a saturated softmax / sigmoid gives; in float32 the wrong
   class then gets exactly 1 for two classes or a sigmoid): a loss that is low on confident mistakes, e.g.
   through a protection that switches off near 0, fails here. "Nearly" perfect: ``(1 - d) onehot(g) + d / C``
   with ``d = 1e-3`` (a network never outputs exact zeros), so a log of ``p`` stays meaningful.

The examples: 2 items of 4 x 5 x 6 voxels, labels drawn i.i.d. with every class present, seeded. Rules 2, 4
and 5 evaluate the candidate's own loss module on probabilities (``activation="none"``), rule 3 the module
the training builds, on logits, so they test exactly the code that trains. After GLO (Gonzalez &
Miikkulainen 2020), which discards trees that cannot be losses before paying for a training run.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["screen"]

_DELTA = 1e-3
#: the true-class probability of the confidently wrong prediction
_CONFIDENT = 1e-8
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


def _random_logits(num_classes: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Three random logit maps (the same for every target): N(0, 2)."""
    return {f"random {k + 1}": 2.0 * torch.randn((2, num_classes) + _SHAPE, generator=gen) for k in range(3)}


def _probabilities(logits: Tensor) -> Tensor:
    """Softmax (C > 1) / sigmoid (C = 1) of ``logits``."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    e = logits.exp()  # (torch.softmax of a tiny 5-D tensor can wait ~10 ms on busy OpenMP threads)
    return e / e.sum(dim=1, keepdim=True)


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
        out["confidently wrong"] = torch.where(labels == 1, _CONFIDENT, 1.0 - _CONFIDENT).float()
    else:
        out["uniform"] = torch.full(shape, 1.0 / C)
        for c in range(C):
            const = torch.full_like(labels, c)
            out[f"all class {c}"] = _smooth(_onehot(const, C), C)
        wrong = _onehot((labels + 1) % C, C)
        out["wrong class"] = _smooth(wrong, C)
        out["confidently wrong"] = wrong * (1.0 - (C - 1) * _CONFIDENT) + (1.0 - wrong) * _CONFIDENT
    return out


def _value(loss, probs: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float(loss(probs, labels))


def _gradient(loss, x: Tensor, labels: Tensor) -> Tensor | None:
    """``d loss(x, labels) / d x``, or ``None`` when the value does not depend on ``x`` at all."""
    x = x.clone().requires_grad_(True)
    out = loss(x, labels)
    if not out.requires_grad:
        return None
    (grad,) = torch.autograd.grad(out, x, allow_unused=True)
    return grad


def _noise_floor(prob_loss, probs: Tensor, labels: Tensor) -> float:
    """The size below which a float32 gradient with respect to the logits counts as zero at ``probs``.

    The activation's chain rule multiplies the gradient ``v`` with respect to the probabilities by
    ``p (v - <p, v>)`` (softmax) or ``p (1 - p) v`` (sigmoid); where the exact result is 0 (``v`` the same
    for every channel, which the softmax projects away) float32 leaves ~1e-7 of ``max |p v|`` (measured:
    1.1e-7 to 1.7e-7 for 2 and 3 classes). Anything above ``1e-6`` of it (and above ``1e-12``) is a gradient;
    a loss with a smaller one (a huge channel-constant term beside a useful one) has a gradient at float32's
    rounding and is called gradient-free (a wrongly accepted constant would still fail rule 5)."""
    v = _gradient(prob_loss, probs, labels)
    if v is None or not bool(torch.isfinite(v).all()):
        return 1e-12
    scale = probs * (1.0 - probs) if probs.shape[1] == 1 else probs
    return max(1e-12, 1e-6 * float((scale * v).abs().max()))


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
        trained = loss_from_document(doc)  # the module a training builds: the default softmax / sigmoid
    except ValueError as exc:
        return f"invalid: {exc}"
    loss.validate = trained.validate = False
    gen = torch.Generator().manual_seed(int(seed) + 12345)
    targets = _targets(C, gen)
    logits = _random_logits(C, gen)
    random = {name: _probabilities(x) for name, x in logits.items()}
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
    # 3. a usable gradient with respect to the logits, through the training's activation
    any_nonzero = False
    for labels, preds in cases:
        for name, x in logits.items():
            grad = _gradient(trained, x, labels)
            if grad is None:
                continue
            if not bool(torch.isfinite(grad).all()):
                return "no gradient: the gradient with respect to the logits is NaN or Inf at a random prediction"
            if not any_nonzero:
                any_nonzero = float(grad.abs().max()) > _noise_floor(loss, preds[name], labels)
    if not any_nonzero:
        return "no gradient: the gradient with respect to the logits is zero at every random prediction"
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
