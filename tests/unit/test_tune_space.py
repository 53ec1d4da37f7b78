"""Search-space files: parsing, every distribution, validation against the job before any trial (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from prism.config import ConfigError, load_config
from prism.tune.space import DISTRIBUTIONS, apply_values, data_keys, load_space, parse_space, validate_space
from tests.conftest import CIRCLES_JOB, ROOT

TWO_STAGE_PLANS = [
    [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}, {"kind": "lora", "epochs": 2, "lr": {"head": 1e-3, "lora": 1e-3}}],
    [{"kind": "probe", "epochs": 2, "lr": {"head": 1e-3}}, {"kind": "lora", "epochs": 5, "lr": {"head": 1e-3, "lora": 1e-3}},
     {"kind": "unfreeze", "epochs": 1, "lr": {"head": 1e-3, "lora": 1e-3, "backbone": 1e-4}}],
]


@pytest.fixture
def base() -> dict:
    return load_config(CIRCLES_JOB).model_dump(mode="json")


def space(search: dict, **sections) -> dict:
    return {"search": search, **sections}


@pytest.mark.parametrize(
    ("spec", "kind", "values", "probes"),
    [
        ({"choice": [4, 8, 16]}, "choice", [4, 8, 16], [4, 8, 16]),
        ({"grid": [4, 8]}, "grid", [4, 8], [4, 8]),
        ({"uniform": [0, 0.3]}, "uniform", [0.0, 0.3], [0.0, 0.3]),
        ({"loguniform": [1e-4, 1e-2]}, "loguniform", [1e-4, 1e-2], [1e-4, 1e-2]),
        ({"randint": [1, 4]}, "randint", [1, 4], [1, 3]),  # high excluded, as in tune.randint
    ],
)
def test_every_distribution_parses_with_its_probe_values(spec, kind, values, probes):
    sp = parse_space(space({"lora.rank": spec}))
    (dim,) = sp.dimensions
    assert (dim.key, dim.kind, dim.values, dim.probes()) == ("lora.rank", kind, values, probes)


def test_dimensions_become_ray_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    sp = parse_space(space({"a": {"choice": [1, 2]}, "b": {"grid": [1, 2]}, "c": {"uniform": [0, 1]},
                            "d": {"loguniform": [1e-3, 1]}, "e": {"randint": [1, 3]}}))
    a, b, c, d, e = (dim.to_tune() for dim in sp.dimensions)
    assert isinstance(a, Categorical) and a.categories == [1, 2]
    assert b == {"grid_search": [1, 2]}
    assert isinstance(c, Float) and (c.lower, c.upper) == (0.0, 1.0)
    assert isinstance(d, Float) and type(d.sampler).__name__ == "_LogUniform"
    assert isinstance(e, Integer) and (e.lower, e.upper) == (1, 3)


@pytest.mark.parametrize("bad", [{"normal": [0, 1]}, 8, {"choice": [1], "grid": [2]}, "choice"])
def test_bad_distribution_lists_the_valid_ones(bad):
    with pytest.raises(ConfigError) as err:
        parse_space(space({"lora.rank": bad}))
    msg = str(err.value)
    assert "search.lora.rank" in msg
    assert all(name in msg for name in DISTRIBUTIONS)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"choice": []}, "non-empty list"),
        ({"grid": 4}, "non-empty list"),
        ({"uniform": [1, 0]}, "low < high"),
        ({"uniform": [0, 1, 2]}, "[low, high]"),
        ({"loguniform": [0, 1]}, "low > 0"),
        ({"randint": [1.5, 3]}, "integers"),
        ({"uniform": ["a", "b"]}, "[low, high]"),
    ],
)
def test_malformed_distribution_arguments(spec, expected):
    with pytest.raises(ConfigError, match="search.lora.rank") as err:
        parse_space(space({"lora.rank": spec}))
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"search": {}}, "at least one config key"),
        ({"sweep": {"num_samples": 2}}, "at least one config key"),
        ({"search": {"lora.rank": {"choice": [4]}}, "sweeps": {}}, "unknown section(s) ['sweeps']"),
        ({"search": {"lora.rank": {"choice": [4]}}, "sweep": {"num_samples": 0}}, "num_samples"),
        ({"search": {"lora.rank": {"choice": [4]}}, "sweep": {"asha": {"reduction_factor": 1}}}, "asha.reduction_factor"),
        ({"search": {"lora.rank": {"choice": [4]}}, "sweep": {"max_concurent_trials": 2}}, "did you mean 'max_concurrent_trials'"),
        ({"search": {"lora..rank": {"choice": [4]}}}, "dotted job-config paths"),
        ({"search": {"lora.rank": {"choice": [4]}}, "overrides": ["data.synthetic.n=90"]}, "'overrides' maps"),
        ([1, 2], "a mapping with sections"),
    ],
)
def test_bad_space_files(raw, expected):
    with pytest.raises(ConfigError) as err:
        parse_space(raw, source="s.yaml")
    assert expected in str(err.value) and "s.yaml" in str(err.value)


def test_unknown_config_key_fails_naming_it_and_the_closest_key(base):
    sp = parse_space(space({"lora.rank": {"choice": [4, 8]}, "lora.rnk": {"choice": [4]}}), source="s.yaml")
    with pytest.raises(ConfigError) as err:
        validate_space(sp, base)
    msg = str(err.value)
    assert "search key 'lora.rnk'" in msg
    assert "lora.rnk: unknown key (did you mean 'lora.rank'?)" in msg


@pytest.mark.parametrize(
    ("search", "key"),
    [
        ({"lora.rank": {"choice": [8, 0]}}, "lora.rank"),                     # rank >= 1
        ({"lora.dropout": {"uniform": [0.0, 1.5]}}, "lora.dropout"),          # upper end checked too
        ({"stages.5.lr.lora": {"loguniform": [1e-4, 1e-2]}}, "stages.5.lr.lora"),  # no stage 5
        ({"train.mode": {"choice": ["max", "maximum"]}}, "train.mode"),
        ({"lora.last_k": {"randint": [0, 3]}}, "lora.last_k"),
    ],
)
def test_impossible_values_fail_before_any_trial(base, search, key):
    with pytest.raises(ConfigError, match=f"search key '{key}'"):
        validate_space(parse_space(space(search)), base)


def test_nested_stage_plans_and_a_later_key_into_them(base):
    sp = parse_space(space({"stages": {"choice": TWO_STAGE_PLANS}, "stages.1.lr.lora": {"loguniform": [1e-4, 1e-2]},
                            "lora.rank": {"grid": [4, 8]}}))
    assert validate_space(sp, base) == 8  # longest plan a trial can get (2 + 5 + 1 epochs)
    cfg = load_config(raw=apply_values(base, [("stages", TWO_STAGE_PLANS[1]), ("stages.1.lr.lora", 3e-3)]))
    assert [s.kind for s in cfg.stages] == ["probe", "lora", "unfreeze"]
    assert cfg.stages[1].lr["lora"] == pytest.approx(3e-3)


def test_keys_that_interact_are_checked_together(base):
    one_stage = [[{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}]]
    sp = parse_space(space({"stages": {"choice": TWO_STAGE_PLANS + one_stage},
                            "stages.1.lr.lora": {"choice": [1e-3]}}))
    with pytest.raises(ConfigError, match="the combination stages=.*stages.1.lr.lora=0.001"):
        validate_space(sp, base)


def test_apply_values_round_trips_numpy_scalars_and_nested_values(base):
    out = apply_values(base, [("lora.rank", np.int64(16)), ("lora.alpha", np.float64(1e-5)),
                              ("task.tta", ["hflip"]), ("train.metric", "val/loss"), ("lora.last_k", None)])
    cfg = load_config(raw=out)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.task.tta, cfg.train.metric, cfg.lora.last_k) == (
        16, pytest.approx(1e-5), ["hflip"], "val/loss", None)
    assert base["lora"]["rank"] == 8  # not mutated


@pytest.mark.parametrize(
    ("key", "per_trial"),
    [("lora.rank", False), ("data.batch_size", False), ("stages", False), ("data.synthetic.n", True),
     ("data", True), ("backbone.img_size", True), ("backbone", True), ("task.heads", True),
     ("data.augment.hflip", True), ("train.cpus_per_worker", False)],
)
def test_keys_that_change_the_datasets(key, per_trial):
    sp = parse_space(space({key: {"choice": [1]}}))
    assert (data_keys(sp) == [key]) is per_trial


@pytest.mark.parametrize(("name", "job"), [("lora.yaml", CIRCLES_JOB), ("quick.yaml", CIRCLES_JOB),
                                         ("classify.yaml", ROOT / "jobs" / "sketches.yaml"),
                                         ("detect.yaml", ROOT / "jobs" / "shapes_detect.yaml"),
                                         ("segment.yaml", ROOT / "jobs" / "shapes_textseg.yaml")])
def test_shipped_spaces_validate_against_their_job(name, job):
    from prism.tune.sweep import sweep_config

    sp = load_space(ROOT / "tune_spaces" / name)
    cfg = sweep_config(job, sp)
    searched = {dim.key: dim for dim in sp.dimensions}
    plans = searched["stages"].values if "stages" in searched else [cfg.model_dump(mode="json")["stages"]]
    longest = max(sum(stage["epochs"] for stage in plan) for plan in plans)
    assert validate_space(sp, cfg.model_dump(mode="json")) == longest  # the epoch budget ASHA gets
    assert data_keys(sp) == []  # both share the datasets built once


def test_sweep_config_layers_overrides_and_metric(tmp_path):
    from prism.tune.sweep import sweep_config

    sp = parse_space(space({"lora.rank": {"choice": [4]}}, sweep={"metric": "val/loss", "mode": "min"},
                           overrides={"data.synthetic.n": 90, "backbone.img_size": 56}))
    cfg = sweep_config(CIRCLES_JOB, sp, ["backbone.img_size=70"])  # the command line wins over the space
    assert (cfg.data.synthetic.n, cfg.backbone.img_size) == (90, 70)
    assert (cfg.train.metric, cfg.train.mode) == ("val/loss", "min")


def test_space_overrides_with_a_bad_key_are_named(tmp_path):
    from prism.tune.sweep import sweep_config

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(space({"lora.rank": {"choice": [4]}}, overrides={"data.synthetic.nn": 90})))
    with pytest.raises(ConfigError, match="overrides do not make a valid job config") as err:
        sweep_config(CIRCLES_JOB, load_space(p))
    assert "data.synthetic.nn: unknown key (did you mean 'data.synthetic.n'?)" in str(err.value)


def test_sweep_never_targets_the_champion_alias():
    from prism.tune.sweep import sweep_config

    sp = parse_space(space({"lora.rank": {"choice": [4]}}, sweep={"alias": "champion"}))
    with pytest.raises(ConfigError, match="only proposes a candidate"):
        sweep_config(CIRCLES_JOB, sp)


def test_missing_and_invalid_space_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("search: {lora.rank: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(p)
