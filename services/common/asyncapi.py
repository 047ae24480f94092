"""The AsyncAPI 3 document of the message contract (CONTRACT.md, revision 2): every topic
in and out, every message type with its payload from `schemas/`, the Kafka bindings,
servers and the SASL/SCRAM security scheme.

Generated, never edited by hand: `python -m services.common.asyncapi` writes
`asyncapi.yaml` beside this module from `schemas/` (the envelope plus each type's data
schema, embedded so the document needs nothing else), the topic settings and the
package's version. A unit test checks the committed file equals a fresh generation, and
CI runs the AsyncAPI parser over it (`make check-asyncapi`). The file is package data,
so a service serves it as shipped (`services.common.asgi`: `/asyncapi.json`,
`/asyncapi.yaml`, and `/asyncapi`, the page of `asyncapi_page`), with the deployment's
topic names and partition counts (`for_deployment`).
"""

from __future__ import annotations

import copy
import json
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

from services.common.envelope import STRUCTURED_CONTENT_TYPE, dataschema_for
from services.common.kafka import TopicSpec, topic_specs
from services.common.settings import KafkaSettings, TopicSettings

DOCUMENT_FILE = Path(__file__).with_name("asyncapi.yaml")
TITLE = "Customer groups (kundgrupper)"
KAFKA_BINDING = "0.5.0"
SCHEMA_SUFFIX = ".schema.json"
DEAD_LETTER = "dead_letter"

_PNR = "#/components/schemas/common/$defs/personnummer"
_ENVELOPE = "#/components/schemas/envelope"
_OUT_HEADERS = "#/components/schemas/outgoing_headers"
_IN_HEADERS = "#/components/schemas/inbound_headers"


@dataclass(frozen=True)
class Channel:
    """One topic of the contract. `id` is its `TopicSettings` field (the address is
    configurable); `types` maps each CloudEvent type to a one-line summary."""

    id: str
    direction: Literal["in", "out"]
    title: str
    description: str
    types: Mapping[str, str]
    key: Mapping[str, Any]
    # Where and with which types the service answers a message of this channel.
    reply: tuple[str, tuple[str, ...]] | None = None


def _key(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "allOf": [{"$ref": ref}]}


_BY_PNR = _key("the customer's personnummer (12 digits)", _PNR)

CHANNELS: tuple[Channel, ...] = (
    Channel(
        "bookings",
        "in",
        "Bookings",
        "Booking systems publish bookings. The service never trusts the key: it reads the "
        "personnummer from data; key booking.cancelled with the booking's personnummer too.",
        {
            "booking.created": "A booking was made (upsert by booking_id).",
            "booking.updated": "A booking changed (the same upsert as booking.created).",
            "booking.cancelled": "A booking was cancelled.",
        },
        _BY_PNR,
    ),
    Channel(
        "started",
        "in",
        "Vaccination starts",
        "Vaccination clients publish a start; it is answered by exactly one "
        "customer_group.prompt per vaccination_id (a redelivered start re-sends the same "
        "prompt), or by command_rejected when refused.",
        {"vaccination.started": "A nurse started a vaccination."},
        _BY_PNR,
        reply=("prompts", ("customer_group.prompt",)),
    ),
    Channel(
        "registered",
        "in",
        "Vaccination registrations",
        "Vaccination clients publish each dose signed in the record, also one registered "
        "afterwards (efterregistrering) with its real time. Answered by "
        "customer_group.vaccination_groups_confirmed (basis registration).",
        {"vaccination.registered": "A dose was registered (or entered in error)."},
        _BY_PNR,
        reply=(
            "events",
            ("customer_group.vaccination_groups_confirmed", "customer_group.command_rejected"),
        ),
    ),
    Channel(
        "commands",
        "in",
        "Group commands",
        "Vaccination clients send the nurse's commands. The CloudEvent id is the "
        "idempotency key: a command delivered again with the same id changes nothing (also "
        "one that was rejected, so a corrected command needs a new id). Every command is "
        "answered on the events topic by an event whose data.command_id is the command's id.",
        {
            "customer_group.add": "Add a customer group (popup or card).",
            "customer_group.update": "Correct a membership in place (the pencil).",
            "customer_group.remove": "End a membership, or void one entered in error.",
            "customer_group.prompt_close": "The nurse closed the popup.",
        },
        _BY_PNR,
        reply=(
            "events",
            (
                "customer_group.added",
                "customer_group.updated",
                "customer_group.removed",
                "customer_group.vaccination_groups_confirmed",
                "customer_group.command_rejected",
            ),
        ),
    ),
    Channel(
        "prompts",
        "out",
        "Prompts",
        "One customer_group.prompt per started vaccination: the content of the nurse's "
        "'Ange kundgrupp' popup.",
        {"customer_group.prompt": "The popup's content for one vaccination."},
        _BY_PNR,
    ),
    Channel(
        "events",
        "out",
        "Events",
        "What happened to a customer's groups and doses, and every refusal of a command. "
        "Correlate on data.command_id. The export service reads this topic too.",
        {
            "customer_group.added": "A membership was added.",
            "customer_group.updated": "A membership was corrected.",
            "customer_group.removed": "A membership was ended, voided or retired.",
            "customer_group.command_rejected": "A command, start or registration was refused.",
            "customer_group.vaccination_groups_confirmed": "One version of a dose's record.",
        },
        {
            "anyOf": [{"$ref": _PNR}, {"type": "null"}],
            "description": "the customer's personnummer; null only when the refused "
            "command's personnummer is missing or invalid (command_rejected)",
        },
    ),
    Channel(
        "export",
        "out",
        "Warehouse export",
        "Compacted: the last value per key is the current state of that membership or dose, "
        "pseudonymised (subject_id and key_id, no personnummer unless the operator turns "
        "it on). A backfill republishes every record.",
        {
            "customer_group.membership_record": "A membership's current state.",
            "customer_group.vaccination_record": "A dose's current record and groups.",
        },
        {"type": "string", "description": "membership_id or vaccination_id (see each message)"},
    ),
    Channel(
        "catalog",
        "out",
        "Catalog",
        "Compacted, one partition: the last value per group_code is the group in force, "
        "retired groups included with their end date. Published on every start and every "
        "catalog import; read it from the start of the partition.",
        {"customer_group.catalog_group": "A customer group and its subgroups, with validity."},
        _key("group_code", "#/components/schemas/common/$defs/catalog_code"),
    ),
    Channel(
        "dlq",
        "out",
        "Dead letters",
        "A record that is not UTF-8 JSON, not a CloudEvent, of a type its topic does not "
        "accept, or (bookings, starts, registrations) not matching its schema: the original "
        "key, value and headers, unchanged, plus headers naming the error and its origin.",
        {DEAD_LETTER: "The original record, unchanged, plus error headers."},
        {"description": "the original record's key, unchanged (possibly null)"},
    ),
)

# Record keys that differ from their channel's.
_MESSAGE_KEYS: dict[str, dict[str, Any]] = {
    "customer_group.membership_record": _key(
        "membership_id", "#/components/schemas/common/$defs/uuid"
    ),
    "customer_group.vaccination_record": _key(
        "vaccination_id", "#/components/schemas/common/$defs/id"
    ),
}

# The `dlq-error-code` values (schemas/README.md, "Dead letters").
DEAD_LETTER_CODES = (
    "EMPTY_RECORD",
    "RECORD_TOO_LARGE",
    "INVALID_JSON",
    "NOT_A_CLOUDEVENT",
    "UNKNOWN_TYPE",
    "SCHEMA_VIOLATION",
    "INVALID_PERSONNUMMER",
    "PROCESSING_ERROR",
)

_DESCRIPTION = """\
The message contract of the customer-groups service (CONTRACT.md, revision 2). Booking
systems publish bookings, vaccination clients publish starts, registrations and group
commands and read prompts and events, the data warehouse reads the export.

- **Envelope.** Every record value is one CloudEvents 1.0 event in structured JSON mode
  (UTF-8); its `data` follows the JSON Schema of its `type` (`schemas/<type>.schema.json`,
  embedded here under `components.schemas`). Dead letters are the original record.
- **Outgoing records** carry the Kafka header
  `content-type: {content_type}` (CloudEvents Kafka protocol
  binding, structured mode) and the attribute `dataschema` (the `$id` of the type's schema),
  so any CloudEvents SDK reads them. Their ids are deterministic: a record sent again keeps
  its id; de-duplicate on it.
- **Keys.** The customer's personnummer, except export records (`membership_id` /
  `vaccination_id`), catalog records (`group_code`) and dead letters (the original key).
  Depend on the key for ordering only, never for correctness.
- **Read `read_committed`**: the service publishes in Kafka transactions.
- **Idempotency.** A command's CloudEvent id is its idempotency key; the service recognises
  a repeated id for at least 7 days.
- Unknown fields are ignored; in data an optional field may be absent and `null` means
  "no value". Topic names are configurable (`TOPIC_*`); these are the defaults, and a
  running service serves this document with its own.
"""


# -- generation -------------------------------------------------------------------


def load_schemas(schemas_dir: Path) -> dict[str, dict[str, Any]]:
    """Every schema of `schemas/` by name (`customer_group.add`, `envelope`, `common`)."""
    return {
        path.name.removesuffix(SCHEMA_SUFFIX): json.loads(path.read_text("utf-8"))
        for path in sorted(schemas_dir.glob(f"*{SCHEMA_SUFFIX}"))
    }


def load_examples(schemas_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        path.stem: json.loads(path.read_text("utf-8"))
        for path in sorted((schemas_dir / "examples").glob("*.json"))
    }


def _embedded(name: str, node: Any) -> Any:
    """A schema of `schemas/` as a component: `$ref`s between files become references
    within the document, and `$id`/`$schema` go (the component is not a separate
    resource). The schemas use only keywords that mean the same in AsyncAPI's schema
    format (draft-07 based), and `$ref` only beside annotations (a unit test checks)."""
    if isinstance(node, list):
        return [_embedded(name, item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$id", "$schema"):
            continue
        if key == "$ref" and isinstance(value, str):
            file, _, pointer = value.partition("#")
            target = file.removesuffix(SCHEMA_SUFFIX) if file else name
            out[key] = f"#/components/schemas/{target}{pointer}"
        else:
            out[key] = _embedded(name, value)
    return out


def _message(
    type_: str, summary: str, channel: Channel, schema: Mapping[str, Any], example: Any
) -> dict[str, Any]:
    outgoing = channel.direction == "out"
    attributes: dict[str, Any] = {"type": {"const": type_}}
    required = ["type", "data"]
    if outgoing:
        attributes["dataschema"] = {"const": dataschema_for(type_)}
        required.insert(1, "dataschema")
    attributes["data"] = {"$ref": f"#/components/schemas/{type_}"}
    message: dict[str, Any] = {
        "name": type_,
        "title": type_,
        "summary": summary,
        "description": schema.get("description", ""),
        "contentType": "application/cloudevents+json",
        "headers": {"$ref": _OUT_HEADERS if outgoing else _IN_HEADERS},
        "payload": {
            "allOf": [
                {"$ref": _ENVELOPE},
                {"type": "object", "required": required, "properties": attributes},
            ]
        },
    }
    correlation = _correlation(type_, channel)
    if correlation:
        message["correlationId"] = {"$ref": f"#/components/correlationIds/{correlation}"}
    key = _MESSAGE_KEYS.get(type_, channel.key)
    message["bindings"] = {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}}
    example_entry: dict[str, Any] = {"name": "example"}
    if outgoing:
        example_entry["headers"] = {"content-type": STRUCTURED_CONTENT_TYPE}
    example_entry["payload"] = example
    message["examples"] = [example_entry]
    return message


def _correlation(type_: str, channel: Channel) -> str | None:
    if type_ in ("vaccination.started", "customer_group.prompt"):
        return "vaccination_id"
    if channel.id in ("commands", "registered"):
        return "event_id"
    if channel.id == "events":
        return "command_id"
    return None


def _dead_letter_message(summary: str, channel: Channel) -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "name": DEAD_LETTER,
        "title": "dead letter",
        "summary": summary,
        "description": "The value is the original record's, byte for byte (possibly not "
        "JSON). A well-formed command that breaks a business rule is never a dead letter: "
        "it is answered by customer_group.command_rejected.",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "description": "The original record's headers, then these (UTF-8 strings).",
            "required": [
                "dlq-error-code",
                "dlq-error-message",
                "dlq-source-topic",
                "dlq-source-partition",
                "dlq-source-offset",
                "dlq-service",
            ],
            "properties": {
                "dlq-error-code": {"type": "string", "enum": list(DEAD_LETTER_CODES)},
                "dlq-error-message": {
                    **text,
                    "maxLength": 1000,
                    "description": "why, never echoing input values",
                },
                "dlq-source-topic": {**text, "description": "the topic it was read from"},
                "dlq-source-partition": {**text, "pattern": "^[0-9]+$"},
                "dlq-source-offset": {**text, "pattern": "^[0-9]+$"},
                "dlq-service": {**text, "enum": ["groups-service", "export-service"]},
            },
        },
        "payload": {"description": "the original record's value, unchanged (any bytes)"},
        "bindings": {"kafka": {"key": channel.key, "bindingVersion": KAFKA_BINDING}},
    }


# The topic configs the Kafka binding's `topicConfiguration` defines; others that the
# service sets at creation (segment.ms, message.timestamp.type) have no field there.
_BINDING_CONFIGS = frozenset(
    {
        "cleanup.policy",
        "retention.ms",
        "retention.bytes",
        "delete.retention.ms",
        "max.message.bytes",
    }
)


def _topic_binding(spec: TopicSpec) -> dict[str, Any]:
    configuration: dict[str, Any] = {
        name: value.split(",") if name == "cleanup.policy" else int(value)
        for name, value in spec.config.items()
        if name in _BINDING_CONFIGS
    }
    binding: dict[str, Any] = {"partitions": spec.partitions}
    if configuration:
        binding["topicConfiguration"] = configuration
    binding["bindingVersion"] = KAFKA_BINDING
    return binding


def _place_channels(document: dict[str, Any], topics: TopicSettings, kafka: KafkaSettings) -> None:
    """Each channel's address and Kafka binding, from the topic settings the services
    create their topics with (`services.common.kafka.topic_specs`)."""
    specs = {spec.name: spec for spec in topic_specs(topics, kafka)}
    for channel in CHANNELS:
        address = getattr(topics, channel.id)
        entry = document["channels"][channel.id]
        entry["address"] = address
        entry["bindings"] = {"kafka": _topic_binding(specs[address])}


def _operation(channel: Channel) -> tuple[str, dict[str, Any]]:
    verb = "receive" if channel.direction == "in" else "send"
    messages = [{"$ref": f"#/channels/{channel.id}/messages/{t}"} for t in channel.types]
    operation: dict[str, Any] = {
        "action": verb,
        "channel": {"$ref": f"#/channels/{channel.id}"},
        "title": f"{verb.capitalize()} {channel.title.lower()}",
        "messages": messages,
    }
    if channel.reply is not None:
        answered_on, answers = channel.reply
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{answered_on}"},
            "messages": [{"$ref": f"#/channels/{answered_on}/messages/{t}"} for t in answers],
        }
    return f"{verb}{channel.id.capitalize()}", operation


def build_document(
    schemas: Mapping[str, Mapping[str, Any]], examples: Mapping[str, Any], version: str
) -> dict[str, Any]:
    """The whole document, with the topic settings' defaults (never the environment's)."""
    components_schemas: dict[str, Any] = {
        "inbound_headers": {
            "type": "object",
            "description": "The service reads the record value only. Send it in structured "
            "mode (the value is the whole event; binary mode's ce_ headers are not read), "
            f"preferably with content-type: {STRUCTURED_CONTENT_TYPE}.",
            "properties": {"content-type": {"type": "string"}},
        },
        "outgoing_headers": {
            "type": "object",
            "description": "CloudEvents Kafka protocol binding, structured mode.",
            "required": ["content-type"],
            "properties": {"content-type": {"const": STRUCTURED_CONTENT_TYPE}},
        },
    }
    components_schemas.update(
        {name: _embedded(name, schema) for name, schema in sorted(schemas.items())}
    )
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for channel in CHANNELS:
        for type_, summary in channel.types.items():
            messages[type_] = (
                _dead_letter_message(summary, channel)
                if type_ == DEAD_LETTER
                else _message(type_, summary, channel, schemas[type_], examples[type_])
            )
        channels[channel.id] = {
            "address": channel.id,  # and the bindings: see _place_channels
            "title": channel.title,
            "description": channel.description,
            "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in channel.types},
        }
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": TITLE,
            "version": version,
            "description": _DESCRIPTION.format(content_type=STRUCTURED_CONTENT_TYPE),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": _servers(),
        "channels": channels,
        "operations": dict(_operation(channel) for channel in CHANNELS),
        "components": {
            "schemas": components_schemas,
            "messages": messages,
            "securitySchemes": {
                "scramSha512": {
                    "type": "scramSha512",
                    "description": "SASL/SCRAM-SHA-512. Each system has its own user "
                    "(e.g. booking-system, vaccination-client) and Kafka ACLs allow it only "
                    "its own topics and consumer groups (README, 'Kafka ACLs').",
                }
            },
            "correlationIds": {
                "event_id": {
                    "description": "The CloudEvent id of a command or registration; the "
                    "answer's data.command_id repeats it.",
                    "location": "$message.payload#/id",
                },
                "command_id": {
                    "description": "The CloudEvent id of the command or registration this "
                    "event answers (null for what no command caused, e.g. a retirement).",
                    "location": "$message.payload#/data/command_id",
                },
                "vaccination_id": {
                    "description": "A start and its prompt share the vaccination_id.",
                    "location": "$message.payload#/data/vaccination_id",
                },
            },
        },
    }
    _place_channels(document, TopicSettings.model_construct(), KafkaSettings.model_construct())
    return document


def _servers() -> dict[str, Any]:
    scram = [{"$ref": "#/components/securitySchemes/scramSha512"}]
    return {
        "production": {
            "host": "{bootstrap}",
            "protocol": "kafka-secure",
            "title": "A region's Kafka cluster",
            "description": "SASL over TLS with SCRAM-SHA-512 (the services' "
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL, KAFKA_SASL_MECHANISM=SCRAM-SHA-512).",
            "variables": {
                "bootstrap": {
                    "description": "one of the cluster's bootstrap servers, host:port",
                    "examples": ["kafka-1.region.example:9093"],
                }
            },
            "security": scram,
        },
        "compose": {
            "host": "kafka:9092",
            "protocol": "kafka",
            "title": "docker-compose.yml's broker",
            "description": "Reachable inside the compose project's network; SASL without "
            "TLS (SASL_PLAINTEXT) with SCRAM-SHA-512 and ACLs, as in production.",
            "security": scram,
        },
        "local": {
            "host": "127.0.0.1:{port}",
            "protocol": "kafka",
            "title": "The development broker",
            "description": "`make run` / `python -m devinfra up`: PLAINTEXT on loopback, "
            "no authentication.",
            "variables": {"port": {"description": "the port the command prints"}},
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style for text of several lines; no anchors (a reader sees each value where
    it applies)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render_yaml(document: Mapping[str, Any]) -> str:
    body = yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return (
        "# Generated by `python -m services.common.asyncapi` from schemas/ and the topic\n"
        "# settings; do not edit by hand.\n" + body
    )


def project_version(root: Path) -> str:
    with (root / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


def generate(root: Path) -> str:
    """The document's YAML, from the repository at `root`."""
    schemas_dir = root / "schemas"
    document = build_document(
        load_schemas(schemas_dir), load_examples(schemas_dir), project_version(root)
    )
    return render_yaml(document)


# -- serving ----------------------------------------------------------------------


@cache
def committed_document() -> dict[str, Any]:
    # libyaml's loader when PyYAML has it: a tenth of the pure-Python one's time at start.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loaded: dict[str, Any] = yaml.load(DOCUMENT_FILE.read_text("utf-8"), Loader=loader)  # noqa: S506
    return loaded


def for_deployment(topics: TopicSettings, kafka: KafkaSettings) -> dict[str, Any]:
    """The committed document with this deployment's topic names and partitions."""
    document = copy.deepcopy(committed_document())
    _place_channels(document, topics, kafka)
    return document


def main() -> int:
    """Writes the document from the checkout this module lives in."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "schemas").is_dir():
        print(f"no schemas/ in {root}: run this from a checkout of the repository")
        return 2
    DOCUMENT_FILE.write_text(generate(root), "utf-8")
    print(f"wrote {DOCUMENT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
