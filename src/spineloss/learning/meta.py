"""ML3: a meta-learned loss network, the loss module that wraps it, and the functional inner step.

After Bechtle et al. (2021), "Meta learning via learned loss" (ML3). The learned loss is a small MLP ``M_phi``
applied at every voxel and channel to features of the prediction and the target, with a softplus output::

    L_phi(p, g) = mean_{b,c} mean_n softplus(M_phi(x_bcn)),   x = (p, g)  [+ (TP, FP, FN) / N of (b, c)]

(``p``, ``g``, the soft counts: :mod:`.features`; every channel, background included). It is trained by
differentiating through one training step of the segmentation network ``f_theta``:

    inner step:  theta'(phi) = theta - eta grad_theta L_phi(f_theta(x_train), y_train)    (graph kept)
    outer step:  phi <- phi - Adam( grad_phi [1 - softDice(f_theta'(phi)(x_held), y_held)] )

The inner step is taken functionally (:func:`torch.func.functional_call` with the updated parameters as a
dictionary), so the real network's parameters are never changed by it (:func:`inner_step`); the outer loss
is spineloss's one soft Dice (:class:`~spineloss.losses.region.DiceLoss`, foreground classes). The search
itself (:mod:`.meta_search`) then trains a fresh network from scratch with the frozen loss for its fitness.

Reference: S. Bechtle, A. Molchanov, Y. Chebotar, E. Grefenstette, L. Righetti, G. Sukhatme, F. Meier,
"Meta learning via learned loss", ICPR 2020 (arXiv 1906.05374, 2019).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.base import Loss, LossInput
from .features import probabilities_and_target, soft_counts

__all__ = ["MetaLoss", "MetaLossNet", "START_LOSSES", "imitate", "inner_step"]

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


class MetaLossNet(nn.Module):
    """The per-voxel MLP ``M_phi``: ``in_features -> hidden... -> 1`` with smooth activations.

    Args:
        hidden: widths of the hidden layers (default two of 16).
        region_features: also feed the (b, c)'s ``TP, FP, FN`` divided by the voxel count (5 inputs, else 2).
        activation: ``"tanh"`` (default), ``"softplus"`` or ``"elu"``; smooth, because the meta-gradient
            differentiates the loss's gradient once more.
    """

    def __init__(self, hidden: Sequence[int] = (16, 16), region_features: bool = False,
                 activation: str = "tanh") -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"meta loss network: hidden must list >= 1 positive widths, got {hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"meta loss network: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.hidden, self.region_features, self.activation = hidden, bool(region_features), activation
        widths = [5 if region_features else 2] + hidden
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], 1))
        self.layers = nn.Sequential(*layers)

    @property
    def in_features(self) -> int:
        return 5 if self.region_features else 2

    def config(self) -> dict:
        """The constructor's arguments (stored in the learned-loss file)."""
        return {"hidden": list(self.hidden), "region_features": self.region_features, "activation": self.activation}

    def forward(self, features: Tensor) -> Tensor:
        """``features`` (..., in_features) -> per-voxel loss (...), ``softplus`` of the last layer (>= 0)."""
        return F.softplus(self.layers(features)[..., 0])


class MetaLoss(Loss):
    """A loss given by a (frozen or training) :class:`MetaLossNet` (module docstring).

    Args:
        network: the :class:`MetaLossNet`, or its :meth:`MetaLossNet.config` dict together with ``state``.
        state: the network's parameters ``{name: nested list or tensor}`` when ``network`` is a dict.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (B x C). activation: as every loss.
    """

    name = "learned_meta"

    def __init__(self, network: MetaLossNet | Mapping[str, Any], state: Mapping[str, Any] | None = None,
                 reduction: str = "mean", activation: str | None = None) -> None:
        super().__init__(reduction=reduction, activation=activation)
        loaded = not isinstance(network, MetaLossNet)
        if loaded:
            cfg = dict(network)
            unknown = sorted(set(cfg) - {"hidden", "region_features", "activation"})
            if unknown:
                raise ValueError(f"meta loss: unknown network key(s) {unknown}; known: hidden, region_features, "
                                 "activation")
            network = MetaLossNet(**cfg)
            if state is None:
                raise ValueError("meta loss: a network given by its config needs its state (the parameters)")
        if state is not None:
            load_plain_state(network, state)
        if loaded:  # a learned loss read from its file is frozen: training a U-Net with it leaves it unchanged
            network.requires_grad_(False)
        self.network = network

    def compute(self, batch: LossInput) -> Tensor:
        p, g = probabilities_and_target(batch)
        feats = [p, g]
        if self.network.region_features:
            counts = soft_counts(p, g, normalise=True)
            feats += [counts[k][..., None].expand_as(p) for k in ("tp", "fp", "fn")]
        per_voxel = self.network(torch.stack(feats, dim=-1))
        return self.reduce(per_voxel.mean(dim=2))

    def extra_repr(self) -> str:
        return f"network={self.network.config()!r}, reduction={self.reduction!r}"


#: per-voxel losses a loss network can start from (:func:`imitate`): f(p, g) for one channel
START_LOSSES = {
    "bce": lambda p, g: -(g * torch.log(p) + (1.0 - g) * torch.log1p(-p)),
    "brier": lambda p, g: (p - g) ** 2,
}


def imitate(network: MetaLossNet, start: str, steps: int = 400, seed: int = 0) -> float:
    """Fit ``network`` (in place) to a known per-voxel loss before meta-training: ``"bce"`` (binary
    cross-entropy of each channel) or ``"brier"`` (``(p - g)^2``), by Adam on ``steps`` batches of 4096 random
    ``p`` in [1e-3, 1 - 1e-3], ``g`` in {0, 1} (region features uniform in [0, 1]). ML3 starts from a random
    network; starting from a loss that trains turns the meta-gradient into a refinement of it (with a random
    start the first U-Nets learn nothing and the held-out Dice gives no signal). Returns the final mean
    squared error."""
    if start not in START_LOSSES:
        raise ValueError(f"meta loss: unknown start {start!r}; choose one of {sorted(START_LOSSES)} or 'random'")
    gen = torch.Generator().manual_seed(int(seed) + 31)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    target_fn = START_LOSSES[start]
    err = torch.tensor(float("nan"))
    for _ in range(int(steps)):
        p = 1e-3 + (1.0 - 2e-3) * torch.rand(4096, generator=gen)
        g = (torch.rand(4096, generator=gen) < 0.5).float()
        feats = [p, g] + [torch.rand(4096, generator=gen) for _ in range(network.in_features - 2)]
        err = (network(torch.stack(feats, dim=-1)) - target_fn(p, g)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        err.backward()
        optimizer.step()
    return float(err.detach())


def plain_state(module: nn.Module) -> dict[str, list]:
    """The parameters of ``module`` as nested lists of Python floats (exact for float32, JSON-ready)."""
    return {k: v.detach().cpu().tolist() for k, v in module.state_dict().items()}


def load_plain_state(module: nn.Module, state: Mapping[str, Any]) -> None:
    """Load :func:`plain_state`'s output (or tensors) into ``module``; ``ValueError`` naming a missing, extra
    or mis-shaped entry."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"meta loss: the network state does not match its config (missing {missing}, "
                         f"unexpected {extra})")
    tensors = {}
    for k, ref in own.items():
        try:
            t = torch.as_tensor(state[k], dtype=ref.dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"meta loss: state entry {k!r} is not a numeric array: {exc}") from None
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"meta loss: state entry {k!r} has shape {tuple(t.shape)}, the network needs "
                             f"{tuple(ref.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"meta loss: state entry {k!r} holds NaN or Inf")
        tensors[k] = t
    module.load_state_dict(tensors)


def inner_step(model: nn.Module, loss_fn: nn.Module, image: Tensor, target: Tensor,
               lr: float) -> tuple[dict[str, Tensor], Tensor]:
    """One SGD step of ``model`` on ``loss_fn``, taken functionally with the graph kept (ML3's inner step).

    ``theta' = theta - lr * grad_theta loss_fn(model_theta(image), target)`` with ``create_graph=True``, so
    ``theta'`` is a differentiable function of ``loss_fn``'s parameters. Returns ``(theta', inner loss)``
    (``theta'`` keyed like ``model.named_parameters()``). ``model``'s own parameters and buffers are left
    untouched; use them with :func:`torch.func.functional_call` (``{**buffers, **theta'}``).
    """
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    logits = torch.func.functional_call(model, {**buffers, **params}, (image,))
    loss = loss_fn(logits.float(), target)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    updated = {name: p if g is None else p - lr * g for (name, p), g in zip(params.items(), grads)}
    return updated, loss
