"""Job specs: YAML + dotted overrides, strict validation with messages that name the key."""

import re
from pathlib import Path

import pytest
import yaml

from prism.config import ConfigError, apply_overrides, dump_config, load_config
from tests.conftest import CIRCLES_JOB, ROOT


def test_circles_job_loads_with_overrides():
    cfg = load_config(CIRCLES_JOB, ["train.num_workers=2", "stages.1.lr.lora=3e-4", "lora.rank=4"])
    assert cfg.train.num_workers == 2
    assert cfg.stages[1].lr["lora"] == pytest.approx(3e-4)
    assert cfg.lora.rank == 4
    assert [h.name for h in cfg.task.heads] == ["presence", "closure", "circularity"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.num_workrs=2", "train.num_workrs: unknown key (did you mean 'train.num_workers'?)"),
        ("backbone.img_sise=56", "did you mean 'backbone.img_size'"),
        ("stages.0.kind=finetune", "stages.0.kind"),
        ("train.num_workers=0", "train.num_workers"),
        ("stages.0.lr.head=-1", "stages.0.lr"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("lora=null", "lora stage but lora is null"),
        ("stages.1.lr={head: 1e-3}", "needs lr for ['lora']"),
        ("task.heads.1.only_when={presence: [circle]}", "not classes of 'presence'"),
        ("task.heads.0.classes=[a, na]", "'na'"),
        ("train.mode=maximum", "train.mode"),
        ("stages.0.frozen_blocks=2", "frozen_blocks is for unfreeze stages"),
    ],
)
def test_bad_values_fail_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(CIRCLES_JOB, [override])
    assert expected in str(err.value)


MALFORMED = {
    "novalue": "must look like key.path=value",
    "=3": "has an empty key",
    "stages.9.epochs=1": "out of range",
}


@pytest.mark.parametrize("override", list(MALFORMED))
def test_malformed_overrides(override):
    with pytest.raises(ConfigError, match=f"override '{re.escape(override)}'.*{MALFORMED[override]}"):
        load_config(CIRCLES_JOB, [override])


def test_apply_overrides_does_not_mutate_and_parses_yaml():
    raw = {"a": {"b": 1}, "l": [{"x": 1}]}
    out = apply_overrides(raw, ["a.b=2.5", "a.c=[1, 2]", "l.0.x=true", "new.key=hello"])
    assert raw == {"a": {"b": 1}, "l": [{"x": 1}]}
    assert out == {"a": {"b": 2.5, "c": [1, 2]}, "l": [{"x": True}], "new": {"key": "hello"}}


def test_dump_round_trips(tmp_path):
    cfg = load_config(CIRCLES_JOB, ["lora.last_k=1"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_unknown_train_metric_is_refused_before_training(circles_raw):
    from prism.config import JobConfig
    from prism.config.schema import ConfigError
    from prism.engine.driver import check_metric
    from prism.tasks import build_task

    cfg = JobConfig.model_validate({**circles_raw, "train": {**circles_raw["train"], "metric": "val/presence/acc"}})
    with pytest.raises(ConfigError, match="did you mean 'val/presence/accuracy'"):
        check_metric(cfg, build_task(cfg))
    for ok in ("val/loss", "train/loss", "val/closure/macro_f1"):
        check_metric(cfg.model_copy(update={"train": cfg.train.model_copy(update={"metric": ok})}), build_task(cfg))


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_job_specs_load_and_their_plans_fit_their_models(job, tmp_path, monkeypatch):
    from prism.config.extends import read_job_spec
    from prism.engine.model import check_plan
    from prism.tasks import build_task

    classes_file = (read_job_spec(job)["task"] or {}).get("classes_file")
    if classes_file and not Path(classes_file).is_absolute():  # written by a data step the job's comment names
        monkeypatch.chdir(tmp_path)
        (tmp_path / classes_file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / classes_file).write_text("\n".join(f"class_{i}" for i in range(275)) + "\n")
    cfg = load_config(job)
    check_plan(cfg, build_task(cfg))  # on the meta device: groups, learning rates, blocks


def test_a_spec_extends_another_merging_mappings_and_replacing_lists(tmp_path):
    base = yaml.safe_load(CIRCLES_JOB.read_text())
    (tmp_path / "specs").mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "specs" / "child.yaml").write_text(yaml.safe_dump({
        "extends": "../base.yaml", "lora": {"rank": 3}, "stages": [base["stages"][0]]}))
    cfg = load_config(tmp_path / "specs" / "child.yaml", ["lora.alpha=5"])
    assert (cfg.lora.rank, cfg.lora.alpha) == (3, 5.0)  # merged key by key, then overridden
    assert cfg.lora.last_k == load_config(CIRCLES_JOB).lora.last_k  # the rest of the section: the base's
    assert len(cfg.stages) == 1  # a list replaces the base's
    (tmp_path / "loop_a.yaml").write_text("extends: loop_b.yaml\n")
    (tmp_path / "loop_b.yaml").write_text("extends: loop_a.yaml\n")
    with pytest.raises(ConfigError, match="cycle: .*loop_a.yaml → .*loop_b.yaml → .*loop_a.yaml"):
        load_config(tmp_path / "loop_a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ConfigError, match="job spec not found: .*gone.yaml \\(extended by .*orphan.yaml\\)"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "two.yaml").write_text("extends: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match="extends must name one job spec file"):
        load_config(tmp_path / "two.yaml")


def test_the_voc_stage_jobs_grow_one_plan(tmp_path):
    """Stage N's job runs stages 1..N with stage N-1's stages unchanged (so it resumes from N-1's checkpoint),
    and all four share one model (the same LoRA sites): what a resumed run needs."""
    specs = [load_config(ROOT / "jobs" / f"voc_textseg_stage{n}.yaml") for n in range(1, 5)]
    for n, cfg in enumerate(specs, start=1):
        assert len(cfg.stages) == n
        assert cfg.model_dump(exclude={"stages"}) == specs[0].model_dump(exclude={"stages"})
        if n > 1:
            assert cfg.stages[:-1] == specs[n - 2].stages
    stage4 = specs[-1].stages
    assert stage4[0].lora_sites == ["decoder"] and stage4[0].kind == "lora"
    assert "backbone" in stage4[1].lora_sites and "decoder_final" in stage4[2].lora_sites
    assert stage4[3].kind == "unfreeze" and stage4[3].blocks == "all" and "backbone" not in stage4[3].lora_sites


def test_a_task_config_module_may_be_a_program_s_first_import():
    """``prism.config`` loads its names on first use: importing a task's config module first (it imports
    ``prism.config.schema``, and the job spec imports every task's config module) is not circular."""
    import subprocess
    import sys

    from prism.tasks.registry import _TASKS

    for entry in _TASKS.values():
        module, attr = entry.config.split(":")
        code = f"import sys; from {module} import {attr}; from prism.config import JobConfig; " \
               "assert 'torch' not in sys.modules"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (entry.name, out.stderr[-1500:])
