"""The ACL set as data: its printed form, the committed script, and least privilege."""

from __future__ import annotations

from pathlib import Path

import pytest

from devinfra import acls
from devinfra.kafka import ScramUsers
from services.common.kafka import export_topic_names, groups_topic_names
from services.common.settings import ExportSettings, GroupsSettings, TopicSettings

ROOT = Path(__file__).resolve().parents[2]


def _defaults() -> list[acls.Acl]:
    # model_construct: the defaults, whatever TOPIC_* the environment of the run holds.
    return acls.acl_set(
        TopicSettings.model_construct(),
        groups_consumer_group=GroupsSettings.model_fields["consumer_group"].default,
        export_consumer_group=ExportSettings.model_fields["consumer_group"].default,
    )


def _granted(rules: list[acls.Acl], principal: str, resource: str = "topic") -> dict[str, set[str]]:
    """name -> operations the principal has on it."""
    granted: dict[str, set[str]] = {}
    for rule in rules:
        if rule.principal == principal and rule.resource == resource:
            for name in rule.names:
                granted.setdefault(name, set()).update(rule.operations)
    return granted


def test_the_committed_script_is_the_generated_one() -> None:
    committed = (ROOT / "infra" / "kafka" / "acls.sh").read_text(encoding="utf-8")
    assert committed == acls.script(_defaults()), "run: python -m devinfra acls --script"


def test_least_privilege_per_principal() -> None:
    t = TopicSettings.model_construct()
    p = acls.Principals()
    rules = _defaults()
    inbound = set(t.inbound)
    groups = _granted(rules, p.groups)
    assert {n for n, ops in groups.items() if "READ" in ops} == inbound
    # WRITE on the inbound topics too: dead-letter replay republishes to the source topic.
    assert {n for n, ops in groups.items() if "WRITE" in ops} == set(groups_topic_names(t))
    assert _granted(rules, p.groups, "group") == {"customer-groups": {"READ"}}
    # The outbox relay's transactions: its own transactional.id, nobody else's.
    assert _granted(rules, p.groups, "transactional-id") == {
        "customer-groups-outbox-relay": {"WRITE", "DESCRIBE"}
    }
    assert {r.principal for r in rules if r.resource == "transactional-id"} == {p.groups}
    export = _granted(rules, p.export)
    assert export == {t.events: {"READ"}, t.export: {"WRITE"}, t.dlq: {"WRITE"}}
    assert set(export) == set(export_topic_names(t))
    assert _granted(rules, p.booking_system) == {t.bookings: {"WRITE"}, t.catalog: {"READ"}}
    assert _granted(rules, p.vaccination_client) == {
        t.started: {"WRITE"},
        t.registered: {"WRITE"},
        t.commands: {"WRITE"},
        t.prompts: {"READ"},
        t.events: {"READ"},
        t.catalog: {"READ"},
    }
    (client_group,) = [r for r in rules if r.principal == p.vaccination_client and r.prefixed]
    assert client_group.resource == "group" and client_group.operations == ("READ",)
    creators = {r.principal for r in rules if "CREATE" in r.operations}
    assert creators == {p.migrate}
    assert not any(r.resource == "cluster" for r in rules)


def test_command_lines_quote_names_and_leave_variables_to_the_shell() -> None:
    rule = acls.Acl("customer-groups", ("READ",), "group", ("a b",), "why", prefixed=True)
    (comment, line) = acls.command_lines([rule])
    assert comment == "# User:customer-groups: why"
    assert line == (
        'kafka-acls.sh --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config admin.properties '
        "--add --allow-principal User:customer-groups --operation READ --group 'a b' "
        "--resource-pattern-type prefixed"
    )


def test_scram_users_keep_passwords_out_of_repr_and_refuse_unsafe_ones() -> None:
    users = ScramUsers.generate("customer-groups")
    assert users.password("customer-groups") not in repr(users)
    assert users.admin_password not in repr(users)
    with pytest.raises(ValueError):
        ScramUsers(admin_password='x",y]')
