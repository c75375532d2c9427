"""A TaylorGLO-style parametric loss family for segmentation, and the loss module of one member.

The family (after Gonzalez & Miikkulainen 2021, TaylorGLO, who searched the coefficients of a third-order
Taylor polynomial in the prediction and the target with CMA-ES) is, for coefficients ``a_ij``, ``w_ce``,
``w_neg``, ``w_dice``, ``w_tv``, ``alpha``, ``beta``::

    L = mean_{b,n} S_c [ sum_{i>=1, i+j<=K} a_ij p^i g^j  -  w_ce g log p  -  w_neg (1 - g) log(1 - p) ]
        + w_dice mean_{b,c} (1 - Dice_bc)  +  w_tv mean_{b,c} (1 - Tversky_bc(alpha, beta))

with ``p``, ``g`` the per-voxel probability and target of channel ``c`` (:mod:`.features`), ``S_c`` the sum
over the channels for a softmax (one categorical distribution) and the mean for sigmoid channels, ``K`` the
order (default 3), and the region terms exactly spineloss's :class:`~spineloss.losses.region.DiceLoss` and
:class:`~spineloss.losses.region.TverskyLoss` (smoothing ``1e-5``, every class, mean over items and
classes). Terms without ``p`` (``i = 0``) are left out as in TaylorGLO: they do not change the gradient.
With K = 3 there are 6 polynomial coefficients ``p1g0 p2g0 p3g0 p1g1 p2g1 p1g2`` plus ``ce ce_neg dice tversky
alpha beta``: 12 numbers, 10 of them free weights.

What the family contains exactly (same value, same gradient), and why
---------------------------------------------------------------------
* **cross-entropy** ``ce = 1`` (softmax: ``-sum_c g_c log p_c`` is spineloss's ``ce``); with one sigmoid
  channel spineloss's ``ce`` is binary CE, ``ce = ce_neg = 1`` (setting ``"bce"``). A polynomial can only
  approximate the log singularity near ``p = 0`` (TaylorGLO expands around a point), so the log terms are
  in the family as atoms: the most used segmentation loss is then a point of the space, not a limit.
* **soft Dice** ``dice = 1`` and **Tversky** ``tversky = 1`` with any ``alpha, beta`` in (0, 1) (Dice is
  ``alpha = beta = 0.5``): region losses are what wins in segmentation under class imbalance (the study's
  baseline, Auto Seg-Loss), and no per-voxel polynomial can express a ratio of sums over the volume.
* **their mixtures** ``w_ce CE + w_dice Dice + w_tv Tversky`` with any weights, e.g. spineloss's
  ``dice_ce`` (``dice = ce = 1``).
* up to an additive constant that depends only on the target (no effect on the gradient): the **Brier score**
  / MSE ``sum_c (p - g)^2 = p^2 - 2 p g + g^2`` (``p2g0 = 1, p1g1 = -2``) and, for hard targets, **L1**
  ``|p - g| = p - 2 p g + g`` (``p1g0 = 1, p1g1 = -2``).

Not contained: focal loss (``(1 - p)^gamma log p`` mixes powers and logs), TopK, IoU (the limit
``alpha = beta -> 1``), distance losses (Hausdorff, boundary).

References:
    S. Gonzalez, R. Miikkulainen, "Optimizing loss functions through multi-variate Taylor polynomial
    parameterization", GECCO 2021 (TaylorGLO).
    S. S. M. Salehi, D. Erdogmus, A. Gholipour, "Tversky loss function for image segmentation using 3D fully
    convolutional deep networks", MLMI 2017.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from ..losses.base import Loss, LossInput, ParamSpec
from ..losses.region import DiceLoss, TverskyLoss
from .features import log_terms, probabilities_and_target, reduce_channels, soft_counts

__all__ = ["DEFINITION", "KNOWN_SETTINGS", "TaylorFamily", "TaylorLoss"]

LOG_TERMS = ("ce", "ce_neg")
REGION_TERMS = ("dice", "tversky", "alpha", "beta")
#: coefficients that are probabilities (Tversky's weights), searched through a logit
PROBABILITY_TERMS = ("alpha", "beta")
_DEFAULTS = {"alpha": 0.5, "beta": 0.5}
#: the family in one line (written into learned-loss files)
DEFINITION = ("L = mean_{b,n} S_c[ sum_{i>=1, i+j<=K} p{i}g{j} * p^i g^j - ce * g log p - ce_neg * (1-g) log(1-p) ] "
              "+ dice * mean_{b,c}(1 - Dice) + tversky * mean_{b,c}(1 - Tversky(alpha, beta)); S_c = sum over "
              "channels (softmax) or mean (sigmoid); Dice, Tversky as spineloss.losses.region with smooth_nr, "
              "smooth_dr")
_BOUND = 1e3

#: named coefficient settings: known losses as members of the family (module docstring)
KNOWN_SETTINGS: dict[str, dict[str, float]] = {
    "ce": {"ce": 1.0},
    "bce": {"ce": 1.0, "ce_neg": 1.0},
    "dice": {"dice": 1.0},
    "dice_ce": {"dice": 1.0, "ce": 1.0},
    "tversky": {"tversky": 1.0, "alpha": 0.3, "beta": 0.7},
    "brier": {"p2g0": 1.0, "p1g1": -2.0},
    "l1": {"p1g0": 1.0, "p1g1": -2.0},
}


@dataclass(frozen=True)
class TaylorFamily:
    """The shape of the family: polynomial ``order`` K (1..6), whether the log terms and the region terms are in.

    ``smooth_nr``/``smooth_dr``: the region terms' smoothing (spineloss's Dice and Tversky defaults).
    """

    order: int = 3
    log_terms: bool = True
    region_terms: bool = True
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int) or not 1 <= self.order <= 6:
            raise ValueError(f"taylor family: order must be an integer in 1..6, got {self.order!r}")
        for name in ("log_terms", "region_terms"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"taylor family: {name} must be true or false, got {getattr(self, name)!r}")
        if not (0.0 <= float(self.smooth_nr) <= 1.0 and 0.0 < float(self.smooth_dr) <= 1.0):
            raise ValueError("taylor family: smooth_nr must be in [0, 1] and smooth_dr in (0, 1]")

    def polynomial_terms(self) -> list[tuple[int, int]]:
        """``(i, j)`` exponents of ``p^i g^j`` with ``i >= 1``, ``i + j <= order``, by total degree then ``i``."""
        return [(i, d - i) for d in range(1, self.order + 1) for i in range(d, 0, -1)]

    def names(self) -> list[str]:
        """Every coefficient name of the family, in the order of the search vector."""
        out = [f"p{i}g{j}" for i, j in self.polynomial_terms()]
        if self.log_terms:
            out += list(LOG_TERMS)
        if self.region_terms:
            out += list(REGION_TERMS)
        return out

    def complete(self, coefficients: Mapping[str, Any], owner: str = "taylor loss") -> dict[str, float]:
        """All coefficients of the family: the given ones (checked: known names, finite numbers, ``alpha``
        and ``beta`` in (0, 1)) and 0 for the others (0.5 for ``alpha``, ``beta``)."""
        names = self.names()
        unknown = sorted(set(coefficients) - set(names))
        if unknown:
            raise ValueError(f"{owner}: unknown coefficient(s) {unknown} for the family {self.describe()}; "
                             f"its coefficients are {names}")
        out = {}
        for name in names:
            value = coefficients.get(name, _DEFAULTS.get(name, 0.0))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise ValueError(f"{owner}: coefficient {name} must be a finite number, got {value!r}")
            if name in PROBABILITY_TERMS and not 0.0 < float(value) < 1.0:
                raise ValueError(f"{owner}: coefficient {name} (a Tversky weight) must be in (0, 1), got {value!r}")
            out[name] = float(value)
        return out

    def setting(self, name: str) -> dict[str, float]:
        """A named setting of :data:`KNOWN_SETTINGS` completed for this family."""
        if name not in KNOWN_SETTINGS:
            raise ValueError(f"unknown taylor setting {name!r}; known: {sorted(KNOWN_SETTINGS)}")
        return self.complete(KNOWN_SETTINGS[name], f"taylor setting {name!r}")

    def encode(self, coefficients: Mapping[str, float]) -> list[float]:
        """The search vector of a (complete) coefficient dict: ``alpha``, ``beta`` as logits."""
        c = self.complete(coefficients)
        return [math.log(c[n] / (1.0 - c[n])) if n in PROBABILITY_TERMS else c[n] for n in self.names()]

    def decode(self, vector) -> dict[str, float]:
        """The coefficients of a search vector (inverse of :meth:`encode`; logits clipped to +-15)."""
        names = self.names()
        if len(vector) != len(names):
            raise ValueError(f"taylor family: a search vector needs {len(names)} numbers, got {len(vector)}")
        out = {}
        for n, v in zip(names, vector):
            v = float(v)
            out[n] = 1.0 / (1.0 + math.exp(-min(max(v, -15.0), 15.0))) if n in PROBABILITY_TERMS else v
        return out

    def describe(self) -> str:
        return (f"order {self.order}, log terms {'on' if self.log_terms else 'off'}, region terms "
                f"{'on' if self.region_terms else 'off'}")

    def to_dict(self) -> dict:
        return {"name": "taylorglo_segmentation", **asdict(self), "definition": DEFINITION}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TaylorFamily":
        d = dict(d)
        if d.get("name", "taylorglo_segmentation") != "taylorglo_segmentation":
            raise ValueError(f"taylor family: name {d['name']!r} is not 'taylorglo_segmentation' (a newer spineloss?)")
        d = {k: v for k, v in d.items() if k not in ("name", "definition")}
        known = {"order", "log_terms", "region_terms", "smooth_nr", "smooth_dr"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"taylor family: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


class TaylorLoss(Loss):
    """One member of the TaylorGLO-style family (module docstring).

    Args:
        coefficients: ``{name: value}``; names of :meth:`TaylorFamily.names`, missing ones are 0
            (``alpha``, ``beta``: 0.5). E.g. ``{"ce": 1, "dice": 1}`` is spineloss's ``dice_ce``.
        family: a :class:`TaylorFamily` or its dict (default: order 3 with log and region terms).
        activation: as every loss. Only ``reduction="mean"`` (the voxel and region parts have different shapes).

    The coefficients are the tunable parameters (``alpha``, ``beta`` in (0, 1), the others in +-1e3).
    """

    name = "learned_taylor"
    reductions = ("mean",)

    def __init__(self, coefficients: Mapping[str, float], family: TaylorFamily | Mapping[str, Any] | None = None,
                 reduction: str = "mean", activation: str | None = None) -> None:
        super().__init__(reduction=reduction, activation=activation)
        if family is None:
            family = TaylorFamily()
        elif not isinstance(family, TaylorFamily):
            family = TaylorFamily.from_dict(family)
        self.family = family
        self.coefficients = family.complete(coefficients, self._owner())
        self._terms = family.polynomial_terms()

    def tunable_parameters(self) -> dict[str, ParamSpec]:
        out = {}
        for k, v in self.coefficients.items():
            if k in PROBABILITY_TERMS:
                out[k] = ParamSpec(k, v, 0.0, 1.0, False, False, doc="Tversky weight")
            else:
                out[k] = ParamSpec(k, v, -_BOUND, _BOUND, doc="coefficient of the learned family")
        return out

    def set_parameter(self, name: str, value: float) -> None:
        specs = self.tunable_parameters()
        if name not in specs:
            raise ValueError(f"{self._owner()}: unknown tunable parameter {name!r}; the coefficients are "
                             f"{sorted(specs)}")
        self.coefficients[name] = specs[name].check(value, self._owner())

    def compute(self, batch: LossInput) -> Tensor:
        c = self.coefficients
        p, g = probabilities_and_target(batch)
        voxel: Tensor | None = None

        def add(term: Tensor) -> None:
            nonlocal voxel
            voxel = term if voxel is None else voxel + term

        for i, j in self._terms:
            a = c[f"p{i}g{j}"]
            if a:
                add(a * (p ** i if i > 1 else p) * (g ** j if j > 1 else (g if j == 1 else 1.0)))
        if self.family.log_terms and (c["ce"] or c["ce_neg"]):
            log_p, log_q = log_terms(batch, p)
            if c["ce"]:
                add(-c["ce"] * g * log_p)
            if c["ce_neg"]:
                add(-c["ce_neg"] * (1.0 - g) * log_q)
        total = p.new_zeros(())
        if voxel is not None:
            total = total + reduce_channels(voxel, batch).mean()
        if self.family.region_terms and (c["dice"] or c["tversky"]):
            counts = soft_counts(p, g)
            f = self.family
            if c["dice"]:
                dice = DiceLoss(smooth_nr=f.smooth_nr, smooth_dr=f.smooth_dr)
                total = total + c["dice"] * dice.score(counts).mean()
            if c["tversky"]:
                tversky = TverskyLoss(alpha=c["alpha"], beta=c["beta"], smooth_nr=f.smooth_nr, smooth_dr=f.smooth_dr)
                total = total + c["tversky"] * tversky.score(counts).mean()
        return total

    def readable(self, digits: int = 4) -> str:
        """The member written out, e.g. ``1 CE + 1 (1 - Dice)``; only the non-zero terms."""
        c = self.coefficients
        parts = []
        for i, j in self._terms:
            a = c[f"p{i}g{j}"]
            if a:
                mono = "".join([f"p^{i}" if i > 1 else "p", "" if j == 0 else (f" g^{j}" if j > 1 else " g")])
                parts.append(f"{a:.{digits}g} {mono}")
        if self.family.log_terms:
            if c["ce"]:
                parts.append(f"{c['ce']:.{digits}g} (-g log p)")
            if c["ce_neg"]:
                parts.append(f"{c['ce_neg']:.{digits}g} (-(1 - g) log(1 - p))")
        voxel = " + ".join(parts)
        text = f"mean_voxels S_c[{voxel}]" if voxel else ""
        region = []
        if self.family.region_terms:
            if c["dice"]:
                region.append(f"{c['dice']:.{digits}g} (1 - Dice)")
            if c["tversky"]:
                region.append(f"{c['tversky']:.{digits}g} (1 - Tversky(alpha={c['alpha']:.{digits}g}, "
                              f"beta={c['beta']:.{digits}g}))")
        return " + ".join([t for t in [text] + region if t]) or "0"

    def extra_repr(self) -> str:
        nonzero = {k: v for k, v in self.coefficients.items() if v and k not in PROBABILITY_TERMS}
        return f"coefficients={nonzero!r}, family={self.family.describe()!r}"
