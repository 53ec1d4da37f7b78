"""prism.tracking.promotion_lock on the embedded SQLite store: which lock a store gets, the file lock's
exclusion (threads, processes, exceptions, timeouts), and promotions racing in threads staying serialized."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest

from prism.tracking.promotion_lock import LOCK_URI_ENV, lock_key, lock_kind, promotion_lock
from prism.tracking.registry import METRIC_MODE_TAG, METRIC_TAG, METRIC_VALUE_TAG, promote
from tests.helpers.promotion_race import METRIC, Record, check_history, promote_rounds, race_value

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

SHORT = 0.2  # seconds a lock attempt that must fail waits


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("sqlite:///mlflow.db", "file"),
        ("sqlite:////abs/path/mlflow.db", "file"),
        ("sqlite://", None),  # in memory: one process, nothing to serialize across
        ("postgresql://u:p@127.0.0.1:5432/mlflow", "postgresql"),
        ("postgresql+psycopg2://u:p@db.internal/mlflow?sslmode=require", "postgresql"),
        ("http://10.0.0.5:5000", None),
        ("https://mlflow.example.com", None),
        ("databricks", None),
        ("mysql+pymysql://u:p@db/mlflow", None),
    ],
)
def test_lock_kind_of_each_store(uri, kind):
    assert lock_kind(uri) == kind


def test_lock_key_is_a_bigint_per_model_and_alias():
    keys = {lock_key(m, a) for m in ("circles", "circles-v2", "c") for a in ("champion", "candidate")}
    assert len(keys) == 6
    assert all(-(2**63) <= k < 2**63 for k in keys)
    assert lock_key("circles", "champion") == lock_key("circles", "champion")
    assert lock_key("ab", "c") != lock_key("a", "bc")


def test_lock_uri_env_gives_a_tracking_server_a_lock(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCK_URI_ENV, raising=False)
    with promotion_lock("http://127.0.0.1:5000", "m", "champion") as kind:
        assert kind is None
    monkeypatch.setenv(LOCK_URI_ENV, f"sqlite:///{tmp_path}/locks.db")
    with promotion_lock("http://127.0.0.1:5000", "m", "champion") as kind:
        assert kind == "file"
        assert len(list((tmp_path / "locks.db.locks").glob("*.lock"))) == 1


def test_file_lock_excludes_other_holders_of_the_same_key_only(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    held, release = threading.Event(), threading.Event()

    def hold():
        with promotion_lock(uri, "m", "champion"):
            held.set()
            release.wait(30)

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(hold)
        assert held.wait(30)
        with pytest.raises(TimeoutError, match="promotion lock of 'm' alias 'champion'"), \
                promotion_lock(uri, "m", "champion", timeout_s=SHORT):
            pass
        with promotion_lock(uri, "m", "candidate", timeout_s=SHORT), promotion_lock(uri, "n", "champion",
                                                                                      timeout_s=SHORT):
            pass  # other alias, other model: not blocked
        release.set()
        holder.result()
    with promotion_lock(uri, "m", "champion", timeout_s=SHORT) as kind:
        assert kind == "file"


def test_file_lock_released_when_the_block_raises(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(KeyError), promotion_lock(uri, "m", "champion"):
        raise KeyError("boom")
    with promotion_lock(uri, "m", "champion", timeout_s=SHORT):
        pass


def _hold_forever(uri: str, held) -> None:
    with promotion_lock(uri, "m", "champion"):
        held.set()
        threading.Event().wait()


def test_file_lock_held_by_another_process_until_it_dies(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = multiprocessing.get_context("fork")  # the child has prism imported already: no start-up cost
    held = ctx.Event()
    child = ctx.Process(target=_hold_forever, args=(uri, held), daemon=True)
    child.start()
    try:
        assert held.wait(30)
        with pytest.raises(TimeoutError), promotion_lock(uri, "m", "champion", timeout_s=SHORT):
            pass
    finally:
        child.kill()  # no release by the child: the kernel drops a dead process's lock
        child.join(30)
    with promotion_lock(uri, "m", "champion", timeout_s=5):
        pass


def test_timeout_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="timeout_s must be > 0"), promotion_lock("sqlite:///x.db", "m", "a", 0):
        pass


def _version(client, model: str, value: float) -> str:
    """A version with ranking tags only (promotion reads nothing else)."""
    tags = {METRIC_TAG: METRIC, METRIC_VALUE_TAG: repr(value), METRIC_MODE_TAG: "max"}
    return str(client.create_model_version(model, source=f"file:///nowhere/{value}", tags=tags).version)


ROUNDS = 12


def test_promotions_racing_in_threads_are_serialized(tracking):
    """Two workers promote in lockstep, both beating the holder every round: on the SQLite store each
    promotion still compares against the version the previous one left (the file lock)."""
    client = mlflow.MlflowClient()
    model = "prism-race-sqlite"
    client.create_registered_model(model)
    plans = {w: [(_version(client, model, race_value(r, w)), race_value(r, w)) for r in range(ROUNDS)]
             for w in (0, 1)}
    barrier = threading.Barrier(2, timeout=60)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(promote_rounds, w, model, plans[w], barrier) for w in (0, 1)]
        records: list[Record] = [r for f in futures for r in f.result()]
    final = str(client.get_model_version_by_alias(model, "champion").version)
    chain = check_history(records, final)
    best = max((v for plan in plans.values() for v in plan), key=lambda vv: vv[1])
    assert final == best[0]
    # every round both beat the holder left by the round before: its first promotion always moves the alias
    assert len(chain) >= ROUNDS


def test_no_lock_store_warns_when_another_promotion_interleaved(tracking, monkeypatch, caplog):
    """Where the store has no lock, a move by another promoter right after this one's is reported."""
    from contextlib import contextmanager

    from prism.tracking import registry

    client = mlflow.MlflowClient()
    model = "prism-nolock"
    client.create_registered_model(model)
    first, second, third = (_version(client, model, v) for v in (0.1, 0.2, 0.3))
    assert promote(model, first).moved

    @contextmanager
    def no_lock(*_args, **_kwargs):
        yield None

    original = mlflow.MlflowClient.set_registered_model_alias

    def then_another(self, name, alias, version):
        original(self, name, alias, version)
        original(self, name, alias, third)  # what a racing promoter would do next

    monkeypatch.setattr(registry, "promotion_lock", no_lock)
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", then_another)
    with caplog.at_level(logging.WARNING, logger="prism.tracking.registry"):
        p = promote(model, second)
    assert (p.moved, p.previous, p.lock) == (True, first, None)
    assert f"moved to v{third} by another promotion right after this one moved it to v{second}" in caplog.text
