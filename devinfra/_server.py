"""The lifecycle `LocalKafka` and `LocalPostgres` share: a work directory they may own,
start / stop / kill / restart (also as coroutines), a context manager, and a stop at exit.

Subclasses say how their server starts, stops, dies and is seen running; this class says
when: a context manager that fails to start cleans up, and a server started here never
outlives this Python process.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Self

from devinfra._util import LOCALHOST


class LocalServer(abc.ABC):
    """A server process on 127.0.0.1 with its data in `workdir`.

    Port and data stay fixed for the object's life, so `restart()` (and `kill()` +
    `start()`) bring back the same server with its data. Without `workdir` a temporary
    directory is used and removed when the context manager exits (or by `close()`).
    """

    port: int

    def __init__(self, workdir: Path | None, *, prefix: str, startup_timeout: float) -> None:
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix=prefix)) if workdir is None else workdir
        ).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = startup_timeout
        self._atexit_registered = False

    @property
    @abc.abstractmethod
    def running(self) -> bool: ...

    @abc.abstractmethod
    def start(self) -> str:
        """Start the server (preparing its data on first use); returns its address."""

    @abc.abstractmethod
    def stop(self, timeout: float = 30.0) -> None:
        """Orderly shutdown, within `timeout`; the data stays for a later `start()`."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL, as in a crash; the data stays for a later `start()`."""

    def restart(self) -> str:
        """Stop and start again on the same port(s) and data directory."""
        self.stop()
        return self.start()

    # Async variants for fault tests whose clients run on the caller's event loop: the
    # blocking work happens in a thread so those clients keep running meanwhile.
    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def arestart(self) -> str:
        return await asyncio.to_thread(self.restart)

    def close(self) -> None:
        """Stop, and remove the directories this object created."""
        self.stop()
        if self._atexit_registered:
            atexit.unregister(self._atexit_stop)
            self._atexit_registered = False
        for path in self._owned_dirs():
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({LOCALHOST}:{self.port}, {state}, workdir={self.workdir})"

    def _owned_dirs(self) -> list[Path]:
        """Directories `close()` removes: the work directory if this object created it."""
        return [self.workdir] if self._owns_workdir else []

    def _stop_at_exit(self) -> None:
        """Called once the server runs: from then on it is stopped when Python exits."""
        if not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True

    def _atexit_stop(self) -> None:
        """Never leave a server behind (a JVM holding the ports, a daemonized postmaster)
        when the caller forgot to stop it."""
        if self.running:
            self.stop(timeout=10.0)
