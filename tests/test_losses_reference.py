"""spineloss losses against MONAI 1.6 (same value to 1e-5 on random inputs).

Intended differences, tested as such:
* Focal loss with a softmax: MONAI averages the per-class terms over the class axis as well, so its value is
  ours / C (ours is Lin et al.'s per-voxel loss: gamma = 0 gives exactly the cross-entropy). With
  ``include_background=False`` MONAI removes channel 0 *before* the softmax (a different distribution); we
  keep the softmax over all classes and drop the background term, checked against an explicit formula.
* DiceFocal: MONAI's DiceFocalLoss always uses a sigmoid focal term, even with ``softmax=True``; ours uses
  the softmax focal loss. With ``activation="sigmoid"`` (multi-label) both agree exactly.
* Boundary loss: MONAI's map is Kervadec's (inside: ``-(edt - 1)``), ours is ``phi`` plus an inside offset
  that defaults to one voxel (the smallest spacing), so at unit spacing the values agree exactly.

Not differences (any more): focal ``reduction="sum"`` is MONAI's (the voxel mean of each item and class,
summed); MONAI's ``sigmoid=False, softmax=False`` / ``other_act`` and the compounds' ``reduction="none"`` are
supported with MONAI's meaning. MONAI's own unit-test cases, with the remaining documented differences
(defaults, ``smooth_dr = 0``, DiceCE's ``pos_weight``, "none" shapes), run in ``test_losses_monai_cases.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

monai_losses = pytest.importorskip("monai.losses")

from spineloss.losses import build_loss  # noqa: E402
from spineloss.losses.distance_maps import signed_distance_maps_torch  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:single channel prediction")

SHAPES = [(2, 3, 6, 7, 8), (1, 4, 5, 6, 5), (3, 2, 4, 4, 6)]
TOL = dict(rtol=1e-5, atol=1e-5)


def blob_labels(B: int, C: int, spatial, seed: int = 0) -> torch.Tensor:
    """Blobby integer label maps B x 1 x D x H x W in [0, C): smoothed random fields, argmax."""
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool3d(torch.randn((B, C) + tuple(spatial), generator=g), 3, stride=1, padding=1,
                         count_include_pad=False)
    return field.argmax(dim=1, keepdim=True)


def make_inputs(shape, seed: int = 0, scale: float = 2.0):
    B, C = shape[:2]
    labels = blob_labels(B, C, shape[2:], seed)
    g = torch.Generator().manual_seed(seed + 100)
    onehot = (labels == torch.arange(C).view(1, C, 1, 1, 1)).float()
    logits = scale * onehot + torch.randn(shape, generator=g)
    return logits, labels, onehot


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.detach().float().reshape(-1), b.detach().float().reshape(-1), **TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("squared_pred", [False, True])
def test_dice_and_iou_match_monai(shape, include_background, batch, squared_pred):
    logits, labels, onehot = make_inputs(shape, seed=shape[1])
    for name, jaccard in (("dice", False), ("iou", True)):
        kw = dict(include_background=include_background, batch=batch, squared_pred=squared_pred)
        ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=jaccard, **kw)
        ours = build_loss(name, **kw)
        close(ours(logits, labels), ref(logits, labels))
        close(ours(logits, onehot), ref(logits, labels))  # one-hot target: same value
        close(ours(logits, labels[:, 0]), ref(logits, labels))  # B x D x H x W label map
        none_ours = build_loss(name, reduction="none", **kw)(logits, labels)
        none_ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=jaccard, reduction="none",
                                         **kw)(logits, labels)
        close(none_ours, none_ref)


def test_dice_weight_smoothing_and_sum_match_monai():
    logits, labels, _ = make_inputs((2, 4, 6, 6, 6), seed=3)
    for include_background, weight in ((True, [1.0, 2.0, 0.5, 3.0]), (False, [2.0, 0.5, 3.0]), (True, 2.5)):
        kw = dict(include_background=include_background, weight=weight, smooth_nr=0.1, smooth_dr=0.3,
                  reduction="sum")
        close(build_loss("dice", **kw)(logits, labels),
              monai_losses.DiceLoss(softmax=True, to_onehot_y=True, **kw)(logits, labels))


def test_dice_soft_label_matches_monai():
    logits, labels, onehot = make_inputs((2, 3, 5, 6, 7), seed=5)
    g = torch.Generator().manual_seed(9)
    soft = torch.softmax(3 * onehot + torch.randn(onehot.shape, generator=g), dim=1)  # MixUp-like target
    for soft_label in (False, True):
        ref = monai_losses.DiceLoss(softmax=True, soft_label=soft_label)(logits, soft)
        close(build_loss("dice", soft_label=soft_label)(logits, soft), ref)
        ref_t = monai_losses.TverskyLoss(softmax=True, alpha=0.2, beta=0.8, soft_label=soft_label)(logits, soft)
        close(build_loss("tversky", alpha=0.2, beta=0.8, soft_label=soft_label)(logits, soft), ref_t)


def test_binary_sigmoid_dice_tversky_match_monai():
    logits, labels, _ = make_inputs((3, 2, 6, 5, 7), seed=2)
    x = logits[:, 1:] - logits[:, :1]  # one channel
    y = labels.float()
    close(build_loss("dice")(x, labels), monai_losses.DiceLoss(sigmoid=True)(x, y))
    close(build_loss("tversky", alpha=0.4, beta=0.6)(x, labels),
          monai_losses.TverskyLoss(sigmoid=True, alpha=0.4, beta=0.6)(x, y))
    close(build_loss("dice", batch=True)(x, y), monai_losses.DiceLoss(sigmoid=True, batch=True)(x, y))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_tversky_matches_monai(shape, include_background, batch):
    logits, labels, _ = make_inputs(shape, seed=7)
    for alpha, beta in ((0.3, 0.7), (0.5, 0.5), (0.9, 0.2)):
        kw = dict(include_background=include_background, batch=batch, alpha=alpha, beta=beta)
        close(build_loss("tversky", **kw)(logits, labels),
              monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, **kw)(logits, labels))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25, "sequence"])
def test_softmax_focal_is_C_times_monai(shape, gamma, alpha):
    """Intended difference: MONAI's softmax focal mean also averages over the C classes."""
    logits, labels, onehot = make_inputs(shape, seed=11)
    C = shape[1]
    a = [0.1 * (c + 1) for c in range(C)] if alpha == "sequence" else alpha
    ref = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, alpha=a)(logits, labels)
    ours = build_loss("focal", gamma=gamma, alpha=a)
    close(ours(logits, labels), C * ref)
    close(ours(logits, onehot), C * ref)  # soft/one-hot path, same value
    none_ref = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, alpha=a,
                                      reduction="none")(logits, labels)
    close(build_loss("focal", gamma=gamma, alpha=a, reduction="none")(logits, labels), none_ref.sum(dim=1))


def test_softmax_focal_without_background_explicit():
    """Intended difference: softmax over all classes, then drop the background terms."""
    logits, labels, onehot = make_inputs((2, 4, 5, 5, 5), seed=4)
    gamma = 2.0
    logp = torch.log_softmax(logits, 1)
    expected = (-(1 - logp.exp()) ** gamma * logp * onehot)[:, 1:].sum(1).mean()
    close(build_loss("focal", gamma=gamma, include_background=False)(logits, labels), expected)
    close(build_loss("focal", gamma=gamma, include_background=False)(logits, onehot), expected)


def test_focal_gamma0_is_cross_entropy():
    logits, labels, _ = make_inputs((2, 3, 5, 6, 4), seed=6)
    close(build_loss("focal", gamma=0.0)(logits, labels), F.cross_entropy(logits, labels[:, 0]))


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.7])
@pytest.mark.parametrize("alpha", [None, 0.25, "sequence"])
@pytest.mark.parametrize("include_background", [True, False])
def test_sigmoid_focal_matches_monai(gamma, alpha, include_background):
    logits, labels, onehot = make_inputs((2, 3, 5, 6, 4), seed=8)
    a = ([0.2, 0.5, 0.9] if include_background else [0.5, 0.9]) if alpha == "sequence" else alpha
    kw = dict(gamma=gamma, alpha=a, include_background=include_background)
    ref = monai_losses.FocalLoss(use_softmax=False, **kw)(logits, onehot)
    close(build_loss("focal", activation="sigmoid", **kw)(logits, onehot), ref)
    close(build_loss("focal", activation="sigmoid", **kw)(logits, labels), ref)  # label map -> one-hot channels
    # binary, one channel
    x, y = logits[:, 1:2], onehot[:, 1:2]
    close(build_loss("focal", gamma=gamma, alpha=None if alpha == "sequence" else alpha)(x, y),
          monai_losses.FocalLoss(gamma=gamma, alpha=None if alpha == "sequence" else alpha)(x, y))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_dice_ce_matches_monai(shape, include_background, weighted):
    logits, labels, onehot = make_inputs(shape, seed=12)
    C = shape[1]
    weight = torch.linspace(0.5, 2.0, C) if weighted else None
    kw = dict(include_background=include_background, weight=weight)
    ref = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, **kw)(logits, labels)
    if weighted and not include_background and C == 2:
        # MONAI's DiceLoss silently ignores class weights when a single class is scored; ours applies them
        dice = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=False)(logits, labels)
        ref = ref + (weight[1] - 1.0) * dice
    close(build_loss("dice_ce", **kw)(logits, labels), ref)
    if not (weighted and not include_background and C == 2):
        close(build_loss("dice_ce", lambda_dice=0.3, lambda_ce=1.7, **kw)(logits, labels),
              monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=0.3, lambda_ce=1.7, **kw)(
                  logits, labels))
    close(build_loss("dice_ce", **kw)(logits, onehot), ref)  # one-hot target: same value


def test_ce_and_wce_match_torch():
    logits, labels, onehot = make_inputs((2, 4, 5, 6, 7), seed=13)
    w = torch.tensor([0.2, 1.0, 3.0, 0.7])
    close(build_loss("ce")(logits, labels), F.cross_entropy(logits, labels[:, 0]))
    close(build_loss("ce", weight=w)(logits, labels), F.cross_entropy(logits, labels[:, 0], weight=w))
    close(build_loss("wce", weight=w.tolist())(logits, onehot), F.cross_entropy(logits, labels[:, 0], weight=w))
    x, y = logits[:, 1:2], onehot[:, 1:2]
    close(build_loss("ce")(x, y), F.binary_cross_entropy_with_logits(x, y))


def test_dice_focal_intended_difference_and_sigmoid_agreement():
    logits, labels, onehot = make_inputs((2, 3, 6, 5, 6), seed=14)
    C = 3
    ours = build_loss("dice_focal")(logits, labels)
    dice = monai_losses.DiceLoss(softmax=True, to_onehot_y=True)(logits, labels)
    focal = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True)(logits, labels)
    close(ours, dice + C * focal)
    monai_df = monai_losses.DiceFocalLoss(softmax=True, to_onehot_y=False)(logits, onehot)
    assert abs(float(ours) - float(monai_df)) > 1e-3  # MONAI's focal term is a sigmoid one
    # multi-label sigmoid: identical definitions
    ours_sig = build_loss("dice_focal", activation="sigmoid", gamma=1.5)(logits, onehot)
    close(ours_sig, monai_losses.DiceFocalLoss(sigmoid=True, gamma=1.5)(logits, onehot))


@pytest.mark.parametrize("shape", [(2, 3, 9, 10, 8), (1, 4, 8, 8, 8), (2, 1, 7, 9, 8)])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_hausdorff_matches_monai(shape, include_background, batch):
    B, C = shape[:2]
    if C == 1:
        labels = blob_labels(B, 2, shape[2:], seed=21)
        logits = 2.0 * (labels.float() * 2 - 1) + torch.randn(shape, generator=torch.Generator().manual_seed(3))
        ref_loss = monai_losses.HausdorffDTLoss(sigmoid=True, include_background=include_background, batch=batch)
        ref = ref_loss(logits, labels.float())
    else:
        logits, labels, _ = make_inputs(shape, seed=21)
        ref_loss = monai_losses.HausdorffDTLoss(softmax=True, to_onehot_y=True,
                                                include_background=include_background, batch=batch)
        ref = ref_loss(logits, labels)
    ours = build_loss("hausdorff", include_background=include_background, batch=batch)
    close(ours(logits, labels), ref)
    maps = signed_distance_maps_torch(labels, C)  # what the data pipeline hands in
    close(ours(logits, labels, dist_map=maps), ref)
    for alpha in (1.0, 3.0):
        ref_a = monai_losses.HausdorffDTLoss(alpha=alpha, softmax=C > 1, sigmoid=C == 1, to_onehot_y=C > 1,
                                             include_background=include_background)
        y = labels if C > 1 else labels.float()
        close(build_loss("hausdorff", alpha=alpha, include_background=include_background)(logits, labels),
              ref_a(logits, y))


@pytest.mark.parametrize("shape", [(2, 3, 9, 10, 8), (1, 4, 8, 8, 8)])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_boundary_matches_monai(shape, include_background, batch):
    logits, labels, onehot = make_inputs(shape, seed=31)
    ref = monai_losses.BoundaryLoss(softmax=True, to_onehot_y=True, include_background=include_background,
                                    batch=batch)(logits, labels)
    ours = build_loss("boundary", include_background=include_background, batch=batch)
    close(ours(logits, labels), ref)
    close(ours(logits, onehot), ref)
    close(ours(logits, labels, dist_map=signed_distance_maps_torch(labels, shape[1])), ref)
    none_ref = monai_losses.BoundaryLoss(softmax=True, to_onehot_y=True, include_background=include_background,
                                         reduction="none")(logits, labels)
    close(build_loss("boundary", include_background=include_background, reduction="none")(logits, labels),
          none_ref)


def test_boundary_binary_sigmoid_matches_monai():
    labels = blob_labels(2, 2, (8, 9, 10), seed=41)
    logits = torch.randn((2, 1, 8, 9, 10), generator=torch.Generator().manual_seed(5))
    ref = monai_losses.BoundaryLoss(sigmoid=True)(logits, labels.float())
    close(build_loss("boundary")(logits, labels), ref)
