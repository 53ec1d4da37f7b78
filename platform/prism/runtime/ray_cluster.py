"""Connect to Ray: the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``), else a local one."""

from __future__ import annotations

import logging
import os

import ray

__all__ = ["ensure_ray"]

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
