"""Which Ray ``prism`` commands use: the cluster in ``RAY_ADDRESS``, else a new local one — never a cluster
that happens to run on the same machine (a bare ``ray.init()`` would join one left by ``ray start``)."""

from __future__ import annotations

import pytest
import ray

from prism.runtime.ray_cluster import ensure_ray


@pytest.fixture
def init_calls(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr("prism.runtime.console.quiet_ray_data", lambda: None)
    return calls


def test_without_ray_address_a_new_local_ray_starts(monkeypatch, init_calls):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ensure_ray(num_cpus=2)
    assert init_calls == [{"address": "local", "num_cpus": 2, "log_to_driver": True}]


def test_ray_address_names_the_cluster_to_join(monkeypatch, init_calls):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    ensure_ray(num_cpus=2)  # a cluster's resources are its own: num_cpus is not passed
    assert init_calls == [{"address": "10.0.0.5:6379", "log_to_driver": True}]


def test_an_initialised_ray_is_kept(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init called again"))
    ensure_ray()
