"""A realistic, reproducible inbound mix over a population of customers.

The database is seeded directly (COPY) with what a clinic system already holds before the
measured window: customers, one active membership each (half also a historical one), one
booking and one open popup (prompt) each. The measured mix then only refers to seeded state
or to state created earlier on the same topic and key (same partition, so in order), so every
command is valid whatever order the three inbound topics are consumed in: a command that the
service rejects would be cheaper than a real one and flatter the figures.

Each vaccination.started yields one customer_group.prompt; each command one event on the
events topic; a booking yields none.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from services.common.settings import TopicSettings
from services.groups.domain.personnummer import luhn_check_digit
from services.groups.service_layer.outgoing import prompt_id_for

SOURCE = "/bench"
UNITS = [f"unit-{n:03d}" for n in range(40)]
USERS = [f"nurse-{n:04d}" for n in range(400)]
VACCINES = [
    {"code": "J07BB02", "name": "Influvac Tetra"},
    {"code": "J07BN01", "name": "Comirnaty"},
    {"code": "J07AL02", "name": "Prevenar 13"},
    {"code": "J07BA01", "name": "TicoVac"},
]
# Codes of the shipped catalog (the user guide's groups).
SEED_GROUP = ("INFLUENSA", "ALDER_65_PLUS")
HISTORICAL_GROUP = ("COVID", "OVRIG_ALLMANHET_18_64")
# Groups a customer can be added to in the measured mix (never the seeded active one).
ADDABLE = [
    ("COVID_19", "REKOMMENDERAD"),
    ("PNEUMOKOCK", "ALDER_65_PLUS"),
    ("OVRIGT", "RESEVACCINATIONER"),
]
FIRST_NAMES = ["Anna", "Lars", "Karin", "Erik", "Maria", "Johan", "Eva", "Nils", "Åsa", "Örjan"]
LAST_NAMES = ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Öberg"]

# Share of each inbound type in the measured mix.
MIX = {
    "booking.created": 0.20,
    "vaccination.started": 0.30,
    "customer_group.add": 0.20,
    "customer_group.prompt_close": 0.15,
    "customer_group.update": 0.10,
    "customer_group.remove": 0.05,
}
# The comparison with the plain FastStream service: only the two types it handles, two
# starts per add (as the latency phases offer them: adds at half the start rate).
VERSUS_MIX = {"vaccination.started": 2 / 3, "customer_group.add": 1 / 3}

# What `Workload.seed` writes, table by table; the plain service's database takes only
# the first two (it keeps no bookings nor prompts).
SEED_TABLES = ("customers", "memberships", "bookings", "prompts")
_SEED_COLUMNS: dict[str, list[str]] = {
    "customers": ["personnummer", "first_name", "last_name", "created_at", "updated_at"],
    "memberships": [
        "membership_id", "personnummer", "group_code", "subgroup_code", "reference_code",
        "valid_from", "valid_to", "version", "status", "created_at", "updated_at",
        "created_by_user", "created_by_unit", "updated_by_user", "updated_by_unit",
    ],
    "bookings": [
        "booking_id", "unit_id", "personnummer", "start_time", "vaccine_code", "vaccine_name",
        "dose", "requested_group_code", "requested_subgroup_code", "status",
        "source_event_time", "updated_at",
    ],
    "prompts": [
        "prompt_id", "vaccination_id", "personnummer", "unit_id", "user_id", "booking_id",
        "vaccine_code", "event", "created_at", "closed_at",
    ],
}  # fmt: skip


def personnummer(index: int) -> str:
    """A distinct, valid personnummer per index (birth 1935-2003, serials 000-999)."""
    born = date(1935, 1, 1) + timedelta(days=index % 25_000)
    serial = index // 25_000
    body = f"{born:%Y%m%d}{serial:03d}"
    return body + luhn_check_digit(body[2:])


def seed_membership_id(index: int, kind: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{kind}/{index}"))


@dataclass(frozen=True)
class Record:
    kind: str  # bookings | started | commands
    key: bytes
    value: bytes
    type: str

    def topic(self, topics: TopicSettings) -> str:
        return str(getattr(topics, self.kind))


@dataclass
class Mix:
    records: list[Record]
    prompts: int = 0  # expected on the prompts topic
    events: int = 0  # expected on the events topic
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def mean_bytes(self) -> float:
        return sum(len(r.value) for r in self.records) / max(len(self.records), 1)

    def append(self, record: Record) -> None:
        self.records.append(record)
        self.by_type[record.type] = self.by_type.get(record.type, 0) + 1
        if record.kind == "started":
            self.prompts += 1
        elif record.kind == "commands":
            self.events += 1

    def head(self, count: int) -> Mix:
        """The first `count` records, counted afresh."""
        first = Mix([])
        for record in self.records[:count]:
            first.append(record)
        return first


class Workload:
    """Seed rows and a stream of valid inbound records over `customers` customers."""

    def __init__(self, customers: int, *, seed: int = 6) -> None:
        self.customers = customers
        self.rng = random.Random(seed)
        self.people = [personnummer(i) for i in range(customers)]
        self.now = datetime.now(UTC).replace(microsecond=0)
        order = list(range(customers))
        self.rng.shuffle(order)
        half = customers // 2
        self._update_pool: deque[int] = deque(order[:half])
        self._remove_pool: deque[int] = deque(order[half:])
        closes = list(range(customers))
        self.rng.shuffle(closes)
        self._close_pool: deque[int] = deque(closes)
        self._added: dict[int, int] = {}  # customer -> groups added so far (index in ADDABLE)
        self._sequence = 0

    # -- seed ------------------------------------------------------------------

    def seed_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """The seed rows of each table in `SEED_TABLES`, in `_SEED_COLUMNS` order."""
        now = self.now
        rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in SEED_TABLES}
        for i, pnr in enumerate(self.people):
            first, last = FIRST_NAMES[i % len(FIRST_NAMES)], LAST_NAMES[i % len(LAST_NAMES)]
            rows["customers"].append((pnr, first, last, now, now))
            unit, user = UNITS[i % len(UNITS)], USERS[i % len(USERS)]
            rows["memberships"].append(
                (
                    seed_membership_id(i, "active"), pnr, SEED_GROUP[0], SEED_GROUP[1],
                    f"REF-{i:07d}", date(2025, 1, 1), None, 1, "active", now, now, user, unit,
                    None, None,
                )
            )  # fmt: skip
            if i % 2 == 0:
                rows["memberships"].append(
                    (
                        seed_membership_id(i, "historical"), pnr, *HISTORICAL_GROUP,
                        None, date(2022, 10, 1), date(2023, 9, 27), 2, "historical",
                        now, now, user, unit, user, unit,
                    )
                )  # fmt: skip
            vaccine = VACCINES[i % len(VACCINES)]
            rows["bookings"].append(
                (
                    f"seed-b-{i}", unit, pnr, now + timedelta(hours=1 + i % 200),
                    vaccine["code"], vaccine["name"], 1,
                    "PNEUMOKOCK" if i % 5 == 0 else None,
                    "ALDER_65_PLUS" if i % 5 == 0 else None,
                    "booked", now, now,
                )
            )  # fmt: skip
            vaccination_id = f"seed-v-{i}"
            rows["prompts"].append(
                (
                    prompt_id_for(vaccination_id), vaccination_id, pnr, unit, user,
                    f"seed-b-{i}", vaccine["code"], b'{"seeded":true}', now, None,
                )
            )  # fmt: skip
        return rows

    async def seed(self, dsn: str, tables: Sequence[str] = SEED_TABLES) -> None:
        """COPY the seed rows of `tables` into a database whose tables exist and are
        empty, then ANALYZE."""
        rows = self.seed_rows()
        connection = await asyncpg.connect(dsn)
        try:
            async with connection.transaction():
                for table in tables:
                    await connection.copy_records_to_table(
                        table, records=rows[table], columns=_SEED_COLUMNS[table]
                    )
            await connection.execute("ANALYZE")
        finally:
            await connection.close()

    # -- records ---------------------------------------------------------------

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _event(self, type_: str, data: dict[str, Any]) -> bytes:
        event = {
            "specversion": "1.0",
            "id": self._id(),
            "source": SOURCE,
            "type": type_,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": data,
        }
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()

    def _actor(self, i: int) -> dict[str, str]:
        return {"user_id": USERS[i % len(USERS)], "unit_id": UNITS[i % len(UNITS)]}

    def _customer(self) -> int:
        return self.rng.randrange(self.customers)

    def booking(self) -> Record:
        i = self._customer()
        self._sequence += 1
        vaccine = VACCINES[self._sequence % len(VACCINES)]
        data: dict[str, Any] = {
            "booking_id": f"b-{self._id()}",
            "unit_id": UNITS[i % len(UNITS)],
            "start_time": (self.now + timedelta(days=1, minutes=self._sequence % 600)).isoformat(),
            "customer": {
                "personnummer": self.people[i],
                "first_name": FIRST_NAMES[i % len(FIRST_NAMES)],
                "last_name": LAST_NAMES[i % len(LAST_NAMES)],
            },
            "vaccine": {**vaccine, "dose": 1 + self._sequence % 3},
        }
        if self._sequence % 4 == 0:
            data["requested_group"] = {"group_code": "COVID_19", "subgroup_code": "REKOMMENDERAD"}
        return Record(
            "bookings",
            self.people[i].encode(),
            self._event("booking.created", data),
            "booking.created",
        )

    def start(self, vaccination_id: str | None = None) -> Record:
        i = self._customer()
        vaccine = VACCINES[i % len(VACCINES)]
        data = {
            "vaccination_id": vaccination_id or f"v-{self._id()}",
            "unit_id": UNITS[i % len(UNITS)],
            "user_id": USERS[i % len(USERS)],
            "personnummer": self.people[i],
            "booking_id": f"seed-b-{i}",
            "vaccine": vaccine,
        }
        return Record(
            "started", self.people[i].encode(), self._event("vaccination.started", data),
            "vaccination.started",
        )  # fmt: skip

    def add(self) -> Record:
        for _ in range(20):
            i = self._customer()
            done = self._added.get(i, 0)
            if done < len(ADDABLE):
                break
        else:
            raise RuntimeError("no customer left to add a group to; use more customers")
        self._added[i] = done + 1
        group, subgroup = ADDABLE[done]
        data: dict[str, Any] = {
            "personnummer": self.people[i],
            "actor": self._actor(i),
            "group_code": group,
            "subgroup_code": subgroup,
        }
        if i % 3 == 0:
            data["reference_code"] = f"R{i:08d}"
        return self._command("customer_group.add", i, data)

    def update(self) -> Record:
        i = self._update_pool.popleft()
        data = {
            "personnummer": self.people[i],
            "actor": self._actor(i),
            "membership_id": seed_membership_id(i, "active"),
            "reference_code": f"NEW-{i:07d}",
        }
        return self._command("customer_group.update", i, data)

    def remove(self) -> Record:
        i = self._remove_pool.popleft()
        data = {
            "personnummer": self.people[i],
            "actor": self._actor(i),
            "membership_id": seed_membership_id(i, "active"),
        }
        return self._command("customer_group.remove", i, data)

    def close(self) -> Record:
        i = self._close_pool.popleft()
        vaccination_id = f"seed-v-{i}"
        data = {
            "personnummer": self.people[i],
            "actor": self._actor(i),
            "prompt_id": prompt_id_for(vaccination_id),
            "vaccination_id": vaccination_id,
        }
        return self._command("customer_group.prompt_close", i, data)

    def _command(self, type_: str, i: int, data: dict[str, Any]) -> Record:
        return Record("commands", self.people[i].encode(), self._event(type_, data), type_)

    def command(self) -> Record:
        """One command drawn with the mix's weights among the command types."""
        types = [t for t in MIX if t.startswith("customer_group.")]
        type_ = self.rng.choices(types, weights=[MIX[t] for t in types])[0]
        return self.make(type_)

    def make(self, type_: str) -> Record:
        if type_ == "booking.created":
            return self.booking()
        if type_ == "vaccination.started":
            return self.start()
        if type_ == "customer_group.update" and self._update_pool:
            return self.update()
        if type_ == "customer_group.remove" and self._remove_pool:
            return self.remove()
        if type_ == "customer_group.prompt_close" and self._close_pool:
            return self.close()
        return self.add()

    def mix(self, count: int, shares: dict[str, float] = MIX) -> Mix:
        """`count` records drawn with `shares` (MIX, or VERSUS_MIX: starts and adds only)."""
        types: Sequence[str] = self.rng.choices(
            list(shares), weights=list(shares.values()), k=count
        )
        result = Mix([])
        for type_ in types:
            result.append(self.make(type_))
        return result
