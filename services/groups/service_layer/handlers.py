"""One handler per inbound message: `handler(message, context, uow)` applies the domain
rule, changes the unit of work's state and queues the outgoing records (prompt, event,
rejection), all in the caller's transaction.

A handler raises PoisonRecord or DomainError before it changes anything, for a booking
or start to dead-letter; a command's broken rule is answered with `command_rejected`
instead (see `_answers_rejections`). What they send, with deterministic ids, is built
in `outgoing`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from services.common.envelope import PoisonRecord, new_event
from services.groups.adapters.rows import PromptRow
from services.groups.domain.authorization import UNAUTHORIZED_MESSAGE
from services.groups.domain.doses import (
    Basis,
    Dose,
    DoseStatus,
    Registration,
    Vaccine,
)
from services.groups.domain.errors import (
    DomainError,
    InvalidCommand,
    PromptNotFound,
    Unauthorized,
)
from services.groups.domain.ids import is_canonical_uuid
from services.groups.domain.membership import UNCHANGED, Actor, Membership, RemovalReason
from services.groups.domain.personnummer import Personnummer
from services.groups.domain.suggestions import suggestions_for
from services.groups.service_layer import doses, messages, outgoing
from services.groups.service_layer.commands import (
    AddGroup,
    BookingCancelled,
    BookingUpsert,
    ClosePrompt,
    Command,
    Invalid,
    RemoveGroup,
    UpdateGroup,
    VaccinationRegistered,
    VaccinationStarted,
)
from services.groups.service_layer.context import Context
from services.groups.service_layer.unit_of_work import AbstractUnitOfWork

C = TypeVar("C", bound=Command)
CommandHandler = Callable[[C, Context, AbstractUnitOfWork], Awaitable[None]]


def _personnummer_or_none(text: str | None) -> Personnummer | None:
    if text is None:
        return None
    try:
        return Personnummer.parse(text)
    except DomainError:
        return None


# -- schema violations ----------------------------------------------------------------


async def refuse_invalid(invalid: Invalid, ctx: Context, uow: AbstractUnitOfWork) -> None:
    """The unit first (UNAUTHORIZED); then a command is rejected (INVALID_COMMAND, with
    its personnummer if valid) and a booking or start is a SCHEMA_VIOLATION."""
    if invalid.unit_id is not None and not ctx.deps.authorization.allows(invalid.unit_id):
        await outgoing.refuse(uow, ctx)
        return
    if not issubclass(invalid.message_type, Command):
        raise PoisonRecord("SCHEMA_VIOLATION", invalid.problems)
    error = InvalidCommand(f"Invalid command: {invalid.problems}")
    await outgoing.reject(uow, ctx, _personnummer_or_none(invalid.personnummer), error)


# -- bookings ---------------------------------------------------------------------------


async def booking_upsert(booking: BookingUpsert, ctx: Context, uow: AbstractUnitOfWork) -> None:
    personnummer = Personnummer.parse(booking.customer.personnummer)
    now = ctx.deps.clock.now()
    await uow.repo.ensure_customer(
        personnummer,
        first_name=booking.customer.first_name,
        last_name=booking.customer.last_name,
        now=now,
    )
    vaccine, requested = booking.vaccine, booking.requested_group
    await uow.repo.upsert_booking(
        {
            "booking_id": booking.booking_id,
            "unit_id": booking.unit_id,
            "personnummer": personnummer.value,
            "start_time": booking.start_time,
            "vaccine_code": vaccine.code if vaccine else None,
            "vaccine_name": vaccine.name if vaccine else None,
            "dose": vaccine.dose if vaccine else None,
            "requested_group_code": requested.group_code if requested else None,
            "requested_subgroup_code": requested.subgroup_code if requested else None,
            "status": "booked",
            "source_event_time": ctx.event_time,
            "updated_at": now,
        }
    )


async def booking_cancelled(
    cancelled: BookingCancelled, ctx: Context, uow: AbstractUnitOfWork
) -> None:
    # A cancel for a booking never seen is kept as nothing: there is no customer
    # to attach it to, and a later created/updated event carries the truth.
    await uow.repo.cancel_booking(
        cancelled.booking_id, event_time=ctx.event_time, now=ctx.deps.clock.now()
    )


# -- vaccination started -> prompt ---------------------------------------------------

_VACCINATION_OF_ANOTHER = "vaccination_id is already known for another customer or unit"


def _known_for_another(
    personnummer: Personnummer, unit_id: str, prompt: PromptRow | None, dose: Dose | None
) -> bool:
    """A vaccination_id already started or recorded for another customer or unit."""
    return any(
        known is not None and (known.personnummer != personnummer.value or known.unit_id != unit_id)
        for known in (prompt, dose)
    )


async def vaccination_started(
    started: VaccinationStarted, ctx: Context, uow: AbstractUnitOfWork
) -> None:
    deps = ctx.deps
    if not deps.authorization.allows(started.unit_id):
        await outgoing.refuse(uow, ctx)
        return
    personnummer = Personnummer.parse(started.personnummer)
    existing = await uow.repo.get_prompt_by_vaccination(started.vaccination_id)
    dose = await uow.repo.get_dose(started.vaccination_id)
    if _known_for_another(personnummer, started.unit_id, existing, dose):
        # Re-sending would hand one patient's groups to whoever reuses the id.
        await outgoing.reject(uow, ctx, personnummer, InvalidCommand(_VACCINATION_OF_ANOTHER))
        return
    if existing is not None:
        # Same vaccination again: re-send the very same prompt (same ids, same bytes).
        await uow.outbox.add_event(
            deps.prompts_topic, existing.personnummer.encode(), existing.event
        )
        return
    now, today, catalog = deps.clock.now(), deps.clock.today(), deps.catalog.current
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
    requested = (
        (booking.requested_group_code, booking.requested_subgroup_code)
        if booking is not None and booking.status == "booked" and booking.requested_group_code
        else None
    )
    suggestions = suggestions_for(
        customer, catalog, requested=requested, vaccine_code=vaccine_code, today=today
    )
    prompt_id = outgoing.prompt_id_for(started.vaccination_id)
    data = {
        "prompt_id": prompt_id,
        "vaccination_id": started.vaccination_id,
        "unit_id": started.unit_id,
        "user_id": started.user_id,
        "personnummer": personnummer.value,
        **messages.customer_groups_view(
            customer, catalog, historical_limit=messages.PROMPT_HISTORY_LIMIT
        ),
        "catalog": messages.catalog_view(catalog.selectable_on(today)),
        "suggestions": [messages.suggestion_view(s) for s in suggestions],
        "required": not customer.active(),
    }
    prompt = new_event(
        messages.PROMPT,
        messages.EVENT_SOURCE,
        data,
        event_id=outgoing.event_id(messages.PROMPT, started.vaccination_id),
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
    await uow.outbox.add_event(deps.prompts_topic, personnummer.value.encode(), value)


# -- commands --------------------------------------------------------------------------


def _answers_rejections(handler: CommandHandler[C]) -> CommandHandler[C]:
    """The unit is checked first; a broken rule is answered with `command_rejected`,
    keyed by the command's personnummer whenever that is valid."""

    @functools.wraps(handler)
    async def handle(cmd: C, ctx: Context, uow: AbstractUnitOfWork) -> None:
        if not ctx.deps.authorization.allows(cmd.actor.unit_id):
            await outgoing.refuse(uow, ctx)
            return
        try:
            await handler(cmd, ctx, uow)
        except Unauthorized:
            await outgoing.refuse(uow, ctx)
        except DomainError as error:
            await outgoing.reject(uow, ctx, _personnummer_or_none(cmd.personnummer), error)

    return handle


def _actor(cmd: Command) -> Actor:
    return Actor(cmd.actor.user_id, cmd.actor.unit_id)


async def _membership_changed(
    uow: AbstractUnitOfWork,
    ctx: Context,
    cmd: Command,
    personnummer: Personnummer,
    action: str,
    change: tuple[Membership | None, Membership],  # (before, after); no before: added
    now: datetime,
    detail: dict[str, Any],
    *,
    reason: RemovalReason | None = None,
) -> None:
    """Write the membership, audit the change and tell of it."""
    (previous, membership), actor = change, cmd.actor
    if action == "customer_group.add":
        await uow.repo.insert_membership(personnummer, membership, now=now)
    else:
        await uow.repo.save_membership(membership, now=now)
    catalog = ctx.deps.catalog.current
    data: dict[str, Any] = {
        "command_id": ctx.event_id,
        "personnummer": personnummer.value,
        "actor": messages.actor_view(actor.user_id, actor.unit_id),
    }
    if reason is not None:
        data["reason"] = reason.value
    data["membership"] = messages.membership_view(membership, catalog)
    if previous is not None:
        data["previous"] = messages.membership_view(previous, catalog)
    membership_id = membership.membership_id
    await outgoing.record_change(
        uow, ctx, cmd, personnummer, action, data, detail, now, membership_id
    )
    customer = await uow.repo.get_customer(personnummer)
    await doses.reconfirm_doses(uow, ctx.deps, personnummer, customer, now)


@_answers_rejections
async def add_group(cmd: AddGroup, ctx: Context, uow: AbstractUnitOfWork) -> None:
    personnummer = Personnummer.parse(cmd.personnummer)
    if cmd.prompt_id is not None:
        await _require_prompt(uow, cmd.prompt_id, personnummer, None)
    clock, catalog = ctx.deps.clock, ctx.deps.catalog.current
    now, today = clock.now(), clock.today()
    await uow.repo.ensure_customer(personnummer, now=now)
    customer = await uow.repo.get_customer(personnummer)
    membership = customer.add_group(
        catalog,
        membership_id=outgoing.membership_id_for(ctx.event_id),
        group_code=cmd.group_code,
        subgroup_code=cmd.subgroup_code,
        reference_code=cmd.reference_code,
        valid_from=cmd.valid_from,
        actor=_actor(cmd),
        now=now,
        today=today,
    )
    detail = {"prompt_id": cmd.prompt_id}
    change = (None, membership)
    await _membership_changed(
        uow, ctx, cmd, personnummer, "customer_group.add", change, now, detail
    )


@_answers_rejections
async def update_group(cmd: UpdateGroup, ctx: Context, uow: AbstractUnitOfWork) -> None:
    personnummer = Personnummer.parse(cmd.personnummer)
    given = cmd.model_fields_set
    clock, catalog = ctx.deps.clock, ctx.deps.catalog.current
    now, today = clock.now(), clock.today()
    customer = await uow.repo.get_customer(personnummer)
    change = customer.correct(
        catalog,
        membership_id=cmd.membership_id,
        group_code=cmd.group_code if "group_code" in given else UNCHANGED,
        subgroup_code=cmd.subgroup_code if "subgroup_code" in given else UNCHANGED,
        reference_code=cmd.reference_code if "reference_code" in given else UNCHANGED,
        actor=_actor(cmd),
        today=today,
    )
    detail = {"version": change[1].version}
    action = "customer_group.update"
    await _membership_changed(uow, ctx, cmd, personnummer, action, change, now, detail)


@_answers_rejections
async def remove_group(cmd: RemoveGroup, ctx: Context, uow: AbstractUnitOfWork) -> None:
    personnummer = Personnummer.parse(cmd.personnummer)
    now, today = ctx.deps.clock.now(), ctx.deps.clock.today()
    reason = RemovalReason(cmd.reason or RemovalReason.ENDED)
    customer = await uow.repo.get_customer(personnummer)
    membership = customer.remove(
        membership_id=cmd.membership_id,
        valid_to=cmd.valid_to,
        reason=reason,
        actor=_actor(cmd),
        today=today,
    )
    action, change = "customer_group.remove", (None, membership)
    detail = {"reason": reason.value}
    await _membership_changed(
        uow, ctx, cmd, personnummer, action, change, now, detail, reason=reason
    )


@_answers_rejections
async def close_prompt(cmd: ClosePrompt, ctx: Context, uow: AbstractUnitOfWork) -> None:
    """The popup closed: the dose's record gets `confirmed_at`. Until the dose is
    registered its groups are those covering the day of the close; once registered, the
    registration's day decides and the close only records when the popup was closed."""
    personnummer = Personnummer.parse(cmd.personnummer)
    prompt = await _require_prompt(uow, cmd.prompt_id, personnummer, cmd.vaccination_id)
    if prompt.unit_id != cmd.actor.unit_id:
        raise Unauthorized(UNAUTHORIZED_MESSAGE)  # a popup is closed by its own unit
    now = ctx.deps.clock.now()
    dose = await uow.repo.get_dose(prompt.vaccination_id)
    if dose is not None and dose.personnummer != personnummer.value:
        raise InvalidCommand(_VACCINATION_OF_ANOTHER)
    if dose is None:
        dose = _new_dose(prompt.vaccination_id, personnummer, prompt.unit_id, now, None)
    dose = replace(dose, prompt_id=prompt.prompt_id, confirmed_at=now)
    await uow.repo.close_prompt(prompt.prompt_id, now=now)
    customer = await uow.repo.get_customer(personnummer)
    actor = Actor(cmd.actor.user_id, cmd.actor.unit_id)
    dose = await doses.decide(
        uow, ctx.deps, dose, customer, now=now, command_id=ctx.event_id, actor=actor
    )
    detail = {"vaccination_id": prompt.vaccination_id}
    action, data = "customer_group.prompt_close", messages.confirmation_data(dose)
    await outgoing.record_change(uow, ctx, cmd, personnummer, action, data, detail, now)


# -- vaccination registered -> the dose's record ----------------------------------------


def _new_dose(
    vaccination_id: str,
    personnummer: Personnummer,
    unit_id: str,
    now: datetime,
    prompt_id: str | None,
) -> Dose:
    """A record not stored yet (version 0): `doses.decide` makes it version 1."""
    return Dose(
        vaccination_id=vaccination_id,
        personnummer=personnummer.value,
        unit_id=unit_id,
        basis=Basis.POPUP,
        status=DoseStatus.COMPLETED,
        prompt_id=prompt_id,
        confirmed_at=None,
        administered_at=None,
        vaccine=None,
        actor=None,
        memberships=(),
        version=0,
        command_id=None,
        updated_at=now,
    )


async def vaccination_registered(
    registered: VaccinationRegistered, ctx: Context, uow: AbstractUnitOfWork
) -> None:
    """The dose's record takes the registration: its time decides the groups. The same
    content again changes nothing; other content is the record's next version."""
    deps = ctx.deps
    if not deps.authorization.allows(registered.unit_id):
        await outgoing.refuse(uow, ctx)
        return
    personnummer = Personnummer.parse(registered.personnummer)
    vaccination_id, vaccine = registered.vaccination_id, registered.vaccine
    registration = Registration(
        unit_id=registered.unit_id,
        administered_at=registered.administered_at,
        vaccine=Vaccine(vaccine.code, vaccine.name, vaccine.dose_number),
        status=DoseStatus(registered.status or DoseStatus.COMPLETED),
    )
    dose = await uow.repo.get_dose(vaccination_id)
    prompt = await uow.repo.get_prompt_by_vaccination(vaccination_id)
    if _known_for_another(personnummer, registered.unit_id, prompt, dose):
        # As for a start: answering would hand one patient's dose to whoever reuses it.
        await outgoing.reject(uow, ctx, personnummer, InvalidCommand(_VACCINATION_OF_ANOTHER))
        return
    if dose is not None and dose.registration() == registration:
        return  # the same registration again (also under a new event id)
    now = deps.clock.now()
    if dose is None:
        # The popup's prompt, when the vaccination was started (closed or not).
        prompt_id = prompt.prompt_id if prompt is not None else None
        dose = _new_dose(vaccination_id, personnummer, registered.unit_id, now, prompt_id)
    customer = await uow.repo.get_customer(personnummer)
    actor = Actor(registered.user_id, registered.unit_id)
    dose = await doses.decide(
        uow,
        deps,
        dose.registered(registration),
        customer,
        now=now,
        command_id=ctx.event_id,
        actor=actor,
    )
    detail = {"vaccination_id": vaccination_id, "version": dose.version}
    action, data = "vaccination.registered", messages.confirmation_data(dose)
    await outgoing.record_change(uow, ctx, registered, personnummer, action, data, detail, now)


async def _require_prompt(
    uow: AbstractUnitOfWork,
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
