"""Racing promotions: workers that promote (or register and promote) versions of one model in lockstep
rounds, and the check that the history they record is one a serialized registry could have produced.

Round ``r`` gives worker ``w`` the value :func:`race_value` ``(r, w)``: both values of a round beat every value
of earlier rounds, and which worker has the better one alternates. A :class:`Record` is what one
``prism.tracking.registry.promote`` call saw: the version holding the alias it compared against, and whether
it moved the alias. :func:`check_history` replays the records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["METRIC", "Record", "check_history", "promote_rounds", "race_value", "register_and_promote"]

METRIC = "val/macro_f1"


@dataclass(frozen=True)
class Record:
    worker: int
    round: int
    version: str
    value: float
    previous: str | None
    moved: bool


def race_value(round_: int, worker: int) -> float:
    """Worker ``worker``'s value in round ``round_``: above every value of earlier rounds; the better one of a
    round alternates between workers 0 and 1."""
    return round_ + 1 + (0.5 if (round_ + worker) % 2 else 0.25)


def promote_rounds(worker: int, model: str, versions: list[tuple[str, float]], barrier) -> list[Record]:
    """Promote ``versions[r]`` (registered already) in round ``r``, all workers starting a round together."""
    from prism.tracking.registry import promote

    records = []
    for round_, (version, value) in enumerate(versions):
        barrier.wait()
        p = promote(model, version)
        records.append(Record(worker, round_, p.version, value, p.previous, p.moved))
    return records


def register_and_promote(worker: int, tracking_uri: str, env: Mapping[str, str], model: str, experiment_id: str,
                         rounds: int, root: str, barrier, results) -> None:
    """What a training driver does after training, ``rounds`` times: register a bundle (a fake one, in its
    own MLflow run) with :func:`race_value`, wait for the other workers, promote. Runs in a spawned process
    (``env`` applied first); puts its records (as dicts) on ``results``, or ``{"error": ...}``."""
    import traceback

    os.environ.update(env)
    try:
        import mlflow

        from prism.inference.publish import register_bundle
        from prism.tracking import configure_tracking
        from prism.tracking.registry import promote
        from tests.helpers.bundles import make_bundle
        from tests.helpers.mlflow_store import PIP

        configure_tracking(tracking_uri)
        records = []
        for round_ in range(rounds):
            value = race_value(round_, worker)
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"racer{worker}-r{round_}") as run:
                mlflow.log_metric(METRIC, value)
            bundle = make_bundle(Path(root), f"w{worker}-r{round_}")
            mv = register_bundle(bundle, model, run_id=run.info.run_id, metric=METRIC, value=value, mode="max",
                                 pip_requirements=PIP)
            barrier.wait()
            p = promote(model, mv.version)
            records.append(asdict(Record(worker, round_, p.version, value, p.previous, p.moved)))
        results.put(records)
    except BaseException:  # the parent reports it; a silent child would look like a hang
        results.put({"error": traceback.format_exc()})
        barrier.abort()


def check_history(records: list[Record], final_holder: str, initial: str | None = None,
                  values: Mapping[str, float] | None = None) -> list[str]:
    """Replay the promotions; returns the winners in order (``initial`` first if given) or raises
    ``AssertionError`` saying how the history is not one a serialized registry produces.

    Serialized, every promotion compares against the version the last successful one left: the winners form
    one chain from ``initial`` (each names its predecessor as ``previous``, no two name the same one), each
    winner beats its predecessor, each loser compared against a chain member at least as good, and the chain
    ends at ``final_holder``. ``values`` gives the values of versions not in ``records`` (e.g. ``initial``).
    """
    value = {**(values or {}), **{r.version: r.value for r in records}}
    winners = [r for r in records if r.moved]
    after: dict[str | None, Record] = {}
    for r in winners:
        if r.previous in after:
            other = after[r.previous]
            raise AssertionError(
                f"v{other.version} (worker {other.worker}, {other.value}) and v{r.version} (worker {r.worker}, "
                f"{r.value}) both moved the alias away from v{r.previous}: two promotions compared against the "
                "same holder")
        after[r.previous] = r
    chain, holder = [], initial
    while holder in after:
        nxt = after.pop(holder)
        if holder is not None and not nxt.value > value[holder]:
            raise AssertionError(f"v{nxt.version} ({nxt.value}) replaced v{holder} ({value[holder]}) without "
                                 "beating it")
        chain.append(nxt.version)
        holder = nxt.version
    if after:
        raise AssertionError(f"promotions not reachable from v{initial} by replaying winners: "
                             f"{[asdict(r) for r in after.values()]}")
    if holder != str(final_holder):
        raise AssertionError(f"replaying the winners ends at v{holder}, but v{final_holder} holds the alias")
    members = {initial, *chain}
    for r in records:
        lost_against = None if r.moved or r.previous == r.version else r.previous
        if lost_against is not None and (lost_against not in members or value[lost_against] < r.value):
            raise AssertionError(f"v{r.version} ({r.value}) lost against v{lost_against} "
                                 f"({value.get(lost_against)}), which never held the alias or is worse")
    return ([initial] if initial is not None else []) + chain
