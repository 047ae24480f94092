"""Exponential backoff with jitter, for waiting out database and broker outages, and
the one retry-forever loop built on it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Backoff:
    """Delays 0.1 s, 0.2 s, 0.4 s … capped at `cap`, each with ±20 % jitter.

    One instance per retry loop; `reset()` after a success.
    """

    base: float = 0.1
    cap: float = 5.0
    attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        delay: float = min(self.cap, self.base * (2.0**self.attempt))
        # Bounded: 2.0 ** 1024 overflows, i.e. after hours of one outage.
        self.attempt = min(self.attempt + 1, 64)
        return delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self.attempt = 0


def _always(_error: Exception) -> bool:
    return True


def _nothing(_error: Exception, _delay: float) -> None:
    return None


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retry_if: Callable[[Exception], bool] = _always,
    on_retry: Callable[[Exception, float], None] = _nothing,
) -> T:
    """`attempt()`'s result once it succeeds. After each failure `retry_if` does not
    refuse (it re-raises otherwise), `on_retry(error, delay)` runs (the caller's logging
    and metrics), then the loop sleeps `backoff.next_delay()`. Cancellation ends it."""
    while True:
        try:
            return await attempt()
        except Exception as error:
            if not retry_if(error):
                raise
            delay = backoff.next_delay()
            on_retry(error, delay)
            await asyncio.sleep(delay)
