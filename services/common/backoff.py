"""Exponential backoff with jitter, for waiting out database and broker outages."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


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
