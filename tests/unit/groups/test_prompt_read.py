"""`GET /prompt`'s read (`views.stored_prompt`): the stored event for its own unit only,
every answer about a real prompt audited."""

from __future__ import annotations

from datetime import UTC, datetime

from services.groups.adapters.repository import PromptRow
from services.groups.service_layer import views
from tests.unit.groups.fakes import FakeUnitOfWork

PNR = "191212121212"
EVENT = b'{"specversion":"1.0","id":"p-1","type":"customer_group.prompt","data":{}}'


def _uow_with_prompt() -> FakeUnitOfWork:
    uow = FakeUnitOfWork()
    prompt_id = "00000000-0000-5000-8000-000000000001"
    uow.repo.prompts[prompt_id] = PromptRow(
        prompt_id=prompt_id,
        vaccination_id="v-1",
        personnummer=PNR,
        unit_id="unit-1",
        user_id="nurse-1",
        booking_id=None,
        vaccine_code=None,
        event=EVENT,
        created_at=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
    )
    return uow


async def test_its_own_unit_gets_the_stored_event_byte_for_byte_and_it_is_audited() -> None:
    uow = _uow_with_prompt()
    found = await views.stored_prompt(uow, "v-1", user_id="nurse-2", unit_id="unit-1")
    assert found == EVENT
    [row] = uow.repo.audit_rows
    assert (row["action"], row["user_id"], row["unit_id"], row["personnummer"]) == (
        "prompt_read",
        "nurse-2",
        "unit-1",
        PNR,
    )
    assert row["detail"] == {
        "vaccination_id": "v-1",
        "prompt_id": "00000000-0000-5000-8000-000000000001",
    }


async def test_another_units_prompt_is_not_found_but_the_attempt_is_audited() -> None:
    uow = _uow_with_prompt()
    assert await views.stored_prompt(uow, "v-1", user_id="nurse-9", unit_id="unit-2") is None
    [row] = uow.repo.audit_rows
    assert (row["action"], row["unit_id"], row["personnummer"]) == (
        "access_refused",
        "unit-2",
        PNR,
    )
    assert (row["detail"]["route"], row["detail"]["reason"]) == ("/prompt", "other_unit")


async def test_an_unknown_vaccination_is_not_found_and_names_no_one() -> None:
    uow = _uow_with_prompt()
    assert await views.stored_prompt(uow, "v-2", user_id="nurse-1", unit_id="unit-1") is None
    assert uow.repo.audit_rows == []
