"""Validate CloudEvents against the JSON Schemas in `schemas/` (the published contract).

`validate_event(event)` checks the envelope against `envelope.schema.json` and the
event's `data` against `<type>.schema.json`, picked by the event's `type`. Integration
tests can run it over every record the services emit::

    from tests.schema_validation import validate_event
    validate_event(json.loads(record.value))

`$ref`s between schema files resolve through a `referencing.Registry` holding every
schema of the folder under its `$id`; nothing is fetched over the network.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLES_DIR = SCHEMAS_DIR / "examples"
SCHEMA_SUFFIX = ".schema.json"
ENVELOPE = "envelope"
COMMON = "common"
NOT_MESSAGE_TYPES = frozenset({ENVELOPE, COMMON})

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)


class EventSchemaError(ValueError):
    """An event does not match the contract; the message lists every violation."""


def _is_date(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _DATE.fullmatch(instance):
        return False
    date.fromisoformat(instance)  # a real calendar day, else ValueError
    return True


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _DATE_TIME.fullmatch(instance):
        return False
    parsed = datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))
    return parsed.tzinfo is not None


def _is_uuid(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    return str(uuid.UUID(instance)) == instance  # canonical lower-case form only


def _format_checker() -> FormatChecker:
    """Real checks for the formats the schemas use: jsonschema skips `date-time` without
    optional packages, and Python's `fromisoformat` alone accepts too much."""
    checker = FormatChecker(formats=())
    checker.checks("date", raises=ValueError)(_is_date)
    checker.checks("date-time", raises=ValueError)(_is_date_time)
    checker.checks("uuid", raises=ValueError)(_is_uuid)
    return checker


FORMAT_CHECKER = _format_checker()


def schema_files() -> list[Path]:
    return sorted(SCHEMAS_DIR.glob(f"*{SCHEMA_SUFFIX}"))


def schema_name(path: Path) -> str:
    """`customer_group.add.schema.json` -> `customer_group.add`."""
    return path.name.removesuffix(SCHEMA_SUFFIX)


@cache
def load_schemas() -> Mapping[str, Mapping[str, Any]]:
    """Every schema in the folder by name (file name without `.schema.json`)."""
    schemas: dict[str, Mapping[str, Any]] = {}
    for path in schema_files():
        contents = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(contents, dict):
            raise ValueError(f"{path.name}: a schema must be a JSON object")
        schemas[schema_name(path)] = contents
    return schemas


def message_types() -> list[str]:
    """The CloudEvent types that have a data schema."""
    return sorted(name for name in load_schemas() if name not in NOT_MESSAGE_TYPES)


@cache
def load_registry() -> Registry[Any]:
    """A registry of every schema under its `$id`; nothing is retrieved from elsewhere."""
    resources: list[tuple[str, Resource[Any]]] = []
    for name, contents in load_schemas().items():
        resource: Resource[Any] = Resource.from_contents(contents)
        schema_id = contents.get("$id")
        if not isinstance(schema_id, str) or not schema_id.endswith(name + SCHEMA_SUFFIX):
            raise ValueError(f"{name}{SCHEMA_SUFFIX}: $id must end with the file name")
        resources.append((schema_id, resource))
    registry: Registry[Any] = Registry().with_resources(resources)
    return registry.crawl()


@cache
def validator_for(name: str) -> Draft202012Validator:
    """A validator for one schema by name (`envelope`, or a message type)."""
    schemas = load_schemas()
    if name not in schemas:
        raise EventSchemaError(f"no schema {name}{SCHEMA_SUFFIX} in {SCHEMAS_DIR}")
    return Draft202012Validator(
        schemas[name], registry=load_registry(), format_checker=FORMAT_CHECKER
    )


def _describe(errors: Iterator[ValidationError], where: str) -> list[str]:
    lines = []
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        lines.append(f"{where} {path}: {error.message}")
    return lines


def validate_data(type_: str, data: Any) -> None:
    """Validate one `data` payload against `<type_>.schema.json`; raise EventSchemaError."""
    if type_ in NOT_MESSAGE_TYPES:
        raise EventSchemaError(f"{type_!r} is not a message type")
    problems = _describe(validator_for(type_).iter_errors(data), f"{type_} data")
    if problems:
        raise EventSchemaError("\n".join(problems))


def validate_event(event: dict[str, Any]) -> None:
    """Validate a whole CloudEvent: envelope, then `data` by the event's `type`.

    Raises EventSchemaError naming every violation (or the type without a schema).
    """
    problems = _describe(validator_for(ENVELOPE).iter_errors(event), "envelope")
    if problems:
        raise EventSchemaError("\n".join(problems))
    type_ = event["type"]
    if type_ not in message_types():
        raise EventSchemaError(f"no data schema for CloudEvent type {type_!r}")
    validate_data(type_, event.get("data"))
