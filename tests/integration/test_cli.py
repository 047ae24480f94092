"""The operator commands as installed console scripts: `--version`, one JSON line per
result, and one clear line with a non-zero status for a bad argument, an unknown id or
an unreachable database (never a traceback)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.metrics import package_version
from services.groups.bootstrap import GroupsService
from tests.integration.conftest import NurseClient, topic_env

SCRIPTS = Path(sys.executable).parent


def script(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / name), *args],
        env={**os.environ, "APP_ENV": "test", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The last line on stderr (log lines may come before it), with no traceback."""
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["customer-groups", "customer-groups-export"])
def test_version_and_bad_arguments(name: str) -> None:
    version = script(name, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"{name} {package_version()}")
    unknown = script(name, "no-such-command")
    assert unknown.returncode == 2
    assert error_line(unknown).startswith(f"{name}: error: argument ")
    assert "invalid choice: 'no-such-command'" in error_line(unknown)
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_bad_values_are_one_line() -> None:
    for args, expected in (
        (("dead-letters", "replay", "--id", "seventeen"), "not a whole number: 'seventeen'"),
        (("dead-letters", "list", "--limit", "0"), "must be at least 1"),
        (("audit-extract", "--user", "u", "--unit", "v", "--since", "2026-13-01"), "not an ISO"),
        (("outbox", "retry"), "one of the arguments --id --all is required"),
    ):
        result = script("customer-groups", *args)
        assert result.returncode == 2, args
        assert expected in error_line(result), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    backfill = script("customer-groups-export", "backfill", "--batch-size", "-3")
    assert backfill.returncode == 2 and "must be at least 1" in error_line(backfill)


def test_an_unreachable_database_is_one_line() -> None:
    result = script(
        "customer-groups",
        "dead-letters",
        "list",
        env={"DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"},
    )
    assert result.returncode == 1 and result.stdout == ""
    assert error_line(result) == (
        "customer-groups: error: cannot reach the database or broker, or read a file: "
        "ConnectionRefusedError (LOG_LEVEL=DEBUG logs where)"
    )


def test_invalid_settings_name_the_setting_not_its_value() -> None:
    result = script("customer-groups", env={"GROUPS_BATCHES_IN_FLIGHT": "99"})
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith("customer-groups: error: invalid settings (GroupsSettings): ")
    assert "batches_in_flight" in line and "99" not in line


async def test_results_are_json_lines_and_unknown_ids_fail(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    settings = groups_service.settings
    env = {"DATABASE_URL": settings.database.database_url, **topic_env(settings.topics)}
    await nurse.kafka.send_raw(settings.topics.bookings, b"not json", key=b"k")

    async def listed() -> list[dict[str, object]]:
        result = await asyncio.to_thread(script, "customer-groups", "dead-letters", "list", env=env)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    for _ in range(150):
        if letters := await listed():
            break
        await asyncio.sleep(0.2)
    assert [letter["error_code"] for letter in letters] == ["INVALID_JSON"]
    unknown = await asyncio.to_thread(
        script, "customer-groups", "dead-letters", "replay", "--id", "999999", env=env
    )
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert error_line(unknown) == (
        "customer-groups: error: no dead letter waiting for replay with id 999999 "
        "(see `dead-letters list --all`); nothing was replayed"
    )
    replayed = await asyncio.to_thread(
        script, "customer-groups", "dead-letters", "replay", "--id", str(letters[0]["id"]), env=env
    )
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"command": "dead-letters replay", "replayed": 1}
    # Replayed already: not waiting any more, so the same id is now an error.
    again = await asyncio.to_thread(
        script, "customer-groups", "dead-letters", "replay", "--id", str(letters[0]["id"]), env=env
    )
    assert again.returncode == 1
