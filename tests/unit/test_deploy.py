"""deploy/: every manifest valid against the Kubernetes schemas (offline, the schemas
`kubernetes-validate` ships), wired to what the services really read and serve, and the
dashboard and alert rules naming only metrics the services export; the alert rules
checked and unit-tested by promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from services.common import settings as settings_module
from services.export.adapters.metrics import ExportMetrics
from services.groups.adapters.metrics import GroupsMetrics
from tests.conftest import IN_CI

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MONITORING = DEPLOY / "monitoring"
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests support
# Not Kubernetes objects: kustomize's own file and Prometheus's rule files.
NOT_OBJECTS = {"kustomization.yaml"}


def manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name not in NOT_OBJECTS)


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def all_objects() -> list[dict[str, Any]]:
    return [obj for path in manifests() for obj in objects(path)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in all_objects() if o["kind"] == kind}


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes_objects(path: Path) -> None:
    found = objects(path)
    assert found, f"{path.name} holds no object"
    for obj in found:
        # strict: an unknown field (a typo) is an error too.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secrets() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifests()} - {"secrets.example.yaml"}
    assert {image["name"] for image in kustomization["images"]} == {"customer-groups"}


def _variables() -> set[str]:
    """Every environment variable a settings class reads."""
    names = {settings_module.SECRETS_DIR_VARIABLE}
    for value in vars(settings_module).values():
        if isinstance(value, type) and issubclass(value, BaseSettings):
            prefix = str(value.model_config.get("env_prefix") or "")
            names |= {f"{prefix}{field}".upper() for field in value.model_fields}
    return names


def test_configuration_and_secrets_name_real_settings() -> None:
    known = _variables()
    config = by_kind("ConfigMap")["customer-groups-config"]["data"]
    assert set(config) <= known, set(config) - known
    assert config["APP_ENV"] == "prod"
    secrets_dir = config[settings_module.SECRETS_DIR_VARIABLE]
    secrets = by_kind("Secret")
    for secret in secrets.values():
        assert set(secret["stringData"]) <= known, secret["metadata"]["name"]
    # Every pod mounts its secret where SETTINGS_SECRETS_DIR points, readable by its user.
    pods = [*by_kind("Deployment").values(), *by_kind("Job").values()]
    assert len(pods) == 3
    for workload in pods:
        spec = workload["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert mounts["secrets"] == secrets_dir
        assert volumes["secrets"]["secret"]["secretName"] in secrets
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]
        assert volumes["secrets"]["secret"]["defaultMode"] & 0o040, "group-readable"
        assert container["envFrom"] == [{"configMapRef": {"name": "customer-groups-config"}}]
        assert {"requests", "limits"} <= set(container["resources"])


def test_services_probe_livez_and_readyz_on_their_port() -> None:
    config = by_kind("ConfigMap")["customer-groups-config"]["data"]
    expected = {
        "customer-groups": (["python", "-m", "services.groups"], config["GROUPS_HTTP_PORT"]),
        "customer-groups-export": (["python", "-m", "services.export"], config["EXPORT_HTTP_PORT"]),
    }
    deployments = by_kind("Deployment")
    assert set(deployments) == set(expected)
    budgets = by_kind("PodDisruptionBudget")
    for name, (args, port) in expected.items():
        template = deployments[name]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["args"] == args
        assert container["ports"] == [{"name": "http", "containerPort": int(port)}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert template["metadata"]["annotations"]["prometheus.io/port"] == port
        # Two pods, and a budget that always leaves one running.
        assert deployments[name]["spec"]["replicas"] == 2
        assert budgets[name]["spec"]["maxUnavailable"] == 1
        assert budgets[name]["spec"]["selector"] == deployments[name]["spec"]["selector"]


def test_the_migration_job_runs_migrate() -> None:
    (job,) = by_kind("Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["python", "-m", "services.groups", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# -- metrics named by the dashboard and the alerts --------------------------------------


def _exported(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


METRIC = re.compile(r"\b((?:groups|export|process|python)_[a-z0-9_]+)\b")


def _named_in(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)}


def _exported_by_both() -> set[str]:
    return _exported(GroupsMetrics().registry) | _exported(ExportMetrics().registry)


def test_dashboard_shows_only_exported_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    named = _named_in(expressions)
    assert named - _exported_by_both() == set()
    # What operators were promised (README, "Metrics") is on it.
    for name in (
        "groups_outbox_backlog_rows",
        "groups_outbox_oldest_age_seconds",
        "groups_consumer_lag_records",
        "export_consumer_lag_records",
        "groups_prompt_latency_seconds_bucket",
        "groups_dead_letters_pending_rows",
        "groups_outbox_parked_rows",
        "groups_outbox_relay_leader",
        "process_cpu_seconds_total",
        "python_gc_collections_total",
    ):
        assert name in named, name
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "alerts.yaml").read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alerts_name_only_exported_metrics_and_cover_the_operators_cases() -> None:
    rules = _rules()
    assert _named_in([rule["expr"] for rule in rules]) - _exported_by_both() == set()
    assert {rule["alert"] for rule in rules} >= {
        "CustomerGroupsTargetDown",
        "CustomerGroupsRestarting",
        "CustomerGroupsNoRelayLeader",
        "CustomerGroupsOutboxBacklogGrowing",
        "CustomerGroupsDeadLetters",
        "CustomerGroupsParkedRows",
        "CustomerGroupsConsumerLag",
    }


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if IN_CI:
            pytest.fail("promtool is missing (.ci/run installs Debian's `prometheus`)")
        pytest.skip("promtool not installed (Debian's `prometheus` package ships it)")
    return found


@pytest.mark.parametrize(
    "args",
    [("check", "rules", "alerts.yaml"), ("test", "rules", "alerts.test.yaml")],
    ids=["check", "test"],
)
def test_promtool_accepts_the_alert_rules(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [_promtool(), *args],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_readme_lists_every_service_metric() -> None:
    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`((?:groups|export)_[a-z0-9_]+)", readme))
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for registry in (GroupsMetrics().registry, ExportMetrics().registry)
        for family in registry.collect()
        if family.name.startswith(("groups_", "export_"))
    }
    assert served - documented == set()
