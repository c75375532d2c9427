"""Where the grid runs: the local backend, a local Ray instance (same table; a killed worker is retried),
and the progress view with several runs at once."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from spineloss.backends import GridFailed, Job, get_backend
from spineloss.experiment import config_from_dict, run_experiment
from spineloss.progress import GridProgress


def _config(losses=("dice", "ce"), **training):
    raw = {"experiment": {"name": "b", "folds": 2, "seed": 0},
           "data": {"phantom": {"region": "lumbar", "cases": 6, "shape": [32, 32, 24], "seed": 0},
                    "label_mode": "binary"},
           "model": {"channels": [4, 8]},
           # one thread on both sides: the local run and a 1-CPU Ray task do the same arithmetic
           "training": {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 2, "threads": 1, **training},
           "augment": {"p_affine": 0.0, "p_noise": 0.0},
           "losses": list(losses)}
    return config_from_dict(raw)


def _cases(out: Path, loss: str, fold: int) -> dict:
    return json.loads((out / loss / f"fold{fold}" / "metrics.json").read_text())["cases"]


def test_local_backend_runs_jobs_in_order_and_maps():
    seen = []

    def job(x, on_epoch_end=None):
        on_epoch_end(1)
        return x * 2

    view = GridProgress(2, 1, stream=io.StringIO(), interactive=False)
    backend = get_backend("local")
    backend.run_jobs([Job("a", job, (1,)), Job("b", job, (2,))], view,
                     lambda j, r: (seen.append((j.key, r)), view.finish(j.key, j.key)))
    assert seen == [("a", 2), ("b", 4)] and view.done == 2
    assert backend.map(abs, [-1, 2, -3]) == [1, 2, 3]
    assert get_backend("local", workers=2).map(abs, [-1, 2, -3]) == [1, 2, 3]   # a spawn pool
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("slurm")
    with pytest.raises(ValueError, match="workers must be"):
        get_backend("local", workers=0)
    with pytest.raises(ValueError, match="threads_per_worker must be"):
        get_backend("local", workers=2, threads_per_worker=0)


def _threads_and_double(x):
    import torch
    return torch.get_num_threads(), 2 * x


def test_local_pool_caps_threads_reports_results_and_stays_until_closed():
    """The one process pool (the grid's backend and the loss searches' evaluations): spawn-ed workers with
    ``threads_per_worker`` torch threads, results in order, ``on_result(index, result)`` as each arrives."""
    from spineloss.backends.local import available_cores
    assert get_backend("local", workers=2).threads_per_worker == max(1, available_cores() // 2)
    seen = []
    with get_backend("local", workers=2, threads_per_worker=1) as backend:
        out = backend.map(_threads_and_double, [1, 2, 3], on_result=lambda i, r: seen.append((i, r)))
        pool = backend._pool
        assert backend.map(_threads_and_double, [4, 5]) == [(1, 8), (1, 10)] and backend._pool is pool  # reused
        assert backend.map(abs, [-7], on_result=lambda i, r: seen.append((i, r))) == [7]   # one item: here
        with pytest.raises(TypeError):
            backend.map(abs, ["a", -1])                                                  # a worker's error
    assert out == [(1, 2), (1, 4), (1, 6)]
    assert sorted(seen[:3]) == [(0, (1, 2)), (1, (1, 4)), (2, (1, 6))] and seen[3] == (0, 7)
    assert backend._pool is None                                                         # closed on exit


def test_progress_with_runs_side_by_side():
    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    clock, out = Clock(), io.StringIO()
    view = GridProgress(total_runs=4, epochs=10, stream=out, interactive=False, clock=clock)
    view.start("a fold 0")
    view.start("b fold 0")
    clock.t = 10.0
    view.epoch(1, "a fold 0")
    view.epoch(1, "b fold 0")           # 2 epochs in 10 s of wall time: 5 s an epoch, both runs together
    assert view.line().startswith("grid 0/4 done, 2 running, 2 left | a fold 0: epoch 1/10, b fold 0: epoch 1/10")
    assert view.seconds_left() == 5.0 * (2 * 10 + 9 + 9)
    with pytest.raises(ValueError, match="name the run"):
        view.epoch(2)
    view.fail("[a fold 0] failed twice: boom", "a fold 0")
    assert view.failed == 1 and view.done == 1 and view.current == "b fold 0"
    assert "1 failed" in view.line()


@pytest.fixture(scope="module")
def ray_backend():
    ray = pytest.importorskip("ray", reason="the Ray backend's tests need the optional extra: pip install "
                                            "'spineloss[ray]'")
    import sys
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import this file
    backend = get_backend("ray", num_cpus=2, cpus_per_task=1, poll_seconds=0.2)
    yield backend
    backend.close()


@pytest.mark.slow
def test_ray_grid_gives_the_local_table(tmp_path, ray_backend):
    config = _config()
    run_experiment(config, tmp_path / "local", progress=False, pictures=False)
    run_experiment(config, tmp_path / "ray", progress=False, pictures=False, backend=ray_backend)
    assert ray_backend.slots == 2                                   # two runs side by side on 2 CPUs
    for loss in ("dice", "ce"):
        for k in (0, 1):
            assert json.dumps(_cases(tmp_path / "local", loss, k), sort_keys=True) == \
                json.dumps(_cases(tmp_path / "ray", loss, k), sort_keys=True)
    assert (tmp_path / "local" / "summary.csv").read_text() == (tmp_path / "ray" / "summary.csv").read_text()
    attempt = json.loads((tmp_path / "ray" / "dice" / "fold0" / "attempt.json").read_text())
    assert attempt["pid"] != os.getpid() and attempt["attempt"] == 1   # it ran in a Ray worker


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path, ray_backend, caplog):
    """The worker of ``dice fold 1`` is killed after its first epoch's checkpoint; the retry (attempt 2)
    starts from that checkpoint, and the grid ends with the numbers of an uninterrupted local run."""
    config = _config(losses=("dice",), epochs=6, iterations_per_epoch=3)
    out = tmp_path / "ray"
    victim = out / "dice" / "fold1"
    killed = {}

    def kill_after_first_epoch():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            try:
                attempt = json.loads((victim / "attempt.json").read_text())
                epochs = len((victim / "history.csv").read_text().splitlines()) - 1
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            if attempt["attempt"] == 1 and epochs >= 1:
                os.kill(attempt["pid"], signal.SIGKILL)
                killed.update(attempt, epochs=epochs, history=(victim / "history.csv").read_text().splitlines())
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="spineloss.backends.ray"):
        run_experiment(config, out, progress=False, pictures=False, backend=ray_backend)
    killer.join(5)
    assert killed and killed["epochs"] < 6, "the worker was not killed mid-run"
    assert any("dice fold 1 failed" in r.message and "retrying it once" in r.message for r in caplog.records)
    assert json.loads((victim / "attempt.json").read_text())["attempt"] == 2
    history = (victim / "history.csv").read_text().splitlines()
    assert len(history) == 7
    # resumed: the epochs finished before the kill are the checkpoint's rows, wall times and all (a run
    # started over would have measured them again)
    assert history[:len(killed["history"])] == killed["history"]
    run_experiment(config, tmp_path / "local", progress=False, pictures=False)
    for k in (0, 1):
        assert json.dumps(_cases(out, "dice", k), sort_keys=True) == \
            json.dumps(_cases(tmp_path / "local", "dice", k), sort_keys=True)


def _fails_always(x, on_epoch_end=None):
    raise RuntimeError(f"no luck with {x}")


def _double(x, on_epoch_end=None):
    return 2 * x


def test_ray_reports_a_job_that_fails_twice_and_finishes_the_others(ray_backend, caplog):
    done, failed = [], []
    with caplog.at_level(logging.WARNING, logger="spineloss.backends.ray"):
        ray_backend.run_jobs([Job("bad", _fails_always, (1,)), Job("good", _double, (21,))], None,
                             lambda j, r: done.append((j.key, r)), lambda j, why: failed.append((j.key, why)))
    assert done == [("good", 42)]
    assert failed and failed[0][0] == "bad" and "no luck with 1" in failed[0][1]
    assert sum("bad failed" in r.message for r in caplog.records) == 2      # the retry, then giving up
    seen = []
    assert ray_backend.map(_double, [1, 2, 3], on_result=lambda i, r: seen.append((i, r))) == [2, 4, 6]
    assert seen == [(0, 2), (1, 4), (2, 6)]
    with pytest.raises(RuntimeError, match="failed twice"):
        ray_backend.map(_fails_always, [1])
    error = GridFailed({"dice fold 0": "boom"})
    assert "dice fold 0: boom" in str(error) and "run the same command again" in str(error)


@pytest.mark.slow
def test_a_loss_search_evaluates_on_ray(tmp_path, ray_backend, capsys):
    """``spineloss learn --backend ray`` scores the candidates in Ray tasks (the instance the fixture
    started is joined and left running) and finds what the local pool finds."""
    from spineloss.cli import main
    from spineloss.data.phantom import write_phantom_dataset
    data = write_phantom_dataset(tmp_path / "phantom", cases=4, shape=(24, 24, 24), seed=5)
    (tmp_path / "learn.toml").write_text(f"""
[experiment]
name = "tiny"
folds = 2
seed = 0
[data]
path = "{data}"
label_mode = "binary"
[model]
depth = 2
base_channels = 4
max_channels = 8
[training]
epochs = 1
iterations_per_epoch = 3
batch_size = 1
amp = "off"
threads = 1
[augment]
p_affine = 0.0
p_noise = 0.0
[learn]
workers = 1
val_fraction = 0.5
[learn.taylor]
generations = 1
population = 2
""")
    args = ["learn", "taylor", str(tmp_path / "learn.toml"), "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "ray"), "--backend", "ray"]) == 0
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()

    def rows(side):
        with open(tmp_path / side / "history.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    assert rows("ray") == rows("local") and len(rows("ray")) >= 2
    assert ray_backend._ray.is_initialized()          # the CLI left the fixture's instance alone


def test_the_ray_backend_names_the_extra_when_ray_is_missing(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ray", None)      # "import ray" now fails as if it were not installed
    with pytest.raises(ValueError, match=r"pip install 'spineloss\[ray\]'"):
        get_backend("ray")
    # and nothing else needs it: the CLI and the local grid import without Ray
    import subprocess
    import sys as _sys
    code = ("import sys; sys.modules['ray'] = None; import spineloss.cli, spineloss.experiment, spineloss.one_run; "
            "spineloss.cli.build_parser(); from spineloss.backends import get_backend; get_backend('local')")
    done = subprocess.run([_sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
