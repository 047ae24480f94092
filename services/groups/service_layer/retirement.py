"""The retirement sweep: a membership in a group or subgroup the catalog has ended ends
on that last day, once the day has passed (contract, "Catalog rules").

Every process runs the sweep on its own schedule; it is safe to run anywhere, any
number of times. Customers are taken in small batches, each under the same
per-customer lock the inbound pipeline takes, and re-read under it, so a membership is
ended once (a second sweeper finds it no longer active) and never between two commands
of the same customer. Each ended membership is told as `customer_group.removed` with
`reason: "group_retired"` and `actor` / `command_id` null: the service did it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date

from services.groups.domain.catalog import Catalog
from services.groups.domain.membership import Membership
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import messages, outgoing
from services.groups.service_layer.context import Context, Dependencies
from services.groups.service_layer.doses import reconfirm_doses
from services.groups.service_layer.unit_of_work import AbstractUnitOfWork

log = logging.getLogger(__name__)

# Who the PDL audit log names for a change the service made itself.
SERVICE_USER = "customer-groups-service"
SERVICE_UNIT = "system"


def ended_codes(catalog: Catalog, today: date) -> tuple[list[str], list[tuple[str, str]]]:
    """The groups, and the (group, subgroup) pairs of still open groups, whose last day
    lies before `today`: where the sweep looks for active memberships."""
    groups: list[str] = []
    subgroups: list[tuple[str, str]] = []
    for group in catalog.groups:
        if group.valid_to is not None and group.valid_to < today:
            groups.append(group.code)
            continue
        subgroups.extend(
            (group.code, s.code) for s in group.subgroups if s.valid_to and s.valid_to < today
        )
    return groups, subgroups


async def retire_ended_memberships(
    uow_factory: Callable[[], AbstractUnitOfWork],
    deps: Dependencies,
    *,
    batch_size: int = 100,
) -> int:
    """End what the catalog has retired, `batch_size` customers per transaction; returns
    how many memberships this call ended."""
    catalog, today = deps.catalog.current, deps.clock.today()
    groups, subgroups = ended_codes(catalog, today)
    ended_total, after = 0, ""
    while groups or subgroups:
        async with uow_factory() as uow:
            batch = await uow.repo.customers_in_ended_groups(
                groups, subgroups, after=after, limit=batch_size
            )
            if not batch:
                break
            await uow.lock_subjects(batch)
            await uow.preload([], personnummer=batch)
            for pnr in batch:
                ended_total += await _retire_customer(uow, deps, catalog, pnr, today)
            await uow.commit()
        after = batch[-1]
    if ended_total:
        log.info("retirement sweep ended %d memberships", ended_total)
    return ended_total


async def _retire_customer(
    uow: AbstractUnitOfWork, deps: Dependencies, catalog: Catalog, pnr: str, today: date
) -> int:
    personnummer = Personnummer.parse(pnr)
    customer = await uow.repo.get_customer(personnummer)
    ended = customer.retire(catalog, today=today)
    now = deps.clock.now()
    for membership in ended:
        await uow.repo.save_membership(membership, now=now)
        await uow.repo.audit(
            action="customer_group.remove",
            user_id=SERVICE_USER,
            unit_id=SERVICE_UNIT,
            personnummer=personnummer,
            membership_id=membership.membership_id,
            detail={"reason": messages.GROUP_RETIRED},
        )
        await outgoing.emit(
            uow,
            _context(deps, membership),
            messages.REMOVED,
            personnummer,
            messages.retired_data(personnummer.value, membership, catalog),
            now=now,
        )
    if ended:  # an earlier end may take a group off a dose's day
        await reconfirm_doses(uow, deps, personnummer, customer, now)
    return len(ended)


def _context(deps: Dependencies, membership: Membership) -> Context:
    # No inbound record caused this: the event's id is derived from the membership and
    # its new version, so a retry of the same sweep produces the same id.
    cause = f"group_retired:{membership.membership_id}:{membership.version}"
    return Context(event_id=cause, event_time=None, key=None, deps=deps)
