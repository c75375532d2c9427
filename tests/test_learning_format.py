"""Learned-loss files: exact round trips, build_loss("learned:PATH"), configs, clear errors."""
import json

import pytest
import torch

from spineloss.experiment import config_differences, config_from_dict, fold_splits, run_config
from spineloss.learning.expression import ExpressionLoss
from spineloss.learning.format import (document_of, file_digest, learned_row_name, load_document, load_learned_loss,
                                       save_learned_loss)
from spineloss.learning.meta import MetaLoss, MetaLossNet
from spineloss.learning.taylor import TaylorLoss
from spineloss.losses import build_loss, get_loss_class


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _inputs(C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, 5, 6, 7, generator=g)
    target = torch.randint(0, max(C, 2), (2, 1, 5, 6, 7), generator=g)
    return logits, target


def _losses():
    torch.manual_seed(3)
    net = MetaLossNet(hidden=(5, 4), region_features=True)
    return {
        "expression": ExpressionLoss("add(mul(c0, square(sub(p, g))), mul(c1, div(FP, add(TP, FN))))",
                                     {"c0": 0.7310585786300049, "c1": -1.0e-3 / 3}),
        "taylor": TaylorLoss({"p2g0": 0.123456789, "p1g1": -0.5, "ce": 1.25, "dice": 0.3, "tversky": 0.2,
                              "alpha": 0.31, "beta": 0.69}),
        "meta": MetaLoss(net),
    }


@pytest.mark.parametrize("kind", ["expression", "taylor", "meta"])
@pytest.mark.parametrize("C", [1, 3])
def test_round_trip_same_values_and_gradients(tmp_path, kind, C):
    loss = _losses()[kind]
    path = save_learned_loss(tmp_path / "learned_loss.json", loss, source={"method": "test"})
    for loaded in (load_learned_loss(path), build_loss(f"learned:{path}")):
        assert isinstance(loaded, type(loss))
        for seed in range(2):
            x, y = _inputs(C, seed)
            xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            va, vb = loss(xa, y), loaded(xb, y)
            va.backward()
            vb.backward()
            assert torch.equal(va, vb)
            assert torch.equal(xa.grad, xb.grad)
    # the file itself is stable: saving what was loaded gives the same document
    again = save_learned_loss(tmp_path / "again.json", load_learned_loss(path), source={"method": "test"})
    assert json.loads(again.read_text()) == json.loads(path.read_text())


def test_meta_state_is_plain_json_and_exact(tmp_path):
    loss = _losses()["meta"]
    path = save_learned_loss(tmp_path / "m.json", loss)
    doc = json.loads(path.read_text())
    assert doc["kind"] == "meta" and isinstance(doc["state"]["layers.0.weight"], list)
    loaded = load_learned_loss(path)
    for (k, a), (_, b) in zip(loss.network.state_dict().items(), loaded.network.state_dict().items()):
        assert torch.equal(a, b), k
    # read from its file the network is frozen: a U-Net trained with it neither trains it nor fills its .grad
    assert not any(q.requires_grad for q in loaded.parameters())
    assert all(q.requires_grad for q in loss.parameters())  # the meta-search's own network still trains
    x, y = _inputs(1)
    x.requires_grad_(True)
    loaded(x, y).backward()
    assert x.grad is not None and all(q.grad is None for q in loaded.parameters())


def test_document_fields_and_readable(tmp_path):
    path = save_learned_loss(tmp_path / "e.json", ExpressionLoss("mul(c0, square(sub(p, g)))", {"c0": 0.5}))
    doc = load_document(path)
    assert doc["format"] == "spineloss-learned-loss" and doc["version"] == 2
    assert doc["formula"] == "mul(c0, square(sub(p, g)))" and doc["readable"] == "0.5 * (p - g)^2"
    tdoc = document_of(TaylorLoss({"ce": 1.0, "dice": 1.0}))
    assert tdoc["family"]["order"] == 3 and "definition" in tdoc["family"]
    assert tdoc["readable"] == "mean_voxels S_c[1 (-g log p)] + 1 (1 - Dice)"


def test_registry_hook_and_weighted_sum(tmp_path):
    path = save_learned_loss(tmp_path / "glo" / "learned_loss.json", TaylorLoss({"ce": 1.0}))
    cls = get_loss_class(f"learned:{path}")
    assert cls.name == "learned_glo" and issubclass(cls, TaylorLoss)
    x, y = _inputs(3)
    assert torch.allclose(build_loss(f"learned:{path}")(x, y), build_loss("ce")(x, y), atol=1e-6)
    both = build_loss({"dice": 1.0, f"learned:{path}": 2.0})
    assert torch.allclose(both(x, y), build_loss("dice")(x, y) + 2 * build_loss("ce")(x, y), atol=1e-5)
    with pytest.raises(ValueError, match="does not take parameter.*alpha.*it takes \\['reduction', 'activation'\\]"):
        build_loss(f"learned:{path}", alpha=0.3)


def test_config_rows_and_run_record(tmp_path):
    path = save_learned_loss(tmp_path / "glo" / "learned_loss.json", TaylorLoss({"ce": 1.0}))
    cfg = config_from_dict({"losses": ["dice", f"learned:{path}", {"name": "mine", "loss": f"learned:{path}"}],
                            "data": {"path": str(tmp_path / "data")}})
    names = [s.name for s in cfg.losses]
    assert names == ["dice", "learned_glo", "mine"] == [n for n in names if "/" not in n and ":" not in n]
    split = fold_splits(cfg, [f"c{i}" for i in range(6)])[0]
    record = run_config(cfg, cfg.losses[1], split)
    assert len(record["loss.learned_file"]) == 16
    save_learned_loss(path, TaylorLoss({"ce": 2.0}))  # a new search result in the same place: another run
    assert run_config(cfg, cfg.losses[1], split)["loss.learned_file"] != record["loss.learned_file"]
    assert learned_row_name("learned:runs/x/other.json") == "learned_other"


def test_every_learned_term_of_a_weighted_sum_is_fingerprinted(tmp_path):
    a = save_learned_loss(tmp_path / "a" / "learned_loss.json", TaylorLoss({"ce": 1.0}))
    b = save_learned_loss(tmp_path / "b" / "learned_loss.json", TaylorLoss({"dice": 1.0}))
    cfg = config_from_dict({"losses": [
        {"name": "mix", "loss": {"dice": 1.0, f"learned:{a}": 1.0}},
        {"name": "mixw", "loss": {"dice": 1.0, f"learned:{b}": {"weight": 0.5}}},
        {"name": "both", "loss": {f"learned:{a}": 1.0, f"learned:{b}": 2.0}},
        {"name": "ws", "loss": "weighted_sum", "params": {"terms": {"ce": 1.0, f"learned:{a}": 2.0}}}],
        "data": {"path": str(tmp_path / "data")}})
    split = fold_splits(cfg, [f"c{i}" for i in range(6)])[0]

    def digests():
        out = {}
        for spec in cfg.losses:
            record = run_config(cfg, spec, split)
            out[spec.name] = {k.split(".", 2)[2]: v for k, v in record.items() if k.startswith("loss.learned_file.")}
        return out

    before = digests()
    assert before["mix"] == {f"learned:{a}": file_digest(a)} and before["mixw"] == {f"learned:{b}": file_digest(b)}
    assert before["both"] == {f"learned:{a}": file_digest(a), f"learned:{b}": file_digest(b)}
    assert before["ws"] == before["mix"]
    save_learned_loss(a, TaylorLoss({"ce": 2.0}))  # a new search result in the same place: another run
    after = digests()
    assert after["mix"] != before["mix"] and after["ws"] != before["ws"] and after["mixw"] == before["mixw"]
    assert after["both"][f"learned:{a}"] != before["both"][f"learned:{a}"]
    old = run_config(cfg, cfg.losses[0], split)
    save_learned_loss(a, TaylorLoss({"ce": 3.0}))
    new = run_config(cfg, cfg.losses[0], split)
    assert any(d.startswith(f"loss.learned_file.learned:{a}") for d in config_differences(old, new))


def test_version_1_expressions_that_divide_or_take_a_log_are_refused(tmp_path):
    old = {"format": "spineloss-learned-loss", "version": 1, "kind": "expression",
           "formula": "neg(mul(g, log(p)))", "constants": {}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"old.json: a version 1 learned formula that uses \['log'\].*continuous.*"
                                         r"Run the search again, or set \"version\": 2"):
        build_loss(f"learned:{path}")
    path.write_text(json.dumps({**old, "formula": "div(FP, add(TP, FN))"}))
    with pytest.raises(ValueError, match=r"uses \['div'\]"):
        load_document(path)
    path.write_text(json.dumps({**old, "version": 2}))  # the user accepts the new meaning
    assert isinstance(build_loss(f"learned:{path}"), ExpressionLoss)
    # what did not change meaning loads, and is written back as version 2
    same = tmp_path / "same.json"
    same.write_text(json.dumps({**old, "formula": "square(sub(p, g))"}))
    loss = build_loss(f"learned:{same}")
    assert json.loads(save_learned_loss(tmp_path / "again.json", load_document(same)).read_text())["version"] == 2
    taylor = document_of(TaylorLoss({"ce": 1.0}))
    (tmp_path / "t.json").write_text(json.dumps({**taylor, "version": 1}))
    assert isinstance(load_learned_loss(tmp_path / "t.json"), TaylorLoss)
    x, y = _inputs(3)
    assert torch.isfinite(loss(x, y))
    newer = tmp_path / "new.json"
    newer.write_text(json.dumps({**taylor, "version": 3}))
    with pytest.raises(ValueError, match="newer than this spineloss"):
        load_document(newer)


@pytest.mark.parametrize("content, message", [
    ({"kind": "nope"}, "kind must be one of"),
    ({"kind": "expression", "formula": "p"}, "missing \\['constants'\\]"),
    ({"kind": "expression", "formula": "__import__('os').system('true')", "constants": {}}, "not allowed"),
    ({"kind": "expression", "formula": "mul(p, g, p)", "constants": {}}, "takes 2 argument"),
    ({"kind": "expression", "formula": "mul(c0, p)", "constants": {}}, "c0.*no value"),
    ({"kind": "expression", "formula": "sub(p, g)", "constants": {"c3": 1.0}}, "not used"),
    ({"kind": "taylor", "family": {"order": 3}, "coefficients": {"ce": 1.0, "focal": 1.0}}, "unknown coefficient"),
    ({"kind": "taylor", "family": {"order": 3}, "coefficients": {"alpha": 1.5}}, "in \\(0, 1\\)"),
    ({"kind": "meta", "network": {"hidden": [4]}, "state": {"layers.0.weight": [[0.0, 0.0]]}}, "does not match"),
    ({"format": "other", "kind": "taylor"}, "not a spineloss learned loss"),
])
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        build_loss(f"learned:{path}")


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match="no such learned-loss file"):
        build_loss(f"learned:{tmp_path / 'none.json'}")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON"):
        build_loss(f"learned:{tmp_path / 'x.json'}")
    with pytest.raises(ValueError, match="learned:PATH"):
        build_loss("learned:")
