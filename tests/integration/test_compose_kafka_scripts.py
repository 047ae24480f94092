"""docker-compose's Kafka path without a Docker engine: the broker start script and the
one-shot setup script of `infra/kafka` run here, with the kafka service's environment
from docker-compose.yml (only addresses and the data directory changed), Kafka's tools
from the Maven jars standing in for the image's /opt/kafka/bin. Then the migrate
principal creates the topics and each service principal may write only its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from pydantic import SecretStr

from devinfra._util import LOCALHOST, free_ports
from devinfra.kafka import kafka_infra_dir, resolve_jars
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings, TopicSettings
from tests.conftest import IN_CI

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# The image's /opt/kafka/bin scripts this path uses, and the classes they run.
TOOLS = {
    "kafka-storage.sh": "kafka.tools.StorageTool",
    "kafka-server-start.sh": "kafka.Kafka",
    "kafka-configs.sh": "kafka.admin.ConfigCommand",
    "kafka-acls.sh": "org.apache.kafka.tools.AclCommand",
    "kafka-broker-api-versions.sh": "org.apache.kafka.tools.BrokerApiVersionsCommand",
}


def _compose_environment(service: str) -> dict[str, str]:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    env = compose["services"][service]["environment"]
    return {str(k): str(v) for k, v in env.items()}


def _kafka_bin(tmp: Path) -> Path:
    """Stand-ins for the image's tool scripts: the same classes, from the Maven jars."""
    java = shutil.which("java")
    assert java is not None
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    log4j = kafka_infra_dir() / "log4j2.xml"
    for script, main_class in TOOLS.items():
        path = bin_dir / script
        path.write_text(
            "#!/usr/bin/env bash\n"
            f'exec "{java}" -XX:TieredStopAtLevel=1 -Xmx512m -Djava.awt.headless=true '
            f'-Dkafka.logs.dir="{tmp}/logs" -Dlog4j2.configurationFile="{log4j}" '
            f'-cp "{resolve_jars()}/*" {main_class} "$@"\n'
        )
        path.chmod(0o755)
    return bin_dir


def _run(
    cmd: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def passwords() -> dict[str, str]:
    names = ("KAFKA_ADMIN", "GROUPS_KAFKA", "EXPORT_KAFKA", "MIGRATE_KAFKA")
    return {name: secrets.token_urlsafe(18) for name in names}


@contextlib.contextmanager
def compose_broker(
    tmp: Path, bin_dir: Path, admin_password: str
) -> Iterator[tuple[str, dict[str, str]]]:
    port, controller = free_ports(2)
    env = _compose_environment("kafka")
    assert env.pop("BROKER_ADMIN_PASSWORD") == "${KAFKA_ADMIN_PASSWORD:?set KAFKA_ADMIN_PASSWORD}"
    env.update(
        KAFKA_LISTENERS=f"SASL_PLAINTEXT://{LOCALHOST}:{port},CONTROLLER://{LOCALHOST}:{controller}",
        KAFKA_ADVERTISED_LISTENERS=f"SASL_PLAINTEXT://{LOCALHOST}:{port}",
        KAFKA_CONTROLLER_QUORUM_VOTERS=f"1@{LOCALHOST}:{controller}",
        KAFKA_LOG_DIRS=str(tmp / "data"),
    )
    # A clean environment: no KAFKA_* of this process may become a broker property.
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp), "KAFKA_BIN": str(bin_dir)}
    run_env = {**base, **env, "CONFIG_DIR": str(tmp), "BROKER_ADMIN_PASSWORD": admin_password}
    console = (tmp / "broker.out").open("wb")
    proc = subprocess.Popen(
        ["bash", str(kafka_infra_dir() / "compose-broker.sh")],
        env=run_env,
        stdout=console,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # The compose healthcheck, with the stand-in tools.
        probe = [
            str(bin_dir / "kafka-broker-api-versions.sh"), "--bootstrap-server",
            f"{LOCALHOST}:{port}", "--command-config", str(tmp / "admin.properties"),
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "broker.out").read_text()[-4000:]
            if (tmp / "admin.properties").exists() and _run(probe, base, 60).returncode == 0:
                break
            assert time.monotonic() < deadline, (tmp / "broker.out").read_text()[-4000:]
            time.sleep(1)
        yield f"{LOCALHOST}:{port}", base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        console.close()


def _client(bootstrap: str, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


async def test_compose_broker_setup_and_migrate_scripts(
    tmp_path: Path, passwords: dict[str, str]
) -> None:
    if shutil.which("java") is None:
        if IN_CI:
            pytest.fail("java is needed for the local Kafka broker")
        pytest.skip("java not installed")
    bin_dir = _kafka_bin(tmp_path)
    with compose_broker(tmp_path, bin_dir, passwords["KAFKA_ADMIN"]) as (bootstrap, base):
        setup_env = _compose_environment("kafka-setup")
        for name in ("GROUPS_KAFKA", "EXPORT_KAFKA", "MIGRATE_KAFKA"):
            assert setup_env[f"{name}_PASSWORD"] == f"${{{name}_PASSWORD:?set {name}_PASSWORD}}"
            setup_env[f"{name}_PASSWORD"] = passwords[name]
        setup_env.update(
            KAFKA_BOOTSTRAP=bootstrap,
            BROKER_ADMIN_PASSWORD=passwords["KAFKA_ADMIN"],
            CONFIG_DIR=str(tmp_path),
        )
        setup = await asyncio.to_thread(
            _run,
            ["bash", str(kafka_infra_dir() / "compose-setup.sh")],
            {**base, **setup_env},
            600,
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "ACLs in place" in setup.stdout
        for password in passwords.values():
            assert password not in setup.stdout + setup.stderr

        topics = TopicSettings.model_construct()  # the names acls.sh was generated for

        def settings(user: str, password: str) -> KafkaSettings:
            return KafkaSettings(
                bootstrap_servers=bootstrap,
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="SCRAM-SHA-512",
                sasl_username=user,
                sasl_password=SecretStr(password),
            )

        migrate = settings("customer-groups-migrate", passwords["MIGRATE_KAFKA"])
        await ensure_topics(topics, migrate)

        producer = AIOKafkaProducer(
            **_client(bootstrap, "customer-groups", passwords["GROUPS_KAFKA"]),
            enable_idempotence=True,
            acks="all",
        )
        await producer.start()
        try:
            await producer.send_and_wait(topics.events, b"{}")
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(topics.export, b"{}")
        finally:
            await producer.stop()
