"""The source root layout must not shadow the stdlib ``platform`` module."""

import importlib
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_platform_still_works():
    assert platform.system()  # stdlib function, not our folder
    assert Path(platform.__file__).parent != ROOT / "platform"
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_prism_imports_from_source_root():
    prism = importlib.import_module("prism")
    assert Path(prism.__file__).parent == ROOT / "platform" / "prism"
