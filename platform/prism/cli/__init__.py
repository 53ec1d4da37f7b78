"""The ``prism`` command (:mod:`prism.cli.main`) and the end-to-end demo (:mod:`prism.cli.demo`)."""

from prism.cli.main import main

__all__ = ["main"]
