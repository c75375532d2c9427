import pytest

from spineloss.experiment import config_from_dict, load_config, make_folds


def test_folds_are_seeded_disjoint_and_complete():
    ids = [f"case{i:02d}" for i in range(10)]
    a = make_folds(ids, 3, seed=0)
    assert a == make_folds(list(reversed(ids)), 3, seed=0)
    assert a != make_folds(ids, 3, seed=1)
    vals = [v for _, v in a]
    assert sorted(c for v in vals for c in v) == ids
    for train, val in a:
        assert not set(train) & set(val) and len(train) + len(val) == 10
    assert [len(v) for v in vals] == [4, 3, 3]
    with pytest.raises(ValueError, match="at least 3 cases"):
        make_folds(ids[:2], 3, 0)


def _raw(**over):
    raw = {"experiment": {"name": "t", "folds": 2, "seed": 3},
           "data": {"phantom": {"region": "lumbar", "cases": 4}},
           "losses": ["ce", {"name": "tv", "loss": "tversky", "params": {"alpha": 0.3}},
                      {"name": "mix", "loss": {"dice": 1.0, "ce": 0.5}}]}
    raw.update(over)
    return raw


def test_config_parsing():
    cfg = config_from_dict(_raw())
    assert [s.name for s in cfg.losses] == ["ce", "tv", "mix"]
    assert cfg.losses[1].loss == "tversky" and cfg.losses[1].params == {"alpha": 0.3}
    assert cfg.training.seed == 3  # the experiment seed reaches training


@pytest.mark.parametrize("over, match", [
    ({"data": {"path": "x", "phantom": {}}}, "exactly one"),
    ({"data": {"path": "x", "label_mode": "weird"}}, "label_mode"),
    ({"training": {"epochs": 0}}, "epochs"),
    ({"training": {"epoch": 3}}, "unknown key"),
    ({"model": {"depth": 4, "width": 3}}, "unknown key"),
    ({"losses": ["ce", "ce"]}, "unique"),
    ({"losses": []}, "names no loss"),
    ({"optimizer": {}}, "unknown config section"),
    ({"data": {"path": "x", "label_mode": "binary", "train_label_mode": "multiclass"}}, "train_label_mode"),
    ({"data": {"path": "x", "train_label_mode": "binary"}}, "number_levels = true"),
    ({"postprocess": {"number_levels": True}}, "number_levels needs"),
    ({"postprocess": {"caudal": 5}}, "unknown key"),
    ({"augment": {"rotation": [0.1, 0.2]}}, "one angle or three"),
])
def test_config_errors(over, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(_raw(**over))


def test_postprocess_and_foreground_network_config():
    cfg = config_from_dict(_raw(data={"path": "x", "train_label_mode": "binary"},
                                postprocess={"caudal_bodies": 5, "number_levels": True},
                                augment={"rotation": [0.1, 0.35, 0.1]}))
    assert cfg.data.network_label_mode == "binary" and cfg.data.label_mode == "multiclass"
    assert cfg.postprocess.active and cfg.postprocess.number_levels
    assert cfg.augment.rotation == (0.1, 0.35, 0.1)
    assert config_from_dict(_raw()).data.network_label_mode == "multiclass"
    assert not config_from_dict(_raw()).postprocess.active


def test_load_config_errors(tmp_path):
    with pytest.raises(ValueError, match="no such config"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiment\nname=")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[experiment]\nname = "x"\n[data]\npath = "d"\n[training]\nlr = -1\n')
    with pytest.raises(ValueError, match=r"wrong.toml: training.lr must be > 0"):
        load_config(wrong)


def test_readme_config_example_is_a_valid_config():
    """The TOML block under 'Config format' in the README parses into an ExperimentConfig."""
    import re
    import tomllib
    from pathlib import Path

    from spineloss.experiment import config_from_dict

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Config format"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    config = config_from_dict(tomllib.loads(block))
    assert config.model.bottleneck_blocks == 0 and config.augment.affine_padding == "minimum"
    assert config.losses and config.training.patch_size == (112, 112, 48)
    assert config.selection == "last" and config.inner_val_fraction == 0.2
    # every loss of the example builds and gives a finite value (the weighted sum with its distance maps)
    import torch

    from spineloss.losses.distance_maps import signed_distance_maps_torch
    logits = torch.randn(2, 6, 8, 8, 8, requires_grad=True)
    target = torch.randint(0, 6, (2, 1, 8, 8, 8))
    assert [s.name for s in config.losses][-1] == "dice_boundary"
    for spec in config.losses:
        loss = spec.build((2.0, 2.0, 2.0))
        if getattr(loss, "needs_distance_maps", False):
            value = loss(logits, target, dist_map=signed_distance_maps_torch(target, 6, spacing=(2.0, 2.0, 2.0)))
        else:
            value = loss(logits, target)
        assert torch.isfinite(value), spec.name


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")
                                        .glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path):
    """Each config in configs/ parses, its network builds for its patch size, and every loss builds."""
    from spineloss.model import build_model
    from spineloss.training import ModelConfig
    from dataclasses import asdict
    if path.name.startswith("learn_"):  # a loss search's config (spineloss learn), not an experiment's
        from spineloss.learning.config import load_learn_config
        with pytest.raises(ValueError, match="spineloss learn"):
            load_config(path)
        config = load_learn_config(path)
        build_model(in_channels=1, out_channels=2, **asdict(config.model))
        return
    config = load_config(path)
    model = build_model(in_channels=1, out_channels=2, **asdict(config.model))
    assert isinstance(config.model, ModelConfig)
    if config.training.patch_size is not None:
        assert all(p % model.divisor == 0 for p in config.training.patch_size), (config.training.patch_size,
                                                                                 model.divisor)
    from spineloss.learning.format import learned_path
    for spec in config.losses:
        missing = [t for t in ([spec.loss] if isinstance(spec.loss, str) else list(spec.loss))
                   if learned_path(t) is not None and not learned_path(t).exists()]
        if missing:   # a learned loss that bench/study_grids.sh writes first: the error says how to make it
            with pytest.raises(ValueError, match="no such learned-loss file.*spineloss learn"):
                spec.build((2.0, 2.0, 2.0))
            assert "spineloss learn" in path.read_text()
            continue
        spec.build((2.0, 2.0, 2.0))


def test_the_tuning_studies_reuse_the_baselines_fixed_runs():
    """configs/lumbar_{greedy,adaptive,learned}.toml tell users to copy the baseline's fixed-loss runs: their run
    records must equal the baseline's, so the copies are reused, not refused."""
    from pathlib import Path

    from spineloss.experiment import FoldSplit, config_differences, run_config
    configs = Path(__file__).resolve().parents[1] / "configs"
    base = load_config(configs / "lumbar_baseline.toml")
    split = FoldSplit(0, ("a", "b"), (), ("c",))
    for name, fixed in (("lumbar_greedy.toml", ("dice", "tversky", "asymmetric")),
                        ("lumbar_adaptive.toml", ("boundary", "hausdorff", "dice_ce")),
                        ("lumbar_learned.toml", ("dice", "dice_ce"))):
        other = load_config(configs / name)
        for loss in fixed:
            a = next(s for s in base.losses if s.name == loss)
            b = next(s for s in other.losses if s.name == loss)
            assert config_differences(run_config(base, a, split), run_config(other, b, split)) == [], (name, loss)
