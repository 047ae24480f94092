"""The client package stands on its own: its own distribution that needs only aiokafka,
importing nothing of the services; and it maps SASL/TLS settings to aiokafka."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from customer_groups_client import KafkaConfig, Topics
from services.common.settings import TopicSettings

CLIENT = Path(__file__).resolve().parents[3] / "clients" / "python"


def test_the_client_imports_only_itself_aiokafka_and_the_standard_library() -> None:
    allowed = {"customer_groups_client", "aiokafka", *sys.stdlib_module_names}
    for path in (CLIENT / "customer_groups_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, (path.name, name)


def test_it_is_its_own_distribution_requiring_only_aiokafka() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "customer-groups-client"
    assert [_name(r) for r in project["dependencies"]] == ["aiokafka"]
    # As `make install` installed it (pip install -e clients/python).
    installed = metadata.distribution("customer-groups-client")
    assert [_name(r) for r in installed.requires or []] == ["aiokafka"]
    assert (CLIENT / "customer_groups_client" / "py.typed").exists()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def test_sasl_and_tls_settings_reach_aiokafka_and_the_password_stays_out_of_repr() -> None:
    config = KafkaConfig(
        "broker:9093",
        security_protocol="sasl_ssl",
        sasl_mechanism="scram-sha-512",
        sasl_username="vaccination-client",
        sasl_password="s3cret",
    )
    kwargs = config.aiokafka_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        "vaccination-client",
        "s3cret",
    )
    assert kwargs["ssl_context"] is not None
    assert "s3cret" not in repr(config)
    plain = KafkaConfig("broker:9092").aiokafka_kwargs()
    assert "ssl_context" not in plain and "sasl_mechanism" not in plain


def test_incomplete_security_settings_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="sasl_mechanism"):
        KafkaConfig("b:9092", security_protocol="SASL_PLAINTEXT", sasl_username="u")
    with pytest.raises(ValueError, match="sasl_username"):
        KafkaConfig("b:9092", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="security_protocol"):
        KafkaConfig("b:9092", security_protocol="KERBEROS")


def test_the_services_environment_variables_configure_the_client() -> None:
    config = KafkaConfig.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9092",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        }
    )
    assert config.bootstrap_servers == "b1:9092,b2:9092"
    assert config.aiokafka_kwargs()["sasl_mechanism"] == "SCRAM-SHA-256"


def test_its_default_topic_names_are_the_services() -> None:
    # The client cannot import the service's settings, so this keeps the two in step.
    service = TopicSettings()
    client = Topics()
    for name in Topics.__dataclass_fields__:
        assert getattr(client, name) == getattr(service, name), name
