"""Safe by default: without APP_ENV a service is in production mode and refuses to start
without the settings production needs, naming each one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.common.settings import AppSettings, AuthSettings, GroupsSettings, UnsafeSettings
from services.export.bootstrap import ExportSettingsBundle, pseudonymizer_from
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.catalog import example_catalog_path


def _without_app_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "GROUPS_", "AUTH_"))}
    return {k: v for k, v in env.items() if not k.startswith("EXPORT_")}


def _run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_no_app_env_means_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_ENV", raising=False)
    assert AppSettings().app_env == "prod" and not AppSettings().dev_mode


def test_an_unknown_app_env_is_refused() -> None:
    with pytest.raises(ValueError, match="app_env"):
        AppSettings(app_env="production")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "setting"),
    [("services.groups", "GROUPS_ALLOWED_UNITS"), ("services.export", "EXPORT_PSEUDONYM_KEY")],
)
def test_a_service_without_app_env_refuses_to_start_naming_the_setting(
    module: str, setting: str
) -> None:
    done = _run(module, env=_without_app_env())
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refuses to start" in done.stderr and setting in done.stderr
    assert "Traceback" not in done.stderr, "a clear message, not a crash"


def test_settings_that_open_the_service_are_refused_in_production() -> None:
    prod = AppSettings(app_env="prod")
    with pytest.raises(UnsafeSettings, match="GROUPS_ALLOWED_UNITS"):
        GroupsService(GroupsSettingsBundle(app=prod))
    with pytest.raises(UnsafeSettings, match="EXPORT_PSEUDONYM_KEY"):
        pseudonymizer_from(ExportSettingsBundle(app=prod))


def test_dev_mode_pseudonymises_with_a_key_of_its_own() -> None:
    dev = ExportSettingsBundle(app=AppSettings(app_env="dev"))
    first, second = pseudonymizer_from(dev), pseudonymizer_from(dev)
    assert first.subject_id("191212121212") != second.subject_id("191212121212")
    assert first.key_id != second.key_id


def test_an_example_catalog_is_refused_outside_dev_and_test() -> None:
    example = GroupsSettings(allowed_units="unit-1", catalog_file=str(example_catalog_path()))
    auth = AuthSettings(issuer="https://idp", audience="groups", jwks_url="https://idp/jwks")
    with pytest.raises(UnsafeSettings, match="GROUPS_CATALOG_FILE is an example catalog") as info:
        GroupsService(
            GroupsSettingsBundle(app=AppSettings(app_env="prod"), groups=example, auth=auth)
        )
    assert info.value.problems == [
        "GROUPS_CATALOG_FILE is an example catalog (example.json): set it to the region's catalog"
    ]
    shipped = GroupsSettings(allowed_units="unit-1")
    GroupsService(GroupsSettingsBundle(app=AppSettings(app_env="prod"), groups=shipped, auth=auth))
    for env in ("dev", "test"):
        GroupsService(GroupsSettingsBundle(app=AppSettings(app_env=env), groups=example))


def test_the_service_with_an_example_catalog_refuses_to_start_naming_the_setting() -> None:
    env = {
        **_without_app_env(),
        "GROUPS_ALLOWED_UNITS": "unit-1",
        "AUTH_ISSUER": "https://idp",
        "AUTH_AUDIENCE": "groups",
        "AUTH_JWKS_URL": "https://idp/jwks",
        "GROUPS_CATALOG_FILE": str(example_catalog_path()),
    }
    done = _run("services.groups", env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refuses to start: GROUPS_CATALOG_FILE is an example catalog" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_example_catalog_is_not_imported_in_production() -> None:
    env = {**_without_app_env(), "DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    done = _run("services.groups", "import-catalog", str(example_catalog_path()), env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "example catalog" in done.stderr and "APP_ENV" in done.stderr
    assert "Traceback" not in done.stderr
