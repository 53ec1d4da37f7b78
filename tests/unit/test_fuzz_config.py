"""Config overrides, fuzzed: any ``key=value`` list gives a valid JobConfig or a ConfigError naming the key.

``load_config(jobs/circles.yaml, overrides)`` with generated overrides: real dotted keys of the job (list
indices included) and made-up ones (unknown sections, out-of-range or non-ASCII indices, empty segments),
with values that are YAML scalars, flow lists and mappings, broken YAML, tags, anchors and aliases. Nothing
but a :class:`ConfigError` may escape (no ``yaml`` error, ``ValueError``, ``TypeError``, ``KeyError``,
``AttributeError``), and its message names the override's key, or the key the validation refused.
"""

from __future__ import annotations

import re
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prism.config import ConfigError, JobConfig, apply_overrides, load_config
from tests.conftest import CIRCLES_JOB

RAW = yaml.safe_load(CIRCLES_JOB.read_text())
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])


def dotted_keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a loaded job spec: sections, list items by index, leaves."""
    keys = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        key = f"{prefix}{k}"
        keys.append(key)
        keys += dotted_keys(v, key + ".")
    return keys


KEYS = dotted_keys(RAW)
segment = st.one_of(
    st.sampled_from(sorted({p for k in KEYS for p in k.split(".")})),  # names the job uses, in other places
    st.text(string.ascii_lowercase + "_", min_size=1, max_size=8),
    st.integers(0, 12).map(str),
    st.sampled_from(["", " ", "-1", "01", "²", "٣", "1e2", "0x1", "__class__", "task ", "é"]),
)
made_up_key = st.lists(segment, min_size=1, max_size=4).map(".".join)
key = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).flatmap(
    lambda k: segment.map(lambda s: f"{k}.{s}")), made_up_key)

scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12))
plain = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=6)
value = st.one_of(
    plain.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
    st.text(max_size=20),
    st.sampled_from(["[", "{a: ", "]", "a: b: c", "!!python/object:os.system ls", "*alias", "&a [1, *a]",
                     "|", ">\n x", "---", "? x", "%YAML 1.1", "!!binary AAAA", "!!set {a, b}", "2024-01-02",
                     "1_000", "0o17", ".inf", "-.nan", "~", "'", '"', "\t", "@x", "`x", "{a: 1, a: 2}",
                     "[" * 200 + "]" * 200]),
)
override = st.one_of(st.tuples(key, value).map("=".join), st.text(max_size=20))


def first_segment(item: str) -> str:
    return next((p for p in item.split("=", 1)[0].strip().split(".") if p), "")


def assert_names_the_key(message: str, items: list[str]) -> None:
    """An override's own error quotes it; a validation error names, per line, a key in a section that one of
    the overrides changed (the job spec alone is valid), or ``job`` for a rule across sections."""
    if message.startswith("override '"):
        assert any(message.startswith(f"override '{item}'") for item in items), message
        return
    keys = [m.group(1) for m in re.finditer(r"^  (.+?): ", message, re.MULTILINE)]
    assert keys, message
    touched = {first_segment(item) for item in items}
    for key in keys:
        assert key == "job" or key.split(".")[0] in touched, (items, message)


@FUZZ
@given(items=st.lists(override, min_size=1, max_size=3))
def test_overrides_give_a_config_or_a_config_error_naming_the_key(items):
    try:
        cfg = load_config(CIRCLES_JOB, items)
    except ConfigError as exc:
        assert_names_the_key(str(exc), items)
        return
    assert isinstance(cfg, JobConfig)


@FUZZ
@given(k=st.sampled_from(KEYS), v=plain)
def test_an_accepted_override_sets_the_value_it_spells(k, v):
    text = yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        out = apply_overrides(RAW, [f"{k}={text}"])
    except ConfigError:
        return
    node = out
    for part in k.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert yaml.safe_dump(node) == yaml.safe_dump(yaml.safe_load(text) if text else None)  # NaN-safe equality


@pytest.mark.parametrize(("item", "message"), [
    ("train.num_workers=[", "override 'train.num_workers=[': the value of train.num_workers is not valid YAML"),
    ("lora.rank=!!python/object:os.system ls", "the value of lora.rank is not valid YAML"),  # a tag safe_load refuses
    ("data.root=%YAML 1.1", "the value of data.root is not valid YAML"),
    ("stages.².epochs=1", "override 'stages.².epochs=1': 'stages.²' — index out of range (length 3)"),
    ("stages.0.lr.²=1", None),  # a mapping key, not an index: the lr group is refused by name
])
def test_overrides_that_escaped_as_other_errors_are_config_errors(item, message):
    with pytest.raises(ConfigError) as info:
        load_config(CIRCLES_JOB, [item])
    if message is not None:
        assert message in str(info.value)
    assert_names_the_key(str(info.value), [item])


@pytest.mark.parametrize(("item", "line"), [
    ("task.headz=1", "task.headz: unknown key (did you mean 'task.heads'?)"),
    ("task.heads.0.clases=[a]", "task.heads.0.clases: unknown key (did you mean 'task.heads.0.classes'?)"),
    ("task.heads.0=5", "task.heads.0: Input should be a valid dictionary"),
])
def test_errors_in_the_task_section_name_the_key_as_written(item, line):
    """pydantic puts the task's name in the error's location (``task.multihead.headz``); the key the user
    wrote has none, and the closest valid key is looked up in the served task's config."""
    with pytest.raises(ConfigError) as info:
        load_config(CIRCLES_JOB, [item])
    assert f"  {line}" in str(info.value)
