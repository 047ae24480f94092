"""The published JSON Schemas (`schemas/`): valid, self-contained, exemplified, and in step
with the contract and the code that builds and parses the messages."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from services.common.envelope import dataschema_for
from services.export.domain.records import (
    MEMBERSHIP_FIELDS,
    MEMBERSHIP_RECORD,
    VACCINATION_RECORD,
)
from services.groups.domain.catalog import SUGGESTION_REASONS
from services.groups.domain.errors import ERRORS_BY_REASON
from services.groups.service_layer import commands, messages
from tests.schema_validation import (
    EXAMPLES_DIR,
    SCHEMAS_DIR,
    EventSchemaError,
    load_registry,
    load_schemas,
    message_types,
    schema_files,
    schema_name,
    validate_data,
    validate_event,
    validator_for,
)

if TYPE_CHECKING:
    from referencing._core import Resolver

CONTRACT_FILE = SCHEMAS_DIR.parent.parent / "shared" / "CONTRACT.md"
PNR = "191212121212"

# The contract's topic table (CONTRACT.md, "Topics"), dead-letter topic aside.
CONTRACT_TYPES = {
    "vaccination.bookings.v1": {"booking.created", "booking.updated", "booking.cancelled"},
    "vaccination.started.v1": {"vaccination.started"},
    "vaccination.registered.v1": {"vaccination.registered"},
    "customer-groups.commands.v1": {
        "customer_group.add",
        "customer_group.update",
        "customer_group.remove",
        "customer_group.prompt_close",
    },
    "customer-groups.prompts.v1": {"customer_group.prompt"},
    "customer-groups.events.v1": {
        "customer_group.added",
        "customer_group.updated",
        "customer_group.removed",
        "customer_group.command_rejected",
        "customer_group.vaccination_groups_confirmed",
    },
    "customer-groups.export.v1": {MEMBERSHIP_RECORD, VACCINATION_RECORD},
    "customer-groups.catalog.v1": {messages.CATALOG_GROUP},
}
ALL_CONTRACT_TYPES = set().union(*CONTRACT_TYPES.values())
INBOUND_MODELS: dict[str, type[BaseModel]] = {
    "booking.created": commands.BookingUpsert,
    "booking.updated": commands.BookingUpsert,
    "booking.cancelled": commands.BookingCancelled,
    "vaccination.started": commands.VaccinationStarted,
    "vaccination.registered": commands.VaccinationRegistered,
    "customer_group.add": commands.AddGroup,
    "customer_group.update": commands.UpdateGroup,
    "customer_group.remove": commands.RemoveGroup,
    "customer_group.prompt_close": commands.ClosePrompt,
}
OUTBOUND_TYPES = ALL_CONTRACT_TYPES - set(INBOUND_MODELS)


def example(type_: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES_DIR / f"{type_}.json").read_text("utf-8"))
    return loaded


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolved(type_: str) -> dict[str, Any]:
    """The type's schema, following a top-level `$ref` (booking.updated -> created)."""
    schema = dict(load_schemas()[type_])
    while "properties" not in schema and "$ref" in schema:
        resolver = load_registry().resolver(base_uri=schema["$id"])
        schema = dict(resolver.lookup(schema["$ref"]).contents)
    return schema


# -- the schemas themselves ------------------------------------------------------


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_schema_is_valid_draft_2020_12(path: Path) -> None:
    schema = json.loads(path.read_text("utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith("/" + path.name)
    assert schema.get("description"), "every schema says what it is for"


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_every_ref_resolves_within_the_folder(path: Path) -> None:
    schema = load_schemas()[schema_name(path)]
    resolver = load_registry().resolver(base_uri=schema["$id"])
    for ref in refs(schema):
        assert not ref.startswith(("http:", "https:")), f"{ref}: use a relative reference"
        resolver.lookup(ref)  # raises when unresolvable


def test_there_is_a_schema_for_every_contract_type_and_no_other() -> None:
    assert set(message_types()) == ALL_CONTRACT_TYPES


def test_the_contract_file_lists_the_same_types() -> None:
    if not CONTRACT_FILE.exists():
        pytest.skip(f"{CONTRACT_FILE} not present")
    listed: set[str] = set()
    for line in CONTRACT_FILE.read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[1].startswith(("in", "out")):
            listed |= set(re.findall(r"`([a-z_.]+)`", cells[2]))
    assert listed == ALL_CONTRACT_TYPES


def test_there_is_an_example_for_every_schema_and_a_schema_for_every_example() -> None:
    examples = {p.name.removesuffix(".json") for p in EXAMPLES_DIR.glob("*.json")}
    assert examples == set(message_types())


# -- examples ---------------------------------------------------------------------


@pytest.mark.parametrize("type_", sorted(ALL_CONTRACT_TYPES))
def test_example_is_a_valid_event_of_its_type(type_: str) -> None:
    event = example(type_)
    assert event["type"] == type_
    assert list(validator_for("envelope").iter_errors(event)) == []
    assert list(validator_for(type_).iter_errors(event["data"])) == []
    validate_event(event)


@pytest.mark.parametrize("type_", sorted(ALL_CONTRACT_TYPES))
def test_example_uses_the_public_test_identity(type_: str) -> None:
    text = json.dumps(example(type_))
    found = set(re.findall(r"(?<![0-9a-f])[0-9]{12}(?![0-9a-f])", text))
    assert found <= {PNR}
    if type_ not in (
        MEMBERSHIP_RECORD,
        VACCINATION_RECORD,
        "booking.cancelled",
        messages.CATALOG_GROUP,
    ):
        assert PNR in text


@pytest.mark.parametrize("type_", sorted(INBOUND_MODELS))
def test_inbound_example_is_accepted_by_the_payload_model(type_: str) -> None:
    INBOUND_MODELS[type_].model_validate(example(type_)["data"])


# -- in step with the code ----------------------------------------------------------


@pytest.mark.parametrize("type_", sorted(INBOUND_MODELS))
def test_inbound_schema_has_the_payload_models_fields(type_: str) -> None:
    schema = resolved(type_)
    model = INBOUND_MODELS[type_]
    assert set(schema["properties"]) == set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert set(schema["required"]) == required
    assert schema["additionalProperties"] is True, "unknown inbound fields are ignored"


# Constraints the published schema states differently from the payload model, on purpose.
DELIBERATE = {
    # The model only bounds the text; the domain validates it (INVALID_PERSONNUMMER).
    ("personnummer", "string", "maxLength"),
    # The model lets up to 4096 through so the domain can reject > 64 with a clear message.
    ("reference_code", "string", "maxLength"),
}
CONSTRAINTS = ("minLength", "maxLength", "pattern", "format", "minimum", "maximum")
Shape = dict[tuple[str, ...], dict[str, dict[str, Any]]]


def _follow(node: dict[str, Any], resolver: Resolver[Any]) -> tuple[dict[str, Any], Resolver[Any]]:
    while "$ref" in node:
        found = resolver.lookup(node["$ref"])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node, resolver = {**found.contents, **siblings}, found.resolver
    return node, resolver


def _branches(
    node: dict[str, Any], resolver: Resolver[Any]
) -> Iterator[tuple[dict[str, Any], Resolver[Any]]]:
    node, resolver = _follow(node, resolver)
    if "type" not in node and "anyOf" in node:
        for branch in node["anyOf"]:
            yield from _branches(branch, resolver)
    elif isinstance(node.get("type"), list):
        for type_ in node["type"]:
            yield {**node, "type": type_}, resolver
    else:
        yield node, resolver


def shape(node: dict[str, Any], resolver: Resolver[Any], path: tuple[str, ...] = ()) -> Shape:
    """Per property path: the JSON types allowed and each type's constraints."""
    out: Shape = {}
    by_type: dict[str, dict[str, Any]] = {}
    for branch, branch_resolver in _branches(node, resolver):
        type_ = str(branch.get("type"))
        if type_ == "object":
            for name, sub in branch.get("properties", {}).items():
                out.update(shape(sub, branch_resolver, (*path, name)))
            by_type[type_] = {"required": sorted(branch.get("required", []))}
        else:
            by_type[type_] = {k: branch[k] for k in CONSTRAINTS if k in branch}
    out[path] = by_type
    return out


def model_shape(model: type[BaseModel]) -> Shape:
    contents = model.model_json_schema()
    resource = Resource.from_contents(contents, default_specification=DRAFT202012)
    resolver = Registry().with_resource("urn:model", resource).resolver("urn:model")
    return shape(contents, resolver)


@pytest.mark.parametrize("type_", sorted(INBOUND_MODELS))
def test_inbound_schema_states_the_payload_models_types_and_limits(type_: str) -> None:
    """Every field, nested ones too: same JSON types, and every limit the model enforces
    (length, control characters, date formats, dose range) is in the schema."""
    schema = load_schemas()[type_]
    ours = shape(dict(schema), load_registry().resolver(base_uri=schema["$id"]))
    theirs = model_shape(INBOUND_MODELS[type_])
    assert set(ours) == set(theirs)
    for path, types in theirs.items():
        assert set(ours[path]) == set(types), path
        for json_type, constraints in types.items():
            for key, value in constraints.items():
                if path and (path[-1], json_type, key) in DELIBERATE:
                    continue
                assert ours[path][json_type].get(key) == value, (path, json_type, key)


@pytest.mark.parametrize("type_", sorted(OUTBOUND_TYPES))
def test_outbound_schema_is_closed(type_: str) -> None:
    """Outgoing schemas list exactly what the code emits, so drift fails the tests."""
    assert load_schemas()[type_]["additionalProperties"] is False


def test_reason_codes_are_the_codes_of_the_domain() -> None:
    schema = load_schemas()["customer_group.command_rejected"]
    assert schema["properties"]["reason_code"]["enum"] == list(ERRORS_BY_REASON)


def test_suggestion_reasons_are_the_catalogs() -> None:
    suggestion = load_schemas()["customer_group.prompt"]["properties"]["suggestions"]["items"]
    assert set(suggestion["properties"]["reason"]["enum"]) == set(SUGGESTION_REASONS)


def test_membership_fields_are_the_exported_ones() -> None:
    membership = load_schemas()["common"]["$defs"]["membership"]
    assert list(membership["properties"]) == list(MEMBERSHIP_FIELDS)
    assert set(membership["required"]) == set(MEMBERSHIP_FIELDS)
    record = load_schemas()[MEMBERSHIP_RECORD]
    assert set(record["required"]) == {*MEMBERSHIP_FIELDS, "subject_id", "key_id", "updated_at"}


def test_outgoing_type_names_are_the_codes() -> None:
    emitted = {
        messages.ADDED,
        messages.UPDATED,
        messages.REMOVED,
        messages.REJECTED,
        messages.CONFIRMED,
        messages.PROMPT,
        messages.CATALOG_GROUP,
        MEMBERSHIP_RECORD,
        VACCINATION_RECORD,
    }
    assert emitted == OUTBOUND_TYPES


@pytest.mark.parametrize("type_", sorted(OUTBOUND_TYPES))
def test_outgoing_events_name_their_schema(type_: str) -> None:
    """`dataschema` (contract revision 2) is the `$id` of the type's schema, in the code
    and in the example."""
    schema_id = load_schemas()[type_]["$id"]
    assert dataschema_for(type_) == schema_id
    assert example(type_)["dataschema"] == schema_id


# -- the schemas reject what the contract forbids ---------------------------------


def with_data(type_: str, **changes: Any) -> dict[str, Any]:
    event = copy.deepcopy(example(type_))
    for name, value in changes.items():
        if value is ...:
            event["data"].pop(name, None)
        else:
            event["data"][name] = value
    return event


@pytest.mark.parametrize(
    "event",
    [
        with_data("vaccination.started", personnummer="19121212-1212"),
        with_data("vaccination.started", personnummer="1912121212"),
        with_data("vaccination.started", vaccination_id=...),
        with_data("vaccination.started", vaccination_id=""),
        with_data("vaccination.started", vaccination_id="V-1\x00"),
        with_data("booking.created", start_time="2026-11-26T13:20:00"),
        with_data("booking.created", start_time="2026-02-30T13:20:00Z"),
        with_data("customer_group.add", valid_from="26-11-2026"),
        with_data("customer_group.add", valid_from="2026-02-30"),
        with_data("customer_group.add", reference_code="x" * 65),
        with_data("customer_group.add", actor={"user_id": "nurse-42"}),
        with_data("customer_group.update", reference_code=..., subgroup_code=...),
        with_data("customer_group.remove", valid_to="tomorrow"),
        with_data("customer_group.added", unexpected="field"),
        with_data("customer_group.prompt", prompt_id="not-a-uuid"),
        with_data("customer_group.command_rejected", reason_code="SOMETHING_ELSE"),
        with_data("customer_group.vaccination_groups_confirmed", version=0),
        with_data("customer_group.vaccination_groups_confirmed", basis="booking"),
        with_data("customer_group.vaccination_groups_confirmed", missing_group=...),
        with_data("vaccination.registered", administered_at="2026-11-26T13:20:00"),
        with_data("vaccination.registered", administered_at=...),
        with_data("vaccination.registered", vaccine={"code": "J07BN01"}),
        with_data("vaccination.registered", status="cancelled"),
        with_data(VACCINATION_RECORD, status="deleted"),
        with_data(MEMBERSHIP_RECORD, personnummer="191212121213x"),
        with_data(VACCINATION_RECORD, subject_id="ABC"),
    ],
)
def test_invalid_data_is_rejected(event: dict[str, Any]) -> None:
    with pytest.raises(EventSchemaError):
        validate_event(event)


@pytest.mark.parametrize(
    "event",
    [
        with_data("customer_group.add", future_field={"any": "thing"}),
        with_data("customer_group.add", subgroup_code=None, reference_code=None, prompt_id=...),
        with_data("customer_group.update", reference_code=None),
        with_data("customer_group.update", reference_code=..., subgroup_code="RISKGRUPP"),
        with_data("customer_group.remove", valid_to=...),
        with_data("vaccination.started", booking_id=None, vaccine=None),
        with_data("vaccination.registered", status=..., booking_id=...),
        with_data("vaccination.registered", status=None, booking_id=None),
        with_data("vaccination.registered", status="entered_in_error"),
        with_data(
            "customer_group.vaccination_groups_confirmed",
            command_id=None,
            actor=None,
            prompt_id=None,
            confirmed_at=None,
        ),
        with_data(
            VACCINATION_RECORD,
            administered_at=None,
            vaccine=None,
            basis="popup",
            groups=[],
            missing_group=True,
        ),
        with_data("customer_group.command_rejected", personnummer=None),
        with_data(MEMBERSHIP_RECORD, personnummer=PNR),
    ],
)
def test_valid_variants_are_accepted(event: dict[str, Any]) -> None:
    validate_event(event)


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("specversion", "0.3"),
        ("specversion", 1.0),
        ("id", ""),
        ("id", "x" * 1025),
        ("id", "   "),
        ("id", "id\nwith-newline"),
        ("source", ...),
        ("type", ...),
        ("time", "yesterday"),
        ("datacontenttype", "text/plain"),
        ("data", ...),
    ],
)
def test_invalid_envelope_is_rejected(change: str, value: Any) -> None:
    event = copy.deepcopy(example("booking.created"))
    if value is ...:
        del event[change]
    else:
        event[change] = value
    with pytest.raises(EventSchemaError):
        validate_event(event)


def test_envelope_accepts_extensions_and_charset() -> None:
    event = copy.deepcopy(example("booking.created"))
    event["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event["datacontenttype"] = "application/json; charset=utf-8"
    event["time"] = "2026-11-20T09:02:11.5+01:00"
    validate_event(event)


def test_unknown_type_is_rejected() -> None:
    event = copy.deepcopy(example("booking.created"))
    event["type"] = "booking.deleted"
    with pytest.raises(EventSchemaError, match="no data schema"):
        validate_event(event)
    with pytest.raises(EventSchemaError):
        validate_data("envelope", {})
