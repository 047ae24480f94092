"""A service process under an orchestrator: served by uvicorn, ended with a non-zero
status after an error it cannot go on from, so that it is restarted.

Staying up and answering 503 instead would leave the process to a readiness probe that
only takes it out of a load balancer: nothing would restart it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

EXIT_FATAL = 70  # EX_SOFTWARE: an internal error; the orchestrator restarts the process
# A shutdown that hangs after a fatal error (a broker that no longer answers, say) must
# not keep the process up: it exits at once after this.
FATAL_SHUTDOWN_SECONDS = 30.0


class FatalStop:
    """Called once a pipeline can no longer go on: logs why and stops the server, whose
    `serve` then returns `EXIT_FATAL`. Without a server (a service run inside tests) it
    only records the reason."""

    def __init__(
        self, service: str, *, exit_after_seconds: float | None = FATAL_SHUTDOWN_SECONDS
    ) -> None:
        self._service = service
        self._server: Any = None
        self._exit_after = exit_after_seconds
        self._backstop: threading.Timer | None = None
        self.reason: str | None = None

    def attach(self, server: Any) -> None:
        self._server = server

    def __call__(self, reason: str, error: BaseException | None = None) -> None:
        if self.reason is not None:
            return
        self.reason = reason if error is None else f"{reason} ({type(error).__name__})"
        log.critical(
            "%s stops: %s; the process exits with status %d so that it is restarted "
            "(what was not committed is delivered again)",
            self._service,
            self.reason,
            EXIT_FATAL,
        )
        if self._server is not None:
            self._server.should_exit = True  # a graceful shutdown: offsets already due commit
            if self._exit_after is not None:
                self._backstop = threading.Timer(self._exit_after, os._exit, args=(EXIT_FATAL,))
                self._backstop.daemon = True
                self._backstop.start()

    def shut_down(self) -> None:
        """The server has stopped: no need for the backstop any more."""
        if self._backstop is not None:
            self._backstop.cancel()


def serve(app: Any, *, host: str, port: int, fatal: FatalStop) -> int:
    """Run `app` until a signal (status 0) or a fatal error (`EXIT_FATAL`)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    )
    fatal.attach(server)
    try:
        server.run()
    finally:
        fatal.shut_down()
    if fatal.reason is not None:
        log.critical("exiting with status %d: %s", EXIT_FATAL, fatal.reason)
        return EXIT_FATAL
    return 0


def running_consumers(broker: Any) -> list[Any]:
    """The aiokafka consumers of a FastStream broker's subscribers that run now."""
    return [
        subscriber.consumer
        for subscriber in broker.subscribers
        if getattr(subscriber, "running", False) and subscriber.consumer is not None
    ]
