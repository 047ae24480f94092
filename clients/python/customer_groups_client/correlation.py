"""Matching what the service published to what the client waits for (no I/O).

An outcome is the first event whose `data.command_id` is the command's CloudEvent id,
never "the next event of some type": other nurses' commands, re-confirmations and
retirements are on the same topic. A prompt belongs to its `vaccination_id`. Delivery
is at least once, so an event id seen before is ignored.

The latest `capacity` outcomes and prompts are kept, so an answer that arrives before
anyone waits for it, or after a wait timed out, is found by the next wait (a retry
with the same command id returns it at once).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Generic, TypeVar

from customer_groups_client.envelope import Event
from customer_groups_client.models import (
    PROMPT,
    CommandRejected,
    Outcome,
    OutcomeTimeout,
    Prompt,
    Rejection,
)

K = TypeVar("K")
V = TypeVar("V")

_Key = tuple[str, str]  # ("command", command id) or ("prompt", vaccination id)
_Answer = Outcome | Prompt


class Recent(Generic[K, V]):
    """A mapping that keeps only the `capacity` most recently added keys."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._items: OrderedDict[K, V] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def values(self) -> list[V]:
        return list(self._items.values())


class Correlator:
    """Fed with every event read from the events and prompts topics; answers waits."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: Recent[str, None] = Recent(capacity * 2)
        self._outcomes: Recent[str, Outcome] = Recent(capacity)
        self._prompts: Recent[str, Prompt] = Recent(capacity)
        self._waiters: dict[_Key, list[asyncio.Future[_Answer]]] = {}
        self._subscribers: list[tuple[str, asyncio.Queue[Prompt | BaseException]]] = []
        self._failure: BaseException | None = None

    # -- feeding -------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """Take one event. Raises ValueError (leaving nothing changed) for one whose data
        does not parse; the caller skips it."""
        if event.id in self._seen:
            return
        if event.type == PROMPT:
            prompt = Prompt.from_event(event)
            self._seen.put(event.id, None)
            # The first prompt of a vaccination is the one; a re-sent one is the same.
            if prompt.vaccination_id not in self._prompts:
                self._prompts.put(prompt.vaccination_id, prompt)
            self._resolve(("prompt", prompt.vaccination_id), prompt)
            for unit_id, queue in self._subscribers:
                if unit_id == prompt.unit_id:
                    queue.put_nowait(prompt)
            return
        outcome = Outcome.from_event(event)
        self._seen.put(event.id, None)
        if outcome is None or outcome.command_id in self._outcomes:
            return  # answers no command, or not the first answer
        self._outcomes.put(outcome.command_id, outcome)
        self._resolve(("command", outcome.command_id), outcome)

    def fail(self, error: BaseException) -> None:
        """The reader stopped for good: every wait, now and later, raises `error`."""
        self._failure = error
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        for _unit, queue in self._subscribers:
            queue.put_nowait(error)

    def _resolve(self, key: _Key, answer: _Answer) -> None:
        for future in self._waiters.get(key, ()):
            if not future.done():
                future.set_result(answer)

    # -- waiting ---------------------------------------------------------------------

    def known_outcome(self, command_id: str) -> Outcome | None:
        return self._outcomes.get(command_id)

    def known_prompt(self, vaccination_id: str) -> Prompt | None:
        return self._prompts.get(vaccination_id)

    async def _first(self, keys: list[_Key]) -> _Answer:
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._waiters.setdefault(key, []).append(future)
        try:
            return await future
        finally:
            for key in keys:
                waiting = self._waiters.get(key, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._waiters.pop(key, None)

    async def _known_or_next(
        self, key: _Key, known: _Answer | None, what: str, timeout: float
    ) -> _Answer:
        try:
            async with asyncio.timeout(timeout):
                return known if known is not None else await self._first([key])
        except TimeoutError:
            raise OutcomeTimeout(what, timeout) from None

    async def outcome(self, command_id: str, timeout: float) -> Outcome:
        """The answer to the command (or registration) whose CloudEvent id is
        `command_id`; OutcomeTimeout when none came within `timeout` seconds."""
        known = self.known_outcome(command_id)
        what = f"command {command_id}"
        answer = await self._known_or_next(("command", command_id), known, what, timeout)
        assert isinstance(answer, Outcome)
        return answer

    async def prompt(self, vaccination_id: str, timeout: float) -> Prompt:
        """The prompt of `vaccination_id`; OutcomeTimeout when none came in time."""
        known = self.known_prompt(vaccination_id)
        what = f"vaccination {vaccination_id}"
        answer = await self._known_or_next(("prompt", vaccination_id), known, what, timeout)
        assert isinstance(answer, Prompt)
        return answer

    async def answer_to_start(
        self,
        start_id: str,
        vaccination_id: str,
        *,
        personnummer: str,
        unit_id: str,
        timeout: float,
    ) -> Prompt:
        """What answered a `vaccination.started`: its prompt, or CommandRejected when the
        start was refused (`command_id` = the start's id: a unit off the allowlist, a
        `vaccination_id` already used for another patient or unit). A prompt of the
        same vaccination id for another patient or unit is not this start's answer."""
        try:
            async with asyncio.timeout(timeout):
                keys: list[_Key] = [("prompt", vaccination_id), ("command", start_id)]
                while True:
                    answer: _Answer | None = self.known_outcome(start_id)
                    prompt = self.known_prompt(vaccination_id)
                    if answer is None and prompt is not None:
                        if (prompt.personnummer, prompt.unit_id) == (personnummer, unit_id):
                            return prompt
                        keys = [("command", start_id)]  # someone else's: wait for ours
                    if answer is None:
                        answer = await self._first(keys)
                    if isinstance(answer, Outcome):
                        rejection = answer.rejection or Rejection(
                            "UNEXPECTED_ANSWER", f"{answer.type} answered a start"
                        )
                        raise CommandRejected(start_id, rejection)
        except TimeoutError:
            raise OutcomeTimeout(f"the start of vaccination {vaccination_id}", timeout) from None

    # -- following -------------------------------------------------------------------

    def subscribe(self, unit_id: str, *, replay: bool) -> asyncio.Queue[Prompt | BaseException]:
        """A queue of the unit's prompts as they arrive (and, with `replay`, those kept
        since the client started reading)."""
        queue: asyncio.Queue[Prompt | BaseException] = asyncio.Queue()
        if replay:
            for prompt in self._prompts.values():
                if prompt.unit_id == unit_id:
                    queue.put_nowait(prompt)
        if self._failure is not None:
            queue.put_nowait(self._failure)
        self._subscribers.append((unit_id, queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Prompt | BaseException]) -> None:
        self._subscribers = [(u, q) for u, q in self._subscribers if q is not queue]
