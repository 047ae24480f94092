"""Backoff: capped delays, also after any number of attempts (an outage of hours); the
retry-forever loop every waiting caller uses."""

from __future__ import annotations

import pytest

from services.common import backoff as backoff_module
from services.common.backoff import Backoff, retry_forever


def test_delays_grow_to_the_cap_and_stay_there() -> None:
    backoff = Backoff(base=0.1, cap=10.0)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert 0.08 <= delays[0] <= 0.12
    assert all(8.0 <= d <= 12.0 for d in delays[20:])
    backoff.reset()
    assert backoff.next_delay() <= 0.12


async def test_retry_forever_retries_until_success_and_reports_each_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []

    async def no_sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr(backoff_module.asyncio, "sleep", no_sleep)
    failures = [ConnectionError("down"), ConnectionError("still down")]
    retries: list[tuple[str, float]] = []

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    result = await retry_forever(
        attempt,
        backoff=Backoff(base=0.1, cap=10.0),
        on_retry=lambda error, delay: retries.append((str(error), delay)),
    )
    assert result == "done"
    assert [message for message, _ in retries] == ["down", "still down"]
    assert sleeps == [delay for _, delay in retries]
    assert 0.08 <= sleeps[0] <= 0.12 and 0.16 <= sleeps[1] <= 0.24


async def test_retry_forever_reraises_what_it_may_not_retry() -> None:
    async def attempt() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await retry_forever(
            attempt,
            backoff=Backoff(),
            retry_if=lambda error: isinstance(error, ConnectionError),
        )
