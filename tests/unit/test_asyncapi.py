"""The AsyncAPI document (`services/common/asyncapi.yaml`): generated from `schemas/` and the
topic settings, in step with what the services accept and emit, and served with the
deployment's topics, offline."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from services.common.asgi import asyncapi_routes
from services.common.asyncapi import (
    DEAD_LETTER,
    DEAD_LETTER_CODES,
    DOCUMENT_FILE,
    committed_document,
    for_deployment,
    generate,
    load_schemas,
    project_version,
)
from services.common.envelope import STRUCTURED_CONTENT_TYPE
from services.common.settings import AppSettings, KafkaSettings, ServiceSettings, TopicSettings
from services.export.domain.records import MEMBERSHIP_RECORD, VACCINATION_RECORD
from services.groups.service_layer import messagebus, messages
from tests.http_tools import call
from tests.schema_validation import EXAMPLES_DIR, FORMAT_CHECKER, SCHEMAS_DIR, message_types

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOPICS = TopicSettings.model_construct()
DOCUMENT = committed_document()


def emitted(topics: TopicSettings) -> dict[str, set[str]]:
    """What the services publish, per topic, named by the code's own constants."""
    return {
        topics.prompts: {messages.PROMPT},
        topics.events: {
            messages.ADDED,
            messages.UPDATED,
            messages.REMOVED,
            messages.REJECTED,
            messages.CONFIRMED,
        },
        topics.export: {MEMBERSHIP_RECORD, VACCINATION_RECORD},
        topics.catalog: {messages.CATALOG_GROUP},
        topics.dlq: {DEAD_LETTER},
    }


def channel_of(document: dict[str, Any], address: str) -> tuple[str, dict[str, Any]]:
    found = [(k, c) for k, c in document["channels"].items() if c["address"] == address]
    assert len(found) == 1, f"{address}: {len(found)} channels"
    return found[0]


def action_on(document: dict[str, Any], channel_id: str) -> str:
    actions = {
        op["action"]
        for op in document["operations"].values()
        if op["channel"]["$ref"] == f"#/channels/{channel_id}"
    }
    assert len(actions) == 1, actions
    return actions.pop()


def resolve(document: dict[str, Any], node: dict[str, Any]) -> Any:
    target: Any = document
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return target


def test_the_committed_document_is_the_generated_one() -> None:
    assert DOCUMENT_FILE.read_text("utf-8") == generate(ROOT), (
        "services/common/asyncapi.yaml is stale: run `python -m services.common.asyncapi`"
    )


def test_it_has_the_real_title_and_version() -> None:
    assert DOCUMENT["asyncapi"].startswith("3.")
    assert DOCUMENT["info"]["title"] == "Customer groups (kundgrupper)"
    assert DOCUMENT["info"]["version"] == project_version(ROOT)


def test_it_has_every_contract_topic_and_no_other() -> None:
    addresses = {channel["address"] for channel in DOCUMENT["channels"].values()}
    assert addresses == set(DEFAULT_TOPICS.model_dump().values())
    assert len(addresses) == 9


def test_every_type_the_service_accepts_is_under_its_topic() -> None:
    accepted = messagebus.message_types(DEFAULT_TOPICS)
    assert set(accepted) == set(DEFAULT_TOPICS.inbound)
    for topic, types in accepted.items():
        channel_id, channel = channel_of(DOCUMENT, topic)
        assert set(channel["messages"]) == set(types), topic
        assert action_on(DOCUMENT, channel_id) == "receive"


def test_every_type_the_services_emit_is_under_its_topic() -> None:
    for topic, types in emitted(DEFAULT_TOPICS).items():
        channel_id, channel = channel_of(DOCUMENT, topic)
        assert set(channel["messages"]) == types, topic
        assert action_on(DOCUMENT, channel_id) == "send"


def test_every_schema_is_a_message_and_every_message_refers_to_its_schema() -> None:
    schemas = load_schemas(SCHEMAS_DIR)
    named = set(DOCUMENT["components"]["messages"]) - {DEAD_LETTER}
    assert named == set(message_types())
    for type_ in named:
        payload = DOCUMENT["components"]["messages"][type_]["payload"]
        envelope, attributes = payload["allOf"]
        assert envelope == {"$ref": "#/components/schemas/envelope"}
        assert attributes["properties"]["type"] == {"const": type_}
        assert attributes["properties"]["data"] == {"$ref": f"#/components/schemas/{type_}"}
        assert (
            resolve(DOCUMENT, attributes["properties"]["data"])["title"]
            == (schemas[type_]["title"])
        )


def test_outgoing_messages_carry_the_cloudevents_header_and_their_dataschema() -> None:
    schemas = load_schemas(SCHEMAS_DIR)
    for types in emitted(DEFAULT_TOPICS).values():
        for type_ in types - {DEAD_LETTER}:
            message = DOCUMENT["components"]["messages"][type_]
            headers = resolve(DOCUMENT, message["headers"])
            assert headers["required"] == ["content-type"]
            assert headers["properties"]["content-type"] == {"const": STRUCTURED_CONTENT_TYPE}
            attributes = message["payload"]["allOf"][1]
            assert "dataschema" in attributes["required"]
            assert attributes["properties"]["dataschema"] == {"const": schemas[type_]["$id"]}


def test_kafka_bindings_name_keys_partitions_and_compaction() -> None:
    policies = {
        channel["address"]: channel["bindings"]["kafka"]
        .get("topicConfiguration", {})
        .get("cleanup.policy")
        for channel in DOCUMENT["channels"].values()
    }
    compacted = {topic for topic, policy in policies.items() if policy == ["compact"]}
    assert compacted == {DEFAULT_TOPICS.export, DEFAULT_TOPICS.catalog}
    _, catalog = channel_of(DOCUMENT, DEFAULT_TOPICS.catalog)
    assert catalog["bindings"]["kafka"]["partitions"] == 1
    keys = {
        name: message["bindings"]["kafka"]["key"]["description"]
        for name, message in DOCUMENT["components"]["messages"].items()
    }
    assert keys[MEMBERSHIP_RECORD] == "membership_id"
    assert keys[VACCINATION_RECORD] == "vaccination_id"
    assert keys[messages.CATALOG_GROUP] == "group_code"
    assert keys["vaccination.started"].startswith("the customer's personnummer")


def test_servers_use_sasl_scram() -> None:
    production = DOCUMENT["servers"]["production"]
    assert production["protocol"] == "kafka-secure"
    assert production["security"] == [{"$ref": "#/components/securitySchemes/scramSha512"}]
    assert DOCUMENT["components"]["securitySchemes"]["scramSha512"]["type"] == "scramSha512"


@pytest.mark.parametrize("type_", message_types())
def test_each_example_is_valid_against_the_embedded_schemas(type_: str) -> None:
    """The embedded copies of `schemas/` (references rewritten) still mean what the files
    mean: the examples pass, and an example without a required data field fails."""
    validator = Draft7Validator(
        {"$ref": f"#/components/messages/{type_}/payload", "components": DOCUMENT["components"]},
        format_checker=FORMAT_CHECKER,
    )
    (example,) = DOCUMENT["components"]["messages"][type_]["examples"]
    validator.validate(example["payload"])
    required = load_schemas(SCHEMAS_DIR)[type_].get("required") or ["booking_id"]
    broken = copy.deepcopy(example["payload"])
    del broken["data"][required[0]]
    assert not validator.is_valid(broken)
    assert example["payload"] == yaml.safe_load((EXAMPLES_DIR / f"{type_}.json").read_text())


# Keywords whose meaning is the same in JSON Schema 2020-12 (the files) and in AsyncAPI's
# draft-07 based schema format (the document); `$defs` is only a place `$ref`s point into.
SAME_MEANING = {
    "$schema", "$id", "$ref", "$defs", "title", "description", "examples", "type",
    "properties", "required", "additionalProperties", "items", "anyOf", "allOf", "oneOf",
    "not", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "format", "minItems", "maxItems", "uniqueItems", "default",
}  # fmt: skip
ANNOTATIONS = {"$ref", "description", "title", "examples"}


def _keywords(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    if "$ref" in schema:
        assert set(schema) - {"$schema", "$id"} <= ANNOTATIONS, schema
    for keyword, value in schema.items():
        if keyword in ("properties", "$defs"):
            for sub in value.values():
                found |= _keywords(sub)
        elif keyword in ("anyOf", "allOf", "oneOf"):
            for sub in value:
                found |= _keywords(sub)
        elif keyword in ("items", "not", "additionalProperties"):
            found |= _keywords(value)
    return found


@pytest.mark.parametrize("name", sorted(load_schemas(SCHEMAS_DIR)))
def test_schemas_use_only_keywords_that_mean_the_same_in_asyncapi(name: str) -> None:
    assert _keywords(load_schemas(SCHEMAS_DIR)[name]) <= SAME_MEANING


def test_a_deployment_serves_its_own_topic_names_and_partitions() -> None:
    assert for_deployment(DEFAULT_TOPICS, KafkaSettings.model_construct()) == DOCUMENT
    topics = TopicSettings.model_construct(prompts="region-a.prompts.v1")
    kafka = KafkaSettings.model_construct(inbound_partitions=12)
    served = for_deployment(topics, kafka)
    assert served["channels"]["prompts"]["address"] == "region-a.prompts.v1"
    assert served["channels"]["commands"]["bindings"]["kafka"]["partitions"] == 12
    assert DOCUMENT["channels"]["prompts"]["address"] == "customer-groups.prompts.v1"


async def test_served_as_json_yaml_and_a_page_that_loads_nothing() -> None:
    settings = ServiceSettings(app=AppSettings(app_env="test"))
    routes = dict(asyncapi_routes(settings))
    expected = for_deployment(settings.topics, settings.kafka)

    status, headers, as_json = await call(routes["/asyncapi.json"])
    assert (status, headers["content-type"], as_json) == (200, "application/json", expected)
    status, headers, as_yaml = await call(routes["/asyncapi.yaml"])
    assert (status, headers["content-type"]) == (200, "application/yaml; charset=utf-8")
    assert yaml.safe_load(as_yaml) == expected

    status, headers, page = await call(routes["/asyncapi"])
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert "<script" not in page.lower()
    links = re.findall(r"(?:href|src)=['\"]([^'\"]*)", page)
    assert links and all("//" not in link for link in links), links
    for name in DOCUMENT["components"]["messages"]:
        assert f"id='{name}'" in page
    assert "Customer groups (kundgrupper)" in page
    assert "$ref" not in page, "references are expanded for the reader"
    assert "^[0-9]{12}$" in page, "the personnummer pattern, from common.schema.json"


def test_dead_letter_codes_are_those_the_services_use_and_document() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "services").rglob("*.py"))
    used = set(re.findall(r"PoisonRecord\(\s*\"([A-Z_]+)\"", source))
    assert used | {"INVALID_PERSONNUMMER"} == set(DEAD_LETTER_CODES)
    readme = (SCHEMAS_DIR / "README.md").read_text()
    table = readme.split("| `dlq-error-code` | cause |", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE)) == set(DEAD_LETTER_CODES)
