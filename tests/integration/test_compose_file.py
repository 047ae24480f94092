"""docker-compose.yml, Dockerfile and .dockerignore agree with each other and with the code.

No Docker engine is needed: dclint (installed pinned into .tools/ by
scripts/validate-compose.sh) validates the file against the Compose specification schema
and its best-practice rules, and the rest is read from the YAML and checked against the
pydantic-settings classes in services/common/settings.py.

With CI=true a missing tool (npm, PyYAML) fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import inspect
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
from pydantic_settings import BaseSettings

from devinfra.acls import Principals
from services.common import settings as settings_module
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VALIDATE_SCRIPT = ROOT / "scripts" / "validate-compose.sh"

# The application services, the settings prefix each owns, and its command.
APP_SERVICES = {
    "groups": ("GROUPS_", ["python", "-m", "services.groups"]),
    "export": ("EXPORT_", ["python", "-m", "services.export"]),
}
OWN_PREFIXES = {prefix for prefix, _ in APP_SERVICES.values()}
# One-shot steps before the services start: ACLs and credentials, then topics and schema.
SETUP_SERVICES = {"kafka-setup", "migrate"}
# The Kafka principal each service of ours runs as (the ACLs of devinfra/acls.py).
PRINCIPALS = {
    "groups": Principals().groups,
    "export": Principals().export,
    "migrate": Principals().migrate,
}
SECRET_FROM_ENV = re.compile(r"\$\{[A-Z_]+:\?[^}]+\}")  # required, no default


def _missing(what: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{what} (required with CI=true)")
    pytest.skip(what)


# --- settings: the environment variable names the code reads ---------------------------


def _settings_classes() -> list[type[BaseSettings]]:
    return [
        cls
        for _, cls in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(cls, BaseSettings) and cls.__module__ == settings_module.__name__
    ]


def _env_names(cls: type[BaseSettings]) -> dict[str, Any]:
    """Environment variable name -> default, for every field of a settings class."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, Any] = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names[(alias or prefix + field_name).upper()] = field.default
    return names


def _allowed_env(service: str) -> dict[str, Any]:
    """Shared settings (no service prefix) plus those of the service's own prefix."""
    own_prefix = APP_SERVICES[service][0]
    allowed: dict[str, Any] = {}
    for cls in _settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        if prefix in OWN_PREFIXES and prefix != own_prefix:
            continue
        allowed.update(_env_names(cls))
    return allowed


def test_settings_classes_are_found() -> None:
    prefixes = {str(c.model_config.get("env_prefix", "")) for c in _settings_classes()}
    assert {"TOPIC_", "KAFKA_", "GROUPS_", "EXPORT_", ""} <= prefixes
    names = _allowed_env("groups")
    assert {"GROUPS_HTTP_PORT", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "APP_ENV"} <= set(names)
    assert "EXPORT_HTTP_PORT" not in names


# --- compose file helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        _missing("PyYAML is not installed")
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command or []]


def _ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(published, target) for each entry in short or long syntax."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append((int(entry["published"]), int(entry["target"])))
            continue
        spec = str(entry).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        assert len(parts) >= 2, f"port {entry!r} publishes no fixed host port"
        result.append((int(parts[-2]), int(parts[-1])))
    return result


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _http_port(service_name: str, env: dict[str, str]) -> int:
    prefix = APP_SERVICES[service_name][0]
    return int(env.get(f"{prefix}HTTP_PORT", _allowed_env(service_name)[f"{prefix}HTTP_PORT"]))


# --- 1. dclint: Compose specification schema + best-practice rules ----------------------


def test_dclint_passes() -> None:
    if not shutil.which("node"):
        _missing("node is not available to run dclint")
    if not (ROOT / ".tools" / "node_modules" / ".bin" / "dclint").exists() and not shutil.which(
        "npm"
    ):
        _missing("npm is not available to install dclint")
    result = subprocess.run(
        ["bash", str(VALIDATE_SCRIPT), str(COMPOSE_FILE.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"dclint failed:\n{result.stdout}\n{result.stderr}"


# --- 2. the compose file against the code ------------------------------------------------


def test_no_version_key_and_expected_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert set(compose["services"]) == {"kafka", "postgres", *APP_SERVICES, *SETUP_SERVICES}


def test_every_service_has_build_or_image(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "build" in service or "image" in service, name
    for name in (*APP_SERVICES, "migrate"):
        assert compose["services"][name].get("build") in (".", {"context": "."}), name


def test_app_environment_names_exist_in_settings(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = _environment(compose["services"][name])
        unknown = sorted(set(env) - set(_allowed_env(name)))
        assert not unknown, f"{name}: variables no settings class of this service reads: {unknown}"


def test_app_environment_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres_env = _environment(services["postgres"])
    kafka_env = _environment(services["kafka"])
    for name, (prefix, _) in APP_SERVICES.items():
        env = _environment(services[name])
        assert env[f"{prefix}HTTP_HOST"] == "0.0.0.0", name
        assert env["APP_ENV"] == "prod", name
        bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        assert bootstrap == "kafka:9092", name
        assert f"://{bootstrap}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"], name
        url = env["DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://"), name
        assert url.endswith(f"@postgres:5432/{postgres_env['POSTGRES_DB']}"), name
    assert re.fullmatch(
        r"\$\{EXPORT_PSEUDONYM_KEY:\?[^}]+\}",
        _environment(services["export"])["EXPORT_PSEUDONYM_KEY"],
    )
    assert _environment(services["groups"])["GROUPS_ALLOWED_UNITS"].startswith(
        "${GROUPS_ALLOWED_UNITS"
    )


def test_services_and_migrate_run_as_their_own_kafka_principals(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, principal in PRINCIPALS.items():
        env = _environment(services[name])
        unknown = sorted(set(env) - set(_allowed_env("groups" if name == "migrate" else name)))
        assert not unknown, f"{name}: variables no settings class reads: {unknown}"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["KAFKA_SASL_USERNAME"] == principal, name
        assert SECRET_FROM_ENV.fullmatch(env["KAFKA_SASL_PASSWORD"]), name
    passwords = {_environment(services[n])["KAFKA_SASL_PASSWORD"] for n in PRINCIPALS}
    assert len(passwords) == len(PRINCIPALS), "one password per principal"


def test_setup_steps_run_once_before_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate, setup = services["migrate"], services["kafka-setup"]
    assert _command(migrate) == ["python", "-m", "services.groups", "migrate"]
    assert _depends_on(migrate) == {
        "kafka-setup": "service_completed_successfully",
        "postgres": "service_healthy",
    }
    assert setup["image"] == services["kafka"]["image"]
    assert setup["entrypoint"] == ["bash", "/opt/customer-groups/compose-setup.sh"]
    assert _depends_on(setup) == {"kafka": "service_healthy"}
    for service in (migrate, setup):
        assert service["restart"] == "no"
    setup_env = _environment(setup)
    # It sets the credentials the services log in with.
    for name in PRINCIPALS:
        password = _environment(services[name])["KAFKA_SASL_PASSWORD"]
        assert password in setup_env.values(), name
    assert (
        setup_env["BROKER_ADMIN_PASSWORD"]
        == _environment(services["kafka"])["BROKER_ADMIN_PASSWORD"]
    )
    for key, value in setup_env.items():
        if "PASSWORD" in key:
            assert SECRET_FROM_ENV.fullmatch(value), key
    for name in APP_SERVICES:
        assert _depends_on(services[name])["migrate"] == "service_completed_successfully"


def test_kafka_is_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = _environment(kafka)
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    probe = " ".join(kafka["healthcheck"]["test"])
    assert "kafka-broker-api-versions.sh" in probe
    assert "--command-config /tmp/admin.properties" in probe  # written by the start script


def test_kafka_authenticates_and_authorizes(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = _environment(kafka)
    assert kafka["entrypoint"] == ["bash", "/opt/customer-groups/compose-broker.sh"]
    assert "./infra/kafka:/opt/customer-groups:ro" in kafka["volumes"]
    for script in ("compose-broker.sh", "compose-setup.sh", "acls.sh"):
        assert (ROOT / "infra" / "kafka" / script).is_file(), script
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "SASL_PLAINTEXT://kafka:9092"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "SASL_PLAINTEXT"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:admin;User:ANONYMOUS"
    # ANONYMOUS is a super user, so only the broker itself may reach the PLAINTEXT listener.
    assert "CONTROLLER://localhost:9093" in env["KAFKA_LISTENERS"].split(",")
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9093"
    assert "9093" not in str(kafka.get("ports", ""))
    assert SECRET_FROM_ENV.fullmatch(env["BROKER_ADMIN_PASSWORD"])
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:18"
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_published_ports_equal_configured_http_port(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        port = _http_port(name, _environment(service))
        assert _ports(service) == [(port, port)], name
        probe = " ".join(service["healthcheck"]["test"])
        assert f":{port}/healthz" in probe, name
        assert "urllib" in probe, name


def test_commands(compose: dict[str, Any]) -> None:
    for name, (_, command) in APP_SERVICES.items():
        assert _command(compose["services"][name]) == command, name
        assert compose["services"][name]["restart"] == "unless-stopped", name


def test_depends_on_services_exist_and_are_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in _depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    for name in APP_SERVICES:
        deps = _depends_on(services[name])
        assert {"kafka", "postgres", "migrate"} <= set(deps), name
        assert set(deps.values()) == {"service_healthy", "service_completed_successfully"}, name


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"


# --- 3. the Dockerfile --------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_exposes_the_published_ports(compose: dict[str, Any]) -> None:
    assert DOCKERFILE.is_file()
    exposed = {
        int(port.split("/")[0])
        for keyword, rest in _dockerfile_instructions()
        if keyword == "EXPOSE"
        for port in rest.split()
    }
    for name in APP_SERVICES:
        for _, target in _ports(compose["services"][name]):
            assert target in exposed, f"{name}: port {target} is not EXPOSEd"


def test_dockerfile_basics() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as root"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install --no-cache-dir (--constraint \S+ )?\.(\s|$)", runs), runs
    assert not re.search(r"index[-_]url", runs), "no package index in the image build"
    cmd = [rest for keyword, rest in instructions if keyword == "CMD"][-1]
    assert cmd == '["python", "-m", "services.groups"]'


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source
        for keyword, rest in _dockerfile_instructions()
        if keyword == "COPY" and "--from=" not in rest
        for source in [arg for arg in rest.split() if not arg.startswith("--")][:-1]
    ]
    assert copied
    if "*" in patterns:  # allow-list style: each copied path must be re-included
        for source in copied:
            assert f"!{source.rstrip('/')}" in {p.rstrip("/") for p in patterns}, source
    for local_only in (".git", ".venv", ".tools"):
        assert "*" in patterns or local_only in patterns, local_only


def test_services_use_the_database_service_role_and_migrate_the_owner(
    compose: dict[str, Any],
) -> None:
    """The audit log is insert-only for the services: they log in as the service role,
    which `migrate` (as the owner) grants; the role's password is set at the database's
    first start (infra/postgres/create-service-role.sh)."""
    services = compose["services"]
    migrate = _environment(services["migrate"])
    role = migrate["DATABASE_SERVICE_ROLE"]
    assert migrate["DATABASE_MIGRATION_URL"].startswith("postgresql+asyncpg://postgres:")
    for name in (*APP_SERVICES, "migrate"):
        url = _environment(services[name])["DATABASE_URL"]
        assert url.startswith(f"postgresql+asyncpg://{role}:${{SERVICE_DB_PASSWORD:?"), name
    postgres = services["postgres"]
    script = "./infra/postgres/create-service-role.sh"
    assert any(v.startswith(f"{script}:/docker-entrypoint-initdb.d/") for v in postgres["volumes"])
    assert f'role="{role}"' in (ROOT / script).read_text()
    for key in ("POSTGRES_PASSWORD", "SERVICE_DB_PASSWORD"):
        assert SECRET_FROM_ENV.fullmatch(_environment(postgres)[key]), key


def test_groups_reads_need_the_regions_identity_provider(compose: dict[str, Any]) -> None:
    env = _environment(compose["services"]["groups"])
    for key in ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL"):
        assert SECRET_FROM_ENV.fullmatch(env[key]), key
