"""Throwaway MLflow stores for tests: a fresh SQLite store, runs in it, and registered test models.

:func:`mlflow_store` points MLflow at ``sqlite:///<root>/mlflow.db`` and restores MLflow's global URIs
afterwards (creating a store takes ~2 s, so modules share one). :func:`registry` fills one with two
versions of a fabricated, loadable model for the Serve tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.bundles import fabricate_bundle

__all__ = ["MODEL_NAME", "PIP", "Registry", "Store", "mlflow_store", "new_run", "registry"]

MODEL_NAME = "circles-serve"
PIP = ["mlflow"]  # explicit and tiny: the tests never restore an environment


@dataclass(frozen=True)
class Store:
    """A SQLite store: its tracking URI, the folder holding ``mlflow.db`` and ``mlartifacts/``, an experiment."""

    uri: str
    workdir: Path
    experiment_id: str


@contextmanager
def mlflow_store(root: Path, experiment: str = "prism-unit") -> Iterator[Store]:
    """A fresh store in ``root`` with ``experiment`` created; MLflow's tracking/registry URIs restored after."""
    import mlflow

    from prism.tracking import configure_tracking, get_or_create_experiment

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setenv("MLFLOW_TRACKING_URI", "unused")  # so the context restores it: MLflow exports the URI
        mp.setenv("MLFLOW_REGISTRY_URI", "unused")
        uri = configure_tracking(f"sqlite:///{root}/mlflow.db")
        try:
            yield Store(uri, Path(root), get_or_create_experiment(experiment))
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def new_run(experiment_id: str, metric: str = "val/loss", value: float = 1.0) -> str:
    """A finished run with one metric; returns its id (what ``register_bundle(run_id=...)`` needs)."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric(metric, value)
    return run.info.run_id


@dataclass(frozen=True)
class Registry:
    """A SQLite MLflow store holding ``name`` v1 (champion) and v2 (registered, not promoted)."""

    tracking_uri: str
    bundles: dict[int, Path]
    name: str = MODEL_NAME

    @property
    def champion(self) -> str:
        return f"models:/{self.name}@champion"


@contextmanager
def registry(root: Path, name: str = MODEL_NAME, scores: tuple[float, ...] = (0.5, 0.6)) -> Iterator[Registry]:
    """One fabricated, loadable version of ``name`` per score, in a fresh store under ``root``.

    Version ``v`` has bundle seed ``v`` and ``val/macro_f1 = scores[v - 1]``; v1 holds ``champion``.
    """
    from prism.inference.publish import register_bundle
    from prism.tracking import promote_if_better

    with mlflow_store(root, "serve-tests") as store:
        bundles = {}
        for version, score in enumerate(scores, start=1):
            bundles[version] = fabricate_bundle(Path(root) / f"bundle-v{version}", seed=version)
            run_id = new_run(store.experiment_id, "val/macro_f1", score)
            mv = register_bundle(bundles[version], name, run_id=run_id, metric="val/macro_f1", value=score,
                                 mode="max", pip_requirements=PIP)
            assert int(mv.version) == version
        assert promote_if_better(name, 1)
        yield Registry(store.uri, bundles, name)
