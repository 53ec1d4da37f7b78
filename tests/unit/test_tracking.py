"""prism.tracking against a throwaway SQLite store (one per module: creating one takes ~2 s)."""

from __future__ import annotations

import json
import logging
import math
import sys
import types
from pathlib import Path

import mlflow
import mlflow.artifacts
import pandas as pd
import pytest
import yaml
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from prism.tracking import (
    browse_command,
    configure_tracking,
    describe_model,
    flatten_params,
    get_or_create_experiment,
    log_epoch,
    log_figure,
    log_history_plots,
    log_resolved_config,
    promote_if_better,
    register_bundle,
    resolve_model_uri,
    set_alias,
    tag_stages,
)
from prism.tracking.plots import stage_spans

BUNDLE_FILES = {"backbone.json", "config.yaml", "labels.json", "weights.safetensors"}
EXPERIMENT = "prism-unit"
PIP = ["mlflow"]  # explicit and tiny: the tests never restore an environment

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def make_bundle(root: Path, tag: str) -> Path:
    """A fake bundle; ``tag`` is written into weights_sha256 so versions can be told apart."""
    bundle = root / f"bundle-{tag}"
    bundle.mkdir(parents=True)
    (bundle / "backbone.json").write_text(
        json.dumps({"name": "dinov2_tiny", "weights_sha256": f"sha-{tag}", "embed_dim": 48})
    )
    (bundle / "config.yaml").write_text("task: classify\n")
    (bundle / "labels.json").write_text(json.dumps(["cat", "dog"]))
    (bundle / "weights.safetensors").write_bytes(b"\x00" * 64)
    return bundle


def sha_of(bundle: Path) -> str:
    return json.loads((bundle / "backbone.json").read_text())["weights_sha256"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(uri, workdir, experiment_id) of a module-wide SQLite store; global MLflow state reset after."""
    workdir = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setenv("MLFLOW_TRACKING_URI", "unused")  # so the context restores it: MLflow exports the URI
        mp.setenv("MLFLOW_REGISTRY_URI", "unused")
        uri = configure_tracking(f"sqlite:///{workdir}/mlflow.db")
        yield uri, workdir, get_or_create_experiment(EXPERIMENT)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture
def tracking(store):
    configure_tracking(store[0])
    yield store
    while mlflow.active_run() is not None:
        mlflow.end_run()


def new_run(experiment_id: str) -> str:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("val/loss", 1.0)
    return run.info.run_id


# --------------------------------------------------------------------------------------------- store


def test_default_store_is_cwd_mlflow_db(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = configure_tracking()
    assert uri == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")  # absolute
    assert mlflow.get_tracking_uri() == uri
    assert mlflow.get_registry_uri() == uri


@pytest.mark.parametrize(
    ("arg", "env", "expected"),
    [
        (None, None, "sqlite:///{work}/mlflow.db"),
        (None, "sqlite:///{tmp}/env.db", "sqlite:///{tmp}/env.db"),
        ("sqlite:///{tmp}/arg.db", "sqlite:///{tmp}/env.db", "sqlite:///{tmp}/arg.db"),
        ("http://tracking:5000", None, "http://tracking:5000"),
    ],
)
def test_tracking_uri_precedence(tmp_path, monkeypatch, arg, env, expected):
    fill = {"tmp": tmp_path, "work": tmp_path / "work"}
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env.format(**fill))
    uri = configure_tracking(None if arg is None else arg.format(**fill), workdir=tmp_path / "work")
    assert uri == expected.format(**fill)
    assert mlflow.get_tracking_uri() == uri
    assert mlflow.get_registry_uri() == uri
    if uri.startswith("sqlite"):
        assert Path(uri.removeprefix("sqlite:///")).parent.is_dir()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:////data/runs/mlflow.db", "mlflow ui --backend-store-uri sqlite:////data/runs/mlflow.db"),
        ("sqlite:///mlflow.db", "mlflow ui --backend-store-uri sqlite:///{cwd}/mlflow.db"),
        (
            "sqlite:////data/my runs/mlflow.db",
            "mlflow ui --backend-store-uri 'sqlite:////data/my runs/mlflow.db'",
        ),
        ("postgresql://u@db/mlflow", "mlflow ui --backend-store-uri postgresql://u@db/mlflow"),
        ("http://tracking:5000", "http://tracking:5000"),
    ],
)
def test_browse_command(uri, expected):
    assert browse_command(uri) == expected.format(cwd=Path.cwd())


def test_experiment_artifacts_next_to_embedded_store(tracking):
    uri, workdir, experiment_id = tracking
    assert get_or_create_experiment(EXPERIMENT) == experiment_id
    location = mlflow.get_experiment(experiment_id).artifact_location
    assert location == str(workdir / "mlartifacts" / EXPERIMENT)
    odd = mlflow.get_experiment(get_or_create_experiment("team/odd name")).artifact_location
    assert odd == str(workdir / "mlartifacts" / "team_odd_name")
    with pytest.raises(ValueError, match="non-empty"):
        get_or_create_experiment(" ")


# ----------------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"a": 1}, {"a": "1"}),
        (
            {"lora": {"rank": 8, "targets": ["attn", "mlp"]}},
            {"lora.rank": "8", "lora.targets": '["attn", "mlp"]'},
        ),
        ({"x": {"y": {"z": None}}, "e": {}}, {"x.y.z": "None", "e": "{}"}),
        ({"s": [{"kind": "probe"}]}, {"s": '[{"kind": "probe"}]'}),
        ({"long": "x" * 7000}, {"long": "x" * MAX_PARAM_VAL_LENGTH}),
    ],
)
def test_flatten_params(cfg, expected):
    assert flatten_params(cfg) == expected


def test_resolved_config_round_trips(tracking):
    cfg = {
        "task": "classify",
        "backbone": {"name": "dinov2_tiny", "img_size": 56},
        "lora": {"rank": 4, "alpha": 8.0, "targets": ["attn"]},
        "stages": [
            {"name": "probe", "kind": "probe", "epochs": 1},
            {"name": "lora", "kind": "lora", "epochs": 2},
        ],
        "data": {"root": "/data/pets", "note": "é" * 7000},
    }
    with mlflow.start_run(experiment_id=tracking[2]) as run:
        log_resolved_config(cfg)
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/resolved.yaml")
    assert yaml.safe_load(text) == cfg
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["lora.rank"] == "4"
    assert params["backbone.name"] == "dinov2_tiny"
    assert json.loads(params["stages"]) == cfg["stages"]
    assert len(params["data.note"]) == MAX_PARAM_VAL_LENGTH


def test_epoch_metrics_history(tracking, caplog):
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=tracking[2]) as run:
        log_epoch(
            {"train/loss": 1.0, "val/presence/accuracy": 0.5}, epoch=0, stage_index=0, stage_name="probe"
        )
        log_epoch(
            {"train/loss": 0.8, "val/presence/accuracy": 0.6}, epoch=1, stage_index=0, stage_name="probe"
        )
        with caplog.at_level(logging.WARNING, logger="prism.tracking.runs"):
            logged = log_epoch(
                {"train/loss": math.nan, "val/presence/accuracy": 0.7},
                epoch=2,
                stage_index=1,
                stage_name="lora",
            )
    assert "train/loss" not in logged and "non-finite" in caplog.text
    run_id = run.info.run_id

    def history(key):
        return [
            (m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        ]

    assert history("val/presence/accuracy") == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert history("train/loss") == [(0, 1.0), (1, 0.8)]
    assert history("stage_index") == [(0, 0.0), (1, 0.0), (2, 1.0)]
    assert mlflow.get_run(run_id).data.tags["stage.current"] == "lora"


def test_stage_tags(tracking):
    stages = [
        {"name": "probe", "kind": "probe", "epochs": 2, "lr": {"head": 1e-3}},
        {"name": "lora", "kind": "lora", "epochs": 5},
    ]
    with mlflow.start_run(experiment_id=tracking[2]) as run:
        tag_stages(stages)
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert {k: v for k, v in tags.items() if k.startswith("stage.")} == {
        "stage.count": "2",
        "stage.0.name": "probe",
        "stage.0.kind": "probe",
        "stage.0.epochs": "2",
        "stage.1.name": "lora",
        "stage.1.kind": "lora",
        "stage.1.epochs": "5",
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda: log_resolved_config({"a": 1}),
        lambda: log_epoch({"a": 1.0}, 0, 0, "probe"),
        lambda: tag_stages([]),
        lambda: log_history_plots([{"epoch": 0, "train/loss": 1.0}]),
    ],
    ids=["config", "epoch", "stages", "plots"],
)
def test_run_helpers_need_an_active_run(tracking, call):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        call()
    assert mlflow.active_run() is None


def test_stage_spans():
    history = [
        {"epoch": e, "stage_index": s, "stage_name": n}
        for e, s, n in [(0, 0, "probe"), (1, 0, "probe"), (2, 1, "lora"), (3, 1, "lora"), (4, 2, "unfreeze")]
    ]
    assert stage_spans(history) == [(0, "probe", -0.5, 1.5), (1, "lora", 1.5, 3.5), (2, "unfreeze", 3.5, 4.5)]


def test_history_plots_are_png_artifacts(tracking, tmp_path):
    history = [
        {
            "epoch": e,
            "stage_index": s,
            "stage_name": n,
            "train/loss": 1.0 / (e + 1),
            "val/loss": 1.2 / (e + 1) if e != 1 else math.nan,
            "val/presence/accuracy": 0.5 + 0.1 * e,
        }
        for e, s, n in [(0, 0, "probe"), (1, 0, "probe"), (2, 1, "lora"), (3, 1, "lora")]
    ]
    with mlflow.start_run(experiment_id=tracking[2]) as run:
        paths = log_history_plots(history, ["val/presence/accuracy", "val/never_logged"])
    assert paths == ["plots/loss.png", "plots/val_presence_accuracy.png"]
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert listed == set(paths)
    local = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots", dst_path=tmp_path)
    )
    for path in paths:
        assert (local.parent / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_log_figure_closes_pyplot_figures(tracking):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with mlflow.start_run(experiment_id=tracking[2]) as run:
        log_figure(fig, "plots/custom.png")
    assert not plt.fignum_exists(fig.number)
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")] == [
        "plots/custom.png"
    ]


# ------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("mode", "steps"),
    [
        ("max", [(0.5, True), (0.4, False), (0.6, True), (0.6, False)]),
        ("min", [(0.5, True), (0.6, False), (0.4, True), (0.4, False)]),
    ],
)
def test_champion_promotion_table(tracking, tmp_path, mode, steps):
    name = f"prism-promote-{mode}"
    run_id = new_run(tracking[2])
    client = mlflow.MlflowClient()
    champion = None
    for i, (value, promoted) in enumerate(steps):
        mv = register_bundle(
            make_bundle(tmp_path, str(i)),
            name,
            run_id=run_id,
            metric="val/accuracy",
            value=value,
            mode=mode,
            pip_requirements=PIP,
        )
        assert int(mv.version) == i + 1
        assert promote_if_better(name, mv.version) is promoted, (mode, value)
        champion = mv.version if promoted else champion
        assert client.get_model_version_by_alias(name, "champion").version == champion
    assert promote_if_better(name, champion) is False  # already holds it


def test_register_bundle_tags_and_layout(tracking, tmp_path):
    _, workdir, experiment_id = tracking
    run_id = new_run(experiment_id)
    bundle = make_bundle(tmp_path, "layout")
    mv = register_bundle(
        bundle, "prism-layout", run_id=run_id, metric="val/loss", value=0.25, mode="min", pip_requirements=PIP
    )
    assert mv.run_id == run_id
    assert mv.source.startswith("models:/m-")  # MLflow 3: the version points at a LoggedModel
    tags = mlflow.MlflowClient().get_model_version("prism-layout", mv.version).tags
    assert tags == {
        "prism.metric": "val/loss",
        "prism.metric_value": "0.25",
        "prism.metric_mode": "min",
        "prism.backbone": "dinov2_tiny",
        "prism.weights_sha256": "sha-layout",
    }
    model_id = mv.source.removeprefix("models:/")
    stored = workdir / "mlartifacts" / EXPERIMENT / "models" / model_id / "artifacts"
    assert {"MLmodel", "python_model.pkl", "requirements.txt"} <= {p.name for p in stored.iterdir()}
    assert {p.name for p in (stored / "artifacts" / "bundle").iterdir()} == BUNDLE_FILES
    assert (stored / "requirements.txt").read_text().split() == PIP
    # the uv project of the current directory (this repo) is not copied into the model
    assert not {"uv.lock", "pyproject.toml"} & {p.name for p in stored.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == [bundle.name]  # staging folder cleaned up
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"  # resumed for logging, status restored
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]


def test_register_bundle_defaults(tracking, tmp_path):
    """A folder already named "bundle" is logged in place; requirements default to pinned versions."""
    bundle = make_bundle(tmp_path, "x").rename(tmp_path / "bundle")
    mv = register_bundle(
        bundle, "prism-defaults", run_id=new_run(tracking[2]), metric="m", value=1, mode="max"
    )
    model_dir = Path(
        mlflow.artifacts.download_artifacts(f"models:/prism-defaults/{mv.version}", dst_path=tmp_path / "dl")
    )
    assert {p.name for p in (model_dir / "artifacts" / "bundle").iterdir()} == BUNDLE_FILES
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert f"mlflow=={mlflow.__version__}" in requirements
    assert all("==" in r and "+" not in r for r in requirements)


def test_register_bundle_errors(tracking, tmp_path):
    bundle = make_bundle(tmp_path, "err")
    run_id = new_run(tracking[2])
    kwargs = {"run_id": run_id, "metric": "m", "value": 1.0, "mode": "max", "pip_requirements": PIP}
    with pytest.raises(ValueError, match="mode must be one of"):
        register_bundle(bundle, "prism-err", **{**kwargs, "mode": "best"})
    with pytest.raises(ValueError, match="not a directory"):
        register_bundle(tmp_path / "nope", "prism-err", **kwargs)
    with pytest.raises(ValueError, match="unknown run"):
        register_bundle(bundle, "prism-err", **{**kwargs, "run_id": "0" * 32})
    with mlflow.start_run(experiment_id=tracking[2]), pytest.raises(RuntimeError, match="is active"):
        register_bundle(bundle, "prism-err", **kwargs)


def test_promotion_needs_comparable_metric(tracking, tmp_path, caplog):
    run_id = new_run(tracking[2])
    first = register_bundle(
        make_bundle(tmp_path, "a"),
        "prism-metrics",
        run_id=run_id,
        metric="val/accuracy",
        value=0.9,
        mode="max",
        pip_requirements=PIP,
    )
    assert promote_if_better("prism-metrics", first.version)
    other = register_bundle(
        make_bundle(tmp_path, "b"),
        "prism-metrics",
        run_id=run_id,
        metric="val/f1",
        value=0.99,
        mode="max",
        pip_requirements=PIP,
    )
    with caplog.at_level(logging.WARNING, logger="prism.tracking.registry"):
        assert promote_if_better("prism-metrics", other.version) is False
    assert "not ranked on 'val/f1'" in caplog.text
    set_alias("prism-metrics", "champion", other.version)
    assert (
        mlflow.MlflowClient().get_model_version_by_alias("prism-metrics", "champion").version == other.version
    )
    with pytest.raises(ValueError, match=r"versions: \[1, 2\]"):
        set_alias("prism-metrics", "champion", 7)
    with pytest.raises(ValueError, match="reserved"):
        set_alias("prism-metrics", "latest", 1)


# -------------------------------------------------------------------------------- resolve / describe

RESOLVE_MODEL = "prism-resolve"


@pytest.fixture(scope="module")
def registered(store, tmp_path_factory):
    """Two versions of RESOLVE_MODEL (v2 is champion) and their bundles: (run_id, {version: bundle})."""
    configure_tracking(store[0])
    root = tmp_path_factory.mktemp("bundles")
    run_id = new_run(store[2])
    bundles = {}
    for value in (0.5, 0.7):
        bundle = make_bundle(root, str(value))
        mv = register_bundle(
            bundle,
            RESOLVE_MODEL,
            run_id=run_id,
            metric="val/accuracy",
            value=value,
            mode="max",
            pip_requirements=PIP,
        )
        promote_if_better(RESOLVE_MODEL, mv.version)
        bundles[int(mv.version)] = bundle
    return run_id, bundles


@pytest.mark.parametrize(
    ("uri", "version"),
    [
        (f"models:/{RESOLVE_MODEL}@champion", 2),
        (f"models:/{RESOLVE_MODEL}/1", 1),
        (f"models:/{RESOLVE_MODEL}/latest", 2),
        ("runs:/{run_id}/model", 2),  # MLflow resolves to the newest model logged under that name
        ("{model_dir}", 1),
        ("{bundle_dir}", 1),
    ],
)
def test_resolve_model_uri(tracking, registered, tmp_path, uri, version):
    run_id, bundles = registered
    if "{model_dir}" in uri:
        model_dir = mlflow.artifacts.download_artifacts(
            f"models:/{RESOLVE_MODEL}/1", dst_path=str(tmp_path / "dl")
        )
        uri = uri.format(model_dir=model_dir)
    uri = uri.format(run_id=run_id, bundle_dir=bundles[1])
    bundle = resolve_model_uri(uri, dst=tmp_path / "resolved")
    assert bundle.is_dir() and bundle.is_absolute()
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    assert sha_of(bundle) == sha_of(bundles[version])


def test_describe_model(tracking, registered, tmp_path):
    run_id, bundles = registered
    champion = describe_model(f"models:/{RESOLVE_MODEL}@champion")
    assert {
        k: champion[k]
        for k in (
            "name",
            "version",
            "aliases",
            "run_id",
            "metric",
            "metric_value",
            "metric_mode",
            "backbone",
            "weights_sha256",
        )
    } == {
        "name": RESOLVE_MODEL,
        "version": 2,
        "aliases": ["champion"],
        "run_id": run_id,
        "metric": "val/accuracy",
        "metric_value": 0.7,
        "metric_mode": "max",
        "backbone": "dinov2_tiny",
        "weights_sha256": sha_of(bundles[2]),
    }
    assert describe_model(f"models:/{RESOLVE_MODEL}/1")["aliases"] == []
    assert describe_model(f"runs:/{run_id}/model")["version"] == 2
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{RESOLVE_MODEL}/1", dst_path=str(tmp_path))
    assert describe_model(downloaded)["version"] == 1
    local = describe_model(str(bundles[1]))
    assert (local["name"], local["version"], local["weights_sha256"]) == (None, None, sha_of(bundles[1]))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"models:/{RESOLVE_MODEL}@staging", r"no alias 'staging'; aliases: champion -> v2"),
        (f"models:/{RESOLVE_MODEL}/9", r"no version '9'; versions: \[1, 2\]"),
        (
            "models:/no-such-model@champion",
            rf"no registered model 'no-such-model'; registered models: .*{RESOLVE_MODEL}",
        ),
        ("runs:/0123456789abcdef0123456789abcdef/model", "cannot download"),
        ("/no/such/dir", "no directory"),
    ],
)
def test_resolve_errors_list_what_exists(tracking, registered, uri, message):
    with pytest.raises(ValueError, match=message):
        resolve_model_uri(uri)


def test_resolve_rejects_non_bundle_dir(tmp_path):
    with pytest.raises(ValueError, match="neither a bundle"):
        resolve_model_uri(str(tmp_path))


# ------------------------------------------------------------------------------------------- pyfunc


class StubPredictor:
    def __init__(self, bundle: Path):
        self.bundle = bundle

    def predict(self, images):
        return [
            {"label": "cat", "score": 0.9, "input": type(x).__name__, "sha": sha_of(self.bundle)}
            for x in images
        ]

    def to_dataframe(self, predictions):
        return pd.DataFrame(predictions)


@pytest.fixture
def fake_predictor(monkeypatch):
    module = types.ModuleType("prism.predictor")
    module.loaded = []

    def load_predictor(bundle: Path) -> StubPredictor:
        module.loaded.append(bundle)
        return StubPredictor(bundle)

    module.load_predictor = load_predictor
    monkeypatch.setitem(sys.modules, "prism.predictor", module)
    return module


def test_pyfunc_round_trip(tracking, registered, fake_predictor, tmp_path):
    _, bundles = registered
    model = mlflow.pyfunc.load_model(f"models:/{RESOLVE_MODEL}@champion")
    (loaded,) = fake_predictor.loaded
    assert {p.name for p in loaded.iterdir()} == BUNDLE_FILES
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    out = model.predict(pd.DataFrame({"image": [str(image), image.read_bytes()]}))
    assert list(out["input"]) == ["str", "bytes"]
    assert set(out["sha"]) == {sha_of(bundles[2])}
    with pytest.raises(mlflow.exceptions.MlflowException, match="image"):
        model.predict(pd.DataFrame({"path": [str(image)]}))
