"""`python -m devinfra.demo`: the product on embedded defaults, with a short demo feed.

Starts the real Apache Kafka broker (jars from Maven) and embedded PostgreSQL, both
services as their own processes, then plays the user guide's two flows for the public
test identity (with the popup, and without it: an after-registration) and prints what
each step produced, ending with the dose's export record, and where everything runs. Keeps running
until Ctrl+C unless `--once`.
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from devinfra.provider import provide_infrastructure
from devinfra.services import ServiceProcess, free_port, http_json
from devinfra.tokens import TokenIssuer, bearer
from services.common.settings import TopicSettings

TEST_IDENTITY = "191212121212"  # the public test identity from the user guide
ACTOR = {"user_id": "demo-nurse", "unit_id": "demo-unit"}
CONFIRMED = "customer_group.vaccination_groups_confirmed"


def _event(type_: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/demo",
            "type": type_,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


async def _wait_for(
    bootstrap: str,
    topic: str,
    type_: str,
    match: Callable[[dict[str, Any]], bool] = lambda _data: True,
) -> dict[str, Any]:
    """The first event of `type_` on `topic` whose data `match`es."""
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
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    event = json.loads(record.value)
                    if event["type"] == type_ and match(event["data"]):
                        return dict(event)
        raise TimeoutError(f"no {type_} on {topic}")
    finally:
        await consumer.stop()
        await producer.stop()


async def _feed(
    bootstrap: str, topics: TopicSettings, groups_url: str, token: dict[str, str]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    key = TEST_IDENTITY.encode()

    async def send(topic: str, type_: str, data: dict[str, Any]) -> None:
        await producer.send_and_wait(topic, _event(type_, data), key=key)

    try:
        print("1. booking.created -> vaccination.bookings.v1 (booked online: Influensa 65+)")
        await send(
            topics.bookings,
            "booking.created",
            {
                "booking_id": "demo-booking-1",
                "unit_id": "demo-unit",
                "start_time": "2026-11-26T14:20:00+01:00",
                "customer": {
                    "personnummer": TEST_IDENTITY,
                    "first_name": "Test",
                    "last_name": "Testsson",
                },
                "vaccine": {"code": "J07BB02", "name": "Influvac Tetra", "dose": 1},
                "requested_group": {"group_code": "INFLUENSA", "subgroup_code": "ALDER_65_PLUS"},
            },
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
        await send(
            topics.started,
            "vaccination.started",
            {
                "vaccination_id": vaccination_id,
                "unit_id": "demo-unit",
                "user_id": "demo-nurse",
                "personnummer": TEST_IDENTITY,
                "booking_id": "demo-booking-1",
                "vaccine": {"code": "J07BB02", "name": "Influvac Tetra"},
            },
        )
        prompt = (await _wait_for(bootstrap, topics.prompts, "customer_group.prompt"))["data"]
        print(
            f"   prompt {prompt['prompt_id']}: required={prompt['required']}, "
            f"{len(prompt['catalog'])} selectable groups, suggestions="
            f"{[(s['group_code'], s['subgroup_code'], s['reason']) for s in prompt['suggestions']]}"
        )
        print("3. customer_group.add (nurse picks the suggestion in the popup)")
        await send(
            topics.commands,
            "customer_group.add",
            {
                "personnummer": TEST_IDENTITY,
                "actor": ACTOR,
                "group_code": "INFLUENSA",
                "subgroup_code": "ALDER_65_PLUS",
                "prompt_id": prompt["prompt_id"],
            },
        )
        added = await _wait_for(bootstrap, topics.events, "customer_group.added")
        membership = added["data"]["membership"]
        print(
            f"   added: {membership['group_name']} - {membership['subgroup_name']} "
            f"({membership['status']}, from {membership['valid_from']})"
        )
        print("4. customer_group.prompt_close (nurse closes the popup)")
        await send(
            topics.commands,
            "customer_group.prompt_close",
            {
                "personnummer": TEST_IDENTITY,
                "actor": ACTOR,
                "prompt_id": prompt["prompt_id"],
                "vaccination_id": vaccination_id,
            },
        )
        confirmed = await _wait_for(bootstrap, topics.events, CONFIRMED)
        print(
            f"   confirmed for the dose: "
            f"{[m['group_code'] for m in confirmed['data']['memberships']]}"
        )
        print("5. vaccination.registered (the dose signed in the record) -> its dose record")
        await send(topics.registered, "vaccination.registered", _registration(vaccination_id))
        registered = await _wait_for(
            bootstrap, topics.events, CONFIRMED, lambda d: d["basis"] == "registration"
        )
        print(f"   basis={registered['data']['basis']}, version={registered['data']['version']}")

        print("6. without popup, an after-registration: customer_group.add of the group that")
        print("   applied three weeks ago (Covid-19 - Rekommenderad), then the dose's registration")
        three_weeks_back = datetime.now(UTC) - timedelta(days=21)
        await send(
            topics.commands,
            "customer_group.add",
            {
                "personnummer": TEST_IDENTITY,
                "actor": ACTOR,
                "group_code": "COVID_19",
                "subgroup_code": "REKOMMENDERAD",
                "valid_from": three_weeks_back.date().isoformat(),
            },
        )
        # Topics are not ordered with each other: the group is stored before the dose.
        await _wait_for(
            bootstrap, topics.events, "customer_group.added",
            lambda d: d["membership"]["group_code"] == "COVID_19",
        )  # fmt: skip
        late_dose = f"demo-vaccination-{uuid.uuid4().hex[:6]}"
        await send(
            topics.registered,
            "vaccination.registered",
            _registration(late_dose, three_weeks_back, ("J07BN01", "Comirnaty")),
        )
        late = await _wait_for(
            bootstrap, topics.events, CONFIRMED, lambda d: d["vaccination_id"] == late_dose
        )
        print(
            f"   {late_dose}: groups of its day "
            f"{[m['group_code'] for m in late['data']['memberships']]}, no popup "
            f"(prompt_id={late['data']['prompt_id']})"
        )
        record = await _wait_for(
            bootstrap,
            topics.export,
            "customer_group.vaccination_record",
            lambda d: d["vaccination_id"] == late_dose,
        )
        data = record["data"]
        print(
            f"7. export: vaccination_record of {late_dose} for subject {data['subject_id'][:16]}…:"
            f" administered_at={data['administered_at']}, vaccine={data['vaccine']},"
            f" basis={data['basis']}, missing_group={data['missing_group']},"
            f" groups={[(g['group_code'], g['subgroup_code']) for g in data['groups']]}"
        )
    finally:
        await producer.stop()


def _registration(
    vaccination_id: str,
    given: datetime | None = None,
    vaccine: tuple[str, str] = ("J07BB02", "Influvac Tetra"),
) -> dict[str, Any]:
    return {
        "vaccination_id": vaccination_id,
        "unit_id": ACTOR["unit_id"],
        "user_id": ACTOR["user_id"],
        "personnummer": TEST_IDENTITY,
        "administered_at": (given or datetime.now(UTC)).isoformat(),
        "vaccine": {"code": vaccine[0], "name": vaccine[1], "dose_number": 1},
    }


def _read_back(groups_url: str, token: dict[str, str]) -> None:
    status, card = http_json(
        f"{groups_url}/customer-card", {"personnummer": TEST_IDENTITY}, headers=token
    )
    assert status == 200, card
    print(f"8. customer card from PostgreSQL: active={[m['group_code'] for m in card['active']]}")
    status, found = http_json(f"{groups_url}/booking?booking_id=demo-booking-1", headers=token)
    assert status == 200, found
    booking = found["booking"]
    print(
        f"9. booking from PostgreSQL: {booking['booking_id']} at {booking['start_time']}, "
        f"status={booking['status']}, requested={booking['requested_group']}"
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
        token = bearer(idp.token(ACTOR["user_id"], ACTOR["unit_id"]))
        groups_port, export_port = free_port(), free_port()
        groups = ServiceProcess(
            "services.groups",
            {
                **env,
                **idp.env(jwks_path),
                "GROUPS_ALLOWED_UNITS": ACTOR["unit_id"],
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
            asyncio.run(_feed(infra.kafka_bootstrap, topics, groups.url, token))
            _read_back(groups.url, token)
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
