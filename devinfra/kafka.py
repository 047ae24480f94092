"""A real single-node Apache Kafka broker (KRaft) run from jars that Maven resolves.

No Docker and no downloaded tarball: `infra/kafka/pom.xml` lists the broker's jars, Maven
Central provides them once into a cache outside the git tree, and `LocalKafka` runs
`kafka.Kafka` on free loopback ports with its data in a work directory.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiokafka.admin import AIOKafkaAdminClient

from devinfra._server import LocalServer
from devinfra._util import (
    LOCALHOST,
    InfraError,
    cache_root,
    free_ports,
    port_accepts,
    port_is_free,
    repo_root,
    run_coroutine_blocking,
    tail,
)

__all__ = ["KafkaStartError", "LocalKafka", "ScramUsers", "kafka_infra_dir", "resolve_jars"]

log = logging.getLogger(__name__)

_MARKER = ".resolved"
# C1 JIT only: C2 kept recompiling on cores the broker shares (BENCHMARKS.md, fix 13).
_JIT_OPTS = ("-XX:TieredStopAtLevel=1",)
_MVN_TIMEOUT_S = 20 * 60
_JAR_RE = re.compile(r"^kafka_2\.13-(?P<version>.+)\.jar$")


class KafkaStartError(InfraError):
    """The local broker could not be prepared or did not come up."""


SCRAM_MECHANISM = "SCRAM-SHA-512"
SASL_LISTENER = "SASL_PLAINTEXT"


@dataclass(frozen=True, repr=False)
class ScramUsers:
    """SASL/SCRAM-SHA-512 principals of a broker that authorizes with ACLs.

    `admin` is the broker's own (inter-broker) principal and a super user, for the steps
    that set a deployment up (topics, ACLs); every other principal gets only what ACLs
    grant it. The credentials are written into the storage when it is formatted, so a
    broker restarted on the same work directory needs the same passwords.
    """

    admin_password: str
    users: Mapping[str, str] = field(default_factory=dict)
    admin: str = "admin"

    @classmethod
    def generate(cls, *names: str) -> ScramUsers:
        """An admin and `names`, each with a fresh random password."""
        return cls(
            admin_password=secrets.token_urlsafe(24),
            users={name: secrets.token_urlsafe(24) for name in names},
        )

    @property
    def all(self) -> dict[str, str]:
        return {self.admin: self.admin_password, **self.users}

    def password(self, name: str) -> str:
        return self.all[name]

    def __repr__(self) -> str:  # passwords stay out of logs and test reports
        return f"ScramUsers(admin={self.admin!r}, users={sorted(self.users)!r})"

    def __post_init__(self) -> None:
        for name, password in self.all.items():
            # Both go unescaped into `--add-scram NAME=[name=..,password=..]`, JAAS and
            # .properties text, so only characters none of those treat specially.
            for value in (name, password):
                if not _SAFE_CREDENTIAL.fullmatch(value):
                    raise ValueError(f"SCRAM user {name!r}: use only letters, digits, . _ -")


_SAFE_CREDENTIAL = re.compile(r"[A-Za-z0-9._-]+")


def jaas_config(username: str, password: str) -> str:
    """`sasl.jaas.config` for a SCRAM client (Java tools, the broker's inter-broker login)."""
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{username}" password="{password}";'
    )


def kafka_infra_dir() -> Path:
    """`infra/kafka` of this checkout (pom.xml and log4j2.xml)."""
    path = repo_root() / "infra" / "kafka"
    if not (path / "pom.xml").is_file():
        raise KafkaStartError(
            f"{path / 'pom.xml'} not found: devinfra must run from a checkout of the repo "
            "(an editable install), since the broker's jars are listed there"
        )
    return path


def _pom_kafka_version(pom: Path) -> str:
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if match is None:
        raise KafkaStartError(f"no <kafka.version> property in {pom}")
    return match.group(1)


def resolve_jars() -> Path:
    """Directory holding the broker's jars, resolving them with Maven on first use.

    The cache is `<cache root>/kafka-<version>-<pom digest>/libs` (see
    `devinfra._util.cache_root`): checkouts with different poms (branches, worktrees) each
    keep their own jars instead of replacing each other's under a running broker. A marker
    file records the sha256 of the pom it was built from: while it matches, this returns at
    once without running Maven. A file lock makes concurrent first calls (e.g. parallel
    test processes) resolve only once.
    """
    pom = kafka_infra_dir() / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    cache = cache_root() / f"kafka-{_pom_kafka_version(pom)}-{digest[:12]}"
    libs = cache / "libs"
    marker = cache / _MARKER

    def complete() -> bool:
        try:
            return marker.read_text().strip() == digest and libs.is_dir()
        except OSError:
            return False

    if complete():
        return libs

    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaStartError("Maven (mvn) is needed once to fetch the Kafka jars; not on PATH")
        staging = cache / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
            "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        log.info("Resolving Kafka jars with Maven into %s (one-time)", libs)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaStartError(f"Maven did not finish within {_MVN_TIMEOUT_S} s") from exc
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            output = (proc.stdout + proc.stderr)[-4000:]
            raise KafkaStartError(f"Maven failed to resolve the Kafka jars:\n{output}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text(digest + "\n")
        log.info("Kafka jars resolved in %.1f s", time.monotonic() - started)
    return libs


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaStartError("Java 17+ is needed to run the local Kafka broker; not on PATH")
    return java


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it may hold a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def _random_cluster_id() -> str:
    """Kafka's cluster-id format: a base64url UUID without padding.

    One that starts with '-' would be read as an option by the storage tool, so skip those
    (Kafka's own Uuid.randomUuid does the same).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


async def _broker_ready(client: Mapping[str, Any]) -> bool:
    admin = AIOKafkaAdminClient(**client, client_id="devinfra-probe", request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers"))
    finally:
        await admin.close()


class LocalKafka(LocalServer):
    """A single-node KRaft broker+controller on 127.0.0.1, run as a child JVM.

    Ports and data directory stay fixed for the life of the object, so `restart()` (and
    `kill()` + `start()`) bring the same cluster back with its data, as a broker restart in
    production would (the lifecycle is `LocalServer`'s).

    With `sasl`, clients authenticate with SCRAM-SHA-512 (`client_config`) and the
    StandardAuthorizer allows only what ACLs grant (`devinfra.acls`); the controller
    listener stays PLAINTEXT on loopback, its anonymous principal a super user, since the
    broker registers with the controller before any ACL could exist.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        startup_timeout: float = 90.0,
        sasl: ScramUsers | None = None,
    ) -> None:
        self.sasl = sasl
        super().__init__(workdir, prefix="local-kafka-", startup_timeout=startup_timeout)
        self.port, self.controller_port = self._choose_ports(port, controller_port)
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._libs: Path | None = None

    # -- paths ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def properties_file(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def log_file(self) -> Path:
        """The broker's log4j2 INFO log."""
        return self.workdir / "logs" / "server.log"

    @property
    def admin_properties_file(self) -> Path:
        """Client properties of the admin principal, for Kafka's Java tools'
        `--command-config` (SASL brokers only; owner-readable, it holds the password)."""
        return self.workdir / "admin.properties"

    @property
    def console_file(self) -> Path:
        """JVM stdout/stderr: WARN+ log lines and anything printed before log4j2 starts."""
        return self.workdir / "kafka.out"

    # -- public API ----------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def security_protocol(self) -> str:
        return "PLAINTEXT" if self.sasl is None else SASL_LISTENER

    def client_config(self, user: str | None = None) -> dict[str, Any]:
        """aiokafka connection kwargs, as `user` (default: the admin) on a SASL broker."""
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self.sasl is not None:
            name = user or self.sasl.admin
            config.update(
                security_protocol=SASL_LISTENER,
                sasl_mechanism=SCRAM_MECHANISM,
                sasl_plain_username=name,
                sasl_plain_password=self.sasl.password(name),
            )
        return config

    def java_tool_cmd(self, main_class: str, *args: str) -> list[str]:
        """A Kafka Java tool (e.g. `org.apache.kafka.tools.AclCommand`) against this broker
        as the admin: `--bootstrap-server` (and `--command-config`) come first."""
        connect = ["--bootstrap-server", self.bootstrap_servers]
        if self.sasl is not None:
            self._write_admin_properties()
            connect += ["--command-config", str(self.admin_properties_file)]
        return [*self._java_cmd("-Xmx256m"), main_class, *connect, *args]

    @property
    def version(self) -> str:
        """Kafka version, read from the name of the kafka_2.13 jar in use."""
        for jar in self._jars().iterdir():
            match = _JAR_RE.match(jar.name)
            if match:
                return match.group("version")
        raise KafkaStartError(f"no kafka_2.13-*.jar in {self._jars()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> str:
        """Start the broker (formatting storage on first use); returns the bootstrap address."""
        if self.running:
            return self.bootstrap_servers
        self._jars()  # a first-ever Maven resolve should not eat into the startup timeout
        started = time.monotonic()
        self._write_properties()
        if not (self.data_dir / "meta.properties").exists():
            self._format()
        self._spawn()
        self._wait_ready(started + self.startup_timeout)
        log.info(
            "Local Kafka %s ready at %s in %.1f s (workdir %s)",
            self.version, self.bootstrap_servers, time.monotonic() - started, self.workdir,
        )  # fmt: skip
        return self.bootstrap_servers

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL if it takes longer than `timeout`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Kafka did not stop within %.0f s; killing it", timeout)
                self._signal(signal.SIGKILL)
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the broker, as in a crash; data stays for a later `start()`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._reap()

    # -- internals -----------------------------------------------------------------------
    def _choose_ports(self, port: int | None, controller_port: int | None) -> tuple[int, int]:
        """Explicit ports win; else the ones a previous run in this workdir used, if free
        (a reused data dir then keeps its controller endpoint); else fresh free ports."""
        saved = self.workdir / "ports.json"
        if port is None and controller_port is None and saved.exists():
            with contextlib.suppress(ValueError, KeyError, OSError):
                old = json.loads(saved.read_text())
                p, c = int(old["port"]), int(old["controller_port"])
                if port_is_free(p) and port_is_free(c):
                    return p, c
        fresh = iter(free_ports(2))
        chosen = (
            port if port is not None else next(fresh),
            controller_port if controller_port is not None else next(fresh),
        )
        if chosen[0] == chosen[1]:
            raise KafkaStartError(f"broker and controller port must differ (both {chosen[0]})")
        saved.write_text(json.dumps({"port": chosen[0], "controller_port": chosen[1]}))
        return chosen

    def _jars(self) -> Path:
        if self._libs is None:
            self._libs = resolve_jars()
        return self._libs

    def _java_cmd(self, *jvm_opts: str) -> list[str]:
        return [
            _java(),
            *_JIT_OPTS,
            *jvm_opts,
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            f"-Dlog4j2.configurationFile={kafka_infra_dir() / 'log4j2.xml'}",
            "-cp",
            f"{self._jars()}/*",
        ]

    def _security_properties(self) -> dict[str, str]:
        if self.sasl is None:
            return {}
        listener = SASL_LISTENER.lower()
        return {
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.{listener}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
                jaas_config(self.sasl.admin, self.sasl.admin_password)
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # ANONYMOUS is whoever reaches the loopback-only PLAINTEXT controller listener:
            # this broker itself, registering before any ACL exists.
            "super.users": f"User:{self.sasl.admin};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _write_admin_properties(self) -> None:
        assert self.sasl is not None
        text = (
            f"security.protocol={SASL_LISTENER}\n"
            f"sasl.mechanism={SCRAM_MECHANISM}\n"
            f"sasl.jaas.config={jaas_config(self.sasl.admin, self.sasl.admin_password)}\n"
        )
        _write_private(self.admin_properties_file, text)

    def _write_properties(self) -> None:
        listener = self.security_protocol
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"{listener}://{LOCALHOST}:{self.port},"
            f"CONTROLLER://{LOCALHOST}:{self.controller_port}",
            "advertised.listeners": f"{listener}://{LOCALHOST}:{self.port}",
            "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            **self._security_properties(),
            "controller.quorum.bootstrap.servers": f"{LOCALHOST}:{self.controller_port}",
            "log.dirs": str(self.data_dir),
            # Topics are created explicitly by the services, as in production.
            "auto.create.topics.enable": "false",
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Internal topics: one replica; fewer partitions than the default 50 so the
            # first consumer group / transaction does not wait for 50 partitions to load.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a kill -9 the restarted broker must wait until its old registration's
            # session expires (default 9 s); a shorter session makes crash tests quicker.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            # Compacted topics need the cleaner; a small dedupe buffer suits a 512 MB heap.
            "log.cleaner.enable": "true",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "log.segment.bytes": str(16 * 1024 * 1024),
            "log.retention.hours": "24",
            # Two cores: keep the thread pools small.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
        }
        text = "# Written by devinfra.kafka.LocalKafka; rewritten on every start.\n"
        text += "".join(f"{key}={value}\n" for key, value in props.items())
        _write_private(self.properties_file, text)

    def _format(self) -> None:
        cmd = [
            *self._java_cmd("-Xmx256m"),
            "kafka.tools.StorageTool", "format", "--standalone",
            "-t", _random_cluster_id(), "-c", str(self.properties_file),
        ]  # fmt: skip
        # SCRAM credentials live in the cluster metadata: written at format time, no
        # principal has to exist before the broker can authenticate its first client.
        for name, password in (self.sasl.all if self.sasl else {}).items():
            cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            output = f"{proc.stdout}{proc.stderr}"
            for password in (self.sasl.all if self.sasl else {}).values():
                output = output.replace(password, "***")  # a parse error may echo --add-scram
            raise KafkaStartError(
                f"formatting Kafka storage in {self.data_dir} failed:\n"
                f"{output}\n{tail(self.log_file)}"
            )

    def _spawn(self) -> None:
        cmd = [
            *self._java_cmd("-Xms256m", "-Xmx512m", "-XX:+ExitOnOutOfMemoryError"),
            "kafka.Kafka",
            str(self.properties_file),
        ]
        self._out = self.console_file.open("ab")
        self._out.write(f"\n--- devinfra: starting broker at {time.ctime()} ---\n".encode())
        self._out.flush()
        # Own process group: Ctrl+C in a terminal reaches only us, and we stop the JVM in order.
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._stop_at_exit()

    def _wait_ready(self, deadline: float) -> None:
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                self._reap()
                raise KafkaStartError(
                    f"Kafka broker exited during startup (exit code {code}).\n"
                    f"--- {self.console_file} ---\n{tail(self.console_file)}\n"
                    f"--- {self.log_file} ---\n{tail(self.log_file)}"
                )
            if port_accepts(self.port):
                try:
                    if run_coroutine_blocking(lambda: _broker_ready(self.client_config())):
                        return
                except Exception as exc:
                    log.debug("Kafka not ready yet: %r", exc)
            if time.monotonic() > deadline:
                self.kill()
                raise KafkaStartError(
                    f"Kafka broker did not answer on {self.bootstrap_servers} within "
                    f"{self.startup_timeout:.0f} s; killed it.\n"
                    f"--- {self.log_file} ---\n{tail(self.log_file)}"
                )
            time.sleep(0.25)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _reap(self) -> None:
        self._proc = None
        if self._out is not None:
            self._out.close()
            self._out = None
