"""Outcome matching (`Correlator`): a command's outcome is the event whose
`data.command_id` is its id, whatever else is on the topic and in whatever order."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from customer_groups_client import (
    Actor,
    CommandRejected,
    Correlator,
    Membership,
    Outcome,
    OutcomeTimeout,
    Prompt,
    decode,
    encode,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples"
PNR = "191212121212"


def example(type_: str, **data: Any) -> dict[str, Any]:
    """The published example of `type_` with a fresh id and `data` fields replaced."""
    event = copy.deepcopy(json.loads((EXAMPLES / f"{type_}.json").read_text(encoding="utf-8")))
    event["id"] = str(uuid.uuid4())
    event["data"].update(data)
    return dict(event)


def feed(correlator: Correlator, *events: dict[str, Any]) -> None:
    for event in events:
        correlator.add(decode(encode(event)))


async def test_the_outcome_is_the_event_naming_the_command_not_the_next_of_its_type() -> None:
    correlator = Correlator()
    waiting = asyncio.create_task(correlator.outcome("mine", 5))
    await asyncio.sleep(0)
    feed(
        correlator,
        example("customer_group.added", command_id="someone-elses"),
        # A re-confirmation after a membership change answers no command.
        example("customer_group.vaccination_groups_confirmed", command_id=None),
        example("customer_group.prompt"),
    )
    await asyncio.sleep(0)
    assert not waiting.done()
    ours = example("customer_group.added", command_id="mine")
    feed(correlator, ours)
    outcome = await waiting
    assert (outcome.command_id, outcome.event.id, outcome.accepted) == ("mine", ours["id"], True)
    assert isinstance(outcome.membership, Membership)


async def test_an_outcome_that_came_first_or_late_is_found_by_the_next_wait() -> None:
    correlator = Correlator()
    feed(correlator, example("customer_group.removed", command_id="early"))
    assert (await correlator.outcome("early", 1)).type == "customer_group.removed"
    with pytest.raises(OutcomeTimeout) as timed_out:
        await correlator.outcome("late", 0.05)
    assert isinstance(timed_out.value, TimeoutError)
    feed(correlator, example("customer_group.updated", command_id="late"))
    # The retry (same id) gets the answer at once.
    assert (await correlator.outcome("late", 0.05)).type == "customer_group.updated"


async def test_a_redelivered_event_changes_nothing_and_the_first_answer_stays() -> None:
    correlator = Correlator()
    first = example("customer_group.added", command_id="c1")
    feed(correlator, first, first)
    feed(correlator, example("customer_group.command_rejected", command_id="c1"))
    outcome = await correlator.outcome("c1", 1)
    assert outcome.event.id == first["id"] and outcome.accepted


async def test_a_rejection_carries_its_reason_code_and_raises_on_request() -> None:
    correlator = Correlator()
    feed(
        correlator,
        example("customer_group.command_rejected", command_id="c2", reason_code="ALREADY_ACTIVE"),
    )
    outcome = await correlator.outcome("c2", 1)
    assert not outcome.accepted and outcome.membership is None
    assert outcome.rejection is not None and outcome.rejection.reason_code == "ALREADY_ACTIVE"
    with pytest.raises(CommandRejected) as rejected:
        outcome.raise_for_rejection()
    assert (rejected.value.command_id, rejected.value.reason_code) == ("c2", "ALREADY_ACTIVE")


def test_outcomes_are_typed() -> None:
    updated = Outcome.from_event(decode(encode(example("customer_group.updated"))))
    assert updated is not None and updated.membership is not None and updated.previous
    assert (updated.previous.version, updated.membership.version) == (1, 2)
    assert updated.membership.valid_from == date(2026, 11, 26)
    assert updated.membership.created_by == Actor("nurse-42", "unit-1")
    confirmed = Outcome.from_event(
        decode(encode(example("customer_group.vaccination_groups_confirmed")))
    )
    assert confirmed is not None and confirmed.confirmation is not None
    assert confirmed.confirmation.basis == "registration"
    assert [m.group_code for m in confirmed.confirmation.memberships] == ["COVID_19"]
    assert confirmed.confirmation.missing_group is False
    prompt = Prompt.from_event(decode(encode(example("customer_group.prompt"))))
    assert prompt.required and prompt.historical_total == 1
    assert prompt.suggestions[0].reason == "REQUESTED_AT_BOOKING"
    assert prompt.catalog[0].subgroups[0].subgroup_code == "REKOMMENDERAD"
    # Unknown fields are ignored (forward compatibility).
    extra = example("customer_group.added", future_field={"x": 1})
    assert Outcome.from_event(decode(encode(extra))) is not None


async def test_a_start_is_answered_by_its_prompt_or_its_rejection() -> None:
    correlator = Correlator()
    waiting = asyncio.create_task(
        correlator.answer_to_start("s1", "v1", personnummer=PNR, unit_id="unit-1", timeout=5)
    )
    await asyncio.sleep(0)
    feed(correlator, example("customer_group.prompt", vaccination_id="v1", unit_id="unit-1"))
    prompt = await waiting
    assert prompt.vaccination_id == "v1"

    refused = asyncio.create_task(
        correlator.answer_to_start("s2", "v2", personnummer=PNR, unit_id="unit-9", timeout=5)
    )
    await asyncio.sleep(0)
    feed(
        correlator,
        example(
            "customer_group.command_rejected",
            command_id="s2",
            personnummer=None,
            reason_code="UNAUTHORIZED",
        ),
    )
    with pytest.raises(CommandRejected, match="UNAUTHORIZED"):
        await refused


async def test_another_patients_prompt_for_the_same_vaccination_id_is_not_the_answer() -> None:
    correlator = Correlator()
    feed(correlator, example("customer_group.prompt", vaccination_id="v1", unit_id="unit-1"))
    reused = asyncio.create_task(
        correlator.answer_to_start(
            "s3", "v1", personnummer="200001012384", unit_id="unit-1", timeout=5
        )
    )
    await asyncio.sleep(0.01)
    assert not reused.done()
    feed(
        correlator,
        example("customer_group.command_rejected", command_id="s3", reason_code="INVALID_COMMAND"),
    )
    with pytest.raises(CommandRejected, match="INVALID_COMMAND"):
        await reused
    with pytest.raises(OutcomeTimeout):
        await correlator.answer_to_start(
            "s4", "v-none", personnummer=PNR, unit_id="unit-1", timeout=0.05
        )


async def test_a_units_prompts_are_followed_each_once_and_no_other_units() -> None:
    correlator = Correlator()
    before = example("customer_group.prompt", vaccination_id="v0", unit_id="unit-1")
    feed(correlator, before)
    queue = correlator.subscribe("unit-1", replay=True)
    ours = example("customer_group.prompt", vaccination_id="v1", unit_id="unit-1")
    feed(
        correlator,
        example("customer_group.prompt", vaccination_id="v2", unit_id="unit-2"),
        ours,
        ours,  # delivered twice
    )
    assert [queue.get_nowait().vaccination_id for _ in range(queue.qsize())] == ["v0", "v1"]
    correlator.unsubscribe(queue)
    feed(correlator, example("customer_group.prompt", vaccination_id="v3", unit_id="unit-1"))
    assert queue.empty()
    assert correlator.subscribe("unit-1", replay=False).empty()


async def test_memory_is_bounded_and_a_stopped_reader_fails_every_wait() -> None:
    correlator = Correlator(capacity=2)
    for n in range(3):
        feed(correlator, example("customer_group.added", command_id=f"c{n}"))
    assert correlator.known_outcome("c0") is None
    assert correlator.known_outcome("c2") is not None
    waiting = asyncio.create_task(correlator.outcome("c9", 5))
    await asyncio.sleep(0)
    correlator.fail(RuntimeError("topic authorization failed"))
    with pytest.raises(RuntimeError, match="authorization"):
        await waiting
    with pytest.raises(RuntimeError, match="authorization"):
        await correlator.outcome("c10", 5)


def test_an_event_whose_data_does_not_parse_is_refused_and_changes_nothing() -> None:
    correlator = Correlator()
    broken = example("customer_group.added", command_id="c1")
    del broken["data"]["membership"]["valid_from"]
    with pytest.raises(KeyError):
        feed(correlator, broken)
    assert correlator.known_outcome("c1") is None
