"""``cluster.yaml``: valid for Ray's cluster launcher, and shaped the way Prism needs.

Schema validation runs the launcher's own offline steps — ``prepare_config`` (merge with the provider's
defaults, fill per-type worker bounds) then ``validate_config`` (``ray-schema.json`` plus the launcher's
cross-field checks) — exactly what ``ray up`` does before it calls the cloud. No cloud SDK, credentials or
network are needed.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


# (vCPUs, GPUs) of the AWS instance types cluster.yaml uses, from AWS's instance type pages.
AWS_INSTANCES = {"m5.2xlarge": (8, 0), "g5.2xlarge": (8, 1), "g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8),
                 "p4d.24xlarge": (96, 8)}


def _vcpus(instance_type: str) -> int:
    assert instance_type in AWS_INSTANCES, f"{instance_type}: add its vCPUs and GPUs to AWS_INSTANCES"
    return AWS_INSTANCES[instance_type][0]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def cfg(raw) -> dict:
    return copy.deepcopy(raw)


def _validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _head(cfg: dict) -> dict:
    return cfg["available_node_types"][cfg["head_node_type"]]


def _workers(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def _project_dir(cfg: dict) -> str:
    """The remote folder the repository's files are mounted under (``~/prism/uv.lock`` → ``~/prism``)."""
    remote = [r for r, local in cfg["file_mounts"].items() if local.lstrip("./") == "uv.lock"]
    assert len(remote) == 1, f"exactly one file mount must ship uv.lock: {cfg['file_mounts']}"
    return remote[0].rsplit("/", 1)[0]


def _pip_installed(cmd: str) -> list[str]:
    """Package names (and -e flags) a ``pip install`` / ``uv pip install`` in ``cmd`` installs."""
    names = []
    for segment in re.findall(r"pip install\s+([^;&|]*)", cmd):
        tokens = shlex.split(segment)
        skip = False
        for tok in tokens:
            if skip:
                skip = False
            elif tok in ("-e", "--editable"):
                names.append(tok)
            elif tok in ("--python", "-p", "-r", "--requirement", "-c", "--constraint", "--index-url"):
                skip = True
            elif not tok.startswith("-"):
                names.append(re.split(r"[<>=!~\[ ]", tok, maxsplit=1)[0].lower())
    return names


# --- Ray's own schema -------------------------------------------------------------------------------

def test_valid_for_ray_cluster_launcher(cfg):
    prepared = _validate(cfg)
    assert prepared["provider"]["type"] == "aws"


def test_misspelled_top_level_key_is_rejected(cfg):
    cfg["idle_timeout_minute"] = cfg.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        _validate(cfg)


def test_misspelled_node_type_key_is_rejected(cfg):
    worker = next(iter(_workers(cfg).values()))
    worker["min_worker"] = worker.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        _validate(cfg)


def test_unknown_head_node_type_is_rejected(cfg):
    cfg["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        _validate(cfg)


# --- What Prism needs ---------------------------------------------------------------------------------

def test_head_node_type_exists(cfg):
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_head_is_cpu_only_and_never_scaled(cfg):
    head = _head(cfg)
    assert head["resources"].get("GPU", 0) == 0
    # some CPU for drivers and Ray Data decode tasks, with vCPUs left over for GCS, MLflow and the proxy
    assert 0 < head["resources"]["CPU"] < _vcpus(head["node_config"]["InstanceType"])
    assert head.get("max_workers", 0) == 0 and head.get("min_workers", 0) == 0


def test_worker_types_have_gpus_and_scale_from_zero(cfg):
    workers = _workers(cfg)
    assert len(workers) >= 2, "expect a 1-GPU type and a multi-GPU type"
    gpus = sorted(w["resources"].get("GPU", 0) for w in workers.values())
    assert gpus[0] >= 1, f"every worker type declares GPUs in resources: {gpus}"
    assert gpus[0] == 1 and gpus[-1] >= 4, f"expect a 1-GPU type and a 4- or 8-GPU type: {gpus}"
    for name, w in workers.items():
        assert w["resources"].get("CPU", 0) >= 1, name
        vcpus, instance_gpus = AWS_INSTANCES[w["node_config"]["InstanceType"]]
        assert w["resources"]["CPU"] <= vcpus and w["resources"]["GPU"] == instance_gpus, name
        assert w.get("min_workers") == 0, f"{name}: GPU types must not idle (min_workers 0)"
        assert 1 <= w["max_workers"] <= cfg["max_workers"], name


def test_cluster_bounds_are_explicit(cfg):
    assert cfg["max_workers"] >= 1
    assert 0 < cfg["idle_timeout_minutes"] <= 60


def test_every_node_type_sets_its_image(cfg):
    # Without ImageId the AWS launcher falls back to an old Ubuntu 18.04 DLAMI whose driver cannot run
    # the CUDA wheels in uv.lock.
    for name, t in cfg["available_node_types"].items():
        assert t["node_config"].get("ImageId"), name


def test_project_files_uv_needs_are_shipped(cfg):
    # `uv sync --frozen` builds the project: pyproject.toml, the lockfile, the readme its metadata names
    # and the wheel's package folder must all be mounted, at their repository paths.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", "uv.lock", pyproject["project"]["readme"],
              *pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]]
    project = _project_dir(cfg)
    shipped = {local.removeprefix("./"): remote for remote, local in cfg["file_mounts"].items()}
    for rel in needed:
        covering = [s for s in shipped if rel == s or rel.startswith(s.rstrip("/") + "/")]
        assert covering, f"{rel} is needed by uv sync but not in file_mounts"
        src = covering[0]
        assert shipped[src] == f"{project}/{src}", f"{src} must land at {project}/{src}"


def test_file_mount_sources_exist(cfg):
    # `ray up` aborts on a missing local path; relative ones are resolved from the repository root.
    for remote, local in cfg["file_mounts"].items():
        if not local.startswith("~"):
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist"


def test_local_environment_is_not_shipped(cfg):
    # The launcher hashes and copies every mounted path: never the local .venv (GBs of torch/CUDA) or
    # the whole repository. Each node builds its own venv.
    for remote, local in cfg["file_mounts"].items():
        assert local.rstrip("/") not in (".", "", ".venv", "./.venv"), f"{remote}: {local}"
    assert "**/__pycache__" in cfg.get("rsync_exclude", [])


def test_token_is_shipped(cfg):
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_setup_installs_from_the_lockfile(cfg):
    setup = cfg["setup_commands"]
    mount = _project_dir(cfg)
    syncs = [c for c in setup if re.search(r"\buv sync\b", c)]
    assert syncs, "setup_commands must run uv sync"
    for c in syncs:
        assert "--frozen" in c, f"uv sync without --frozen re-resolves instead of using uv.lock: {c}"
        assert f"cd {mount}" in c, f"uv sync must run in the mounted project {mount}: {c}"
    assert any(re.search(r"pip install .*\buv\b", c) for c in setup), "uv is bootstrapped with pip"
    assert any(f"{mount}/.venv/bin" in c.replace("$HOME", "~") and "PATH" in c for c in setup), \
        "the project's venv bin (ray, prism, mlflow) must be on PATH"
    every = setup + cfg.get("head_setup_commands", []) + cfg.get("worker_setup_commands", [])
    extra = {name for c in every for name in _pip_installed(c)}
    assert not extra & {"ray", "prism", "torch", "-e", "--editable"}, \
        f"Ray, torch and Prism come from uv.lock, not from ad-hoc pip installs: {extra}"


def test_token_auth_stays_on(cfg):
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    for cmds in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmds
    every = yaml.safe_dump(cfg)
    assert "RAY_AUTH_MODE=disabled" not in every


def test_start_commands_agree_on_ports(cfg):
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    port = re.search(r"ray start --head\b.*?--port=(\d+)", head)
    assert port, head
    assert f"--address=$RAY_HEAD_IP:{port.group(1)}" in worker
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head


def test_mlflow_server_is_reachable_from_workers(cfg):
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    server = re.search(r"mlflow server\b.*?--host (\S+) --port (\d+)", head)
    assert server, "an MLflow tracking server on the head, listening beyond localhost"
    host, port = server.groups()
    assert f"MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:{port}" in worker
    # The head's URI is handed on to other nodes (Tune trial configs, Serve replica args): no loopback.
    head_uri = re.search(r"MLFLOW_TRACKING_URI=([^\s;]+)", head.split("mlflow server")[-1])
    assert head_uri and head_uri.group(1).endswith(f":{port}"), head
    assert not re.search(r"//(127\.0\.0\.1|localhost)\b", head_uri.group(1)), head_uri.group(1)
    # ... and the server listens on exactly the address that URI names (the head's private address).
    assert head_uri.group(1) == f"http://{host}:{port}", (host, head_uri.group(1))
    definitions = set(re.findall(rf"{re.escape(host.lstrip('$'))}=(\$\(.+?\))\s*(?:&&|;)", head))
    assert len(definitions) == 1, f"{host} must be computed the same way for MLflow and for Ray: {definitions}"


# --- Nothing listens on every interface without a login --------------------------------------------

_SEPARATORS = ";&|()<>"
# A bind value naming every interface: 0.0.0.0, :: or * alone, as host:port, or bracketed ([::]:5000).
_ALL_INTERFACES = re.compile(r"(?:^|[\s=\[])(?:0\.0\.0\.0|::|\*)(?:$|[\s\]:])")


def _commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for key in keys for c in cfg.get(key) or []]


def _binds_all_without_login(tokens: list[str]) -> bool:
    """Whether one simple command is ``mlflow server|ui`` on every interface without ``--app-name basic-auth``.

    MLflow binds 127.0.0.1 unless told otherwise; ``--host``/``-h`` and the server options strings
    (``--gunicorn-opts '-b 0.0.0.0:5000'``, ``--uvicorn-opts``) are read.
    """
    pairs = list(zip(tokens, tokens[1:], strict=False))
    if not any(a == "mlflow" and b in ("server", "ui") for a, b in pairs):
        return False
    values = [b for a, b in pairs if a in ("--host", "-h") or a.endswith("-opts")]
    values += [t.split("=", 1)[1] for t in tokens if t.startswith(("--host=", "--gunicorn-opts=", "--uvicorn-opts="))]
    opened = any(_ALL_INTERFACES.search(v) for v in values)
    return opened and ("--app-name", "basic-auth") not in pairs and "--app-name=basic-auth" not in tokens


def _open_mlflow_servers(commands: list[str]) -> list[str]:
    """Each simple command (split at ``;``, ``&&``, ``|``, ...) that opens MLflow to every interface."""
    found = []
    for command in commands:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=_SEPARATORS)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(_SEPARATORS):
                if _binds_all_without_login(segment):
                    found.append(" ".join(segment))
                segment = []
            else:
                segment.append(token)
    return found


def test_mlflow_is_not_open_on_all_interfaces_without_a_login(cfg):
    assert _open_mlflow_servers(_commands(cfg)) == []


@pytest.mark.parametrize(
    ("command", "open_"),
    [
        ("setsid nohup mlflow server --host 0.0.0.0 --port 5000 > log &", True),
        ("mlflow server --host=0.0.0.0", True),
        ("mlflow ui -h :: -p 5000", True),
        ("mlflow server --gunicorn-opts '-b 0.0.0.0:5000'", True),
        ("mlflow server --uvicorn-opts '--host 0.0.0.0'", True),
        ("mkdir -p x && mlflow server --host 0.0.0.0 --app-name basic-auth", False),
        ("mlflow server --host $HEAD_IP --port 5000", False),
        ("mlflow server --port 5000", False),  # MLflow's default host is 127.0.0.1
        ("curl http://0.0.0.0:5000/health; mlflow server --host 127.0.0.1", False),
    ],
)
def test_open_mlflow_check_catches_every_spelling(command, open_):
    assert bool(_open_mlflow_servers([command])) is open_
