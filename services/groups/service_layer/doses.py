"""The dose-level record: decide a dose's groups and store its next version, and decide
a customer's doses again after their memberships changed.

`decide` serves the handlers of `prompt_close` and `vaccination.registered`, which audit
and answer with the confirmation themselves. `reconfirm_doses` is the one way a
membership change reaches the doses: it needs no command (a retirement sweep calls it
too), so its confirmations carry `command_id` and `actor` null.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from services.groups.domain.doses import Dose, covering, same_groups
from services.groups.domain.membership import Actor, Customer
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import messages, outgoing
from services.groups.service_layer.context import DOSE_ZONE, Dependencies
from services.groups.service_layer.unit_of_work import AbstractUnitOfWork


def _groups_of(dose: Dose, customer: Customer, deps: Dependencies) -> tuple[dict[str, Any], ...]:
    catalog = deps.catalog.current
    memberships = covering(customer.memberships, dose, DOSE_ZONE)
    return tuple(messages.membership_view(m, catalog) for m in memberships)


async def _store_next(
    uow: AbstractUnitOfWork,
    dose: Dose,
    groups: tuple[dict[str, Any], ...],
    *,
    now: datetime,
    command_id: str | None,
    actor: Actor | None,
) -> Dose:
    decided = replace(
        dose,
        memberships=groups,
        version=dose.version + 1,
        command_id=command_id,
        actor=actor,
        updated_at=now,
    )
    await uow.repo.save_dose(decided)
    return decided


async def decide(
    uow: AbstractUnitOfWork,
    deps: Dependencies,
    dose: Dose,
    customer: Customer,
    *,
    now: datetime,
    command_id: str,
    actor: Actor,
) -> Dose:
    """Store `dose` as its next version (a new record's `version` is 0), its groups the
    customer's memberships covering the day of the dose; returns what was stored."""
    groups = _groups_of(dose, customer, deps)
    return await _store_next(uow, dose, groups, now=now, command_id=command_id, actor=actor)


async def reconfirm_doses(
    uow: AbstractUnitOfWork,
    deps: Dependencies,
    personnummer: Personnummer,
    customer: Customer,
    now: datetime,
) -> None:
    """After `customer`'s memberships changed: every dose of the customer whose covering
    memberships are no longer the ones recorded gets its next version and is confirmed
    again (`command_id` and `actor` null). A customer without doses costs nothing more
    than the dose records the batch read with the customer."""
    for dose in await uow.repo.doses_of(personnummer):
        groups = _groups_of(dose, customer, deps)
        if same_groups(dose.memberships, groups):
            continue
        decided = await _store_next(uow, dose, groups, now=now, command_id=None, actor=None)
        await outgoing.publish(
            uow,
            deps,
            messages.CONFIRMED,
            personnummer.value.encode(),
            messages.confirmation_data(decided),
            outgoing.event_id(messages.CONFIRMED, decided.vaccination_id, str(decided.version)),
            now,
        )
