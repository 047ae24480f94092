"""Small helpers shared by the local Kafka and PostgreSQL launchers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LOCALHOST = "127.0.0.1"


class InfraError(RuntimeError):
    """A local service could not be prepared, started or stopped."""


def repo_root() -> Path:
    """The checkout that holds this package (infra/ lives beside devinfra/)."""
    return Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """`${CUSTOMER_GROUPS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/customer-groups}`.

    Outside the git tree, so cached jars survive a fresh clone and never get committed.
    Empty variables count as unset, as with the shell's `:-`.
    """
    explicit = os.environ.get("CUSTOMER_GROUPS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "customer-groups"


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """Distinct free TCP ports; all sockets stay bound until every port is picked."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages; never raises."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


def run_coroutine_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    The launchers have a sync API but are also called from inside async tests (for example a
    broker restart in a fault test), where `asyncio.run` would refuse to nest. Then the
    coroutine runs on a private event loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())

    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=worker, name="devinfra-probe", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def pid_alive(pid: int) -> bool:
    """Whether pid names a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A killed process whose parent has not reaped it yet still answers kill(0).
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    return True
