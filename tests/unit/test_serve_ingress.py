"""The ingress switch without Ray: which environment each Serve process gets for ``--ingress haproxy``, and the
errors when it cannot be honoured."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from prism.config.schema import ConfigError
from prism.serve import AppArgs, load_serve_config, run_local
from prism.serve.app import BUILDER, DEPLOYMENT
from prism.serve.ingress import HAPROXY_RETRY_ON, haproxy_binary, haproxy_env, with_ingress
from tests.conftest import ROOT

CONFIG = ROOT / "serve_configs" / "circles.yaml"


@pytest.fixture
def fake_haproxy(tmp_path, monkeypatch):
    """An executable named haproxy, first on PATH."""
    binary = tmp_path / "bin" / "haproxy"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    return str(binary)


def test_haproxy_puts_its_environment_in_the_controller_and_the_replicas(fake_haproxy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    schema = load_serve_config(CONFIG, ingress="haproxy")
    env = haproxy_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_HAPROXY_BINARY_PATH"] == fake_haproxy
    assert env["RAY_SERVE_HAPROXY_RETRY_ON"] == HAPROXY_RETRY_ON
    controller_env = schema.controller_options.runtime_env["env_vars"]
    assert env.items() <= controller_env.items()
    # what the file already sets is kept: the proxy middleware of the default ingress stays configured
    assert controller_env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "prism.serve.proxy_retry:proxy_middlewares"
    (app,) = schema.applications
    (dep,) = app.deployments
    assert env.items() <= dep.ray_actor_options.runtime_env["env_vars"].items()
    assert dep.ray_actor_options.num_cpus == 1  # the rest of ray_actor_options is kept


def test_proxy_ingress_leaves_the_config_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    schema = load_serve_config(CONFIG)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in schema.controller_options.runtime_env["env_vars"]
    assert not schema.applications[0].deployments[0].ray_actor_options.runtime_env


def test_values_the_config_sets_win_and_other_apps_are_untouched(fake_haproxy):
    raw = yaml.safe_load(CONFIG.read_text())
    dep = raw["applications"][0]["deployments"][0]
    dep["ray_actor_options"]["runtime_env"] = {"env_vars": {"RAY_SERVE_HAPROXY_RETRIES": "1"}}
    other = {"name": "other", "import_path": "somewhere:app", "deployments": [{"name": DEPLOYMENT}]}
    raw["applications"].append(other)
    out = with_ingress(raw, "haproxy", BUILDER, DEPLOYMENT)
    assert out["applications"][0]["deployments"][0]["ray_actor_options"]["runtime_env"]["env_vars"][
        "RAY_SERVE_HAPROXY_RETRIES"] == "1"
    assert out["applications"][1] == other
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in str(raw["controller_options"])  # the input is not modified


def test_haproxy_without_the_binary_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="apt-get install haproxy"):
        haproxy_binary()
    monkeypatch.undo()
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="is not an executable file"):
        haproxy_binary()


def test_unknown_ingress_and_app_args_with_haproxy_are_config_errors(fake_haproxy):
    with pytest.raises(ConfigError, match="unknown ingress 'nginx'; choose one of proxy, haproxy"):
        with_ingress({}, "nginx", BUILDER, DEPLOYMENT)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a Serve config file"):
        run_local(AppArgs(), ingress="haproxy")
