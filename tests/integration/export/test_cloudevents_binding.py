"""Real records from the real broker, read as other teams read them: with the official
CloudEvents SDK's Kafka protocol binding (contract revision 2: every outgoing record
carries `content-type: application/cloudevents+json; charset=UTF-8` and `dataschema`)."""

from __future__ import annotations

import json
from typing import Any

from aiokafka import ConsumerRecord
from cloudevents.core.bindings import kafka as cloudevents_kafka
from cloudevents.core.formats.json import JSONFormat

from services.common.envelope import encode_json
from services.groups.bootstrap import GroupsSettingsBundle
from services.groups.service_layer import messages
from services.groups.service_layer.outgoing import event_id
from tests.integration.conftest import NurseClient
from tests.integration.export.conftest import (
    PNR_A,
    db_records,
    export_settings,
    running_export_service,
)
from tests.kafka_tools import KafkaTestClient
from tests.schema_validation import load_schemas, validate_data

CONTENT_TYPE = b"application/cloudevents+json; charset=UTF-8"


def read_with_the_sdk(record: ConsumerRecord[Any, Any]) -> Any:
    """As a CloudEvents consumer does: the binding picks the content mode from the
    headers (structured: no `ce_` headers, the media type in `content-type`)."""
    message = cloudevents_kafka.KafkaMessage(
        headers={name: value for name, value in record.headers},
        key=record.key,
        value=record.value,
    )
    return cloudevents_kafka.from_kafka(message, JSONFormat())


def one(records: list[ConsumerRecord[Any, Any]], event_id_: str) -> ConsumerRecord[Any, Any]:
    (found,) = [r for r in records if json.loads(r.value)["id"] == event_id_]
    return found


async def test_the_cloudevents_sdk_reads_prompts_events_export_and_catalog_records(
    nurse: NurseClient, groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    topics = groups_settings.topics
    settings = export_settings(groups_settings)
    async with running_export_service(settings):
        prompt = await nurse.start("V-cloudevents-1", PNR_A)
        added = await nurse.command("add", PNR_A, group_code="INFLUENSA")
        membership_id = added["data"]["membership"]["membership_id"]
        exported = await kafka.read_until(
            topics.export, lambda rs: any(r.key == membership_id.encode() for r in rs), timeout=60
        )
    expected_export = json.loads((await db_records(settings))[membership_id])
    prompts = await kafka.read_until(topics.prompts, lambda rs: bool(rs))
    events = await kafka.read_until(
        topics.events, lambda rs: any(json.loads(r.value)["id"] == added["id"] for r in rs)
    )
    catalog = await kafka.read_until(topics.catalog, lambda rs: bool(rs))
    influensa = next(r for r in catalog if r.key == b"INFLUENSA")
    catalog_data = json.loads(influensa.value)["data"]

    # (record, type, the id the service derives for it, what its data must say)
    cases = [
        (
            one(prompts, prompt["id"]),
            messages.PROMPT,
            event_id(messages.PROMPT, "V-cloudevents-1"),
            {"vaccination_id": "V-cloudevents-1", "personnummer": PNR_A},
        ),
        (
            one(events, added["id"]),
            messages.ADDED,
            event_id(messages.ADDED, added["data"]["command_id"]),
            {"personnummer": PNR_A, "command_id": added["data"]["command_id"]},
        ),
        (
            one(exported, expected_export["id"]),
            "customer_group.membership_record",
            expected_export["id"],
            expected_export["data"],
        ),
        (
            influensa,
            messages.CATALOG_GROUP,
            event_id(messages.CATALOG_GROUP, encode_json(catalog_data).decode()),
            {"group_code": "INFLUENSA"},
        ),
    ]
    schemas = load_schemas()
    for record, type_, id_, data in cases:
        headers = dict(record.headers)
        assert headers["content-type"] == CONTENT_TYPE, type_
        assert not any(name.startswith("ce_") for name in headers), "structured mode only"
        event = read_with_the_sdk(record)
        assert event.get_type() == type_
        assert event.get_id() == id_
        assert event.get_dataschema() == schemas[type_]["$id"]
        assert event.get_data() == json.loads(record.value)["data"]
        assert data.items() <= event.get_data().items(), type_
        validate_data(type_, event.get_data())
