"""`python -m devinfra.demo`: the product on embedded defaults, with a short demo feed.

Starts the real Apache Kafka broker (jars from Maven) and embedded PostgreSQL, both
services as their own processes, then plays the user guide's two flows for the public
test identity (with the popup, and without it: an after-registration) through the client
package (`clients/python`: each answer matched by its command's id, as a client must)
and prints what each step produced, ending with the dose's export record, then reads
back over HTTP and says where everything runs. Keeps running until Ctrl+C unless
`--once`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from customer_groups_client import (
    Actor,
    CustomerGroupsClient,
    KafkaConfig,
    RequestedGroup,
    Topics,
    Vaccine,
    fetch_prompt,
)
from devinfra.provider import provide_infrastructure
from devinfra.services import ServiceProcess, free_port, http_json
from devinfra.tokens import TokenIssuer, bearer
from services.common.settings import TopicSettings

TEST_IDENTITY = "191212121212"  # the public test identity from the user guide
NURSE = Actor("demo-nurse", "demo-unit")
INFLUVAC = Vaccine("J07BB02", "Influvac Tetra", dose=1)
WAIT = 60.0


async def _export_record(bootstrap: str, topic: str, vaccination_id: str) -> dict[str, Any]:
    """The warehouse's view: the dose's record on the export topic, keyed by its
    vaccination_id (read_committed, from the start)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await producer.partitions_for(topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(WAIT):
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        if record.key == vaccination_id.encode():
                            return dict(json.loads(record.value))
    finally:
        await consumer.stop()
        await producer.stop()


async def _feed(
    bootstrap: str, topics: TopicSettings, groups_url: str, token: dict[str, str]
) -> str:
    """Plays both flows through the client package (every answer matched by its
    command_id or vaccination_id); returns the popup's vaccination id."""
    kafka = KafkaConfig(bootstrap)
    client_topics = Topics(**{name: getattr(topics, name) for name in Topics.__dataclass_fields__})
    async with (
        CustomerGroupsClient(
            kafka, topics=client_topics, source="/booking/demo", listen=False
        ) as booking_system,
        CustomerGroupsClient(
            kafka, topics=client_topics, source="/vaccination/demo", timeout=WAIT
        ) as client,
    ):
        print("1. booking.created -> vaccination.bookings.v1 (booked online: Influensa 65+)")
        await booking_system.publish_booking(
            "demo-booking-1",
            unit_id=NURSE.unit_id,
            start_time=datetime.fromisoformat("2026-11-26T14:20:00+01:00"),
            personnummer=TEST_IDENTITY,
            first_name="Test",
            last_name="Testsson",
            vaccine=INFLUVAC,
            requested_group=RequestedGroup("INFLUENSA", "ALDER_65_PLUS"),
        )
        # Topics are not ordered with each other; a real start comes long after its
        # booking, so the demo waits until the booking is stored.
        for _ in range(300):
            status, _found = await asyncio.to_thread(
                http_json, f"{groups_url}/booking?booking_id=demo-booking-1", headers=token
            )
            if status == 200:
                break
            await asyncio.sleep(0.1)
        vaccination_id = f"demo-vaccination-{uuid.uuid4().hex[:6]}"
        print(f"2. vaccination.started ({vaccination_id}) -> the popup's prompt")
        prompt = await client.start_vaccination(
            vaccination_id,
            actor=NURSE,
            personnummer=TEST_IDENTITY,
            booking_id="demo-booking-1",
            vaccine=INFLUVAC,
        )
        print(
            f"   prompt {prompt.prompt_id}: required={prompt.required}, "
            f"{len(prompt.catalog)} selectable groups, suggestions="
            f"{[(s.group_code, s.subgroup_code, s.reason) for s in prompt.suggestions]}"
        )
        print("3. customer_group.add (nurse picks the suggestion in the popup)")
        added = await client.add(
            TEST_IDENTITY,
            actor=NURSE,
            group_code="INFLUENSA",
            subgroup_code="ALDER_65_PLUS",
            prompt_id=prompt.prompt_id,
        )
        membership = added.raise_for_rejection().membership
        assert membership is not None
        print(
            f"   {added.type} for command {added.command_id}: {membership.group_name} - "
            f"{membership.subgroup_name} ({membership.status}, from {membership.valid_from})"
        )
        print("4. customer_group.prompt_close (nurse closes the popup)")
        closed = await client.close_prompt(
            TEST_IDENTITY,
            actor=NURSE,
            prompt_id=prompt.prompt_id,
            vaccination_id=vaccination_id,
        )
        confirmed = closed.raise_for_rejection().confirmation
        assert confirmed is not None
        print(f"   confirmed for the dose: {[m.group_code for m in confirmed.memberships]}")
        print("5. vaccination.registered (the dose signed in the record) -> its dose record")
        registered = await client.register_vaccination(
            vaccination_id,
            actor=NURSE,
            personnummer=TEST_IDENTITY,
            administered_at=datetime.now(UTC),
            vaccine=INFLUVAC,
        )
        record = registered.raise_for_rejection().confirmation
        assert record is not None
        print(f"   basis={record.basis}, version={record.version}")

        print("6. without popup, an after-registration: customer_group.add of the group that")
        print("   applied three weeks ago (Covid-19 - Rekommenderad), then the dose's registration")
        three_weeks_back = datetime.now(UTC) - timedelta(days=21)
        # The group is stored (its outcome read) before the dose is registered: topics
        # are not ordered with each other.
        saved = await client.add(
            TEST_IDENTITY,
            actor=NURSE,
            group_code="COVID_19",
            subgroup_code="REKOMMENDERAD",
            valid_from=three_weeks_back.date(),
        )
        saved.raise_for_rejection()
        late_dose = f"demo-vaccination-{uuid.uuid4().hex[:6]}"
        late = await client.register_vaccination(
            late_dose,
            actor=NURSE,
            personnummer=TEST_IDENTITY,
            administered_at=three_weeks_back,
            vaccine=Vaccine("J07BN01", "Comirnaty", dose=1),
        )
        late_record = late.raise_for_rejection().confirmation
        assert late_record is not None
        print(
            f"   {late_dose}: groups of its day "
            f"{[m.group_code for m in late_record.memberships]}, no popup "
            f"(prompt_id={late_record.prompt_id})"
        )
    exported = await _export_record(bootstrap, topics.export, late_dose)
    data = exported["data"]
    print(
        f"7. export: vaccination_record of {late_dose} for subject {data['subject_id'][:16]}…:"
        f" administered_at={data['administered_at']}, vaccine={data['vaccine']},"
        f" basis={data['basis']}, missing_group={data['missing_group']},"
        f" groups={[(g['group_code'], g['subgroup_code']) for g in data['groups']]}"
    )
    return vaccination_id


def _read_back(groups_url: str, token: str, vaccination_id: str) -> None:
    headers = bearer(token)
    status, card = http_json(
        f"{groups_url}/customer-card", {"personnummer": TEST_IDENTITY}, headers=headers
    )
    assert status == 200, card
    print(f"8. customer card from PostgreSQL: active={[m['group_code'] for m in card['active']]}")
    status, found = http_json(f"{groups_url}/booking?booking_id=demo-booking-1", headers=headers)
    assert status == 200, found
    booking = found["booking"]
    print(
        f"9. booking from PostgreSQL: {booking['booking_id']} at {booking['start_time']}, "
        f"status={booking['status']}, requested={booking['requested_group']}"
    )
    prompt = asyncio.run(fetch_prompt(groups_url, vaccination_id, token=token))
    assert prompt is not None
    print(
        f"10. GET /prompt?vaccination_id={vaccination_id} (a client that missed it): "
        f"prompt {prompt.prompt_id}, event {prompt.event.id}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the demo feed")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".run"),
        help="where Kafka, PostgreSQL and service logs keep their files",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    workdir = args.workdir.resolve()
    if workdir.exists():
        import shutil

        shutil.rmtree(workdir / "infra", ignore_errors=True)
    started = time.monotonic()
    with provide_infrastructure(workdir / "infra", allow_docker=False) as infra:
        print(f"Kafka {infra.kafka_version} at {infra.kafka_bootstrap}")
        print(f"PostgreSQL {infra.postgres_version} at {infra.database_url}")
        topics = TopicSettings()
        env = {
            "APP_ENV": "dev",
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
            "DATABASE_URL": infra.database_url,
        }
        # The demo is its own identity provider: a fresh key pair per run, its JWKS in a
        # file the groups service trusts, tokens for the demo nurse.
        idp = TokenIssuer()
        key_path = idp.save_key(workdir / "auth" / "dev-idp.pem")
        jwks_path = idp.write_jwks(workdir / "auth" / "jwks.json")
        token = idp.token(NURSE.user_id, NURSE.unit_id)
        groups_port, export_port = free_port(), free_port()
        groups = ServiceProcess(
            "services.groups",
            {
                **env,
                **idp.env(jwks_path),
                "GROUPS_ALLOWED_UNITS": NURSE.unit_id,
                "GROUPS_HTTP_PORT": str(groups_port),
            },
            port=groups_port,
            log_path=workdir / "groups.log",
        )
        export = ServiceProcess(
            "services.export",
            {**env, "EXPORT_HTTP_PORT": str(export_port)},
            port=export_port,
            log_path=workdir / "export.log",
        )
        with groups, export:
            print(
                f"groups service  {groups.url}  (/healthz /metrics /asyncapi /openapi.json), "
                f"log {groups.log_path}"
            )
            print(f"export service  {export.url}  (/healthz /metrics, log {export.log_path})")
            print(
                "patient-data reads need a token: "
                f"python -m devinfra.tokens --key {key_path} --user demo-nurse --unit demo-unit"
            )
            print(f"up in {time.monotonic() - started:.1f}s; playing the demo feed\n")
            vaccination_id = asyncio.run(
                _feed(infra.kafka_bootstrap, topics, groups.url, bearer(token))
            )
            _read_back(groups.url, token, vaccination_id)
            print(
                "\nDemo done: the booking, the groups and both doses' records are stored "
                "and exported."
            )
            if not args.once:
                print("Services keep running; Ctrl+C stops everything.")
                while not stop.wait(1.0):
                    if not (groups.running() and export.running()):
                        print("a service exited; see its log", file=sys.stderr)
                        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
