"""Read side: what a nurse's client shows, each read written to the PDL audit log."""

from __future__ import annotations

from typing import Any

from services.groups.domain.catalog import Catalog
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import messages
from services.groups.service_layer.unit_of_work import AbstractUnitOfWork, UnitOfWork


async def customer_card(
    uow: UnitOfWork, catalog: Catalog, personnummer: Personnummer, *, user_id: str, unit_id: str
) -> dict[str, Any]:
    customer = await uow.repo.get_customer(personnummer)
    first_name, last_name = await uow.repo.customer_names(personnummer)
    await uow.repo.audit(
        action="read_customer_groups", user_id=user_id, unit_id=unit_id, personnummer=personnummer
    )
    return {
        "personnummer": personnummer.value,
        "first_name": first_name,
        "last_name": last_name,
        **messages.customer_groups_view(customer, catalog),
    }


async def booking_card(
    uow: UnitOfWork, catalog: Catalog, booking_id: str, *, user_id: str, unit_id: str
) -> dict[str, Any] | None:
    booking = await uow.repo.get_booking(booking_id)
    if booking is None:
        return None
    personnummer = Personnummer.parse(booking.personnummer)
    card = await customer_card(uow, catalog, personnummer, user_id=user_id, unit_id=unit_id)
    return {
        "booking": {
            "booking_id": booking.booking_id,
            "unit_id": booking.unit_id,
            "start_time": booking.start_time.isoformat(),
            "status": booking.status,
            "vaccine": (
                {"code": booking.vaccine_code, "name": booking.vaccine_name, "dose": booking.dose}
                if booking.vaccine_code
                else None
            ),
            "requested_group": (
                {
                    "group_code": booking.requested_group_code,
                    "subgroup_code": booking.requested_subgroup_code,
                }
                if booking.requested_group_code
                else None
            ),
        },
        "customer": card,
    }


async def stored_prompt(
    uow: AbstractUnitOfWork, vaccination_id: str, *, user_id: str, unit_id: str
) -> bytes | None:
    """The prompt the prompts topic got for this vaccination, byte for byte, for a client
    that missed it; None when there is none the caller's unit may read.

    Only the unit that started the vaccination reads its prompt. Another unit's is
    answered as if there were none, so a caller cannot probe which vaccination ids
    exist, but the attempt is audited (`access_refused`, naming the patient whose prompt
    it was, so a review of that patient's log shows it). An unknown id names no patient
    and writes nothing, as an unknown booking."""
    prompt = await uow.repo.get_prompt_by_vaccination(vaccination_id)
    if prompt is None:
        return None
    patient = Personnummer.parse(prompt.personnummer)
    detail = {"vaccination_id": prompt.vaccination_id, "prompt_id": prompt.prompt_id}
    if prompt.unit_id != unit_id:
        await uow.repo.audit(
            action="access_refused",
            user_id=user_id,
            unit_id=unit_id,
            personnummer=patient,
            detail={"route": "/prompt", "reason": "other_unit", **detail},
        )
        return None
    await uow.repo.audit(
        action="prompt_read", user_id=user_id, unit_id=unit_id, personnummer=patient, detail=detail
    )
    return prompt.event


async def access_refused(uow: UnitOfWork, *, user_id: str, unit_id: str, route: str) -> None:
    """A caller the identity provider vouched for, refused (unit off the allowlist): the
    attempt is logged with no patient named, since nothing was read."""
    await uow.repo.audit(
        action="access_refused",
        user_id=user_id,
        unit_id=unit_id,
        personnummer=None,
        detail={"route": route, "reason": "unit_not_allowed"},
    )
