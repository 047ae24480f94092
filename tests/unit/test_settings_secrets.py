"""Settings from files: every settings class reads a file named like its environment
variable in SETTINGS_SECRETS_DIR (a mounted Kubernetes secret); the environment wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.common import settings as s

CASES = [
    (s.KafkaSettings, "KAFKA_SASL_PASSWORD", "sasl_password", "kafka-secret"),
    (s.DatabaseSettings, "DATABASE_URL", "database_url", "postgresql+asyncpg://u:p@db/x"),
    (s.DatabaseSettings, "DATABASE_MIGRATION_URL", "database_migration_url", "postgresql://m"),
    (s.ExportSettings, "EXPORT_PSEUDONYM_KEY", "pseudonym_key", "pseudonym-secret"),
    (s.AuthSettings, "AUTH_AUDIENCE", "audience", "customer-groups"),
    (s.GroupsSettings, "GROUPS_ALLOWED_UNITS", "allowed_units", "unit-1,unit-2"),
    (s.TopicSettings, "TOPIC_EVENTS", "events", "events.v9"),
    (s.AppSettings, "LOG_LEVEL", "log_level", "DEBUG"),
]


def _plain(value: object) -> object:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@pytest.mark.parametrize(("cls", "variable", "name", "value"), CASES)
def test_a_file_named_like_the_variable_is_read(
    cls: type[BaseSettings],
    variable: str,
    name: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(variable, raising=False)
    (tmp_path / variable).write_text(value + "\n", encoding="utf-8")  # as `kubectl` writes it
    monkeypatch.setenv(s.SECRETS_DIR_VARIABLE, str(tmp_path))
    assert _plain(getattr(cls(), name)) == value
    monkeypatch.setenv(variable, "from-the-environment")
    assert _plain(getattr(cls(), name)) == "from-the-environment"


def test_every_settings_class_reads_the_secrets_dir() -> None:
    classes = {
        value
        for value in vars(s).values()
        if isinstance(value, type)
        and issubclass(value, BaseSettings)
        and value not in (BaseSettings, s.EnvSettings)
    }
    assert all(issubclass(cls, s.EnvSettings) for cls in classes)
    assert {cls for cls, *_ in CASES} == classes, "a case for every settings class"
