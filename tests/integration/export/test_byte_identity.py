"""A live membership record and the backfilled one of the same state are the same bytes."""

from __future__ import annotations

from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import NurseClient
from tests.integration.export.conftest import (
    PNR_A,
    db_records,
    export_settings,
    last_values,
    running_export_service,
    wait_for_state,
)
from tests.kafka_tools import KafkaTestClient


async def test_live_and_backfilled_membership_records_are_byte_identical(
    nurse: NurseClient, groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    settings = export_settings(groups_settings)
    async with running_export_service(settings):
        await nurse.command("add", PNR_A, group_code="INFLUENSA")
        expected = await db_records(settings)
        records = await wait_for_state(kafka, settings.topics.export, expected)
    assert last_values(records) == expected
