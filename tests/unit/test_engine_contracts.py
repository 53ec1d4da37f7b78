"""The engine's generic contracts: the task-config union, model assembly with LoRA sites in the heads,
the plan checked against the built model, and result values that are not JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from prism.config import ConfigError, load_config
from prism.engine.model import build_model, check_plan
from prism.tasks.multihead.task import MultiHeadTask
from prism.tasks.outputs import BinaryOutput, encode_result, write_binary_outputs
from tests.conftest import CIRCLES_JOB, ROOT


def test_loading_and_printing_a_config_imports_no_torch():
    code = ("import sys; from prism.config import load_config, dump_config; "
            f"dump_config(load_config({str(CIRCLES_JOB)!r})); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_the_task_union_names_registered_tasks():
    with pytest.raises(ConfigError, match="unknown task 'multihed'; registered tasks: classify, detection, features, multihead, segment. Did you mean 'multihead'"):
        load_config(CIRCLES_JOB, ["task.name=multihed"])


def test_train_metric_defaults_to_the_tasks_metric():
    cfg = load_config(CIRCLES_JOB, ["train.metric=null", "train.mode=null"])
    assert (cfg.train.metric, cfg.train.mode) == ("val/macro_f1", "max")


def test_a_training_task_needs_stages_and_lr_keys_are_group_names():
    with pytest.raises(ConfigError, match="task 'multihead' trains: give stages"):
        load_config(CIRCLES_JOB, ["stages=[]"])
    with pytest.raises(ConfigError, match=r"unknown learning-rate group\(s\) \['heads'\]"):
        load_config(CIRCLES_JOB, ["stages.0.lr={heads: 1e-3}"])
    with pytest.raises(ConfigError, match=r"lora_sites \['decoder'\] are not configured; LoRA sites: \['backbone'\]"):
        load_config(CIRCLES_JOB, ["stages.1.lora_sites=[decoder]"])


class AttentionHeads(nn.Module):
    """Heads with an attention block (``q_proj`` … ``out_proj``), as SAM's mask decoder has, over the cls token."""

    def __init__(self, dim: int):
        super().__init__()
        self.decoder = nn.ModuleDict({n: nn.Linear(dim, dim) for n in ("q_proj", "k_proj", "v_proj", "out_proj")})
        self.out = nn.Linear(dim, 3)

    def forward(self, features, inputs):
        x = features["cls"]
        attn = self.decoder["q_proj"](x) * self.decoder["k_proj"](x)
        return {"presence": self.out(self.decoder["out_proj"](attn * self.decoder["v_proj"](x)))}


class SiteTask(MultiHeadTask):
    """The multi-head task with heads that offer a LoRA site ``decoder``."""

    def build_heads(self, backbone):
        return AttentionHeads(backbone.embed_dim)

    def lora_sites(self):
        from prism.tasks.base import HeadSite

        return {"decoder": HeadSite("decoder", ("q_proj", "k_proj", "v_proj", "out_proj"))}


SITES = ["lora.sites={decoder: {rank: 2}}", "backbone.name=dinov2_tiny", "backbone.img_size=28",
         "stages=[{kind: lora, epochs: 1, lora_sites: [decoder], lr: {head: 1e-3, lora.decoder: 1e-3}},"
         " {kind: lora, epochs: 1, lr: {head: 1e-3, lora: 1e-3}}]"]


def test_the_engine_builds_lora_sites_in_the_heads_and_stages_select_them():
    from prism.adapters import apply_stage, lora_sites

    cfg = load_config(CIRCLES_JOB, SITES)
    task = SiteTask(cfg)
    model = build_model(cfg, task)
    assert set(lora_sites(model)) == {"backbone", "decoder"}
    first = {g["name"] for g in apply_stage(model, cfg.stages[0])}
    assert first == {"head", "lora.decoder"}  # decoder LoRA only: backbone and its LoRA frozen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("heads.decoder.q_proj.lora_A" in n for n in trainable)
    assert not any(n.startswith("backbone.") for n in trainable)
    assert not any(n.startswith("heads.decoder.") and "lora_" not in n for n in trainable)  # base stays frozen
    assert {g["name"] for g in apply_stage(model, cfg.stages[1])} == {"head", "lora.backbone", "lora.decoder"}
    out = model({"image": torch.randn(2, 3, 28, 28)})
    assert out["presence"].shape == (2, 3)


def test_a_site_the_task_does_not_offer_is_refused():
    cfg = load_config(CIRCLES_JOB, ["lora.sites={decoder: {}}"])
    with pytest.raises(ValueError, match=r"lora.sites \['decoder'\]: task 'multihead' offers LoRA sites none"):
        build_model(cfg, MultiHeadTask(cfg))


def test_check_plan_fails_before_training_listing_the_models_groups():
    cfg = load_config(CIRCLES_JOB, ["stages.1.lr={head: 1e-3, lora.decoder: 1e-3}"])
    with pytest.raises(ValueError, match="lora.decoder") as err:
        check_plan(cfg, MultiHeadTask(cfg))
    assert "lora.backbone" in str(err.value)  # the groups this model has
    check_plan(load_config(CIRCLES_JOB), MultiHeadTask(load_config(CIRCLES_JOB)))  # the shipped plan passes


def test_binary_outputs_are_base64_in_json_and_files_for_the_cli(tmp_path):
    results = [{"image": "dir/a b.png", "mask": BinaryOutput(b"\x89PNG..."), "area": 3},
               {"image": "c.png", "area": 0, "parts": [BinaryOutput(b"x", "image/webp")]}]
    encoded = encode_result(results)
    assert encoded[0]["mask"] == {"media_type": "image/png", "base64": "iVBORy4uLg=="}
    json.dumps(encoded)
    written = write_binary_outputs(results, tmp_path / "preds")
    assert written[0]["area"] == 3 and written[0]["image"] == "dir/a b.png"
    mask = tmp_path / "preds" / "00000_a_b.mask.png"
    assert written[0]["mask"] == str(mask) and mask.read_bytes() == b"\x89PNG..."
    assert written[1]["parts"][0].endswith("00001_c.parts.0.webp")
    assert write_binary_outputs([{"image": "x", "n": 1}], tmp_path / "none") == [{"image": "x", "n": 1}]
    assert not (tmp_path / "none").exists()
