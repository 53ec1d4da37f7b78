"""What the console shows: Prism's own lines and the warnings that matter; Ray's internal chatter goes to
Ray's log files.

Without this, every epoch of ``prism train`` is buried under Ray Train's per-report debug lines
(``Reporting training result …: TrainingReport(…)``, ``Checkpoint successfully created at …``, per worker)
and Ray Data's execution plans and progress lines. Nothing is lost: Ray Train's system log files and Ray
Data's ``ray-data.log`` (under the Ray session's ``logs/``) still get every record at DEBUG.

``verbose()`` (``prism -v …`` or ``PRISM_VERBOSE=1``) brings Ray's lines back to the console.

- Ray Train: ``RunConfig(logging_config=train_logging_config())`` filters ``ray.train`` records on the
  console and in the application log files of the controller and the workers.
- Ray Data: its logging config is read from ``RAY_DATA_LOGGING_CONFIG`` by every process that imports
  ``ray.data``; :func:`quiet_ray_data` points it at a config whose console handler shows WARNING and
  above, before Ray starts (local Ray workers inherit the driver's environment) and in the driver itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["VERBOSE_ENV", "quiet_ray_data", "quiet_train_worker", "set_verbose", "train_logging_config", "verbose"]

VERBOSE_ENV = "PRISM_VERBOSE"
RAY_DATA_CONFIG_ENV = "RAY_DATA_LOGGING_CONFIG"
RAY_DATA_QUIET_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")

log = logging.getLogger(__name__)


def verbose() -> bool:
    """Whether Ray's INFO lines should reach the console (``PRISM_VERBOSE`` set to 1/true/yes)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """Set ``PRISM_VERBOSE`` for this process and the Ray processes it starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def train_logging_config():
    """``ray.train.LoggingConfig``: WARNING on the console unless :func:`verbose`."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if verbose() else "WARNING")


def quiet_train_worker(verbose_: bool) -> None:
    """In a Ray Train worker: keep Ray Train's INFO records that bypass ``LoggingConfig`` off the console.

    Some of Ray Train's modules log under their file path (``logging.getLogger(__file__)``) rather than
    ``ray.train.*`` — among them the per-report ``Reporting training result …`` line — so the level filter
    of :func:`train_logging_config` does not see them; they propagate to the worker's root logger, which
    Ray Train sends to the console. Raising those loggers to WARNING keeps them in no handler at INFO; the
    records of ``ray.train.*`` still reach Ray Train's system log files.
    """
    if verbose_:
        return
    for name in list(logging.root.manager.loggerDict):
        if "/ray/train/" in name.replace("\\", "/"):
            logging.getLogger(name).setLevel(logging.WARNING)


def quiet_ray_data() -> None:
    """Keep Ray Data's INFO lines (execution plans, progress) off the console unless :func:`verbose`.

    A ``RAY_DATA_LOGGING_CONFIG`` the user set is left alone. Call before ``ray.init`` so that the local
    Ray's worker processes inherit it; it is also applied to this process at once.
    """
    if verbose() or os.environ.get(RAY_DATA_CONFIG_ENV):
        return
    os.environ[RAY_DATA_CONFIG_ENV] = str(RAY_DATA_QUIET_CONFIG)
    try:  # the driver may have imported ray.data already, with the default config
        from ray.data._internal.logging import configure_logging
    except ImportError:  # a Ray without this hook: its lines stay on the console
        log.debug("ray.data logging hook not found; Ray Data keeps its console lines")
        return
    configure_logging()
