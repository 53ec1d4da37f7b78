"""``train.placement_strategy``: validated in the config, handed to Ray Train's worker group unchanged.

Building the trainer starts nothing (no Ray): the ScalingConfig it holds is what ``fit()`` would place.
"""

import pytest

from prism.config import ConfigError, load_config
from prism.engine.driver import build_trainer
from tests.conftest import CIRCLES_JOB

STRATEGIES = ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


def test_default_packs_workers():
    assert load_config(CIRCLES_JOB).train.placement_strategy == "PACK"


@pytest.mark.parametrize(("given", "expected"), [
    *[(s, s) for s in STRATEGIES],
    ("strict_spread", "STRICT_SPREAD"),
    (" Spread ", "SPREAD"),
])
def test_strategy_names_are_case_insensitive(given, expected):
    assert load_config(CIRCLES_JOB, [f"train.placement_strategy={given}"]).train.placement_strategy == expected


@pytest.mark.parametrize("bad", ["spreadd", "EVERY_NODE", "1"])
def test_unknown_strategy_names_the_key_and_the_choices(bad):
    with pytest.raises(ConfigError) as err:
        load_config(CIRCLES_JOB, [f"train.placement_strategy={bad}"])
    message = str(err.value)
    assert "train.placement_strategy" in message
    assert all(f"'{s}'" in message for s in STRATEGIES), message


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trainer_places_its_worker_group_by_the_strategy(strategy, tmp_path):
    cfg = load_config(CIRCLES_JOB, ["train.num_workers=2", "train.cpus_per_worker=0.5",
                                    f"train.placement_strategy={strategy}", f"train.storage_path={tmp_path}"])
    scaling = build_trainer(cfg, {}).scaling_config
    assert scaling.placement_strategy == strategy
    assert (scaling.num_workers, scaling.resources_per_worker) == (2, {"CPU": 0.5})
