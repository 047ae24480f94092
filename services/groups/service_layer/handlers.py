"""One handler per inbound message type: validate, apply the domain rule, persist,
and write the outgoing records to the outbox, all in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from services.common.envelope import CloudEvent, PoisonRecord, new_event
from services.common.ids import Uuid5Namespace
from services.common.records import SourceRecord
from services.common.settings import TopicSettings
from services.groups.domain.catalog import REQUESTED_AT_BOOKING, Catalog, Suggestion
from services.groups.domain.errors import (
    DomainError,
    InvalidCommand,
    PromptNotFound,
    Unauthorized,
)
from services.groups.domain.ids import is_canonical_uuid
from services.groups.domain.membership import UNCHANGED, Customer
from services.groups.domain.personnummer import Personnummer
from services.groups.entrypoints import payloads
from services.groups.service_layer import messages
from services.groups.service_layer.unit_of_work import UnitOfWork

# Deterministic ids: reprocessing the same input yields the same ids, never a second one.
_PROMPT_IDS = Uuid5Namespace(uuid.UUID("6f1d7a52-1c1e-4b7e-9a57-5d0c6f0b7f01"))
_EVENT_IDS = Uuid5Namespace(uuid.UUID("0b8f3c6e-2a44-4f3f-8f2b-9b6a7c1d2e03"))
_MEMBERSHIP_IDS = Uuid5Namespace(uuid.UUID("9c2e5b1a-7d3f-4e6a-b1c8-3f5d7e9a0b05"))

P = TypeVar("P", bound=BaseModel)


def prompt_id_for(vaccination_id: str) -> str:
    return _PROMPT_IDS(vaccination_id)


def membership_id_for(command_id: str) -> str:
    return _MEMBERSHIP_IDS(command_id)


def _event_id(*parts: str) -> str:
    return _EVENT_IDS("\x1f".join(parts))


def schema_summary(error: ValidationError) -> str:
    """Which fields are wrong and why, without echoing the input values."""
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "data"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def _personnummer_or_none(data: Any) -> Personnummer | None:
    value = data.get("personnummer") if isinstance(data, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return Personnummer.parse(value)
    except DomainError:
        return None


def _parse(model: type[P], data: Any) -> P:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise PoisonRecord("SCHEMA_VIOLATION", schema_summary(error)) from None


class Clock:
    """Wall clock; `today` is the clinic's local date (Europe/Stockholm)."""

    def __init__(self, timezone: str = "Europe/Stockholm") -> None:
        self._zone = ZoneInfo(timezone)

    def now(self) -> datetime:
        return datetime.now(self._zone)

    def today(self) -> date:
        return self.now().date()


class CatalogHolder:
    """The catalog in force; replaced when the catalog tables change."""

    def __init__(self, catalog: Catalog) -> None:
        self.current = catalog


# Fixed, so a refusal tells an unknown sender nothing about any patient.
UNAUTHORIZED_MESSAGE = "The unit is not allowed to act on customer groups"


@dataclass(frozen=True)
class Authorization:
    """Units allowed to send commands, starts and registrations; None means open (set
    on purpose with `*`, or dev mode)."""

    allowed_units: frozenset[str] | None

    def allows(self, unit_id: str) -> bool:
        return self.allowed_units is None or unit_id in self.allowed_units

    def check(self, unit_id: str) -> None:
        if not self.allows(unit_id):
            raise Unauthorized(UNAUTHORIZED_MESSAGE)


def _claimed_unit(data: Any, *path: str) -> str | None:
    """The unit a raw payload names at `path`, read before any other check (contract,
    "Units"); None when it names none, so the schema check reports that instead."""
    for name in path:
        data = data.get(name) if isinstance(data, dict) else None
    return data if isinstance(data, str) else None


class GroupsHandlers:
    def __init__(
        self,
        *,
        topics: TopicSettings,
        catalog: CatalogHolder,
        clock: Clock,
        authorization: Authorization,
    ) -> None:
        self._topics = topics
        self._catalog = catalog
        self._clock = clock
        self._auth = authorization

    # -- bookings ------------------------------------------------------------

    async def booking_upsert(self, event: CloudEvent, _r: SourceRecord, uow: UnitOfWork) -> None:
        booking = _parse(payloads.BookingUpsert, event.data)
        personnummer = Personnummer.parse(booking.customer.personnummer)
        now = self._clock.now()
        await uow.repo.ensure_customer(
            personnummer,
            first_name=booking.customer.first_name,
            last_name=booking.customer.last_name,
            now=now,
        )
        await uow.repo.upsert_booking(
            {
                "booking_id": booking.booking_id,
                "unit_id": booking.unit_id,
                "personnummer": personnummer.value,
                "start_time": booking.start_time,
                "vaccine_code": booking.vaccine.code if booking.vaccine else None,
                "vaccine_name": booking.vaccine.name if booking.vaccine else None,
                "dose": booking.vaccine.dose if booking.vaccine else None,
                "requested_group_code": (
                    booking.requested_group.group_code if booking.requested_group else None
                ),
                "requested_subgroup_code": (
                    booking.requested_group.subgroup_code if booking.requested_group else None
                ),
                "status": "booked",
                "source_event_time": event.time,
                "updated_at": now,
            }
        )

    async def booking_cancelled(self, event: CloudEvent, _r: SourceRecord, uow: UnitOfWork) -> None:
        cancelled = _parse(payloads.BookingCancelled, event.data)
        # A cancel for a booking never seen is kept as nothing: there is no customer
        # to attach it to, and a later created/updated event carries the truth.
        await uow.repo.cancel_booking(
            cancelled.booking_id, event_time=event.time, now=self._clock.now()
        )

    # -- vaccination started -> prompt ------------------------------------------

    async def vaccination_started(
        self, event: CloudEvent, record: SourceRecord, uow: UnitOfWork
    ) -> None:
        unit = _claimed_unit(event.data, "unit_id")
        if unit is not None and not self._auth.allows(unit):
            await self._refuse(uow, event.id, record)
            return
        started = _parse(payloads.VaccinationStarted, event.data)
        personnummer = Personnummer.parse(started.personnummer)
        existing = await uow.repo.get_prompt_by_vaccination(started.vaccination_id)
        if existing is not None:
            if existing.personnummer != personnummer.value or existing.unit_id != unit:
                # Re-sending would hand one patient's groups to whoever reuses the id.
                error = InvalidCommand(
                    "vaccination_id is already known for another customer or unit"
                )
                await self._reject(uow, event.id, personnummer, error)
                return
            # Same vaccination again: re-send the very same prompt (same ids, same bytes).
            await uow.outbox.add(
                self._topics.prompts, existing.personnummer.encode(), existing.event
            )
            return
        now, today = self._clock.now(), self._clock.today()
        catalog = self._catalog.current
        await uow.repo.ensure_customer(personnummer, now=now)
        customer = await uow.repo.get_customer(personnummer)
        booking = await uow.repo.get_booking(started.booking_id) if started.booking_id else None
        if booking is not None and booking.personnummer != personnummer.value:
            booking = None  # a booking of someone else is no hint for this patient
        vaccine_code = (
            started.vaccine.code
            if started.vaccine
            else (booking.vaccine_code if booking is not None else None)
        )
        suggestions = self._suggestions(customer, catalog, booking, vaccine_code, today)
        prompt_id = prompt_id_for(started.vaccination_id)
        data = {
            "prompt_id": prompt_id,
            "vaccination_id": started.vaccination_id,
            "unit_id": started.unit_id,
            "user_id": started.user_id,
            "personnummer": personnummer.value,
            **messages.customer_groups_view(customer, catalog),
            "catalog": messages.catalog_view(catalog.selectable_on(today)),
            "suggestions": [messages.suggestion_view(s) for s in suggestions],
            "required": not customer.active(),
        }
        prompt = new_event(
            messages.PROMPT,
            messages.EVENT_SOURCE,
            data,
            event_id=_event_id(messages.PROMPT, started.vaccination_id),
            time=now,
        )
        value = prompt.to_bytes()
        await uow.repo.insert_prompt(
            {
                "prompt_id": prompt_id,
                "vaccination_id": started.vaccination_id,
                "personnummer": personnummer.value,
                "unit_id": started.unit_id,
                "user_id": started.user_id,
                "booking_id": started.booking_id,
                "vaccine_code": vaccine_code,
                "event": value,
                "created_at": now,
            }
        )
        await uow.repo.audit(
            action="prompt_shown",
            user_id=started.user_id,
            unit_id=started.unit_id,
            personnummer=personnummer,
            detail={"vaccination_id": started.vaccination_id},
        )
        await uow.outbox.add(self._topics.prompts, personnummer.value.encode(), value)

    def _suggestions(
        self,
        customer: Customer,
        catalog: Catalog,
        booking: Any,
        vaccine_code: str | None,
        today: date,
    ) -> list[Suggestion]:
        active_groups = {m.group_code for m in customer.active()}
        found: list[Suggestion] = []
        if booking is not None and booking.status == "booked" and booking.requested_group_code:
            try:
                catalog.require_selectable(
                    booking.requested_group_code, booking.requested_subgroup_code, today
                )
                found.append(
                    Suggestion(
                        booking.requested_group_code,
                        booking.requested_subgroup_code,
                        REQUESTED_AT_BOOKING,
                    )
                )
            except DomainError:
                pass  # requested online but not selectable (any more): no suggestion
        birth = customer.personnummer.birth_date
        age = customer.personnummer.age_on(today) if birth <= today else None
        found.extend(catalog.suggestions(age, vaccine_code, today))
        unique: list[Suggestion] = []
        seen: set[str] = set()
        for suggestion in found:
            if suggestion.group_code in active_groups or suggestion.group_code in seen:
                continue
            seen.add(suggestion.group_code)
            unique.append(suggestion)
        return unique

    # -- commands ----------------------------------------------------------------

    async def _command(
        self,
        event: CloudEvent,
        record: SourceRecord,
        uow: UnitOfWork,
        model: type[P],
        apply: Callable[[P, Personnummer], Awaitable[None]],
    ) -> None:
        unit = _claimed_unit(event.data, "actor", "unit_id")
        if unit is not None and not self._auth.allows(unit):
            await self._refuse(uow, event.id, record)
            return
        # Best effort first, so every answer about a valid personnummer is keyed by it,
        # also when the payload is what is wrong.
        personnummer = _personnummer_or_none(event.data)
        try:
            try:
                command = model.model_validate(event.data)
            except ValidationError as error:
                raise InvalidCommand(f"Invalid command: {schema_summary(error)}") from None
            assert isinstance(command, payloads.Command)
            personnummer = Personnummer.parse(command.personnummer)
            await apply(command, personnummer)
        except Unauthorized:
            await self._refuse(uow, event.id, record)
        except DomainError as error:
            await self._reject(uow, event.id, personnummer, error)

    async def _refuse(self, uow: UnitOfWork, command_id: str, record: SourceRecord) -> None:
        """UNAUTHORIZED with no patient data, keyed as the refused record was (contract)."""
        data = messages.rejected_data(
            command_id, None, Unauthorized.reason_code, UNAUTHORIZED_MESSAGE
        )
        await self._emit(uow, messages.REJECTED, command_id, None, data, key=record.key)

    async def _reject(
        self,
        uow: UnitOfWork,
        command_id: str,
        personnummer: Personnummer | None,
        error: DomainError,
    ) -> None:
        data = messages.rejected_data(
            command_id,
            personnummer.value if personnummer else None,
            error.reason_code,
            str(error),
        )
        await self._emit(uow, messages.REJECTED, command_id, personnummer, data)

    async def _emit(
        self,
        uow: UnitOfWork,
        type_: str,
        command_id: str,
        personnummer: Personnummer | None,
        data: dict[str, Any],
        *,
        now: datetime | None = None,
        key: bytes | None = None,
    ) -> None:
        """`now` is the instant the change was written, so the event's time equals the
        row's updated_at (the export's live and backfilled records are then identical).
        The record is keyed by the personnummer, else by `key`."""
        event = new_event(
            type_,
            messages.EVENT_SOURCE,
            data,
            event_id=_event_id(type_, command_id),
            time=now or self._clock.now(),
        )
        if personnummer is not None:
            key = personnummer.value.encode()
        await uow.outbox.add(self._topics.events, key, event.to_bytes())

    def _change_data(
        self, command_id: str, personnummer: Personnummer, actor: payloads.Actor
    ) -> dict[str, Any]:
        return {
            "command_id": command_id,
            "personnummer": personnummer.value,
            "actor": messages.actor_view(actor.user_id, actor.unit_id),
        }

    async def add_group(self, event: CloudEvent, record: SourceRecord, uow: UnitOfWork) -> None:
        async def apply(cmd: payloads.AddGroup, personnummer: Personnummer) -> None:
            if cmd.prompt_id is not None:
                await self._require_prompt(uow, cmd.prompt_id, personnummer, None)
            now, today, catalog = self._clock.now(), self._clock.today(), self._catalog.current
            await uow.repo.ensure_customer(personnummer, now=now)
            customer = await uow.repo.get_customer(personnummer)
            membership = customer.add_group(
                catalog,
                membership_id=membership_id_for(event.id),
                group_code=cmd.group_code,
                subgroup_code=cmd.subgroup_code,
                reference_code=cmd.reference_code,
                valid_from=cmd.valid_from,
                today=today,
            )
            actor = cmd.actor
            await uow.repo.insert_membership(
                personnummer, membership, user_id=actor.user_id, unit_id=actor.unit_id, now=now
            )
            await uow.repo.audit(
                action="customer_group.add",
                user_id=actor.user_id,
                unit_id=actor.unit_id,
                personnummer=personnummer,
                membership_id=membership.membership_id,
                detail={"command_id": event.id, "prompt_id": cmd.prompt_id},
            )
            data = self._change_data(event.id, personnummer, actor)
            data["membership"] = messages.membership_view(membership, catalog)
            await self._emit(uow, messages.ADDED, event.id, personnummer, data, now=now)

        await self._command(event, record, uow, payloads.AddGroup, apply)

    async def update_group(self, event: CloudEvent, record: SourceRecord, uow: UnitOfWork) -> None:
        async def apply(cmd: payloads.UpdateGroup, personnummer: Personnummer) -> None:
            given = cmd.model_fields_set
            now, today, catalog = self._clock.now(), self._clock.today(), self._catalog.current
            customer = await uow.repo.get_customer(personnummer)
            previous, membership = customer.correct(
                catalog,
                membership_id=cmd.membership_id,
                subgroup_code=cmd.subgroup_code if "subgroup_code" in given else UNCHANGED,
                reference_code=cmd.reference_code if "reference_code" in given else UNCHANGED,
                today=today,
            )
            actor = cmd.actor
            await uow.repo.save_membership(
                membership, user_id=actor.user_id, unit_id=actor.unit_id, now=now
            )
            await uow.repo.audit(
                action="customer_group.update",
                user_id=actor.user_id,
                unit_id=actor.unit_id,
                personnummer=personnummer,
                membership_id=membership.membership_id,
                detail={"command_id": event.id, "version": membership.version},
            )
            data = self._change_data(event.id, personnummer, actor)
            data["membership"] = messages.membership_view(membership, catalog)
            data["previous"] = messages.membership_view(previous, catalog)
            await self._emit(uow, messages.UPDATED, event.id, personnummer, data, now=now)

        await self._command(event, record, uow, payloads.UpdateGroup, apply)

    async def remove_group(self, event: CloudEvent, record: SourceRecord, uow: UnitOfWork) -> None:
        async def apply(cmd: payloads.RemoveGroup, personnummer: Personnummer) -> None:
            now, today, catalog = self._clock.now(), self._clock.today(), self._catalog.current
            customer = await uow.repo.get_customer(personnummer)
            membership = customer.remove(
                membership_id=cmd.membership_id, valid_to=cmd.valid_to, today=today
            )
            actor = cmd.actor
            await uow.repo.save_membership(
                membership, user_id=actor.user_id, unit_id=actor.unit_id, now=now
            )
            await uow.repo.audit(
                action="customer_group.remove",
                user_id=actor.user_id,
                unit_id=actor.unit_id,
                personnummer=personnummer,
                membership_id=membership.membership_id,
                detail={"command_id": event.id},
            )
            data = self._change_data(event.id, personnummer, actor)
            data["membership"] = messages.membership_view(membership, catalog)
            await self._emit(uow, messages.REMOVED, event.id, personnummer, data, now=now)

        await self._command(event, record, uow, payloads.RemoveGroup, apply)

    async def close_prompt(self, event: CloudEvent, record: SourceRecord, uow: UnitOfWork) -> None:
        async def apply(cmd: payloads.ClosePrompt, personnummer: Personnummer) -> None:
            prompt = await self._require_prompt(
                uow, cmd.prompt_id, personnummer, cmd.vaccination_id
            )
            if prompt.unit_id != cmd.actor.unit_id:
                raise Unauthorized(UNAUTHORIZED_MESSAGE)  # a popup is closed by its own unit
            now, catalog = self._clock.now(), self._catalog.current
            customer = await uow.repo.get_customer(personnummer)
            active = [messages.membership_view(m, catalog) for m in customer.active()]
            actor = cmd.actor
            await uow.repo.close_prompt(prompt.prompt_id, now=now)
            version = await uow.repo.upsert_confirmation(
                {
                    "vaccination_id": prompt.vaccination_id,
                    "prompt_id": prompt.prompt_id,
                    "personnummer": personnummer.value,
                    "unit_id": prompt.unit_id,
                    "user_id": actor.user_id,
                    "command_id": event.id,
                    "memberships": active,
                    "confirmed_at": now,
                }
            )
            await uow.repo.audit(
                action="customer_group.prompt_close",
                user_id=actor.user_id,
                unit_id=actor.unit_id,
                personnummer=personnummer,
                detail={"command_id": event.id, "vaccination_id": prompt.vaccination_id},
            )
            data = {
                "command_id": event.id,
                "prompt_id": prompt.prompt_id,
                "vaccination_id": prompt.vaccination_id,
                "personnummer": personnummer.value,
                "actor": messages.actor_view(actor.user_id, actor.unit_id),
                "unit_id": prompt.unit_id,
                "memberships": active,
                "confirmed_at": now.isoformat(),
                "version": version,
            }
            await self._emit(uow, messages.CONFIRMED, event.id, personnummer, data, now=now)

        await self._command(event, record, uow, payloads.ClosePrompt, apply)

    async def _require_prompt(
        self,
        uow: UnitOfWork,
        prompt_id: str,
        personnummer: Personnummer,
        vaccination_id: str | None,
    ) -> Any:
        prompt = await uow.repo.get_prompt(prompt_id) if is_canonical_uuid(prompt_id) else None
        if (
            prompt is None
            or prompt.personnummer != personnummer.value
            or (vaccination_id is not None and prompt.vaccination_id != vaccination_id)
        ):
            raise PromptNotFound("No prompt with that prompt_id for this customer and vaccination")
        return prompt
