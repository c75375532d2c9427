"""MONAI's own unit-test cases for six losses, run against spineloss and the installed MONAI side by side.

The cases are rebuilt here (our own representation, not MONAI's tables) from reading MONAI's
``tests/losses/test_{dice,tversky,focal,dice_ce,dice_focal,hausdorff}_loss.py``: the same small literal inputs,
the same option grids for the tests that loop over options (DiceFocal), and the fixed-input examples of the
focal tests' other methods (seeded and smaller where MONAI draws large random batches). No expected value is
copied: each case runs the installed MONAI class (1.6.1 at the time of writing) on the same inputs and compares.

How a MONAI case becomes a spineloss call (the documented translation, :func:`to_spineloss`):

* inputs of any rank become ``B x C x D x H x W`` by size-1 spatial axes in front; a size-1 axis changes none of
  these losses (sums and means over voxels, exact distance transforms without a border along it);
* ``to_onehot_y`` is dropped: spineloss reads the target's format from its shape (``B x 1 x ...`` label map or
  ``B x C x ...`` one-hot / soft / multi-label);
* ``DiceLoss(jaccard=True)`` is our ``iou``;
* MONAI's defaults are written out where ours differ: no activation (``sigmoid=False, softmax=False``) for the
  region, distance and compound losses (ours default to logits), ``alpha=beta=0.5`` for the Tversky loss (ours
  0.3 / 0.7), ``use_softmax=False`` for the focal loss (ours follows C).

Every case is one of (the counts are pinned in :func:`test_case_inventory`):

* ``match``: same value as MONAI (values compared flattened: with ``reduction="none"`` MONAI's DiceLoss and
  HausdorffDTLoss return ``B x C' x 1 x 1 x 1``, ours ``B x C'``, the same numbers; other shapes are equal);
* ``intended``: a documented difference (docs/losses.md, "Intended differences from MONAI"), checked against
  the documented alternative: the softmax focal loss's mean is C times MONAI's (MONAI also averages over the
  classes); DiceFocal with ``softmax=True`` uses the softmax focal loss where MONAI uses a sigmoid one (checked
  against an explicit formula; its Dice part against MONAI's DiceLoss, with the class weight applied when a
  single class is scored, which MONAI's DiceLoss ignores);
* ``refused``: not expressible, spineloss raises a ``ValueError`` naming the parameter: ``smooth_dr = 0``
  (ours must be > 0, so that no class can give 0/0), and DiceCE's one-value ``weight`` for a one-channel
  sigmoid (MONAI passes it to BCE as ``pos_weight`` with an unnormalised mean; our CE class weights for one
  channel are ``(background, foreground)`` with the weighted mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F

monai_losses = pytest.importorskip("monai.losses")

from spineloss.losses import build_loss  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOL = 1e-5  # rtol and atol of a match
MONAI_NAMES = {"DiceLoss": "dice", "TverskyLoss": "tversky", "FocalLoss": "focal", "DiceCELoss": "dice_ce",
               "DiceFocalLoss": "dice_focal", "HausdorffDTLoss": "hausdorff"}
_ACTIVATED = ("DiceLoss", "TverskyLoss", "DiceCELoss", "DiceFocalLoss", "HausdorffDTLoss")


def t(data, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(data, dtype=dtype)


def log_softmax_ch(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=1)


# ----------------------------------------------------------------------------------------------- the inputs
# 2 x 2 images, one channel: a diagonal of +1 logits, and its targets
DIAG = t([[[1.0, -1.0], [-1.0, 1.0]]])                                  # 1 x 2 x 2
DIAG_T = t([[[1.0, 0.0], [1.0, 1.0]]])
DIAG2 = torch.stack([DIAG, DIAG])                                       # 2 x 1 x 2 x 2
DIAG2_T = torch.stack([t([[[1.0, 1.0], [1.0, 1.0]]]), t([[[1.0, 0.0], [1.0, 0.0]]])])
DIAG2_ZERO = torch.stack([t([[[1.0, -0.0], [-1.0, 1.0]]]), DIAG])       # the same with one logit at 0
PROBS2 = torch.stack([t([[[0.3, 0.4], [0.7, 0.9]]]), t([[[1.0, 0.1], [0.5, 0.3]]])])  # probabilities
# three voxels, two channels
ONEHOT3 = t([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])   # 2 x 2 x 3
ONEHOT3_Y = t([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])                                    # 2 x 1 x 3, labels
RAMP3 = t([[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])    # 2 x 2 x 3
RAMP3_Y = t([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]])
BIG3 = t([[[100.0, 100.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
BCE3 = t([[[0.8, 0.6, 0.0]], [[0.0, 0.0, 0.9]]])                                         # 2 x 1 x 3
# focal: three identical channels on a 2 x 2 image, labels 0, 1, 2
FOCAL_X = t([[1.0, 1.0], [0.5, 0.0]]).expand(1, 3, 2, 2).contiguous()
FOCAL_Y = t([[[[0, 1], [2, 0]]]], dtype=torch.long)                     # 1 x 1 x 2 x 2
# Hausdorff: a 2 x 2 x 2 volume, two channels of 2 x 2, a 3 x 1 column
CUBE = t([[[[1.0, -1.0], [1.0, -1.0]], [[-1.0, 1.0], [-1.0, 1.0]]]])    # 1 x 2 x 2 x 2
CUBE_T = t([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]]])
TWO_CH = torch.cat([DIAG, DIAG]).unsqueeze(0)                           # 1 x 2 x 2 x 2
TWO_CH_T = torch.stack([DIAG_T[0], t([[1.0, 0.0], [0.0, 1.0]])]).unsqueeze(0)


def one_hot(labels: torch.Tensor, C: int, dtype=torch.float32) -> torch.Tensor:
    """``B x 1 x ...`` labels -> ``B x C x ...`` one-hot."""
    return F.one_hot(labels[:, 0].long(), C).movedim(-1, 1).to(dtype)


# --------------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One MONAI case: the MONAI class, its keyword arguments, input and target, and what we expect."""

    cls: str
    kwargs: dict[str, Any]
    input: torch.Tensor
    target: torch.Tensor
    source: str  # the MONAI test it comes from
    status: str = "match"  # "match", "intended" or "refused"
    refused_match: str = ""  # for "refused": the message our ValueError must contain
    extra: dict[str, Any] = field(default_factory=dict)

    def id(self) -> str:
        kw = ",".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())
        return f"{self.source}[{kw}]"


def _short(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return "T" + str([round(float(x), 2) for x in v.reshape(-1)])
    if callable(v):
        return getattr(v, "__name__", "fn")
    return str(v)


def dice_cases() -> list[Case]:
    C = []
    sm = dict(smooth_nr=1e-4, smooth_dr=1e-4)
    add = lambda kw, x, y, **o: C.append(Case("DiceLoss", kw, x, y, "test_dice_loss", **o))  # noqa: E731
    for kw in ({"sigmoid": True, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, {"sigmoid": True, "squared_pred": True},
               {"sigmoid": True, "jaccard": True}):
        add({"include_background": True, **kw}, DIAG[None], DIAG_T[None])
    add({"include_background": True, "sigmoid": True, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, DIAG[None],
        DIAG_T[None])  # MONAI lists this case twice
    add({"include_background": True, "sigmoid": True, **sm}, DIAG2, DIAG2_T)
    for soft_label in (True, False):
        add({"include_background": True, **sm, "soft_label": soft_label}, PROBS2, PROBS2)
    add({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 0}, ONEHOT3, ONEHOT3_Y,
        status="refused", refused_match="'smooth_dr' must be in")
    for act in ({"sigmoid": True}, {"sigmoid": True, "reduction": "none"}, {"softmax": True},
                {"softmax": True, "reduction": "sum"}, {"other_act": log_softmax_ch},
                {"other_act": log_softmax_ch, "weight": (0, 1)}):
        add({"include_background": True, "to_onehot_y": True, **act, **sm}, RAMP3, RAMP3_Y)
    add({"include_background": True, "other_act": torch.tanh, **sm}, DIAG2, DIAG2_T)
    for nr, batch in ((1e-4, True), (0, True), (0, False)):
        add({"include_background": True, "other_act": torch.tanh, "smooth_nr": nr, "smooth_dr": 1e-4,
             "batch": batch}, DIAG2_ZERO, DIAG2_T)
    return C


def tversky_cases() -> list[Case]:
    C = []
    sm = dict(smooth_nr=1e-4, smooth_dr=1e-4)
    add = lambda kw, x, y, **o: C.append(Case("TverskyLoss", kw, x, y, "test_tversky_loss", **o))  # noqa: E731
    add({"include_background": True, "sigmoid": True, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, DIAG[None],
        DIAG_T[None])
    add({"include_background": True, "sigmoid": True, **sm}, DIAG2, DIAG2_T)
    for soft_label in (True, False):
        add({"include_background": True, **sm, "soft_label": soft_label}, PROBS2, PROBS2)
    add({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 0}, ONEHOT3, ONEHOT3_Y,
        status="refused", refused_match="'smooth_dr' must be in")
    add({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 1e-3}, ONEHOT3, ONEHOT3_Y)
    for act in ({"sigmoid": True, **sm}, {"sigmoid": True, "batch": True}, {"sigmoid": True, "reduction": "sum", **sm},
                {"softmax": True, **sm}, {"softmax": True, "reduction": "none", **sm},
                {"other_act": log_softmax_ch, **sm}):
        add({"include_background": True, "to_onehot_y": True, **act}, RAMP3, RAMP3_Y)
    for a, b in ((0.3, 0.7), (0.7, 0.3)):
        add({"include_background": True, "sigmoid": True, "alpha": a, "beta": b, "smooth_nr": 1e-6,
             "smooth_dr": 1e-6}, DIAG[None], DIAG_T[None])
    add({"include_background": True, "other_act": torch.tanh, **sm}, DIAG2, DIAG2_T)
    add({"include_background": True, "other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-3, "batch": True},
        DIAG2, DIAG2_T)
    return C


def focal_cases() -> list[Case]:
    """TEST_CASES of test_focal_loss plus the fixed inputs of its other test methods."""
    C = []

    def add(kw, x, y, source="test_focal_loss", **o):
        status = "intended" if kw.get("use_softmax") else "match"  # softmax mean: C x MONAI's
        C.append(Case("FocalLoss", kw, x, y, source, status=status, **o))

    add({"to_onehot_y": True}, FOCAL_X, FOCAL_Y)
    add({"to_onehot_y": False}, FOCAL_X, one_hot(FOCAL_Y, 3, torch.long))
    for kw in ({"include_background": False}, {"alpha": 0.8}, {"reduction": "none"},
               {"weight": torch.tensor([0.5, 0.1, 0.2]), "reduction": "none"}, {"use_softmax": True},
               {"alpha": 0.8, "use_softmax": True}):
        add({"to_onehot_y": True, **kw}, FOCAL_X, FOCAL_Y)
    # test_foreground: a one-voxel foreground, inputs 0 / 1 read as logits
    x = torch.zeros(1, 2, 5, 5)
    x[:, 0] = 1.0
    y = x.clone()
    y[:, 0, 2, 2], y[:, 1, 2, 2] = 0.0, 1.0
    for inc in (True, False):
        add({"to_onehot_y": False, "include_background": inc}, x, y, "test_focal_loss.test_foreground")
    # near-perfect predictions: binary 2-D, empty class, six classes 2-D, binary 3-D
    square = torch.zeros(4, 4, dtype=torch.long)
    square[1:3, 1:3] = 1
    six = torch.zeros(4, 4, dtype=torch.long)
    six[1, 1], six[1, 2], six[2, 1], six[2, 2] = 1, 2, 3, 4
    grids = [("bin_seg_2d", square[None], 2, 50.0, False), ("empty_class_2d", torch.zeros(1, 4, 4, dtype=torch.long),
                                                            2, 500.0, False),
             ("multi_class_seg_2d", six[None], 6, 500.0, True), ("bin_seg_3d", square.expand(1, 3, 4, 4), 2, 500.0,
                                                                 True)]
    for name, lab, n, scale, with_onehot in grids:
        labels = lab[:, None]
        logits = 2 * scale * one_hot(labels, n) - scale
        for use_softmax in (True, False):
            for alpha in (None, 0.5):
                kw = {"use_softmax": use_softmax, **({} if alpha is None else {"alpha": alpha})}
                add({"to_onehot_y": True, **kw}, logits, labels, f"test_focal_loss.test_{name}")
                if with_onehot:
                    add({"to_onehot_y": False, **kw}, logits, one_hot(labels, n, torch.long),
                        f"test_focal_loss.test_{name}")
    # gamma = 0 consistency with BCE (MONAI: 100 random batches of 128; here one seeded, smaller batch)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(4, 10, 8, 4, generator=g)
    multi = torch.randint(0, 2, (4, 10, 8, 4), generator=g).float()
    lab = torch.randint(0, 10, (4, 1, 8, 4), generator=g)
    xc, labc = torch.rand(16, 10, generator=g), torch.randint(0, 10, (16, 1), generator=g)
    src = "test_focal_loss.test_consistency_with_cross_entropy"
    add({"to_onehot_y": False, "gamma": 0.0, "reduction": "mean", "weight": 1.0}, x, multi, src + "_2d")
    add({"to_onehot_y": False, "gamma": 0.0, "reduction": "none", "weight": 1.0}, x, multi, src + "_2d_no_reduction")
    add({"to_onehot_y": True, "gamma": 0.0, "reduction": "mean"}, x, lab, src + "_2d_onehot_label")
    add({"to_onehot_y": True, "gamma": 0.0, "reduction": "mean"}, xc, labc, src + "_classification")
    add({"to_onehot_y": True, "gamma": 0.1, "reduction": "mean"}, xc, labc, src + "_classification_01")
    return C


def dice_ce_cases() -> list[Case]:
    C = []
    add = lambda kw, x, y, **o: C.append(Case("DiceCELoss", kw, x, y, "test_dice_ce_loss", **o))  # noqa: E731
    add({"to_onehot_y": True}, ONEHOT3, ONEHOT3_Y)
    add({"to_onehot_y": False}, ONEHOT3, ONEHOT3)
    add({"to_onehot_y": False}, ONEHOT3, ONEHOT3.to(torch.uint8))
    for kw in ({"weight": torch.tensor([1.0, 1.0])}, {"weight": torch.tensor([1.0, 1.0]), "lambda_dice": 1.0,
                                                     "lambda_ce": 2.0},
               {"weight": torch.tensor([0.0, 1.0])}):
        add({"include_background": False, "to_onehot_y": True, **kw}, BIG3, ONEHOT3_Y)
    add({"weight": torch.tensor([0.5]), "sigmoid": True}, BCE3, ONEHOT3_Y, status="refused",
        refused_match="2 values (background, foreground)")
    return C


def dice_focal_cases() -> list[Case]:
    """The option grids of test_dice_focal_loss, on seeded random inputs."""
    C = []
    g = torch.Generator().manual_seed(11)
    pred = torch.randn(3, 3, 5, 5, generator=g)
    multi = torch.randint(0, 2, (3, 3, 5, 5), generator=g)  # multi-label 0/1 target, one map per channel
    for reduction in ("sum", "mean", "none"):
        for weight in (None, torch.tensor([1.0, 1.0, 2.0]), (3, 2.0, 1)):
            for lam in (0.5, 1.0, 1.5):
                kw = {"include_background": True, "to_onehot_y": False, "reduction": reduction, "weight": weight}
                C.append(Case("DiceFocalLoss", {"gamma": 1.0, "lambda_focal": lam, **kw}, pred, multi,
                              "test_dice_focal_loss.test_result_onehot_target_include_bg"))
        for weight in (None, torch.tensor([1.0, 1.0, 2.0]), (3, 2.0, 1)):
            kw = {"include_background": True, "to_onehot_y": False, "reduction": reduction, "weight": weight}
            C.append(Case("DiceFocalLoss", {"gamma": 1.0, "lambda_focal": 0.5, "alpha": 0.25, **kw}, pred, multi,
                          "test_dice_focal_loss.test_with_alpha"))
    # softmax without background: the intended difference (softmax focal term)
    pred2 = torch.randn(3, 2, 5, 5, generator=g)
    labels3 = torch.randint(0, 2, (3, 3, 5, 5), generator=g).argmax(dim=1, keepdim=True)
    zeros2 = torch.randint(0, 1, (3, 2, 5, 5), generator=g)  # MONAI's high = C - 1 = 1: all zero
    for x, y, onehot, weights in ((pred, labels3, True, (torch.tensor([1.0, 2.0]), (2.0, 1))),
                                  (pred2, zeros2, False, (2.0,))):
        for reduction in ("sum", "mean", "none"):
            for weight in weights:
                for lam in (0.5, 1.0, 1.5):
                    kw = {"include_background": False, "softmax": True, "to_onehot_y": onehot,
                          "reduction": reduction, "weight": weight, "lambda_focal": lam}
                    C.append(Case("DiceFocalLoss", kw, x, y, "test_dice_focal_loss.test_result_no_onehot_no_bg",
                                  status="intended"))
    return C


def hausdorff_cases() -> list[Case]:
    C = []
    add = lambda kw, x, y: C.append(Case("HausdorffDTLoss", kw, x, y, "test_hausdorff_loss"))  # noqa: E731
    sig = {"include_background": True, "sigmoid": True}
    add(sig, DIAG[None], DIAG_T[None])
    add(sig, DIAG[None, None], DIAG_T[None, None])  # the same as a 1 x 1 x 1 x 2 x 2 volume
    add(sig, CUBE[None], CUBE_T[None])
    add(sig, TWO_CH, TWO_CH_T)
    add(sig, DIAG2, DIAG2_T)
    add({"include_background": False, "sigmoid": True}, TWO_CH, TWO_CH_T)
    col, col_y = RAMP3[..., None], RAMP3_Y[..., None]  # 2 x 2 x 3 x 1
    add({**sig, "to_onehot_y": True, "reduction": "none"}, col, col_y)
    for kw in ({"softmax": True}, {"softmax": True, "reduction": "sum"}):
        add({"include_background": True, "to_onehot_y": True, **kw}, col, col_y)
    add(sig, DIAG[None], DIAG_T[None])  # MONAI lists this case twice
    add({"include_background": True, "other_act": torch.tanh}, DIAG2, DIAG2_T)
    add({"include_background": True, "to_onehot_y": True, "other_act": log_softmax_ch}, col, col_y)
    for batch in (True, True, False):  # MONAI lists batch=True twice
        add({"include_background": True, "other_act": torch.tanh, "batch": batch}, DIAG2_ZERO, DIAG2_T)
    return C


CASES = dice_cases() + tversky_cases() + focal_cases() + dice_ce_cases() + dice_focal_cases() + hausdorff_cases()


# ------------------------------------------------------------------------------------------ translation
def to5d(x: torch.Tensor) -> torch.Tensor:
    """Size-1 spatial axes in front until the tensor is B x C x D x H x W."""
    while x.ndim < 5:
        x = x.unsqueeze(2)
    return x


def to_spineloss(case: Case) -> tuple[str, dict[str, Any]]:
    """The registry name and keyword arguments of the spineloss loss for a MONAI case (module docstring)."""
    kw = dict(case.kwargs)
    kw.pop("to_onehot_y", None)
    name = MONAI_NAMES[case.cls]
    if kw.pop("jaccard", False):
        name = "iou"
    if case.cls in _ACTIVATED and not any(k in kw for k in ("sigmoid", "softmax", "other_act")):
        kw.update(sigmoid=False, softmax=False)  # MONAI's default: no activation
    if case.cls == "TverskyLoss":
        kw.setdefault("alpha", 0.5)
        kw.setdefault("beta", 0.5)
    if case.cls == "FocalLoss":
        kw.setdefault("use_softmax", False)
    return name, kw


def monai_value(case: Case) -> torch.Tensor:
    return getattr(monai_losses, case.cls)(**case.kwargs)(case.input, case.target)


def spineloss_value(case: Case) -> torch.Tensor:
    name, kw = to_spineloss(case)
    return build_loss(name, **kw)(to5d(case.input), to5d(case.target))


# ------------------------------------------------------------------------------ the intended differences
def softmax_focal_reference(x: torch.Tensor, target: torch.Tensor, gamma: float, weight: Any,
                            include_background: bool, reduction: str) -> torch.Tensor:
    """Lin et al.'s softmax focal loss per voxel, ``-sum_c w_c t_c (1 - p_c)^gamma log p_c`` over the scored
    classes (softmax over all of them), reduced as spineloss documents ("sum": the voxel mean of each item,
    summed; "none": per voxel, B x 1 x ...)."""
    C = x.shape[1]
    t = one_hot(target, C) if target.shape[1] == 1 and C > 1 else target.float()
    logp = torch.log_softmax(x.double(), dim=1)
    term = -(1 - logp.exp()) ** gamma * logp * t.double()
    start = 0 if include_background else 1
    w = torch.ones(C - start, dtype=torch.float64) if weight is None else \
        torch.as_tensor(weight, dtype=torch.float64).reshape(-1).expand(C - start)
    per_voxel = (term[:, start:] * w.view(1, -1, *([1] * (x.ndim - 2)))).sum(dim=1, keepdim=True)
    if reduction == "mean":
        return per_voxel.mean()
    if reduction == "sum":
        return per_voxel.flatten(1).mean(dim=1).sum()
    return per_voxel


def intended_expectation(case: Case) -> torch.Tensor:
    """What spineloss documents instead of MONAI's value, built from MONAI pieces and explicit formulas."""
    kw = case.kwargs
    if case.cls == "FocalLoss":  # softmax focal: MONAI's mean also averages over the C classes
        assert kw.get("reduction", "mean") == "mean" and kw.get("include_background", True)
        return case.input.shape[1] * monai_value(case)
    assert case.cls == "DiceFocalLoss" and kw.get("softmax")
    dice_kw = {k: v for k, v in kw.items() if k not in ("lambda_focal", "lambda_dice", "gamma", "alpha")}
    dice = monai_losses.DiceLoss(**dice_kw)(case.input, case.target).double()
    C, inc = case.input.shape[1], kw["include_background"]
    w = kw.get("weight")
    if w is not None and (C - (0 if inc else 1)) == 1:  # MONAI's DiceLoss ignores weights for one class
        dice = dice * float(torch.as_tensor(w, dtype=torch.float64).reshape(-1)[0])
    focal = softmax_focal_reference(case.input, case.target, kw.get("gamma", 2.0), w, inc,
                                    kw.get("reduction", "mean"))
    return kw.get("lambda_dice", 1.0) * dice + kw["lambda_focal"] * focal


# ---------------------------------------------------------------------------------------------- the tests
DIFFS: dict[str, float] = {}


def _compare(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().double(), ref.detach().double()
    assert ours.numel() == ref.numel(), (tuple(ours.shape), tuple(ref.shape))
    torch.testing.assert_close(ours.reshape(-1), ref.reshape(-1), rtol=TOL, atol=TOL)
    return float((ours.reshape(-1) - ref.reshape(-1)).abs().max())


@pytest.mark.parametrize("case", CASES, ids=[f"{i:03d}-{c.id()}" for i, c in enumerate(CASES)])
def test_monai_case(case: Case):
    if case.status == "refused":
        name, kw = to_spineloss(case)
        with pytest.raises(ValueError, match=case.refused_match.replace("(", r"\(").replace(")", r"\)")):
            build_loss(name, **kw)(to5d(case.input), to5d(case.target))
        monai_value(case)  # MONAI computes it
        return
    ours = spineloss_value(case)
    assert torch.isfinite(ours).all()
    ref = monai_value(case)
    if case.status == "match":
        DIFFS[case.id()] = _compare(ours, ref)
        reduction = case.kwargs.get("reduction", "mean")
        if reduction == "none" and case.cls in ("DiceLoss", "HausdorffDTLoss"):
            assert ours.shape == ref.shape[:2]  # ours B x C', MONAI's B x C' x 1 x ...
        elif reduction == "none":
            assert ours.shape == to5d(ref).shape if ref.ndim > 2 else ours.shape == ref.shape
        return
    expected = intended_expectation(case)
    _compare(ours, expected)
    if float(expected.abs().max()) > 1e-3:  # (near-perfect predictions: both are about 0)
        assert not torch.allclose(ours.double().reshape(-1), ref.double().reshape(-1), rtol=1e-3, atol=1e-6), \
            "the documented difference from MONAI is not there"


def test_case_inventory():
    """How many MONAI cases of each kind there are (a change here must be a deliberate, documented one)."""
    counts: dict[tuple[str, str], int] = {}
    for case in CASES:
        counts[case.cls, case.status] = counts.get((case.cls, case.status), 0) + 1
    assert counts == {
        ("DiceLoss", "match"): 17, ("DiceLoss", "refused"): 1,
        ("TverskyLoss", "match"): 15, ("TverskyLoss", "refused"): 1,
        ("FocalLoss", "match"): 25, ("FocalLoss", "intended"): 14,
        ("DiceCELoss", "match"): 6, ("DiceCELoss", "refused"): 1,
        ("DiceFocalLoss", "match"): 36, ("DiceFocalLoss", "intended"): 27,
        ("HausdorffDTLoss", "match"): 15,
    }


# ------------------------------------------------------------------ beyond MONAI's cases: the same options
def test_focal_sum_is_monais_sum():
    """reduction="sum" is MONAI's: the voxel mean of each (item, class), summed (not the voxel sum)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 5, 6, generator=g)
    y = torch.randint(0, 3, (2, 1, 4, 5, 6), generator=g)
    for kw in ({}, {"alpha": 0.25}, {"include_background": False}, {"weight": [0.5, 2.0, 1.0]}):
        ref = monai_losses.FocalLoss(to_onehot_y=True, reduction="sum", **kw)(x, y)
        torch.testing.assert_close(build_loss("focal", use_softmax=False, reduction="sum", **kw)(x, y), ref)
    # softmax: MONAI's per-class voxel means summed over classes = our per-voxel loss's mean, summed over items
    ref = monai_losses.FocalLoss(to_onehot_y=True, use_softmax=True, reduction="sum")(x, y)
    torch.testing.assert_close(build_loss("focal", reduction="sum")(x, y), ref)
    voxels = 4 * 5 * 6
    mean_items = build_loss("focal", reduction="none")(x, y).flatten(1).mean(1)
    torch.testing.assert_close(build_loss("focal", reduction="sum")(x, y), mean_items.sum())
    assert float(build_loss("focal", reduction="sum")(x, y)) < float(build_loss("focal", reduction="none")(x, y)
                                                                     .sum()) / voxels * 2 + 1e-6


@pytest.mark.parametrize("act", [{"sigmoid": False, "softmax": False}, {"other_act": torch.tanh},
                                 {"sigmoid": True}, {"softmax": True}])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compounds_follow_monai_activation_and_none(act, reduction):
    """DiceCE / DiceFocal with MONAI's activation words and every reduction, on one-hot targets (sigmoid
    focal: ``softmax=True`` is the intended difference, checked above)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 5, 3, generator=g)
    probs = torch.softmax(x, 1)
    y = torch.randint(0, 3, (2, 1, 4, 5, 3), generator=g)
    inp = probs if act.get("sigmoid") is False else x
    for monai_cls, name in (("DiceCELoss", "dice_ce"), ("DiceFocalLoss", "dice_focal")):
        if monai_cls == "DiceCELoss" and reduction == "none":
            with pytest.raises(ValueError):
                monai_losses.DiceCELoss(to_onehot_y=True, reduction="none", **act)
            ours = build_loss(name, reduction="none", **act)(inp, y)
            dice = build_loss("dice", reduction="none", **act)(inp, y)
            ce = build_loss("ce", reduction="none")(inp, y)
            assert ours.shape == (2, 3, 4, 5, 3)
            torch.testing.assert_close(ours, dice[:, :, None, None, None] + ce[:, None])
            torch.testing.assert_close(ours.mean(), build_loss(name, **act)(inp, y))  # mean of "none" = "mean"
            continue
        if monai_cls == "DiceFocalLoss" and act.get("softmax"):
            continue  # the intended difference (softmax focal term)
        ref = getattr(monai_losses, monai_cls)(to_onehot_y=True, reduction=reduction, **act)(inp, y)
        ours = build_loss(name, reduction=reduction, **act)(inp, y)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=TOL, atol=TOL)


def test_tversky_focal_none_is_the_broadcast_sum():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 4, 4, 4, generator=g)
    y = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    probs = torch.softmax(x, 1)
    # (tversky_focal arguments, its input, the focal term's own arguments: MONAI's flags leave it on logits)
    for kw, inp, focal_kw in (({}, x, {}), ({"activation": "sigmoid"}, x, {"activation": "sigmoid"}),
                              ({"sigmoid": False, "softmax": False}, probs, {"activation": "sigmoid"}),
                              ({"include_background": False}, x, {"include_background": False})):
        ours = build_loss("tversky_focal", reduction="none", lambda_focal=0.5, **kw)(inp, y)
        tv = build_loss("tversky", reduction="none", **kw)(inp, y)
        foc = build_loss("focal", reduction="none", **focal_kw)(inp, y)
        foc = foc if foc.ndim == 5 else foc[:, None]  # softmax focal: per voxel, the same for every class
        assert ours.ndim == 5
        torch.testing.assert_close(ours, tv[:, :, None, None, None] + 0.5 * foc)


def test_probabilities_and_other_act_in_every_region_and_distance_loss():
    """``sigmoid=False, softmax=False`` is the loss of the given probabilities; ``other_act=f`` of ``f(x)``."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 5, 4, 6, generator=g)
    y = torch.randint(0, 3, (2, 1, 5, 4, 6), generator=g)
    for name in ("dice", "iou", "tversky", "asymmetric", "effectiveness", "focal_tversky", "hausdorff",
                 "boundary"):
        logits = build_loss(name)(x, y)
        torch.testing.assert_close(build_loss(name, sigmoid=False, softmax=False)(torch.softmax(x, 1), y), logits)
        torch.testing.assert_close(build_loss(name, activation="none")(torch.softmax(x, 1), y), logits)
        torch.testing.assert_close(build_loss(name, other_act=lambda v: torch.softmax(v, 1))(x, y), logits)
        torch.testing.assert_close(build_loss(name, softmax=True)(x, y), logits)
        sig = build_loss(name, activation="sigmoid")(x, y)
        torch.testing.assert_close(build_loss(name, sigmoid=True)(x, y), sig)
        torch.testing.assert_close(build_loss(name, sigmoid=False)(torch.sigmoid(x), y), sig)


def test_probabilities_in_the_log_losses_are_clamped_and_checked():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 4, 4, 4, generator=g)
    y = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    p = torch.softmax(x, 1)
    for name in ("ce", "focal", "topk"):  # probabilities give the logits' value (softmax = categorical)
        torch.testing.assert_close(build_loss(name, activation="none")(p, y), build_loss(name)(x, y))
    xb, yb = x[:, :1], (y > 0).long()
    for name in ("ce", "focal"):  # one channel: binary
        torch.testing.assert_close(build_loss(name, activation="none")(torch.sigmoid(xb), yb),
                                   build_loss(name)(xb, yb))
    # a hard 0 / 1 probability: clamped at 1e-7 (MONAI's epsilon), finite value and gradient
    hard = (y == torch.arange(3).view(1, 3, 1, 1, 1)).float()
    wrong = hard.roll(1, dims=1).requires_grad_(True)
    for name in ("ce", "focal"):
        value = build_loss(name, activation="none", gamma=0.0)(wrong, y) if name == "focal" else \
            build_loss(name, activation="none")(wrong, y)
        value.backward()
        assert math.isclose(float(value), -math.log(1e-7), rel_tol=1e-4), (name, float(value))
        assert torch.isfinite(wrong.grad).all()
        wrong.grad = None
    with pytest.raises(ValueError, match=r"must hold probabilities in \[0, 1\].*found values in"):
        build_loss("ce", activation="none")(x, y)  # logits passed as probabilities
    nan = p.clone()
    nan[0, 1, 2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the input contains 1 non-finite value\(s\) \(NaN\), the first at index "
                                         r"\(0, 1, 2, 3, 1\)"):
        build_loss("dice_ce", activation="none")(nan, y)


@pytest.mark.parametrize("kw, msg", [
    (dict(sigmoid=True, softmax=True), "at most one of sigmoid=True, softmax=True and other_act"),
    (dict(softmax=True, other_act=torch.tanh), "at most one"),
    (dict(other_act="tanh"), "other_act must be a callable"),
    (dict(activation="sigmoid", sigmoid=True), "either activation='sigmoid' or MONAI's sigmoid"),
    (dict(sigmoid="yes"), "sigmoid must be True or False"),
])
def test_activation_words_are_checked(kw, msg):
    for name in ("dice", "hausdorff", "dice_ce", "dice_focal", "tversky_focal"):
        with pytest.raises(ValueError, match=msg):
            build_loss(name, **kw)
    with pytest.raises(ValueError, match="either activation"):
        build_loss("focal", activation="softmax", use_softmax=True)


def test_other_act_must_keep_the_shape():
    x = torch.randn(1, 2, 3, 3, 3)
    y = torch.zeros(1, 1, 3, 3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="other_act must return a tensor of the input's shape"):
        build_loss("dice", other_act=lambda v: v.mean(dim=1))(x, y)
