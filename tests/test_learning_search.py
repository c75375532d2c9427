"""Loss searches end to end on a tiny phantom: genetic, taylor, meta; resume; CMA-ES; config; CLI; the pool."""
import copy
import csv
import json
import math

import numpy as np
import pytest
import torch

from spineloss.cli import main
from spineloss.learning.cmaes import CMAES
from spineloss.learning.config import learn_config_from_dict, load_learn_config
from spineloss.learning.fitness import WORST_FITNESS, build_task, candidate_spec, evaluate, evaluate_detailed
from spineloss.backends.local import LocalBackend, available_cores
from spineloss.learning.parallel import Evaluator
from spineloss.learning.runner import run_learning
from spineloss.losses import build_loss
from spineloss.training import safe_torch_load


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from spineloss.data.phantom import write_phantom_dataset
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=4, shape=(24, 24, 24), seed=5)


RAW = {
    "experiment": {"name": "tiny", "folds": 2, "seed": 0},
    "data": {"label_mode": "binary"},
    "model": {"depth": 2, "base_channels": 4, "max_channels": 8},
    "training": {"epochs": 1, "iterations_per_epoch": 3, "batch_size": 1, "amp": "off"},
    "augment": {"p_affine": 0.0, "p_noise": 0.0},
    "learn": {"workers": 1, "val_fraction": 0.5,
              "genetic": {"population": 4, "generations": 1, "elite": 1, "init_max_height": 2, "cma_generations": 1,
                          "cma_population": 2},
              "taylor": {"generations": 1, "population": 2},
              "meta": {"epochs": 1, "steps_per_epoch": 2, "hidden": [4], "reset_every": 3}},
}


def _raw(phantom, **learn):
    raw = copy.deepcopy(RAW)
    raw["data"]["path"] = str(phantom)
    for method, table in learn.items():
        raw["learn"][method].update(table)
    return raw


def _config(phantom, **learn):
    return learn_config_from_dict(_raw(phantom, **learn))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------- a toy fitness (fast tests)
CALLS: list[dict] = []


def toy_evaluate(spec):
    """A deterministic stand-in for training: peaks when every number of the loss is 0.5, prefers short formulas."""
    if spec["loss"]["kind"] != "reference":  # the reference losses are trained once, apart (references.json)
        CALLS.append(spec["loss"])
    doc = spec["loss"]
    if doc["kind"] == "expression":
        values, size = list(doc["constants"].values()), len(doc["formula"])
    elif doc["kind"] == "taylor":
        values, size = [doc["coefficients"][k] for k in ("ce", "dice", "p2g0")], 0
    else:
        values, size = [], 0
    closeness = math.exp(-sum((v - 0.5) ** 2 for v in values)) if values else 0.3
    fitness = closeness / (1.0 + size / 100.0)
    return {"fitness": fitness, "status": "trained", "reason": "", "seconds": 0.0}


def _strip(doc):
    doc = json.loads(json.dumps(doc))
    doc.get("source", {}).pop("seconds_this_session", None)
    doc.get("source", {}).get("cost", {}).pop("seconds", None)
    return doc


def _history(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(path)]


# ------------------------------------------------------------------------------------ end to end (training)
def test_genetic_end_to_end(phantom, tmp_path):
    out = tmp_path / "genetic"
    result = run_learning("genetic", _config(phantom), out, progress=False)
    assert 0.0 <= result["fitness"] <= 1.0
    doc = json.loads((out / "learned_loss.json").read_text())
    assert doc["kind"] == "expression" and doc["source"]["method"] == "genetic"
    task = doc["source"]["task"]
    assert not set(task["excluded_test_cases"]) & set(task["fit_cases"] + task["val_cases"])
    loss = build_loss(f"learned:{out / 'learned_loss.json'}")
    assert torch.isfinite(loss(torch.randn(1, 2, 4, 4, 4), torch.randint(0, 2, (1, 1, 4, 4, 4))))
    history = _rows(out / "history.csv")
    assert [r["phase"] for r in history][:2] == ["gp", "gp"] and len(history) in (2, 3)
    evaluations = _rows(out / "evaluations.csv")
    assert {r["status"] for r in evaluations} <= {"trained", "rejected", "failed"} and evaluations
    assert "formula:" in (out / "formula.txt").read_text()
    assert (out / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # best fitness per generation
    references = json.loads((out / "references.json").read_text())  # Dice, CE, Dice+CE on the same proxy
    assert list(references) == ["dice", "ce", "dice_ce"] and all(0.0 <= v <= 1.0 for v in references.values())
    assert doc["source"]["references"] == references and "on the same proxy: dice" in (out / "formula.txt").read_text()


def test_taylor_end_to_end(phantom, tmp_path):
    out = tmp_path / "taylor"
    result = run_learning("taylor", _config(phantom), out, progress=False)
    history = _rows(out / "history.csv")
    assert [r["phase"] for r in history] == ["start", "cma"]
    assert history[0]["best"] == "mean_voxels S_c[1 (-g log p)] + 1 (1 - Dice)"  # starts at Dice + CE
    assert result["fitness"] >= float(history[0]["generation_best"])
    assert result["document"]["kind"] == "taylor"
    assert build_loss(f"learned:{out / 'learned_loss.json'}") is not None


def test_meta_end_to_end(phantom, tmp_path):
    out = tmp_path / "meta"
    result = run_learning("meta", _config(phantom), out, progress=False)
    assert result["document"]["kind"] == "meta" and 0.0 <= result["fitness"] <= 1.0
    state = torch.load(out / "meta_checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and len(state["history"]) == 1
    row = _rows(out / "history.csv")[0]
    assert math.isfinite(float(row["meta_objective"])) and int(row["skipped"]) == 0
    assert (out / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss = build_loss(f"learned:{out / 'learned_loss.json'}")
    assert float(loss(torch.randn(1, 2, 4, 4, 4), torch.randint(0, 2, (1, 1, 4, 4, 4))).detach()) >= 0


def test_evaluate_is_a_plain_function_of_plain_data(phantom, tmp_path):
    task = build_task(_config(phantom), tmp_path)
    spec = json.loads(json.dumps(candidate_spec({"kind": "expression", "formula": "square(sub(p, g))",
                                                 "constants": {}}, task)))
    a, b = evaluate(spec), evaluate(spec)
    assert a == b and 0.0 <= a <= 1.0  # fixed seed: the same candidate gets the same fitness
    rejected = candidate_spec({"kind": "expression", "formula": "mul(g, 2.0)", "constants": {}}, task)
    assert evaluate(rejected) == WORST_FITNESS < 0.0  # below any trained candidate


def test_a_search_where_nothing_trains_writes_no_learned_loss(phantom, tmp_path):
    def nothing_trains(spec):
        return {"fitness": WORST_FITNESS, "status": "failed", "reason": "RuntimeError: boom", "seconds": 0.0}
    with pytest.raises(ValueError, match="no loss that trains"):
        run_learning("taylor", _config(phantom), tmp_path / "t", progress=False, evaluate_fn=nothing_trains)
    assert not (tmp_path / "t" / "learned_loss.json").exists()


def test_a_candidate_trains_on_the_fit_cases_and_is_scored_on_the_val_cases_only(phantom, tmp_path, monkeypatch):
    import spineloss.training as training
    task = build_task(_config(phantom), tmp_path)
    assert task.fit_ids and task.val_ids and task.test_ids
    assert not set(task.fit_ids) & set(task.val_ids) and not set(task.fit_ids + task.val_ids) & set(task.test_ids)
    trained, scored = [], []
    real_train, real_score = training.train_fold, training.selection_dice

    def train_spy(fit, val, *args, **kwargs):
        trained.append(([c.case_id for c in fit], [c.case_id for c in val]))
        return real_train(fit, val, *args, **kwargs)

    def score_spy(model, cases, *args, **kwargs):
        scored.append([c.case_id for c in cases])
        return real_score(model, cases, *args, **kwargs)

    monkeypatch.setattr(training, "train_fold", train_spy)
    monkeypatch.setattr(training, "selection_dice", score_spy)
    result = evaluate_detailed(candidate_spec({"kind": "expression", "formula": "square(sub(p, g))",
                                               "constants": {}}, task))
    assert result["status"] == "trained", result
    assert trained == [(list(task.fit_ids), list(task.val_ids))]
    assert scored == [list(task.val_ids)]  # scored once, after the last epoch, on the val cases only


def test_the_learned_file_records_its_data_and_an_experiment_on_the_same_data_refuses_it(phantom, tmp_path):
    from spineloss.data.layout import check_dataset
    from spineloss.experiment import config_from_dict, data_fingerprints, fold_splits
    from spineloss.learning.protocol import check_learned_losses
    run_learning("taylor", _config(phantom), tmp_path / "t", progress=False, evaluate_fn=toy_evaluate)
    path = tmp_path / "t" / "learned_loss.json"
    task = json.loads(path.read_text())["source"]["task"]
    fps = data_fingerprints(check_dataset(phantom).cases)
    assert task["fingerprints"] == {c: fps[c] for c in task["fit_cases"] + task["val_cases"]}
    # the study's folds and seed: the search used fold 0's training cases, which are fold 1's test cases
    exp = config_from_dict({"experiment": {"folds": 2, "seed": 0}, "data": {"path": str(phantom)},
                            "losses": ["dice", {"name": "mix", "loss": {"dice": 1.0, f"learned:{path}": 1.0}}]})
    splits = fold_splits(exp, list(fps))
    with pytest.raises(ValueError, match=r"row 'mix' uses .*same image and label files: fold 1 tests") as err:
        check_learned_losses(exp.losses, splits, fps)
    assert "fold 0 tests" not in str(err.value)
    check_learned_losses(exp.losses, splits, {c: "other data" for c in fps})   # a proxy on other data passes


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("method, stop_at", [("genetic", 1), ("genetic", 4), ("taylor", 2)])
def test_resume_after_interruption_continues_from_the_checkpoint(phantom, tmp_path, method, stop_at):
    cfg = _config(phantom, genetic={"population": 6, "generations": 3, "elite": 2, "cma_generations": 2,
                                    "cma_population": 3},
                  taylor={"generations": 3, "population": 3})
    full = run_learning(method, cfg, tmp_path / "full", progress=False, evaluate_fn=toy_evaluate)

    def crash(row):
        if row["generation"] == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_learning(method, cfg, tmp_path / "cut", progress=False, evaluate_fn=toy_evaluate, on_generation_end=crash)
    assert len(_rows(tmp_path / "cut" / "history.csv")) == stop_at + 1
    CALLS.clear()
    resumed = run_learning(method, cfg, tmp_path / "cut", progress=False, evaluate_fn=toy_evaluate)
    assert resumed["fitness"] == full["fitness"]
    assert _history(tmp_path / "cut" / "history.csv") == _history(tmp_path / "full" / "history.csv")
    assert _rows(tmp_path / "cut" / "evaluations.csv") == _rows(tmp_path / "full" / "evaluations.csv")
    assert _strip(json.loads((tmp_path / "cut" / "learned_loss.json").read_text())) == \
        _strip(json.loads((tmp_path / "full" / "learned_loss.json").read_text()))
    # the resumed run trained only what the interrupted one had not
    done_before = sum(1 for r in _rows(tmp_path / "full" / "evaluations.csv") if int(r["generation"]) <= stop_at)
    assert len(CALLS) == len(_rows(tmp_path / "full" / "evaluations.csv")) - done_before


def test_meta_resume_after_interruption(phantom, tmp_path):
    cfg = _config(phantom, meta={"epochs": 3, "steps_per_epoch": 2})
    run_learning("meta", cfg, tmp_path / "full", progress=False, evaluate_fn=toy_evaluate)

    def crash(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_learning("meta", cfg, tmp_path / "cut", progress=False, evaluate_fn=toy_evaluate, on_generation_end=crash)
    assert safe_torch_load(tmp_path / "cut" / "meta_checkpoint.pt")["epoch"] == 0
    run_learning("meta", cfg, tmp_path / "cut", progress=False, evaluate_fn=toy_evaluate)
    a = json.loads((tmp_path / "full" / "learned_loss.json").read_text())
    b = json.loads((tmp_path / "cut" / "learned_loss.json").read_text())
    assert a["state"] == b["state"]
    assert _history(tmp_path / "cut" / "history.csv") == _history(tmp_path / "full" / "history.csv")


def test_no_tree_is_trained_twice(phantom, tmp_path):
    from spineloss.learning.expression import canonical, parse_formula
    cfg = _config(phantom, genetic={"population": 8, "generations": 4, "elite": 2, "cma_generations": 0,
                                    "init_max_height": 1, "max_height": 2})
    CALLS.clear()
    run_learning("genetic", cfg, tmp_path / "g", progress=False, evaluate_fn=toy_evaluate)
    keys = [canonical(parse_formula(d["formula"]), d["constants"]) for d in CALLS]
    assert len(keys) == len(set(keys)) and keys


def test_a_changed_config_is_refused_on_resume(phantom, tmp_path):
    run_learning("taylor", _config(phantom), tmp_path / "t", progress=False, evaluate_fn=toy_evaluate)
    other = _config(phantom, taylor={"sigma": 0.9})
    with pytest.raises(ValueError, match=r"taylor\.sigma: 0\.3 -> 0\.9.*--no-resume"):
        run_learning("taylor", other, tmp_path / "t", progress=False, evaluate_fn=toy_evaluate)
    with pytest.raises(ValueError, match="method"):
        run_learning("genetic", _config(phantom), tmp_path / "t", progress=False, evaluate_fn=toy_evaluate)
    run_learning("taylor", other, tmp_path / "t", resume=False, progress=False, evaluate_fn=toy_evaluate)


# ---------------------------------------------------------------------------------------------- CMA-ES
def test_cmaes_moves_to_a_known_optimum_and_resumes_exactly():
    optimum = np.array([1.0, -2.0, 0.5])

    def fitness(x):
        return -float(((np.asarray(x) - optimum) ** 2).sum())

    es = CMAES([0.0, 0.0, 0.0], 0.5, seed=3)
    start = fitness(es.mean)
    saved = None
    for generation in range(40):
        xs = es.ask()
        es.tell(xs, [fitness(x) for x in xs])
        if generation == 14:
            saved = json.loads(json.dumps(es.state_dict()))
    assert fitness(es.mean) > -1e-3 > start
    assert np.allclose(es.best_x, optimum, atol=0.05)
    again = CMAES.from_state(saved)
    for _ in range(25):
        xs = again.ask()
        again.tell(xs, [fitness(x) for x in xs])
    assert again.mean == es.mean and again.sigma == es.sigma
    state = np.random.get_state()[1].copy()
    CMAES([0.0], 1.0, seed=0).ask()  # its own generator: numpy's global one does not move
    assert np.array_equal(state, np.random.get_state()[1])


def test_cmaes_input_checks():
    with pytest.raises(ValueError, match="sigma"):
        CMAES([0.0], 0.0)
    es = CMAES([0.0, 1.0], 0.1, population=4)
    with pytest.raises(ValueError, match="tell needs"):
        es.tell(es.ask()[:2], [0.0, 1.0])


# ------------------------------------------------------------------------------------------ config, CLI
@pytest.mark.parametrize("change, message", [
    ({"learn": {"genetic": {"populaton": 4}}}, r"\[learn.genetic\] unknown key.*populaton"),
    ({"learn": {"genetic": {"population": 4, "elite": 4}}}, r"\[learn.genetic\] elite must be an integer in 0..3"),
    ({"learn": {"taylor": {"start": "focal"}}}, r"\[learn.taylor\] unknown taylor setting 'focal'"),
    ({"learn": {"meta": {"hidden": [0]}}}, r"\[learn.meta\] hidden must list positive"),
    ({"learn": {"fold": 2}}, r"\[learn\] fold must be an integer in 0..1"),
    ({"learn": {"speed": 1}}, r"\[learn\] unknown key.*speed"),
    ({"losses": ["dice"]}, "a learn config has no losses"),
    ({"postprocess": {}}, "unknown config section"),
])
def test_config_errors_say_what_to_fix(phantom, change, message):
    raw = _raw(phantom)
    for key, value in change.items():
        if key == "learn":
            for k, v in value.items():
                if isinstance(v, dict):
                    raw["learn"][k] = v
                else:
                    raw["learn"][k] = v
        else:
            raw[key] = value
    with pytest.raises(ValueError, match=message):
        learn_config_from_dict(raw)


def test_shipped_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    for method in ("genetic", "taylor", "meta"):
        cfg = load_learn_config(root / f"learn_{method}.toml")
        assert cfg.method == method and cfg.data.phantom is not None
        with pytest.raises(ValueError, match="not 'genetic'" if method != "genetic" else "not 'taylor'"):
            cfg.check_method("taylor" if method == "genetic" else "genetic")


def _write_toml(path, raw):
    def value(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines += [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for name, sub in subs.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {value(v)}" for k, v in sub.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_learn(phantom, tmp_path, capsys):
    raw = _raw(phantom)
    raw["learn"]["method"] = "taylor"
    cfg = _write_toml(tmp_path / "learn.toml", raw)
    out = tmp_path / "out"
    assert main(["learn", "taylor", str(cfg), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "fitness (validation Dice on the proxy task)" in printed and "learned:" in printed
    assert (out / "learned_loss.json").exists() and (out / "formula.txt").exists()
    assert main(["learn", "genetic", str(cfg), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "spineloss learn taylor" in capsys.readouterr().err
    assert main(["learn", "meta", str(tmp_path / "missing.toml")]) == 2


# ----------------------------------------------------------------------------------------------- the pool
def test_pool_returns_results_in_order(phantom, tmp_path):
    task = build_task(_config(phantom), tmp_path)
    formulas = ["mul(g, 2.0)", "square(p)", "add(g, sub(p, p))", "neg(square(sub(p, g)))"]
    specs = [candidate_spec({"kind": "expression", "formula": f, "constants": {}}, task) for f in formulas]
    seen = []
    with Evaluator(workers=2) as ev:
        # the grid's local backend is the pool: spawn-ed workers, each capped to cores // workers threads
        assert isinstance(ev.backend, LocalBackend) and ev.backend.workers == 2
        assert ev.threads == ev.backend.threads_per_worker == max(1, available_cores() // 2)
        results = ev.map(specs, on_result=lambda i, r: seen.append(i))
        assert ev.backend._pool is not None
    assert ev.backend._pool is None  # closed with the evaluator that made it
    assert [r["reason"].split(":")[0] for r in results] == ["ignores p", "ignores g", "no gradient",
                                                            "not minimised by the perfect prediction"]
    assert sorted(seen) == [0, 1, 2, 3]


def test_cma_es_tunes_the_constants_of_the_best_tree(phantom, tmp_path):
    """On the toy fitness (best when every number is 0.5) CMA-ES improves on the genetic search's best tree."""
    cfg = _config(phantom, genetic={"population": 6, "generations": 1, "elite": 1, "cma_generations": 10,
                                    "cma_population": 6, "cma_sigma": 0.5})
    result = run_learning("genetic", cfg, tmp_path / "g", progress=False, evaluate_fn=toy_evaluate)
    history = _rows(tmp_path / "g" / "history.csv")
    gp_best = max(float(r["best_fitness"]) for r in history if r["phase"] == "gp")
    assert [r["phase"] for r in history].count("cma") == 10
    assert result["fitness"] > gp_best
    constants = list(result["document"]["constants"].values())
    assert constants and all(abs(c - 0.5) < 0.3 for c in constants)


class _RecordingBackend:
    """Any executor with map(fn, items) (spineloss.backends' interface) can run the evaluations."""

    def __init__(self):
        self.calls = 0

    def map(self, fn, items):
        self.calls += 1
        return [fn(item) for item in items]


def test_evaluations_can_run_on_another_backend(phantom, tmp_path):
    backend = _RecordingBackend()
    a = run_learning("taylor", _config(phantom), tmp_path / "a", progress=False, evaluate_fn=toy_evaluate,
                     backend=backend)
    b = run_learning("taylor", _config(phantom), tmp_path / "b", progress=False, evaluate_fn=toy_evaluate)
    assert backend.calls == 3 and a["fitness"] == b["fitness"]  # 2 generations, then the 3 reference losses


def test_the_evaluator_reports_through_any_backend():
    """A backend whose map takes on_result reports as results arrive; one without it (map(fn, items), as an
    executor or the Ray backend) is reported in order after the map; the caller's backend is not closed."""
    specs = [{"loss": {"kind": "taylor", "coefficients": {"ce": v, "dice": 0.0, "p2g0": 0.0}}} for v in (0.1, 0.5)]
    seen = []
    with Evaluator(fn=toy_evaluate, backend=LocalBackend(1)) as ev:
        results = ev.map(specs, on_result=lambda i, r: seen.append((i, r["fitness"])))
    assert seen == [(i, r["fitness"]) for i, r in enumerate(results)]
    backend = _RecordingBackend()
    backend.close = lambda: pytest.fail("the evaluator closed a backend it was given")
    seen.clear()
    with Evaluator(fn=toy_evaluate, backend=backend) as ev:
        assert ev.map(specs, on_result=lambda i, r: seen.append((i, r["fitness"]))) == results
    assert seen == [(i, r["fitness"]) for i, r in enumerate(results)] and backend.calls == 1
    with pytest.raises(ValueError, match="backend must be"):
        Evaluator(backend=object())
