"""Backoff: capped delays, also after any number of attempts (an outage of hours)."""

from __future__ import annotations

from services.common.backoff import Backoff


def test_delays_grow_to_the_cap_and_stay_there() -> None:
    backoff = Backoff(base=0.1, cap=10.0)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert 0.08 <= delays[0] <= 0.12
    assert all(8.0 <= d <= 12.0 for d in delays[20:])
    backoff.reset()
    assert backoff.next_delay() <= 0.12
