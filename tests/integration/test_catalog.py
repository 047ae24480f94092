"""The catalog over the real broker and database: the feed on start and after an import,
codes an import no longer lists kept with its day as their end, the dry run, GET /catalog
and the example catalog."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.groups.adapters.catalog_repository import CatalogRepository
from services.groups.adapters.orm import memberships
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.catalog import default_catalog_path
from services.groups.domain.catalog import Catalog
from services.groups.entrypoints.http import build_routes
from services.groups.service_layer import messages
from tests.http_tools import call
from tests.integration.conftest import (
    NurseClient,
    groups_cli,
    running_groups_service,
    topic_env,
)
from tests.kafka_tools import KafkaTestClient
from tests.schema_validation import validate_event

PNR = "191212121212"
NEW_VERSION = "2099-01-01.1"


async def catalog_topic(
    kafka: KafkaTestClient, service: GroupsService, *, version: str, count: int = 1
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The last catalog record per key once every group of `version` has come `count`
    times, and every record read (the topic is compacted: the last value per key counts)."""
    codes = {g.code for g in service.catalog.current.groups}

    def events(records: list[Any]) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in records]

    def done(records: list[Any]) -> bool:
        seen = [e["data"]["group_code"] for e in events(records)]
        of_version = [
            e["data"]["group_code"]
            for e in events(records)
            if e["data"]["catalog_version"] == version
        ]
        return set(seen) >= codes and all(of_version.count(c) >= count for c in codes)

    records = await kafka.read_until(service.settings.topics.catalog, done, timeout=60)
    for record in records:
        assert record.key == json.loads(record.value)["data"]["group_code"].encode()
    all_events = events(records)
    return {e["data"]["group_code"]: e for e in all_events}, all_events


async def catalog_in_database(service: GroupsService) -> Catalog:
    async with service.engine.connect() as connection:
        loaded = await CatalogRepository(connection).load_catalog()
    assert loaded is not None
    return loaded


async def active_memberships(service: GroupsService) -> int:
    async with service.engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(memberships).where(memberships.c.valid_to.is_(None))
        )
    return int(count or 0)


def new_catalog(tmp_path: Path) -> Path:
    """The shipped catalog, changed as a region's next one might be: Övrigt is gone,
    Influensa's subgroup is replaced, Covid-19 ended early in 2024, Mpox is new."""
    data = json.loads(default_catalog_path().read_text(encoding="utf-8"))
    data["version"] = NEW_VERSION
    groups = {g["code"]: g for g in data["groups"]}
    data["groups"] = [g for g in data["groups"] if g["code"] != "OVRIGT"]
    groups["INFLUENSA"]["subgroups"] = [
        {"code": "RISKGRUPP", "name": "Riskgrupp", "valid_from": "2026-01-01"}
    ]
    groups["COVID_19"]["valid_to"] = "2024-01-31"
    groups["COVID_19"]["subgroups"][0]["valid_to"] = "2024-01-31"
    data["groups"].append({"code": "MPOX", "name": "Mpox", "valid_from": "2024-01-01"})
    path = tmp_path / "region.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


async def cli(service: GroupsService, *args: str) -> Any:
    settings = service.settings
    env = {**topic_env(settings.topics), "GROUPS_TIMEZONE": settings.groups.timezone}
    return await groups_cli(settings.database.database_url, *args, env=env)


async def test_the_catalog_is_published_on_start_and_served_without_a_token(
    groups_service: GroupsService, kafka: KafkaTestClient
) -> None:
    shipped = groups_service.catalog.current
    last, _ = await catalog_topic(kafka, groups_service, version=shipped.version)
    assert list(last) == [g.code for g in shipped.groups]
    for group in shipped.groups:
        validate_event(last[group.code])
        assert last[group.code]["type"] == messages.CATALOG_GROUP
        assert last[group.code]["data"] == messages.catalog_group_view(group, shipped.version)
    assert last["COVID"]["data"]["valid_to"] == "2023-09-27", "retired groups stay"

    routes = dict(build_routes(groups_service))
    status, _, document = await call(routes["/catalog"])
    assert status == 200
    assert document == {
        "catalog_version": shipped.version,
        "groups": [e["data"] for e in last.values()],
    }


async def test_an_import_keeps_dropped_codes_ended_on_its_day_and_publishes_them(
    nurse: NurseClient,
    groups_service: GroupsService,
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    tmp_path: Path,
) -> None:
    today = groups_service.clock.today()
    travel = await nurse.command("add", PNR, group_code="OVRIGT", subgroup_code="RESEVACCINATIONER")
    flu = await nurse.command("add", PNR, group_code="INFLUENSA", subgroup_code="ALDER_65_PLUS")
    covid = await nurse.command(
        "add", PNR, group_code="COVID_19", subgroup_code="REKOMMENDERAD", valid_from="2024-06-01"
    )
    assert {e["type"] for e in (travel, flu, covid)} == {"customer_group.added"}
    await nurse.command("add", PNR, group_code="PNEUMOKOCK")  # not ended by the import
    _, before_import = await catalog_topic(kafka, groups_service, version="2026-11-30.1")
    path = new_catalog(tmp_path)

    # The dry run lists what the import would end, and changes nothing.
    catalog_before = await catalog_in_database(groups_service)
    dry = await cli(groups_service, "import-catalog", "--dry-run", str(path))
    assert dry.returncode == 0, dry.stderr
    *lines, summary = [json.loads(line) for line in dry.stdout.splitlines()]
    expected = {
        travel["data"]["membership"]["membership_id"]: ("OVRIGT", "RESEVACCINATIONER", today),
        flu["data"]["membership"]["membership_id"]: ("INFLUENSA", "ALDER_65_PLUS", today),
        # Covid-19 ends 2024-01-31, before this membership began: it ends on its first day.
        covid["data"]["membership"]["membership_id"]: (
            "COVID_19",
            "REKOMMENDERAD",
            date(2024, 6, 1),
        ),
    }
    assert {
        line["membership_id"]: (
            line["group_code"],
            line["subgroup_code"],
            date.fromisoformat(line["valid_to"]),
        )
        for line in lines
    } == expected
    assert summary == {"catalog_version": NEW_VERSION, "memberships_ended": 3}
    assert PNR not in dry.stdout + dry.stderr
    assert await catalog_in_database(groups_service) == catalog_before
    assert await active_memberships(groups_service) == 4

    # The import: every code stays; what the file no longer lists ends today.
    result = await cli(groups_service, "import-catalog", str(path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["groups_kept_ended"], summary["subgroups_kept_ended"]) == (1, 2)
    stored = await catalog_in_database(groups_service)
    assert stored.version == NEW_VERSION
    assert [g.code for g in stored.groups] == [
        "COVID_19",
        "INFLUENSA",
        "PNEUMOKOCK",
        "HAR_HEMSJUKVARD_HEMTJANST",
        "ALDER_65_PLUS_EJ_SABO_HEMTJANST",
        "COVID",
        "MPOX",
        "OVRIGT",
    ]
    assert stored.group("OVRIGT").valid_to == today
    assert stored.subgroup("OVRIGT", "RESEVACCINATIONER").valid_to == today
    assert [(s.code, s.valid_to) for s in stored.group("INFLUENSA").subgroups] == [
        ("RISKGRUPP", None),
        ("ALDER_65_PLUS", today),
    ]
    assert stored.group("COVID").valid_to == date(2023, 9, 27), "an earlier end stays"
    assert await active_memberships(groups_service) == 4, "the import ends no membership"

    # Published in the import's transaction: every group of the new version.
    await groups_service.reload_catalog()
    last, after_import = await catalog_topic(kafka, groups_service, version=NEW_VERSION)
    imported = after_import[len(before_import) :]
    assert [e["data"]["group_code"] for e in imported] == [g.code for g in stored.groups]
    for group in stored.groups:
        assert last[group.code]["data"] == messages.catalog_group_view(group, NEW_VERSION)
        validate_event(last[group.code])
    assert last["OVRIGT"]["data"]["valid_to"] == today.isoformat()
    routes = dict(build_routes(groups_service))
    _, _, document = await call(routes["/catalog"])
    assert document == messages.catalog_document(stored)
    # Old codes still resolve to their names.
    card = (await nurse.start("v-after-import", PNR))["data"]
    old = next(m for m in card["active"] if m["group_code"] == "OVRIGT")
    assert (old["group_name"], old["subgroup_name"]) == ("Övrigt", "Övriga resevaccinationer")

    # A start (here a second process) keeps the newer catalog and publishes it again
    # with the same ids: a repeat is harmless.
    ids = {e["data"]["group_code"]: e["id"] for e in imported}
    async with running_groups_service(groups_settings) as second:
        assert second.catalog.current == stored
        _, again = await catalog_topic(kafka, second, version=NEW_VERSION, count=2)
    republished = {e["data"]["group_code"]: e["id"] for e in again[len(after_import) :]}
    assert republished == ids
    assert await catalog_in_database(groups_service) == stored


async def test_a_dry_run_of_a_broken_file_says_why_and_loads_nothing(
    groups_service: GroupsService, tmp_path: Path
) -> None:
    path = tmp_path / "broken.json"
    data = json.loads(default_catalog_path().read_text(encoding="utf-8"))
    data["groups"][0]["valid_to"] = "1900-01-01"
    path.write_text(json.dumps(data), encoding="utf-8")
    for args in (("--dry-run", str(path)), (str(path),)):
        result = await cli(groups_service, "import-catalog", *args)
        assert result.returncode == 2
        assert "groups[0]" in result.stderr and "Traceback" not in result.stderr
    assert await catalog_in_database(groups_service) == groups_service.catalog.current


@pytest.mark.example_catalog
async def test_the_example_catalog_gives_rules_and_subgroups_in_dev(
    nurse: NurseClient, groups_service: GroupsService, kafka: KafkaTestClient
) -> None:
    assert groups_service.catalog.current.version == "2026-11-30.1"
    prompt = (await nurse.start("v-example", PNR, vaccine={"code": "J07BB02", "name": "Influvac"}))[
        "data"
    ]
    assert {
        "group_code": "INFLUENSA",
        "subgroup_code": "ALDER_65_PLUS",
        "reason": "CATALOG_RULE",
    } in prompt["suggestions"]
    flu = next(g for g in prompt["catalog"] if g["group_code"] == "INFLUENSA")
    assert {"subgroup_code": "GRAVID", "name": "Gravid"} in flu["subgroups"]
    last, _ = await catalog_topic(kafka, groups_service, version="2026-11-30.1")
    assert "GRAVID" in [s["subgroup_code"] for s in last["INFLUENSA"]["data"]["subgroups"]]
