"""What handlers send and record: deterministic ids, events (keyed by the customer),
refusals and rejections of commands, the PDL audit row of an accepted command, and the
catalog feed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services.common.envelope import encode_json, new_event
from services.common.ids import Uuid5Namespace
from services.groups.domain.authorization import UNAUTHORIZED_MESSAGE
from services.groups.domain.catalog import Catalog
from services.groups.domain.errors import DomainError, Unauthorized
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import messages
from services.groups.service_layer.commands import Command, VaccinationRegistered
from services.groups.service_layer.context import Context, Dependencies
from services.groups.service_layer.unit_of_work import AbstractUnitOfWork, OutgoingRecords

# Deterministic ids: reprocessing the same input yields the same ids, never a second one.
_PROMPT_IDS = Uuid5Namespace(uuid.UUID("6f1d7a52-1c1e-4b7e-9a57-5d0c6f0b7f01"))
_EVENT_IDS = Uuid5Namespace(uuid.UUID("0b8f3c6e-2a44-4f3f-8f2b-9b6a7c1d2e03"))
_MEMBERSHIP_IDS = Uuid5Namespace(uuid.UUID("9c2e5b1a-7d3f-4e6a-b1c8-3f5d7e9a0b05"))


def prompt_id_for(vaccination_id: str) -> str:
    return _PROMPT_IDS(vaccination_id)


def membership_id_for(command_id: str) -> str:
    return _MEMBERSHIP_IDS(command_id)


def event_id(*parts: str) -> str:
    return _EVENT_IDS("\x1f".join(parts))


# -- outgoing records -------------------------------------------------------------


async def emit(
    uow: AbstractUnitOfWork,
    ctx: Context,
    type_: str,
    personnummer: Personnummer | None,
    data: dict[str, Any],
    *,
    now: datetime | None = None,
    key: bytes | None = None,
) -> None:
    """An event answering command `ctx.event_id`. `now` is the instant the change was
    written, so the event's time equals the row's updated_at (the export's live and
    backfilled records are then identical). Keyed by the personnummer, else by `key`."""
    if personnummer is not None:
        key = personnummer.value.encode()
    time = now or ctx.deps.clock.now()
    await publish(uow, ctx.deps, type_, key, data, event_id(type_, ctx.event_id), time)


async def publish(
    uow: AbstractUnitOfWork,
    deps: Dependencies,
    type_: str,
    key: bytes | None,
    data: dict[str, Any],
    id_: str,
    time: datetime,
) -> None:
    """An event on the events topic, also one no command caused (a re-confirmation)."""
    event = new_event(type_, messages.EVENT_SOURCE, data, event_id=id_, time=time)
    await uow.outbox.add_event(deps.events_topic, key, event.to_bytes())


async def refuse(uow: AbstractUnitOfWork, ctx: Context) -> None:
    """UNAUTHORIZED with no patient data, keyed as the refused record was (contract)."""
    data = messages.rejected_data(
        ctx.event_id, None, Unauthorized.reason_code, UNAUTHORIZED_MESSAGE
    )
    await emit(uow, ctx, messages.REJECTED, None, data, key=ctx.key)


async def reject(
    uow: AbstractUnitOfWork, ctx: Context, personnummer: Personnummer | None, error: DomainError
) -> None:
    data = messages.rejected_data(
        ctx.event_id, personnummer.value if personnummer else None, error.reason_code, str(error)
    )
    await emit(uow, ctx, messages.REJECTED, personnummer, data)


# What each accepted command is audited as, and the event that tells of it.
_EVENT_OF_ACTION = {
    "customer_group.add": messages.ADDED,
    "customer_group.update": messages.UPDATED,
    "customer_group.remove": messages.REMOVED,
    "customer_group.prompt_close": messages.CONFIRMED,
    "vaccination.registered": messages.CONFIRMED,
}


async def record_change(
    uow: AbstractUnitOfWork,
    ctx: Context,
    cmd: Command | VaccinationRegistered,
    personnummer: Personnummer,
    action: str,
    data: dict[str, Any],
    detail: dict[str, Any],
    now: datetime,
    membership_id: str | None = None,
) -> None:
    """The closing steps of every accepted command (and registration): the PDL audit
    row, then the event."""
    actor = cmd.actor
    await uow.repo.audit(
        action=action,
        user_id=actor.user_id,
        unit_id=actor.unit_id,
        personnummer=personnummer,
        membership_id=membership_id,
        detail={"command_id": ctx.event_id, **detail},
    )
    await emit(uow, ctx, _EVENT_OF_ACTION[action], personnummer, data, now=now)


async def publish_catalog(
    outbox: OutgoingRecords, catalog: Catalog, *, topic: str, now: datetime
) -> None:
    """One `customer_group.catalog_group` per group, keyed by its code, in the transaction
    of the caller. The id covers the data only: the same group published again (every
    start, every import) has the same id, so a repeat is harmless."""
    for group in catalog.groups:
        data = messages.catalog_group_view(group, catalog.version)
        event = new_event(
            messages.CATALOG_GROUP,
            messages.EVENT_SOURCE,
            data,
            event_id=event_id(messages.CATALOG_GROUP, encode_json(data).decode()),
            time=now,
        )
        await outbox.add_event(topic, group.code.encode(), event.to_bytes())
