"""What the plain service reads and writes: the CloudEvents (pydantic models, validated
and serialised by FastStream), the catalog it checks adds against, and the views of a
membership. No I/O here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from bench.plain_service.tables import Membership

SOURCE = "/customer-groups/plain-service"
SCHEMA_BASE = "https://schemas.customer-groups.example/v1/"
PROMPT = "customer_group.prompt"
ADDED = "customer_group.added"
PROMPT_HISTORY_LIMIT = 50
# The prompt's id is derived from the vaccination's, as the contract asks.
_PROMPT_IDS = uuid.UUID("6f1d7a52-1c1e-4b7e-9a57-5d0c6f0b7f01")

Data = TypeVar("Data", bound=BaseModel)


# -- inbound -------------------------------------------------------------------------


class Actor(BaseModel):
    user_id: str = Field(min_length=1)
    unit_id: str = Field(min_length=1)


class Vaccine(BaseModel):
    code: str
    name: str


class StartedData(BaseModel):
    vaccination_id: str = Field(min_length=1)
    unit_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    personnummer: str = Field(pattern=r"^\d{12}$")
    booking_id: str | None = None
    vaccine: Vaccine | None = None


class AddData(BaseModel):
    personnummer: str = Field(pattern=r"^\d{12}$")
    actor: Actor
    group_code: str = Field(min_length=1)
    subgroup_code: str | None = None
    reference_code: str | None = Field(default=None, max_length=64)
    valid_from: date | None = None
    prompt_id: str | None = None


class Inbound(BaseModel, Generic[Data]):
    specversion: Literal["1.0"]
    id: str = Field(min_length=1)
    source: str
    type: str
    time: datetime | None = None
    data: Data


class Started(Inbound[StartedData]):
    type: Literal["vaccination.started"]


class Add(Inbound[AddData]):
    type: Literal["customer_group.add"]


# -- outbound ------------------------------------------------------------------------


class By(BaseModel):
    user_id: str | None
    unit_id: str | None


class MembershipView(BaseModel):
    membership_id: str
    group_code: str
    group_name: str
    subgroup_code: str | None
    subgroup_name: str | None
    reference_code: str | None
    valid_from: date
    valid_to: date | None
    status: str
    version: int
    created_at: datetime
    created_by: By | None
    updated_by: By | None


class CatalogSubgroup(BaseModel):
    subgroup_code: str
    name: str


class CatalogGroup(BaseModel):
    group_code: str
    name: str
    subgroups: list[CatalogSubgroup]


class PromptData(BaseModel):
    prompt_id: str
    vaccination_id: str
    unit_id: str
    user_id: str
    personnummer: str
    active: list[MembershipView]
    historical: list[MembershipView]
    historical_total: int
    catalog: list[CatalogGroup]
    suggestions: list[dict[str, str | None]]
    required: bool


class AddedData(BaseModel):
    command_id: str
    personnummer: str
    actor: Actor
    membership: MembershipView


class Outbound(BaseModel):
    """The envelope of the groups service's events, attribute for attribute and in the
    same order (`time` before `data`)."""

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str = SOURCE
    type: str
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))


class PromptEvent(Outbound):
    type: str = PROMPT
    dataschema: str = f"{SCHEMA_BASE}{PROMPT}.schema.json"
    data: PromptData


class AddedEvent(Outbound):
    type: str = ADDED
    dataschema: str = f"{SCHEMA_BASE}{ADDED}.schema.json"
    data: AddedData


# -- the catalog ---------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    code: str
    name: str
    valid_from: date
    valid_to: date | None

    def open_on(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


@dataclass(frozen=True)
class Group(Period):
    subgroups: tuple[Period, ...]


class Catalog:
    """The groups and subgroups of a catalog file (the groups service's format)."""

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = tuple(groups)
        self._by_code = {g.code: g for g in self.groups}

    @staticmethod
    def load(path: Path) -> Catalog:
        document = json.loads(path.read_text(encoding="utf-8"))
        return Catalog([_group(g) for g in document["groups"]])

    def selectable(self, day: date) -> list[CatalogGroup]:
        """The groups open on `day`, each with its subgroups open on `day`."""
        return [
            CatalogGroup(
                group_code=g.code,
                name=g.name,
                subgroups=[
                    CatalogSubgroup(subgroup_code=s.code, name=s.name)
                    for s in g.subgroups
                    if s.open_on(day)
                ],
            )
            for g in self.groups
            if g.open_on(day)
        ]

    def check(self, group_code: str, subgroup_code: str | None, day: date) -> None:
        """Raises ValueError unless the group (and subgroup, which a group that has
        subgroups needs) may be chosen on `day`."""
        group = self._by_code.get(group_code)
        if group is None or not group.open_on(day):
            raise ValueError(f"group {group_code} is not selectable")
        if subgroup_code is None:
            if group.subgroups:
                raise ValueError(f"group {group_code} needs a subgroup")
            return
        if not any(s.code == subgroup_code and s.open_on(day) for s in group.subgroups):
            raise ValueError(f"subgroup {subgroup_code} of {group_code} is not selectable")

    def names(self, group_code: str, subgroup_code: str | None) -> tuple[str, str | None]:
        """The display names, or the codes themselves for what the catalog lacks."""
        group = self._by_code.get(group_code)
        if group is None or subgroup_code is None:
            return (group.name if group else group_code), subgroup_code
        names = {s.code: s.name for s in group.subgroups}
        return group.name, names.get(subgroup_code, subgroup_code)


def _period(raw: dict[str, Any]) -> Period:
    valid_to = raw.get("valid_to")
    return Period(
        code=raw["code"],
        name=raw["name"],
        valid_from=date.fromisoformat(raw["valid_from"]),
        valid_to=None if valid_to is None else date.fromisoformat(valid_to),
    )


def _group(raw: dict[str, Any]) -> Group:
    period = _period(raw)
    subgroups = tuple(_period(s) for s in raw.get("subgroups") or ())
    return Group(period.code, period.name, period.valid_from, period.valid_to, subgroups)


# -- views ---------------------------------------------------------------------------


def prompt_id_for(vaccination_id: str) -> str:
    return str(uuid.uuid5(_PROMPT_IDS, vaccination_id))


def _by(user: str | None, unit: str | None) -> By | None:
    return None if user is None and unit is None else By(user_id=user, unit_id=unit)


def membership_view(row: Membership, catalog: Catalog) -> MembershipView:
    group_name, subgroup_name = catalog.names(row.group_code, row.subgroup_code)
    return MembershipView(
        membership_id=str(row.membership_id),
        group_code=row.group_code,
        group_name=group_name,
        subgroup_code=row.subgroup_code,
        subgroup_name=subgroup_name,
        reference_code=row.reference_code,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        status=row.status,
        version=row.version,
        created_at=row.created_at,
        created_by=_by(row.created_by_user, row.created_by_unit),
        updated_by=_by(row.updated_by_user, row.updated_by_unit),
    )


def prompt_data(
    start: StartedData, rows: Sequence[Membership], catalog: Catalog, today: date
) -> PromptData:
    """The popup's content from the customer's memberships: active ones, and the latest
    ended historical ones first (at most 50)."""
    active = [r for r in rows if r.status == "active"]
    historical = sorted(
        (r for r in rows if r.status == "historical"),
        key=lambda r: (
            r.valid_to or r.valid_from,
            r.valid_from,
            r.created_at,
            str(r.membership_id),
        ),
        reverse=True,
    )
    return PromptData(
        prompt_id=prompt_id_for(start.vaccination_id),
        vaccination_id=start.vaccination_id,
        unit_id=start.unit_id,
        user_id=start.user_id,
        personnummer=start.personnummer,
        active=[membership_view(r, catalog) for r in active],
        historical=[membership_view(r, catalog) for r in historical[:PROMPT_HISTORY_LIMIT]],
        historical_total=len(historical),
        catalog=catalog.selectable(today),
        suggestions=[],
        required=not active,
    )
