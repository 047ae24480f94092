"""The broker, the database and the service processes a benchmark runs against.

Everything is local (127.0.0.1): `devinfra.provide_infrastructure` starts the real Apache
Kafka broker and embedded PostgreSQL in temporary directories, each scenario gets a fresh
database and its own topic names, and every process started here is stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from devinfra.kafka import LocalKafka
from devinfra.postgres import LocalPostgres
from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess, free_port
from services.common.settings import TopicSettings

PSEUDONYM_KEY = "bench-pseudonym-key-0123456789abcdef"


# pg_stat_statements (shipped with the embedded server) counts the service's statements
# per record in `--profile` runs; its cost is a few per cent at most, in every run alike.
POSTGRES_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",
}


@contextlib.contextmanager
def local_infrastructure() -> Iterator[Infrastructure]:
    """The local Apache Kafka broker and embedded PostgreSQL (temporary directories, as
    `devinfra.provide_infrastructure` starts them, plus `POSTGRES_SETTINGS`)."""
    with contextlib.ExitStack() as stack:
        kafka = stack.enter_context(LocalKafka())
        postgres = stack.enter_context(LocalPostgres(settings=POSTGRES_SETTINGS))
        yield Infrastructure(
            kafka_bootstrap=kafka.bootstrap_servers,
            database_url=postgres.url,
            kafka_version=kafka.version,
            postgres_version=postgres.version,
            origin="local",
            kafka_origin="local",
            postgres_origin="local",
            kafka=kafka,
            postgres=postgres,
        )


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class Databases:
    """Fresh databases on the benchmark's PostgreSQL server, dropped at the end."""

    infra: Infrastructure
    created: list[str] = field(default_factory=list)

    async def create(self, prefix: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(asyncpg_dsn(self.infra.database_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.created.append(name)
        base, _, _db = self.infra.database_url.rpartition("/")
        return f"{base}/{name}"

    async def drop_all(self) -> None:
        admin = await asyncpg.connect(asyncpg_dsn(self.infra.database_url))
        try:
            for name in self.created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        self.created.clear()


def topic_names(suffix: str) -> TopicSettings:
    defaults = TopicSettings()
    return TopicSettings(
        **{name: f"{getattr(defaults, name)}.{suffix}" for name in TopicSettings.model_fields}
    )


def service_env(
    infra: Infrastructure, database_url: str, topics: TopicSettings, *, partitions: int
) -> dict[str, str]:
    """The environment of a service process (as tests/e2e's stack_env, with bench names)."""
    env = {
        "APP_ENV": "test",
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "KAFKA_INBOUND_PARTITIONS": str(partitions),
        "DATABASE_URL": database_url,
        "GROUPS_CONSUMER_GROUP": f"bench-groups-{topics.bookings.rsplit('.', 1)[-1]}",
        "EXPORT_CONSUMER_GROUP": f"bench-export-{topics.bookings.rsplit('.', 1)[-1]}",
        "EXPORT_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "LOG_LEVEL": "WARNING",
    }
    for name in TopicSettings.model_fields:
        env[f"TOPIC_{name.upper()}"] = getattr(topics, name)
    return env


@contextlib.contextmanager
def service_processes(
    module: str, env: dict[str, str], count: int, logdir: Path, *, port_env: str
) -> Iterator[list[ServiceProcess]]:
    """`count` processes of `python -m module` (one consumer group), each serving HTTP on
    its own port (`port_env`), logs in `logdir`; all stopped on exit."""
    processes: list[ServiceProcess] = []
    try:
        for index in range(count):
            port = free_port()
            process = ServiceProcess(
                module,
                {**env, port_env: str(port)},
                port=port,
                log_path=logdir / f"{module.rsplit('.', 1)[-1]}-{index}.log",
            )
            processes.append(process)
            process.start(wait=180.0)
        yield processes
    finally:
        for process in processes:
            process.stop()


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    """New topics of `partitions` partitions each, once the broker lists them."""
    async with admin_client(bootstrap) as admin:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
        for _ in range(100):
            if set(names) <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"topics {names} not visible")


async def wait_group_stable(bootstrap: str, group: str, members: int, limit_s: float) -> None:
    """Until the consumer group is Stable with `members` members (each has partitions)."""
    deadline = time.monotonic() + limit_s
    state, count = "?", 0
    async with admin_client(bootstrap) as admin:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                for response in await admin.describe_consumer_groups([group]):
                    for described in response.groups:
                        state, count = described[2], len(described[5])
                if state == "Stable" and count == members:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"consumer group {group}: {state} with {count}/{members} members")


async def partitions_of(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    async with admin_client(bootstrap) as admin:
        described = await admin.describe_topics(list(topics))
    found = [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    ]
    return sorted(found)


async def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Records on `topics` not yet committed by the consumer group."""
    partitions = await partitions_of(bootstrap, topics)
    async with admin_client(bootstrap) as admin:
        committed = await admin.list_consumer_group_offsets(group)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    lag = 0
    for partition in partitions:
        done = committed.get(partition)
        lag += ends[partition] - (done.offset if done is not None and done.offset >= 0 else 0)
    return lag


class CommitProgress:
    """Polls the consumer group's committed offsets on the inbound topics every `every`
    seconds: how many records the service has committed since `start()`, and when."""

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str], *, every: float = 0.1):
        self.bootstrap = bootstrap
        self.group = group
        self.topics = list(topics)
        self.every = every
        self.samples: list[tuple[float, int]] = []  # (perf_counter, records committed)
        self._base = 0
        self._task: asyncio.Task[None] | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def _committed(self) -> int:
        assert self._admin is not None
        offsets = await self._admin.list_consumer_group_offsets(self.group)
        return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic in self.topics)

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self._admin.start()
        self._base = await self._committed()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), await self._committed() - self._base))
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._admin is not None:
            await self._admin.close()

    def reached_at(self, count: int) -> float | None:
        for at, done in self.samples:
            if done >= count:
                return at
        return None

    async def wait(self, count: int, *, limit_s: float) -> bool:
        deadline = time.perf_counter() + limit_s
        while self.reached_at(count) is None:
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(self.every)
        return True


async def outbox_rows(database_url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return int(await connection.fetchval("SELECT count(*) FROM outbox"))
    finally:
        await connection.close()


class CpuMeter:
    """CPU seconds used by named groups of processes (children included) over a window.

    A group's children that end during the window still count: PostgreSQL's autovacuum
    workers (and a backend whose connection closes) exit and are reaped by the postmaster,
    so their time is read from the root's reaped-children times, less what they had used
    before the window."""

    def __init__(
        self, groups: dict[str, list[int]], *, without_children: Iterable[int] = ()
    ) -> None:
        self._groups = groups
        self._flat = set(without_children)
        self._start: dict[int, float] = {}
        self._reaped: dict[int, float] = {}  # root pid -> its reaped children's CPU at start
        self._children: dict[str, set[int]] = {}  # by group: the roots' children at start
        self._began = 0.0
        self._machine = 0.0
        self.wall = 0.0  # seconds of the last window
        self.cpu_seconds: dict[str, float] = {}  # of the last window, by group
        self.ended_seconds: dict[str, float] = {}  # of it, by processes that ended in it

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            if pid in self._flat:
                return [root]
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def _reaped_cpu(self, pid: int) -> float:
        if pid in self._flat:
            return 0.0
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.children_user + times.children_system)

    def _direct_children(self, pids: list[int]) -> set[int]:
        found: set[int] = set()
        for pid in pids:
            if pid in self._flat:
                continue
            with contextlib.suppress(psutil.Error):
                found.update(child.pid for child in psutil.Process(pid).children())
        return found

    def start(self) -> None:
        self._began = time.monotonic()
        busy = psutil.cpu_times()
        self._machine = busy.user + busy.system + busy.nice
        self._start = {
            process.pid: self._cpu(process)
            for pids in self._groups.values()
            for pid in pids
            for process in self._tree(pid)
        }
        self._reaped = {
            pid: self._reaped_cpu(pid) for pids in self._groups.values() for pid in pids
        }
        self._children = {name: self._direct_children(pids) for name, pids in self._groups.items()}

    def stop(self) -> dict[str, float]:
        """Cores used on average by each group during the window (1.0 = one core busy),
        and the whole machine's (from /proc/stat), which shows the neighbours' share.
        `cpu_seconds` and `wall` keep the window's CPU seconds by group and its length."""
        wall = max(time.monotonic() - self._began, 1e-9)
        used: dict[str, float] = {}
        self.cpu_seconds, self.ended_seconds = {}, {}
        for name, pids in self._groups.items():
            seconds = ended = 0.0
            alive: set[int] = set()
            for pid in pids:
                ended += self._reaped_cpu(pid) - self._reaped.get(pid, 0.0)
                for process in self._tree(pid):
                    alive.add(process.pid)
                    seconds += self._cpu(process) - self._start.get(process.pid, 0.0)
            # Ended during the window: their whole time is in the reaped figure above.
            # (A deeper descendant that ended is reaped by its parent, and not counted.)
            ended -= sum(self._start.get(gone, 0.0) for gone in self._children[name] - alive)
            seconds += ended
            self.ended_seconds[name] = round(ended, 3)
            self.cpu_seconds[name] = round(seconds, 3)
            used[name] = round(seconds / wall, 2)
        busy = psutil.cpu_times()
        machine = busy.user + busy.system + busy.nice - self._machine
        used["whole machine"] = round(machine / wall, 2)
        self.cpu_seconds["whole machine"] = round(machine, 3)
        self.wall = wall
        return used
