"""Greedy loss-parameter search (spineloss.tuning.greedy): tiny models and tensors only."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from spineloss.losses.base import Bounds, Loss, ParamSpec
from spineloss.losses.region import TverskyLoss
from spineloss.tuning.greedy import (GreedyConfig, GreedySearch, ParamsCSV, candidate_values, decision_metric,
                                     decision_score, make_scorer, read_params_csv)


# ---------------------------------------------------------------------------------------------------------
# helpers


class _Pull(Loss):
    """Toy loss ``(theta - w)^2`` with one tunable ``w``: with SGD at lr 0.5 one step lands on ``theta = w``."""

    name = "pull"
    tunables = {"w": Bounds(0.01, 10.0)}

    def __init__(self, w: float = 1.0) -> None:
        super().__init__()
        self._init_tunable("w", w)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (theta - self.w).square().sum()


class _Theta(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(1))

    def forward(self) -> torch.Tensor:
        return self.theta


class _Scaled(Loss):
    """``w * CE``: a larger ``w`` is a larger SGD step, which improves the soft Dice of one trial step."""

    name = "scaled_ce"
    tunables = {"w": Bounds(0.1, 1.2)}

    def __init__(self, w: float = 1.0) -> None:
        super().__init__()
        self._init_tunable("w", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.w * nn.functional.cross_entropy(logits, target[:, 0])


class _Net(nn.Module):
    """Two 3-D convolutions with BatchNorm (buffers) and dropout (random numbers)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.drop = nn.Dropout3d(0.3)
        self.c2 = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.drop(torch.relu(self.bn(self.c1(x)))))


def _volume(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    y[:, :, 2:6, 2:6, 3:7] = 1
    x = y.float() + 0.5 * torch.randn(y.shape, generator=g)
    return x, y


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = _Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1)  # the scale changes every step
    loss = TverskyLoss(alpha=0.3, beta=0.7)
    x, y = _volume(1)
    mix = torch.Generator().manual_seed(5)

    def step() -> float:
        model.train()
        opt.zero_grad(set_to_none=True)
        noise = 0.01 * torch.randn(x.shape, generator=mix)  # draws from an extra generator
        value = loss(model(x + noise), y)
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        return float(value.detach())

    for _ in range(2):  # non-empty Adam state
        step()
    return model, opt, scaler, loss, step, mix


def _snapshot(model, opt, scaler, mix):
    return {"params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "grads": {k: None if v.grad is None else v.grad.clone() for k, v in model.named_parameters()},
            "buffers": {k: v.clone() for k, v in model.named_buffers()},
            "opt": copy.deepcopy(opt.state_dict()), "scaler": scaler.state_dict(),
            "training": [m.training for m in model.modules()],
            "rng": torch.get_rng_state(), "mix": mix.get_state()}


def _assert_same(a, b):
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
        ga, gb = a["grads"][k], b["grads"][k]
        assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb)), k
    for k in a["buffers"]:
        assert torch.equal(a["buffers"][k], b["buffers"][k]), k
    sa, sb = a["opt"], b["opt"]
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for key, v in sa["state"][i].items():
            w = sb["state"][i][key]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (i, key)
    assert a["scaler"] == b["scaler"]
    assert a["training"] == b["training"]
    assert torch.equal(a["rng"], b["rng"]) and torch.equal(a["mix"], b["mix"])


def _held_out():
    x, y = _volume(2)
    return x, y


# ---------------------------------------------------------------------------------------------------------
# (1) the search moves toward the known best value


def _sgd_step(model, loss, opt):
    """One optimiser step of ``loss(model())``, the ``train_step`` of the toy problems."""
    def step():
        opt.zero_grad()
        loss(model()).backward()
        opt.step()
    return step


def test_moves_to_known_interior_optimum():
    # one SGD step (lr 0.5) on (theta - w)^2 lands exactly on theta = w; the metric |theta - 1.5| is
    # minimised by the w closest to 1.5 on the grid 1.05^k, i.e. 1.05^8 = 1.477 (1.05^9 = 1.551 is farther)
    model, loss = _Theta(), _Pull(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    step = _sgd_step(model, loss, opt)

    def score():
        return abs(float(model.theta.detach()) - 1.5)

    search = GreedySearch(loss, GreedyConfig(every=1, criterion="train_error"))  # lower is better
    seen = []
    for _ in range(12):
        search.adapt(model, opt, None, step, score)
        seen.append(loss.w)
    assert all(b > a for a, b in zip(seen[:8], seen[1:8]))  # monotone approach
    assert seen[7] == pytest.approx(1.05 ** 8) and all(v == seen[7] for v in seen[7:])  # then stays put
    assert float(model.theta.detach()) == 0.0  # the trials never moved the model


def test_larger_parameter_improves_soft_dice_and_search_follows():
    torch.manual_seed(0)
    logit = nn.Parameter(torch.zeros(1, 2, 8, 8, 8))

    class Free(nn.Module):
        def __init__(self):
            super().__init__()
            self.logit = logit

        def forward(self, x):
            return self.logit.expand(x.shape[0], -1, -1, -1, -1)

    model, loss = Free(), _Scaled(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=50.0)
    x, y = _volume(3)
    score = make_scorer(model, x, y, "dice")

    def step():
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()

    search = GreedySearch(loss, GreedyConfig(every=1))
    values = [loss.w]
    for _ in range(4):
        out = search.adapt(model, opt, None, step, score)
        # measurably better with a larger w: the scores increase along down < keep < up
        by_w = sorted(zip([c["w"] for c in out["candidates"]], out["scores"]))
        assert by_w[0][1] < by_w[1][1] < by_w[2][1]
        values.append(loss.w)
        step()  # the real step with the chosen parameter
    assert values == pytest.approx([1.0, 1.05, 1.05 ** 2, 1.05 ** 3, 1.2])  # the last one clipped at 1.2


# ---------------------------------------------------------------------------------------------------------
# (2) trials leave no trace


def test_adapt_restores_everything_and_equals_taking_only_the_chosen_step():
    model, opt, scaler, loss, step, mix = _setup()
    before = _snapshot(model, opt, scaler, mix)
    hx, hy = _held_out()
    search = GreedySearch(loss, GreedyConfig(parameters=("alpha", "beta"), step=0.2))
    out = search.adapt(model, opt, scaler, step, make_scorer(model, hx, hy, "dice"), generators=[mix])
    _assert_same(_snapshot(model, opt, scaler, mix), before)  # nothing changed but the loss parameters
    assert loss.alpha == out["chosen"]["alpha"] and loss.beta == out["chosen"]["beta"]
    assert out["chosen_index"] != 0  # a real move, so the comparison below is not the trivial "keep"
    step()  # the real step

    ref_model, ref_opt, ref_scaler, ref_loss, ref_step, ref_mix = _setup()  # same start, no trials
    for k, v in out["chosen"].items():
        ref_loss.set_parameter(k, v)
    ref_step()
    _assert_same(_snapshot(model, opt, scaler, mix), _snapshot(ref_model, ref_opt, ref_scaler, ref_mix))


def test_exception_in_a_trial_restores_state_and_parameters():
    model, opt, scaler, loss, step, mix = _setup()
    before = _snapshot(model, opt, scaler, mix)
    calls = []

    def failing_score():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 0.5

    search = GreedySearch(loss, GreedyConfig(parameters=("alpha",)))
    with pytest.raises(RuntimeError, match="boom"):
        search.adapt(model, opt, scaler, step, failing_score, generators=[mix])
    _assert_same(_snapshot(model, opt, scaler, mix), before)
    assert loss.alpha == 0.3 and search.adaptations == 0


# ---------------------------------------------------------------------------------------------------------
# (3) candidates


def test_candidates_product_clipping_and_dedupe():
    loss = TverskyLoss(alpha=0.3, beta=0.7)
    cands = GreedySearch(loss, GreedyConfig(parameters=("alpha", "beta"))).candidates()
    assert len(cands) == 9
    assert cands[0] == {"alpha": 0.3, "beta": 0.7}  # keep first
    assert {c["alpha"] for c in cands} == {0.3, 0.3 * 0.95, 0.3 * 1.05}
    assert len({tuple(c.values()) for c in cands}) == 9

    # inclusive bound: clipped onto it; at the bound "up" equals "keep" and is dropped
    spec = ParamSpec("p", 0.98, 0.0, 1.0)
    assert candidate_values(spec, 0.05) == [0.98, 0.98 * 0.95, 1.0]
    assert candidate_values(ParamSpec("p", 1.0, 0.0, 1.0), 0.05) == [1.0, 0.95]
    # open bound (Tversky alpha in (0, 1)): the nearest float inside
    up = candidate_values(ParamSpec("a", 0.98, 0.0, 1.0, False, False), 0.05)[2]
    assert up == math.nextafter(1.0, 0.0) and up < 1.0
    loss.set_parameter("alpha", up)  # accepted by the loss
    # zero: all three actions coincide
    assert candidate_values(ParamSpec("s", 0.0, 0.0, 1.0), 0.05) == [0.0]

    loss = TverskyLoss(alpha=math.nextafter(1.0, 0.0), beta=0.7)
    cands = GreedySearch(loss, GreedyConfig(parameters=("alpha", "beta"))).candidates()
    assert len(cands) == 6  # 2 alpha values x 3 beta values

    # default: every scalar tunable (Tversky has 4) needs max_parameters raised explicitly
    cands = GreedySearch(TverskyLoss(smooth_nr=1e-5, smooth_dr=1e-5), GreedyConfig(max_parameters=4)).candidates()
    assert len(cands) == 81


# ---------------------------------------------------------------------------------------------------------
# (4) decision metrics by hand


def _logits_from_probs(p1: list[float]) -> torch.Tensor:
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.log(1 - p), torch.log(p)]).float().view(1, 2, 1, 1, len(p1))


def test_soft_metrics_by_hand():
    logits = _logits_from_probs([0.9, 0.6, 0.2, 0.1])
    target = torch.tensor([1, 1, 0, 0]).view(1, 1, 1, 1, 4)
    tp, fp, fn = 0.9 + 0.6, 0.2 + 0.1, 0.1 + 0.4
    want = {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn), "precision": tp / (tp + fp),
            "recall": tp / (tp + fn), "f2": 5 * tp / (5 * tp + 4 * fn + fp)}
    for name, v in want.items():
        assert decision_metric(name, logits, target) == pytest.approx(v, abs=1e-6), name
        assert decision_score(name, logits, target) == pytest.approx(v, abs=1e-6)
    # train error: mean over both channels and all voxels of |p - g|
    err = np.mean([0.1, 0.4, 0.2, 0.1] * 2)
    assert decision_metric("train_error", logits, target) == pytest.approx(err, abs=1e-6)
    assert decision_score("train_error", logits, target) == pytest.approx(-err, abs=1e-6)
    # a one-hot target gives the same numbers as the label map
    onehot = nn.functional.one_hot(target[:, 0], 2).movedim(-1, 1).float()
    assert decision_metric("dice", logits, onehot) == pytest.approx(want["dice"], abs=1e-6)
    # sigmoid, one channel: the channel is the foreground
    lg = torch.logit(torch.tensor([0.9, 0.6, 0.2, 0.1])).view(1, 1, 1, 1, 4)
    assert decision_metric("dice", lg, target) == pytest.approx(want["dice"], abs=1e-6)


def test_soft_metrics_empty_class_rules():
    # 3 classes, class 2 absent from the target: recall of class 2 undefined (left out), its dice from sums
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1]])  # (voxel, class)
    logits = torch.log(p.clamp_min(1e-30)).T.reshape(1, 3, 1, 1, 2)
    target = torch.tensor([0, 1]).view(1, 1, 1, 1, 2)
    r1 = 0.7 / 1.0
    assert decision_metric("recall", logits, target) == pytest.approx(r1, abs=1e-6)
    d1 = 2 * 0.7 / (1.2 + 1.0)
    d2 = 0.0  # 2 * 0 / (0.1 + 0)
    assert decision_metric("dice", logits, target) == pytest.approx((d1 + d2) / 2, abs=1e-6)


def test_hausdorff_by_hand_with_spacing_and_empty_penalty():
    # prediction = arg-max: voxels 1..2 foreground; target voxels 1..4, along an axis of spacing 2
    pred = torch.tensor([0, 1, 1, 0, 0, 0])
    ref = torch.tensor([0, 1, 1, 1, 1, 0]).view(1, 1, 1, 1, 6)
    logits = torch.stack([1.0 - pred.float(), pred.float()]).view(1, 2, 1, 1, 6)
    assert decision_metric("hd", logits, ref, spacing=(1.0, 1.0, 2.0)) == pytest.approx(4.0)
    assert decision_score("hd", logits, ref, spacing=(1.0, 1.0, 2.0)) == pytest.approx(-4.0)
    # empty prediction: NaN in compute_metrics -> the volume's diagonal sqrt(0 + 0 + (5 * 2)^2) = 10
    empty = torch.stack([torch.ones(6), torch.zeros(6)]).view(1, 2, 1, 1, 6)
    assert decision_metric("hd", empty, ref, spacing=(1.0, 1.0, 2.0)) == pytest.approx(10.0)
    # a class absent from both maps scores 0
    assert decision_metric("hd", empty, torch.zeros_like(ref)) == 0.0


# ---------------------------------------------------------------------------------------------------------
# (5) errors


def test_errors():
    loss = TverskyLoss()
    with pytest.raises(ValueError, match="unknown parameter 'gamma'.*alpha"):
        GreedySearch(loss, GreedyConfig(parameters=("gamma",)))
    with pytest.raises(ValueError, match="max_parameters=3"):
        GreedySearch(loss)  # Tversky has 4 scalar tunables
    with pytest.raises(ValueError, match="max_parameters=1"):
        GreedyConfig(parameters=("alpha", "beta"), max_parameters=1)
    with pytest.raises(ValueError, match="unknown criterion 'auc'"):
        GreedyConfig(criterion="auc")
    with pytest.raises(ValueError, match="step"):
        GreedyConfig(step=1.5)
    with pytest.raises(ValueError, match="every"):
        GreedyConfig(every=0)
    with pytest.raises(ValueError, match="unique"):
        GreedyConfig(parameters=("alpha", "alpha"))
    with pytest.raises(ValueError, match="unknown decision metric"):
        decision_metric("auc", torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        decision_metric("dice", torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 3, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        decision_metric("dice", torch.zeros(1, 2, 2, 2, 2), torch.full((1, 2, 2, 2), 2))
    with pytest.raises(ValueError, match="spacing"):
        decision_metric("hd", torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.long), spacing=(1, 1))
    with pytest.raises(ValueError, match="tunable_parameters"):
        GreedySearch(object())
    other = GreedySearch(TverskyLoss(), GreedyConfig(parameters=("beta",)))
    with pytest.raises(ValueError, match="parameters"):
        GreedySearch(loss, GreedyConfig(parameters=("alpha",))).load_state_dict(other.state_dict())


# ---------------------------------------------------------------------------------------------------------
# (6) cost accounting


def test_cost_one_trial_step_per_candidate():
    model, opt, scaler, loss, step, mix = _setup()
    hx, hy = _held_out()
    score = make_scorer(model, hx, hy, "f2")
    out = GreedySearch(loss, GreedyConfig(parameters=("alpha", "beta"))).adapt(model, opt, scaler, step, score,
                                                                                 generators=[mix])
    n = len(out["candidates"])
    assert n == 9 and out["trial_steps"] == n and out["score_calls"] == n and len(out["scores"]) == n
    assert out["forward_passes"] == 2 * n and out["backward_passes"] == n
    assert all(isinstance(v, float) for v in out["train_losses"])

    loss.set_parameter("alpha", math.nextafter(1.0, 0.0))  # at the bound: 2 x 3 candidates
    out = GreedySearch(loss, GreedyConfig(parameters=("alpha", "beta"))).adapt(model, opt, scaler, step, score,
                                                                                 generators=[mix])
    assert out["trial_steps"] == 6 and out["forward_passes"] == 12 and out["backward_passes"] == 6


# ---------------------------------------------------------------------------------------------------------
# ties, NaN, resume, params.csv


def test_ties_keep_current_and_nan_never_wins():
    model, loss = _Theta(), _Pull(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    step = _sgd_step(model, loss, opt)

    search = GreedySearch(loss, GreedyConfig(every=1))
    out = search.adapt(model, opt, None, step, lambda: 0.7)  # all equal
    assert out["chosen_index"] == 0 and loss.w == 1.0
    out = search.adapt(model, opt, None, step, lambda: math.nan)  # all NaN
    assert out["chosen_index"] == 0 and loss.w == 1.0
    # NaN for "keep" and "down", a number for "up": the number wins
    out = search.adapt(model, opt, None, step, lambda: 0.1 if float(model.theta.detach()) > 1.0 else math.nan)
    assert loss.w == pytest.approx(1.05)


def test_due():
    s = GreedySearch(_Pull(), GreedyConfig(every=50))
    assert [k for k in range(0, 201) if s.due(k)] == [50, 100, 150, 200]


def test_state_dict_resume_continues_identically():
    def run():
        model, loss = _Theta(), _Pull(1.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)

        def step():
            opt.zero_grad()
            loss(model()).backward()
            opt.step()

        search = GreedySearch(loss, GreedyConfig(every=1, criterion="train_error"))
        states = []
        for _ in range(5):
            search.adapt(model, opt, None, step, lambda: abs(float(model.theta.detach()) - 1.3))
            states.append(search.state_dict())
        return loss.w, states

    w_full, states = run()
    model, loss = _Theta(), _Pull(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    step = _sgd_step(model, loss, opt)

    search = GreedySearch(loss, GreedyConfig(every=1, criterion="train_error"))
    search.load_state_dict(states[1])
    assert loss.w == states[1]["values"]["w"] and search.adaptations == 2
    for _ in range(3):
        search.adapt(model, opt, None, step, lambda: abs(float(model.theta.detach()) - 1.3))
    assert loss.w == w_full and search.state_dict() == states[-1]


def test_params_csv_incremental_and_truncated_on_resume(tmp_path):
    path = tmp_path / "params.csv"
    log = ParamsCSV(path, ["alpha", "beta"])
    for step, a in ((50, 0.3), (100, 0.315), (150, 0.33075)):
        log.write(step, {"alpha": a, "beta": 0.7})
    assert [r["step"] for r in read_params_csv(path)] == [50, 100, 150]
    log = ParamsCSV(path, ["alpha", "beta"], resume_from=100)  # the checkpoint was at step 100
    assert [r["step"] for r in read_params_csv(path)] == [50, 100]
    log.write(150, {"alpha": 0.1 + 0.2, "beta": 0.7})
    rows = read_params_csv(path)
    assert [r["step"] for r in rows] == [50, 100, 150] and rows[-1]["alpha"] == 0.1 + 0.2  # exact round trip
    with pytest.raises(ValueError, match="header"):
        ParamsCSV(path, ["alpha"], resume_from=100)
    with pytest.raises(ValueError, match="missing"):
        log.write(200, {"alpha": 0.3})
    ParamsCSV(path, ["alpha", "beta"])  # a fresh run starts over
    assert read_params_csv(path) == []
