"""The source root layout must not shadow the stdlib ``platform`` module."""

import importlib
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_platform_still_works():
    assert platform.python_version_tuple()[:2] == tuple(str(v) for v in sys.version_info[:2])  # the stdlib's
    assert Path(platform.__file__).parent != ROOT / "platform"
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_prism_imports_from_source_root():
    prism = importlib.import_module("prism")
    assert Path(prism.__file__).parent == ROOT / "platform" / "prism"
