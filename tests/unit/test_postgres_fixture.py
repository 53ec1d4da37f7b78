"""The throwaway PostgreSQL server of the registry tests: where it finds Debian's binaries, and that missing
binaries fail the test (with the way to install them) instead of skipping it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import postgres


def test_missing_server_binaries_fail_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(postgres, "find_bindir", lambda: None)
    with pytest.raises(pytest.fail.Exception, match="`make test` installs"), postgres.postgres_server():
        pass


def test_newest_installed_version_is_used(monkeypatch):
    installed = ["/usr/lib/postgresql/9.6/bin/initdb", "/usr/lib/postgresql/15/bin/initdb",
                 "/usr/lib/postgresql/13/bin/initdb"]
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: installed)
    assert postgres.find_bindir() == Path("/usr/lib/postgresql/15/bin")
