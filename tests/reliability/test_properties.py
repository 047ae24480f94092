"""Hypothesis against the real handlers and the real inbound processor, on a real database.

- Commands: generated payloads (valid, nearly valid and arbitrary JSON) go through the
  groups service's own handlers in a unit of work that is committed; each must yield
  exactly one outgoing event, an effect or `command_rejected` with a contract reason code,
  answering that command, valid against the published JSON Schema; never an exception,
  never a dead letter.
- Records: generated batches of raw records (random bytes, JSON, CloudEvents of every
  type with arbitrary data) go through the inbound processor; every record is applied,
  recognised as a duplicate or dead-lettered with a specific code, never PROCESSING_ERROR,
  and no batch fails.

The tests are synchronous and run their own event loop, because hypothesis drives each
example; the engine lives on that loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from devinfra.provider import Infrastructure
from services.common.envelope import CloudEvent
from services.common.records import SourceRecord
from services.common.settings import (
    AppSettings,
    DatabaseSettings,
    GroupsSettings,
    KafkaSettings,
)
from services.groups.adapters import migrate
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.domain.errors import ERRORS_BY_REASON
from services.groups.service_layer import messages
from tests.integration.conftest import unique_topics
from tests.reliability.conftest import Check, Scale
from tests.reliability.model import ALLOWED_UNITS, FOREIGN_UNIT, make_personnummer
from tests.schema_validation import validate_event

EFFECT = {
    "customer_group.add": messages.ADDED,
    "customer_group.update": messages.UPDATED,
    "customer_group.remove": messages.REMOVED,
    "customer_group.prompt_close": messages.CONFIRMED,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


class Harness:
    """A GroupsService in this process (no broker, no relay) on its own event loop."""

    def __init__(self, infra: Infrastructure, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        suffix = uuid.uuid4().hex[:8]
        self.service = GroupsService(
            GroupsSettingsBundle(
                app=AppSettings(app_env="test"),
                kafka=KafkaSettings(bootstrap_servers=infra.kafka_bootstrap),
                topics=unique_topics(suffix),
                database=DatabaseSettings(database_url=database_url),
                groups=GroupsSettings(allowed_units=",".join(ALLOWED_UNITS)),
            )
        )
        self.topics = self.service.settings.topics
        self.people = [make_personnummer(random.Random(i)) for i in range(6)]
        self.memberships: dict[str, list[str]] = {}
        self.prompts: list[tuple[str, str, str]] = []  # prompt_id, vaccination_id, pnr
        self.last_outbox_id = 0
        self.offset = 0
        self.run(migrate.upgrade(self.service.engine))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self.service.engine.dispose())
        self.loop.close()

    def record(self, topic: str, value: bytes | None = None) -> SourceRecord:
        self.offset += 1
        return SourceRecord(topic, 0, self.offset, None, value, ())

    async def outgoing(self) -> list[tuple[str, bytes | None]]:
        """Outbox rows written since the last call."""
        async with self.service.engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT id, topic, value FROM outbox WHERE id > :last ORDER BY id"),
                    {"last": self.last_outbox_id},
                )
            ).all()
        if rows:
            self.last_outbox_id = rows[-1][0]
        return [(r[1], r[2]) for r in rows]

    async def handle(self, type_: str, data: Any, event_id: str) -> list[tuple[str, bytes]]:
        event = CloudEvent(event_id, "/tests/hypothesis", type_, datetime.now(UTC), data)
        item = self.service.bus.decode_event(self.record(self.topics.commands), event)
        async with self.service.new_uow() as uow:
            await self.service.bus.handle(item, uow)
            await uow.commit()
        return [(t, v) for t, v in await self.outgoing() if v is not None]

    async def start(self, personnummer: str) -> None:
        vaccination_id = f"vac-{uuid.uuid4()}"
        data = {
            "vaccination_id": vaccination_id,
            "unit_id": "unit-1",
            "user_id": "nurse-1",
            "personnummer": personnummer,
        }
        event = CloudEvent(str(uuid.uuid4()), "/t", "vaccination.started", datetime.now(UTC), data)
        item = self.service.bus.decode_event(self.record(self.topics.started), event)
        async with self.service.new_uow() as uow:
            await self.service.bus.handle(item, uow)
            await uow.commit()
        for _topic, value in await self.outgoing():
            prompt = json.loads(value or b"{}")["data"]
            self.prompts.append((prompt["prompt_id"], vaccination_id, personnummer))


@dataclass(frozen=True)
class MembershipOf:
    """Placeholder for one of a customer's memberships, resolved when the example runs."""

    personnummer: str
    index: int

    def resolve(self, harness: Harness) -> str:
        pool = harness.memberships.get(self.personnummer)
        return pool[self.index % len(pool)] if pool else str(uuid.UUID(int=self.index))


@st.composite
def commands(draw: st.DrawFn, harness: Harness) -> tuple[str, Any]:
    """Mostly well-formed commands about known customers, memberships and prompts (so
    every rule is reached), some with one field off, some arbitrary JSON."""
    type_ = draw(st.sampled_from(sorted(EFFECT)))
    mode = draw(st.integers(min_value=0, max_value=9))
    if mode == 9:
        return type_, draw(json_values)
    today = date.today()
    text = st.text(max_size=70)

    def pick(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
        """The valid value, or (mode 7-8, sometimes) an odd one."""
        return draw(odd) if mode >= 7 and draw(st.booleans()) else draw(valid)

    person = draw(st.sampled_from(harness.people))
    data: dict[str, Any] = {
        "personnummer": pick(st.just(person), st.one_of(st.text(max_size=14), st.integers())),
        "actor": {
            "user_id": pick(st.just("nurse-1"), text),
            "unit_id": draw(st.sampled_from([*ALLOWED_UNITS, *ALLOWED_UNITS, FOREIGN_UNIT])),
        },
    }
    days = st.dates(today - timedelta(days=800), today + timedelta(days=30)).map(date.isoformat)
    if type_ == "customer_group.add":
        groups = ["COVID_19", "INFLUENSA", "PNEUMOKOCK", "OVRIGT", "COVID", "NOPE"]
        data["group_code"] = pick(st.sampled_from(groups), st.one_of(text, st.integers()))
        if draw(st.booleans()):
            subgroups = ["REKOMMENDERAD", "ALDER_65_PLUS", "RESEVACCINATIONER", "NOPE"]
            data["subgroup_code"] = pick(st.sampled_from(subgroups), st.one_of(text, st.none()))
        if draw(st.booleans()):
            data["reference_code"] = pick(st.text(max_size=20), st.text(min_size=60, max_size=70))
        if draw(st.booleans()):
            data["valid_from"] = pick(days, text)
        if harness.prompts and draw(st.integers(0, 3)) == 0:
            prompts = [p for p, _, owner in harness.prompts if owner == person] or ["x"]
            data["prompt_id"] = pick(st.sampled_from(prompts), st.uuids().map(str))
    elif type_ in ("customer_group.update", "customer_group.remove"):
        # One of the customer's memberships, chosen when the example runs: a strategy
        # must not depend on state that grows while the test runs.
        data["membership_id"] = pick(
            st.builds(MembershipOf, st.just(person), st.integers(0, 10**6)),
            st.one_of(text, st.uuids().map(str)),
        )
        if type_ == "customer_group.update":
            if draw(st.booleans()):
                data["subgroup_code"] = pick(
                    st.sampled_from(["ALDER_65_PLUS", "RESEVACCINATIONER", "NOPE"]), st.none()
                )
            if draw(st.integers(0, 3)) > 0:
                data["reference_code"] = pick(st.one_of(st.none(), st.text(max_size=20)), text)
        elif draw(st.booleans()):
            data["valid_to"] = pick(days, text)
    else:
        prompt_id, vaccination_id, owner = draw(st.sampled_from(harness.prompts))
        data["personnummer"] = pick(st.just(owner), st.just(person))
        data["prompt_id"] = pick(st.just(prompt_id), st.one_of(st.uuids().map(str), text))
        data["vaccination_id"] = pick(st.just(vaccination_id), text)
    if mode == 8 and draw(st.booleans()):
        del data[draw(st.sampled_from(sorted(data)))]
    return type_, data


def test_generated_commands_yield_exactly_one_answer(
    infra: Infrastructure, database_url: str, scale: Scale, check: Check
) -> None:
    harness = Harness(infra, database_url)
    tally: dict[str, int] = {}
    try:
        for person in harness.people:
            harness.run(harness.start(person))

        @settings(
            max_examples=scale.hypothesis_examples,
            deadline=None,
            database=None,  # the examples change the database: a replay means nothing
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.data())
        def one(data: st.DataObject) -> None:
            type_, payload = data.draw(commands(harness))
            if isinstance(payload, dict) and isinstance(payload.get("membership_id"), MembershipOf):
                payload["membership_id"] = payload["membership_id"].resolve(harness)
            event_id = str(uuid.uuid4())
            out = harness.run(harness.handle(type_, payload, event_id))
            assert {topic for topic, _ in out} <= {harness.topics.events}
            sent = [json.loads(value) for _, value in out]
            answers = [e for e in sent if e["data"]["command_id"] == event_id]
            assert len(answers) == 1, f"{len(answers)} answers to one command: {out}"
            event = answers[0]
            # Besides its answer, a membership change may confirm doses again.
            for again in (e for e in sent if e is not event):
                assert again["type"] == messages.CONFIRMED and again["data"]["command_id"] is None
                assert event["type"] in (messages.ADDED, messages.UPDATED, messages.REMOVED)
                validate_event(again)
            assert event["type"] in (EFFECT[type_], messages.REJECTED), event["type"]
            validate_event(event)
            name = event["data"].get("reason_code") or event["type"].rsplit(".", 1)[-1]
            tally[name] = tally.get(name, 0) + 1
            if event["type"] == messages.REJECTED:
                assert event["data"]["reason_code"] in ERRORS_BY_REASON
            elif event["type"] == messages.ADDED:
                harness.memberships.setdefault(event["data"]["personnummer"], []).append(
                    event["data"]["membership"]["membership_id"]
                )

        one()
    finally:
        check.record(
            "handler_properties",
            "Hypothesis: generated commands through the real handlers",
            summary={
                "inputs": sum(tally.values()),
                "bad_inputs": sum(n for k, n in tally.items() if k.isupper()),
            },
            examples=sum(tally.values()),
            answers=dict(sorted(tally.items())),
        )
        harness.close()
    assert sum(tally.values()) >= scale.hypothesis_examples // 2
    assert len(tally) >= 8, tally


@st.composite
def raw_records(draw: st.DrawFn, harness: Harness) -> SourceRecord:
    topic = draw(st.sampled_from(list(harness.topics.inbound)))
    types = [t for by_type in harness.service.bus.types.values() for t in by_type]
    kind = draw(st.integers(0, 3))
    value: bytes | None
    if kind == 0:
        value = draw(st.none() | st.binary(max_size=200))
    elif kind == 1:
        value = json.dumps(draw(json_values)).encode()
    else:
        event = {
            "specversion": "1.0",
            "id": draw(st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=20))),
            "source": "/tests/hypothesis",
            "type": draw(st.one_of(st.sampled_from(types), st.text(max_size=20))),
            "time": datetime.now(UTC).isoformat(),
            "data": draw(json_values),
        }
        if kind == 3:
            event["data"] = {
                "personnummer": draw(st.sampled_from(harness.people)),
                "customer": {"personnummer": draw(st.sampled_from(harness.people))},
                "booking_id": draw(st.text(max_size=10)),
                "vaccination_id": draw(st.text(max_size=10)),
                "prompt_id": draw(st.one_of(st.uuids().map(str), st.text(max_size=10))),
                "actor": {"user_id": "u", "unit_id": draw(st.sampled_from(ALLOWED_UNITS))},
                "extra": draw(json_values),
            }
        value = json.dumps(event, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return harness.record(topic, value)


def test_generated_records_through_the_inbound_processor(
    infra: Infrastructure,
    database_url: str,
    scale: Scale,
    check: Check,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Harness(infra, database_url)
    totals = {"records": 0, "processed": 0, "duplicates": 0, "dead_lettered": 0}
    codes: dict[str, int] = {}
    try:

        @settings(
            max_examples=scale.hypothesis_examples,
            deadline=None,
            database=None,  # the examples change the database: a replay means nothing
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(raw_records(harness), min_size=1, max_size=8))
        def one(records: list[SourceRecord]) -> None:
            outcome = harness.run(harness.service.processor.process(records))
            assert outcome.processed + outcome.duplicates + outcome.dead_lettered == len(records)
            for name in ("processed", "duplicates", "dead_lettered"):
                totals[name] += getattr(outcome, name)
            totals["records"] += len(records)
            for _topic, _value in harness.run(harness.outgoing()):
                pass

        with caplog.at_level(logging.ERROR, logger="services.groups.service_layer.inbound"):
            one()

        async def dead_letter_codes() -> dict[str, int]:
            async with harness.service.engine.connect() as connection:
                rows = await connection.execute(
                    text("SELECT error_code, count(*) FROM dead_letters GROUP BY error_code")
                )
                return {str(code): int(n) for code, n in rows.all()}

        codes = harness.run(dead_letter_codes())
    finally:
        check.record(
            "decoder_properties",
            "Hypothesis: generated records through the inbound processor",
            summary={"inputs": totals["records"], "bad_inputs": totals["dead_lettered"]},
            outcomes=totals,
            dead_letter_codes=dict(sorted(codes.items())),
        )
        harness.close()
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], failures[:5]
    assert "PROCESSING_ERROR" not in codes, codes
    assert totals["records"] > 0
