"""Operator tasks through the real CLI (`python -m services.groups ...`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sqlalchemy import select

from services.groups.adapters.orm import dead_letters
from services.groups.bootstrap import GroupsService
from services.groups.catalog import default_catalog_path
from tests.integration.conftest import NurseClient, groups_cli, topic_env
from tests.kafka_tools import TopicCollector

PNR = "191212121212"


async def cli(
    service: GroupsService, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    settings = service.settings
    return await groups_cli(
        settings.database.database_url, *args, stdin=stdin, env=topic_env(settings.topics)
    )


async def test_dead_letters_are_listed_and_replayed_unchanged(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    topics = nurse.topics
    poison = b'{"not": "a cloudevent"}'
    await nurse.kafka.send_raw(topics.bookings, poison, key=b"k1", headers=[("trace", b"t1")])
    async with TopicCollector(nurse.kafka.bootstrap, topics.dlq) as dlq:
        await dlq.wait_records(1)

        listed = await cli(groups_service, "dead-letters", "list")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["source_topic"], r["error_code"]) for r in rows] == [
            (topics.bookings, "NOT_A_CLOUDEVENT")
        ]

        replayed = await cli(groups_service, "dead-letters", "replay", "--id", str(rows[0]["id"]))
        assert replayed.returncode == 0, replayed.stderr
        # Back on its source topic exactly as it came, so it is dead-lettered again.
        records = await dlq.wait_records(2)
    assert records[1].value == poison and records[1].key == b"k1"
    assert dict(records[1].headers)["trace"] == b"t1"
    async with TopicCollector(nurse.kafka.bootstrap, topics.bookings) as source:
        copies = await source.wait_records(2)
    assert [r.value for r in copies] == [poison, poison]
    assert all(h[0] == "trace" for r in copies for h in r.headers), "no dlq-* headers replayed"
    async with groups_service.engine.connect() as connection:
        letters = (await connection.execute(select(dead_letters).order_by(dead_letters.c.id))).all()
    assert letters[0].replayed_at is not None and letters[1].replayed_at is None


async def test_audit_extract_reads_the_personnummer_from_stdin(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    await nurse.command("add", PNR, group_code="COVID_19")
    result = await cli(
        groups_service, "audit-extract", "--user", "officer-1", "--unit", "pdl", stdin=f"{PNR}\n"
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["action"], e["user_id"], e["unit_id"]) for e in entries] == [
        ("customer_group.add", "nurse-1", "unit-1")
    ]
    assert PNR not in result.stderr


async def test_catalog_reimport_changes_the_catalog_not_the_memberships(
    nurse: NurseClient, groups_service: GroupsService, tmp_path: Path
) -> None:
    added = await nurse.command("add", PNR, group_code="OVRIGT", subgroup_code="RESEVACCINATIONER")
    catalog = json.loads(default_catalog_path().read_text(encoding="utf-8"))
    catalog["version"] = "2099-01-01.1"
    for group in catalog["groups"]:
        if group["code"] == "OVRIGT":
            group["name"] = "Övrigt (ny)"
    catalog["groups"].append(
        {
            "code": "MPOX",
            "name": "Mpox",
            "valid_from": "2024-01-01",
            "valid_to": None,
            "subgroups": [],
        }
    )
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog, ensure_ascii=False), encoding="utf-8")

    result = await cli(groups_service, "import-catalog", str(path))
    assert result.returncode == 0, result.stderr
    await groups_service.reload_catalog()

    assert groups_service.catalog.current.version == "2099-01-01.1"
    mpox = await nurse.command("add", PNR, group_code="MPOX")
    assert mpox["type"] == "customer_group.added"
    card = (await nurse.start("v-after-import", PNR))["data"]
    ovrigt = next(m for m in card["active"] if m["group_code"] == "OVRIGT")
    assert ovrigt["membership_id"] == added["data"]["membership"]["membership_id"]
    assert ovrigt["group_name"] == "Övrigt (ny)" and ovrigt["version"] == 1
