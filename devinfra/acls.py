"""The Kafka ACLs a deployment needs: who may read and write which topic.

One source of truth, as data built from the topic and consumer-group settings (the names
are configurable): `python -m devinfra acls` prints it as `kafka-acls.sh` command lines
for operators (and `infra/kafka/acls.sh`, which docker-compose runs, is that output), and
`apply_acls` adds it to a broker with Kafka's own AclCommand (aiokafka has no ACL API).

Kafka's authorizer lets READ and WRITE imply DESCRIBE, and WRITE on any topic implies the
cluster's IDEMPOTENT_WRITE (KIP-679), so an idempotent producer needs nothing more. The
groups service's outbox relay publishes in transactions: it also needs WRITE (and
DESCRIBE, to find its coordinator) on its `transactional.id`, and on nothing else's.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from services.common.settings import (
    ExportSettings,
    GroupsSettings,
    TopicSettings,
    relay_transactional_id,
)

__all__ = [
    "ACL_COMMAND_CLASS",
    "Acl",
    "AclApplyError",
    "Principals",
    "acl_set",
    "apply_acls",
    "command_lines",
    "default_acl_set",
    "script",
]

ACL_COMMAND_CLASS = "org.apache.kafka.tools.AclCommand"

Resource = Literal["topic", "group", "cluster", "transactional-id"]


@dataclass(frozen=True)
class Principals:
    """The SCRAM user names of the product and the systems around it."""

    groups: str = "customer-groups"
    export: str = "customer-groups-export"
    migrate: str = "customer-groups-migrate"
    booking_system: str = "booking-system"
    vaccination_client: str = "vaccination-client"
    # Vaccination clients pick their consumer group names below this prefix.
    vaccination_client_group_prefix: str = "vaccination-client"


@dataclass(frozen=True)
class Acl:
    """One `kafka-acls --add`: `principal` may do every one of `operations` on every
    resource in `names` (names starting with a prefix when `prefixed`)."""

    principal: str
    operations: tuple[str, ...]
    resource: Resource
    names: tuple[str, ...]
    why: str
    prefixed: bool = False

    def args(self) -> list[str]:
        """The AclCommand arguments after the connection options."""
        args = ["--add", "--allow-principal", f"User:{self.principal}"]
        for operation in self.operations:
            args += ["--operation", operation]
        if self.resource == "cluster":
            args.append("--cluster")
        for name in self.names:
            args += [f"--{self.resource}", name]
        if self.prefixed:
            args += ["--resource-pattern-type", "prefixed"]
        return args


def acl_set(
    topics: TopicSettings,
    *,
    groups_consumer_group: str,
    export_consumer_group: str,
    groups_transactional_id: str | None = None,
    principals: Principals | None = None,
) -> list[Acl]:
    """Least privilege for each principal; nobody but the migrate step may create topics.
    `groups_transactional_id`: the relay's (`GROUPS_RELAY_TRANSACTIONAL_ID`), by default
    derived from the consumer group as the service derives it."""
    p = principals or Principals()
    inbound = topics.inbound
    transactional_id = groups_transactional_id or relay_transactional_id(groups_consumer_group)
    return [
        Acl(
            p.groups,
            ("READ", "DescribeConfigs"),
            "topic",
            inbound,
            "consumes bookings, starts, registrations and commands (and checks at start that "
            "their retention is within its idempotency window)",
        ),
        Acl(p.groups, ("READ",), "group", (groups_consumer_group,), "its consumer group"),
        Acl(
            p.groups,
            ("WRITE", "DESCRIBE"),
            "transactional-id",
            (transactional_id,),
            "outbox relay: its transactions (a new leader fences the old one by this id)",
        ),
        Acl(
            p.groups,
            ("WRITE",),
            "topic",
            (topics.prompts, topics.events, topics.dlq, *inbound, topics.catalog),
            "outbox relay: prompts, events, dead letters, dead-letter replay back to "
            "the inbound topic the record came from, and the catalog",
        ),
        Acl(p.export, ("READ",), "topic", (topics.events,), "consumes the groups events"),
        Acl(p.export, ("READ",), "group", (export_consumer_group,), "its consumer group"),
        Acl(
            p.export,
            ("WRITE",),
            "topic",
            (topics.export, topics.dlq),
            "export records (service and backfill) and dead letters",
        ),
        Acl(p.booking_system, ("WRITE",), "topic", (topics.bookings,), "publishes bookings"),
        Acl(
            p.booking_system,
            ("READ",),
            "topic",
            (topics.catalog,),
            "reads the catalog (the groups a patient may choose when booking online)",
        ),
        Acl(
            p.vaccination_client,
            ("WRITE",),
            "topic",
            (topics.started, topics.registered, topics.commands),
            "publishes vaccination starts, registrations and group commands",
        ),
        Acl(
            p.vaccination_client,
            ("READ",),
            "topic",
            (topics.prompts, topics.events, topics.catalog),
            "reads prompts, events and the catalog",
        ),
        Acl(
            p.vaccination_client,
            ("READ",),
            "group",
            (p.vaccination_client_group_prefix,),
            "consumer groups of its own prefix",
            prefixed=True,
        ),
        Acl(
            p.migrate,
            ("CREATE", "DESCRIBE"),
            "topic",
            tuple(getattr(topics, name) for name in TopicSettings.model_fields),
            "`python -m services.groups migrate` creates every topic of the product",
        ),
    ]


def default_acl_set(principals: Principals | None = None) -> list[Acl]:
    """The ACLs for the topic and group names of this environment's settings."""
    groups = GroupsSettings()
    return acl_set(
        TopicSettings(),
        groups_consumer_group=groups.consumer_group,
        export_consumer_group=ExportSettings().consumer_group,
        groups_transactional_id=groups.transactional_id,
        principals=principals,
    )


def _shell_word(word: str) -> str:
    # A `$VARIABLE` is meant to expand in the shell; everything else is literal.
    return f'"{word}"' if word.startswith("$") else shlex.quote(word)


def command_lines(
    acls: Iterable[Acl],
    *,
    bootstrap_server: str = "$KAFKA_BOOTSTRAP",
    command_config: str = "admin.properties",
    tool: str = "kafka-acls.sh",
) -> list[str]:
    """Shell command lines, one per ACL, each after a `# why` comment line."""
    lines = []
    for acl in acls:
        connect = ["--bootstrap-server", bootstrap_server, "--command-config", command_config]
        words = [tool, *connect, *acl.args()]
        lines.append(f"# User:{acl.principal}: {acl.why}")
        lines.append(" ".join(_shell_word(w) for w in words))
    return lines


SCRIPT_HEADER = """\
#!/usr/bin/env bash
# The ACLs of the customer groups product, for the default topic and group names.
# Generated by `python -m devinfra acls --script` from devinfra/acls.py: do not edit
# (tests/integration/test_kafka_acls.py checks that the two agree).
#
# Needs KAFKA_BOOTSTRAP (host:port) and KAFKA_ADMIN_CONFIG (client properties of a
# principal allowed to alter ACLs); KAFKA_ACLS is the kafka-acls.sh to use.
# Adding an ACL that exists already changes nothing, so this may run on every start.
set -euo pipefail
: "${KAFKA_BOOTSTRAP:?}" "${KAFKA_ADMIN_CONFIG:?}"
KAFKA_ACLS="${KAFKA_ACLS:-/opt/kafka/bin/kafka-acls.sh}"
"""


def script(acls: Iterable[Acl]) -> str:
    """A shell script that adds `acls` (what `infra/kafka/acls.sh` holds)."""
    lines = command_lines(
        acls,
        bootstrap_server="$KAFKA_BOOTSTRAP",
        command_config="$KAFKA_ADMIN_CONFIG",
        tool="$KAFKA_ACLS",
    )
    return SCRIPT_HEADER + "\n".join(lines) + "\n"


class AclApplyError(RuntimeError):
    """AclCommand refused or failed to add an ACL."""


def apply_acls(tool_cmd: Sequence[str], acls: Iterable[Acl], *, timeout: float = 120.0) -> None:
    """Add `acls` with AclCommand. `tool_cmd` is the java command line up to and including
    the connection options (e.g. `LocalKafka.java_tool_cmd(ACL_COMMAND_CLASS)`). Adding an
    ACL that exists already changes nothing, so this may run on every deployment."""
    for acl in acls:
        proc = subprocess.run(
            [*tool_cmd, *acl.args()], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0 or "Error while executing" in proc.stdout + proc.stderr:
            raise AclApplyError(
                f"AclCommand failed for User:{acl.principal} {acl.resource} {acl.names}:\n"
                f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
