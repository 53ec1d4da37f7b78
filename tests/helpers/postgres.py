"""A throwaway PostgreSQL server for tests: Debian's server binaries, a fresh cluster in a temp folder,
listening on 127.0.0.1 only.

:func:`postgres_server` runs ``initdb`` into a new folder, starts the server with ``pg_ctl`` on a free
loopback port (its unix socket in the same folder, not in ``/var/run/postgresql``), waits until
``pg_isready`` answers, creates one database and yields its SQLAlchemy URI
``postgresql://prism:prism@127.0.0.1:<port>/prism``. On exit the server is stopped (``pg_ctl stop -m fast``)
and the folder removed.

PostgreSQL refuses to run as root. Run as root (CI is), the cluster belongs to Debian's ``postgres`` user and
every server command runs as that user (``runuser``); otherwise everything runs as the current user.

Without the server binaries (``/usr/lib/postgresql/<version>/bin``) the fixture **fails** rather than skips:
a registry test silently skipped in CI would hide that the feature is untested. ``make test`` installs
Debian's ``postgresql`` package where they are missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.ray_procs import free_port

__all__ = ["PG_DB", "PG_PASSWORD", "PG_USER", "find_bindir", "postgres_server"]

PG_USER = PG_DB = "prism"
PG_PASSWORD = "prism"
SYSTEM_USER = "postgres"  # Debian's account for the server, used when the tests run as root
READY_TIMEOUT_S = 60.0
_MISSING = ("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (initdb, pg_ctl, pg_isready); "
            "`make test` installs Debian's package (apt-get install postgresql), or install it yourself")


def find_bindir() -> Path | None:
    """The ``bin`` folder of the newest PostgreSQL under ``/usr/lib/postgresql``, else the folder of an
    ``initdb`` on ``PATH``; None when there is neither."""
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    candidates.sort(key=lambda d: _version_key(d.parent.name))
    if candidates:
        return candidates[-1]
    found = shutil.which("initdb")
    return None if found is None else Path(found).resolve().parent


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


class _Runner:
    """Runs the server's commands as the account that owns the cluster."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self.account = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                pytest.fail(f"running as root, but there is no {SYSTEM_USER!r} user to run PostgreSQL as "
                            "(Debian's postgresql package creates it; `make test` installs the package)")

    def own(self, path: Path) -> None:
        """Give ``path`` to the server's account (a no-op when not root)."""
        if self.as_root:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", SYSTEM_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return done


def _wait_ready(runner: _Runner, socket_dir: Path, port: int, log_file: Path) -> None:
    """Poll ``pg_isready`` on the loopback port until the server accepts connections."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    delay = 0.05
    while True:
        done = runner.run("pg_isready", "-h", "127.0.0.1", "-p", str(port), "-t", "2", check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            log = log_file.read_text() if log_file.exists() else "(no log)"
            raise TimeoutError(f"PostgreSQL on 127.0.0.1:{port} not ready after {READY_TIMEOUT_S:.0f}s "
                               f"(socket dir {socket_dir}); server log:\n{log[-4000:]}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a fresh PostgreSQL server on 127.0.0.1 and yield the SQLAlchemy URI of its one database.

    The user ``prism`` (password ``prism``) owns database ``prism``; TCP connections need the password
    (scram-sha-256), the unix socket in the temp folder is trusted. Fails the test (``pytest.fail``) when the
    server binaries are missing.
    """
    bindir = find_bindir()
    if bindir is None or not all((bindir / t).exists() for t in ("initdb", "pg_ctl", "pg_isready", "createdb")):
        pytest.fail(_MISSING)
    runner = _Runner(bindir)
    root = Path(tempfile.mkdtemp(prefix="prism-pg-", dir="/tmp"))  # short: the socket path must fit 107 bytes
    runner.own(root)
    data, log_file, pwfile = root / "data", root / "server.log", root / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    runner.own(pwfile)
    port = free_port()
    started = False
    try:
        runner.run("initdb", "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        runner.run("pg_ctl", "-D", str(data), "-l", str(log_file), "-o", options, "-w", "start")
        started = True
        _wait_ready(runner, root, port, log_file)
        runner.run("createdb", "-h", str(root), "-p", str(port), "-U", PG_USER, PG_DB)
        yield f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{PG_DB}"
    finally:
        if started:
            runner.run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
