"""Connect to Ray: the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``), else a local one."""

from __future__ import annotations

import logging
import os

import ray

__all__ = ["SUBMITTED_JOB_ENV", "alive_nodes", "ensure_ray", "is_submitted_job"]

SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in the environment of a ``ray job submit`` driver."""

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once: the running cluster when ``RAY_ADDRESS`` is set, an embedded local Ray otherwise.

    The local one is always new (``address="local"``): a bare ``ray.init()`` would silently join any
    cluster that ``ray start`` left running on this machine, someone else's jobs and resources included.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        from prism.runtime.console import quiet_ray_data

        quiet_ray_data()  # before ray.init: the local workers inherit this environment
        log.info("no RAY_ADDRESS: starting a local Ray in this process")
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True)


def is_submitted_job() -> bool:
    """Whether this process is the driver of a ``ray job submit`` job (its working folder is Ray's copy of the
    submitted ``--working-dir``, on the head, kept only for the Ray session)."""
    return SUBMITTED_JOB_ENV in os.environ


def alive_nodes() -> int:
    """Live nodes of the connected cluster (0 when Ray is not initialised)."""
    if not ray.is_initialized():
        return 0
    return sum(1 for node in ray.nodes() if node.get("Alive"))
