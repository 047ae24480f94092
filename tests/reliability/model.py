"""A deterministic input stream and a pure model of what the groups service must make of it.

The stream is generated from a seed. Every record is applied to the model as it is
generated, in the order the service will see it for that customer: all of a customer's
records on one topic share a key (the personnummer), so they sit in one partition in
order. The only dependency across topics is a command that names a prompt (an `add`
with `prompt_id`, a `prompt_close`): the prompt comes from a `vaccination.started` on
another topic, so such commands are only generated in a later *wave* than their start,
and the producer waits until a wave is applied before it sends the next (as a nurse
waits for the popup). Within a wave the customers' records are interleaved at random.

The model applies the domain rules with the service's own domain objects
(`Customer`, `Catalog`), and mirrors the handlers' order of checks (schema,
allowlist, personnummer, prompt, rule), so it knows each command's one result, every
row the database must hold and every event id that must be published.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.groups.domain.catalog import Catalog
from services.groups.domain.errors import DomainError, PromptNotFound, Unauthorized
from services.groups.domain.membership import UNCHANGED, Actor, Customer, RemovalReason
from services.groups.domain.personnummer import Personnummer, luhn_check_digit
from services.groups.service_layer import messages
from services.groups.service_layer.outgoing import event_id as _event_id
from services.groups.service_layer.outgoing import membership_id_for, prompt_id_for

BOOKINGS, STARTED, COMMANDS = "bookings", "started", "commands"
ROLES = (BOOKINGS, STARTED, COMMANDS)
ALLOWED_UNITS = ("unit-1", "unit-2", "unit-3")
FOREIGN_UNIT = "unit-not-on-the-allowlist"
EVENT_SOURCE = "/tests/reliability"
BASE_TIME = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
VACCINES = (
    ("J07BN01", "Comirnaty"),
    ("J07BB02", "Influvac Tetra"),
    ("J07AL02", "Prevenar 13"),
    ("J07BA01", "FSME-Immun"),
    ("J07BC02", "Havrix"),
)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def cloudevent_bytes(
    type_: str, data: Any, event_id: str, time: datetime, *, source: str = EVENT_SOURCE
) -> bytes:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": type_,
        "time": iso(time),
        "datacontenttype": "application/json",
        "data": data,
    }
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def make_personnummer(rng: random.Random, *, coordination: bool = False) -> str:
    born = date(1935, 1, 1) + timedelta(days=rng.randrange(0, 26_000))
    day = born.day + (60 if coordination else 0)
    body = f"{born.year:04d}{born.month:02d}{day:02d}{rng.randrange(0, 1000):03d}"
    return body + luhn_check_digit(body[2:])


def unique_personnummer(rng: random.Random, count: int) -> list[str]:
    found: dict[str, None] = {}
    while len(found) < count:
        found[make_personnummer(rng, coordination=rng.random() < 0.05)] = None
    return list(found)


_MODEL_NOW = BASE_TIME


def _actor(data: dict[str, Any]) -> Actor:
    return Actor(data["actor"]["user_id"], data["actor"]["unit_id"])


def _columns(actor: Actor | None) -> tuple[str | None, str | None]:
    """An actor as its two columns (`memberships.created_by_*` / `updated_by_*`)."""
    return (actor.user_id, actor.unit_id) if actor else (None, None)


@dataclass(frozen=True)
class Input:
    """One record to produce. `group` keeps a customer's records in order when waves are
    interleaved; a redelivery is the very same bytes sent again."""

    role: str
    key: bytes | None
    value: bytes | None
    event_id: str | None
    group: str
    redelivery: bool = False


# -- the model -----------------------------------------------------------------------------


def _groups(memberships: Iterable[Any]) -> list[tuple[Any, ...]]:
    """What names a dose's groups: each membership's id and codes."""
    return sorted(
        (m.membership_id, m.group_code, m.subgroup_code or "", m.reference_code or "")
        for m in memberships
    )


@dataclass
class CommandResult:
    type: str
    reason_code: str | None


class Model:
    """What the database and the topics must hold after the inputs applied so far."""

    def __init__(self, catalog: Catalog, today: date, allowed_units: Iterable[str] | None) -> None:
        self.catalog = catalog
        self.today = today
        self.allowed = frozenset(allowed_units) if allowed_units is not None else None
        self.inbox: set[tuple[str, str]] = set()
        self.customers: dict[str, Customer] = {}
        self.names: dict[str, tuple[str | None, str | None]] = {}
        self.bookings: dict[str, dict[str, Any]] = {}
        self.prompts: dict[str, dict[str, Any]] = {}
        self.prompt_vaccination: dict[str, str] = {}  # prompt_id -> vaccination_id
        self.confirmations: dict[str, dict[str, Any]] = {}
        # The groups each confirmation was decided with: (id, codes) of its memberships.
        self.confirmed_groups: dict[str, list[tuple[Any, ...]]] = {}
        self.reconfirmations: dict[str, tuple[str, str]] = {}  # event id -> (type, label)
        self.results: dict[str, CommandResult] = {}
        self.membership_owner: dict[str, str] = {}

    # -- inputs -------------------------------------------------------------------------
    def apply(self, role: str, event: dict[str, Any]) -> bool:
        """Apply one decoded CloudEvent; False when it is a redelivery (no effect)."""
        key = (role, event["id"])
        if key in self.inbox:
            return False
        self.inbox.add(key)
        type_, data = event["type"], event["data"]
        if type_ in ("booking.created", "booking.updated"):
            self._booking(data, datetime.fromisoformat(event["time"].replace("Z", "+00:00")))
        elif type_ == "booking.cancelled":
            # Cancelled unless a newer event changed the booking; the time is kept, so
            # an older created/updated arriving later cannot revive it.
            booking = self.bookings.get(data["booking_id"])
            time = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
            if booking is not None and booking["source_event_time"] <= time:
                booking.update(status="cancelled", source_event_time=time)
        elif type_ == "vaccination.started":
            self._started(data)
        else:
            self._command(type_, event["id"], data)
        return True

    def _ensure_customer(self, personnummer: str) -> Customer:
        if personnummer not in self.customers:
            self.customers[personnummer] = Customer(Personnummer(personnummer))
            self.names[personnummer] = (None, None)
        return self.customers[personnummer]

    def _booking(self, data: dict[str, Any], time: datetime) -> None:
        person = data["customer"]
        personnummer = person["personnummer"]
        self._ensure_customer(personnummer)
        first, last = self.names[personnummer]
        if person.get("first_name") is not None:
            first = person["first_name"]
        if person.get("last_name") is not None:
            last = person["last_name"]
        self.names[personnummer] = (first, last)
        existing = self.bookings.get(data["booking_id"])
        if existing is not None and existing["source_event_time"] > time:
            return  # an older event never overwrites a newer one
        vaccine = data.get("vaccine")
        requested = data.get("requested_group")
        self.bookings[data["booking_id"]] = {
            "unit_id": data["unit_id"],
            "personnummer": personnummer,
            "start_time": datetime.fromisoformat(data["start_time"]),
            "vaccine_code": vaccine["code"] if vaccine else None,
            "vaccine_name": vaccine["name"] if vaccine else None,
            "dose": vaccine.get("dose") if vaccine else None,
            "requested_group_code": requested["group_code"] if requested else None,
            "requested_subgroup_code": requested.get("subgroup_code") if requested else None,
            "status": "booked",
            "source_event_time": time,
        }

    def _started(self, data: dict[str, Any]) -> None:
        if data["vaccination_id"] in self.prompts:
            return  # the same prompt is sent again; nothing changes
        self._ensure_customer(data["personnummer"])
        self.prompt_vaccination[prompt_id_for(data["vaccination_id"])] = data["vaccination_id"]
        self.prompts[data["vaccination_id"]] = {
            "prompt_id": prompt_id_for(data["vaccination_id"]),
            "personnummer": data["personnummer"],
            "unit_id": data["unit_id"],
            "user_id": data["user_id"],
            "booking_id": data.get("booking_id"),
            "vaccine_code": data["vaccine"]["code"],
            "closed": False,
        }

    def _prompt(self, prompt_id: str, personnummer: str, vaccination_id: str | None) -> Any:
        vid = self.prompt_vaccination.get(prompt_id)
        prompt = self.prompts.get(vid) if vid is not None else None
        if (
            vid is None
            or prompt is None
            or prompt["personnummer"] != personnummer
            or (vaccination_id is not None and vaccination_id != vid)
        ):
            raise PromptNotFound("no such prompt")
        return vid, prompt

    def _command(self, type_: str, command_id: str, data: dict[str, Any]) -> None:
        try:
            result = self._command_effect(type_, command_id, data)
        except DomainError as error:
            self.results[command_id] = CommandResult(messages.REJECTED, error.reason_code)
        else:
            self.results[command_id] = CommandResult(result, None)
            if result in (messages.ADDED, messages.UPDATED, messages.REMOVED):
                self._reconfirm(data["personnummer"])

    def _covering_today(self, customer: Customer) -> list[Any]:
        """The memberships covering the day of a popup's close (every close is today); one
        entered in error never applied, so it covers no day."""
        return [
            m
            for m in customer.memberships
            if m.status != "entered_in_error"
            and m.valid_from <= self.today
            and (m.valid_to is None or self.today <= m.valid_to)
        ]

    def _confirm(
        self, vid: str, customer: Customer, command_id: str | None, user_id: str | None
    ) -> int:
        covering = self._covering_today(customer)
        previous = self.confirmations.get(vid)
        version = 1 if previous is None else previous["version"] + 1
        prompt = self.prompts[vid]
        self.confirmations[vid] = {
            "prompt_id": prompt["prompt_id"],
            "personnummer": prompt["personnummer"],
            "unit_id": prompt["unit_id"],
            "user_id": user_id,
            "command_id": command_id,
            "memberships": sorted((m.membership_id, m.version) for m in covering),
            "version": version,
        }
        self.confirmed_groups[vid] = _groups(covering)
        return version

    def _reconfirm(self, personnummer: str) -> None:
        """A membership change confirms again every dose of the customer whose covering
        memberships (ids and codes) changed."""
        customer = self.customers.get(personnummer)
        if customer is None:
            return
        for vid in sorted(self.confirmations):
            if self.confirmations[vid]["personnummer"] != personnummer:
                continue
            if _groups(self._covering_today(customer)) != self.confirmed_groups[vid]:
                version = self._confirm(vid, customer, None, None)
                event_id = _event_id(messages.CONFIRMED, vid, str(version))
                self.reconfirmations[event_id] = (messages.CONFIRMED, f"{vid} v{version}")

    def _command_effect(self, type_: str, command_id: str, data: dict[str, Any]) -> str:
        if self.allowed is not None and data["actor"]["unit_id"] not in self.allowed:
            raise Unauthorized("unit not allowed")
        personnummer = Personnummer.parse(data["personnummer"]).value
        if type_ == "customer_group.add":
            if data.get("prompt_id") is not None:
                self._prompt(data["prompt_id"], personnummer, None)
            customer = self._ensure_customer(personnummer)
            valid_from = data.get("valid_from")
            membership = customer.add_group(
                self.catalog,
                membership_id=membership_id_for(command_id),
                group_code=data["group_code"],
                subgroup_code=data.get("subgroup_code"),
                reference_code=data.get("reference_code"),
                valid_from=date.fromisoformat(valid_from) if valid_from else None,
                actor=_actor(data),
                now=_MODEL_NOW,  # created_at is not compared: the service's clock sets it
                today=self.today,
            )
            self.membership_owner[membership.membership_id] = personnummer
            return messages.ADDED
        customer = self.customers.get(personnummer) or Customer(Personnummer(personnummer))
        if type_ == "customer_group.update":
            customer.correct(
                self.catalog,
                membership_id=data["membership_id"],
                group_code=data["group_code"] if "group_code" in data else UNCHANGED,
                subgroup_code=data["subgroup_code"] if "subgroup_code" in data else UNCHANGED,
                reference_code=data["reference_code"] if "reference_code" in data else UNCHANGED,
                actor=_actor(data),
                today=self.today,
            )
            return messages.UPDATED
        if type_ == "customer_group.remove":
            valid_to = data.get("valid_to")
            customer.remove(
                membership_id=data["membership_id"],
                valid_to=date.fromisoformat(valid_to) if valid_to else None,
                reason=RemovalReason(data.get("reason") or RemovalReason.ENDED),
                actor=_actor(data),
                today=self.today,
            )
            return messages.REMOVED
        if type_ == "customer_group.prompt_close":
            vid, prompt = self._prompt(data["prompt_id"], personnummer, data["vaccination_id"])
            if prompt["unit_id"] != data["actor"]["unit_id"]:
                raise Unauthorized("a popup is closed by its own unit")
            prompt["closed"] = True
            self._confirm(vid, customer, command_id, data["actor"]["user_id"])
            return messages.CONFIRMED
        raise AssertionError(f"unexpected command type {type_}")

    # -- what must be found ---------------------------------------------------------------
    def expected_event_ids(self) -> dict[str, tuple[str, str]]:
        """Event id -> (type, command_id) for every command's one result, and the
        re-confirmations membership changes caused."""
        return {
            **{
                _event_id(result.type, command_id): (result.type, command_id)
                for command_id, result in self.results.items()
            },
            **self.reconfirmations,
        }

    def expected_prompt_event_ids(self) -> dict[str, str]:
        """Prompt event id -> vaccination id."""
        return {_event_id(messages.PROMPT, vid): vid for vid in self.prompts}

    def membership_rows(self) -> dict[str, tuple[Any, ...]]:
        rows: dict[str, tuple[Any, ...]] = {}
        for personnummer, customer in self.customers.items():
            for m in customer.memberships:
                rows[m.membership_id] = (
                    personnummer,
                    m.group_code,
                    m.subgroup_code,
                    m.reference_code,
                    m.valid_from,
                    m.valid_to,
                    m.version,
                    m.status.value,
                    *_columns(m.created_by),
                    *_columns(m.updated_by),
                )
        return rows

    def booking_rows(self) -> dict[str, tuple[Any, ...]]:
        return {bid: tuple(row.values()) for bid, row in self.bookings.items()}

    def prompt_rows(self) -> dict[str, tuple[Any, ...]]:
        return {vid: tuple(row.values()) for vid, row in self.prompts.items()}

    def confirmation_rows(self) -> dict[str, tuple[Any, ...]]:
        return {
            vid: tuple(tuple(v) if isinstance(v, list) else v for v in row.values())
            for vid, row in self.confirmations.items()
        }

    def customer_rows(self) -> dict[str, tuple[Any, ...]]:
        return {pnr: self.names[pnr] for pnr in self.customers}


# -- the stream ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSpec:
    seed: int
    customers: int
    inputs: int
    waves: int = 3
    redelivery_rate: float = 0.08
    allowed_units: tuple[str, ...] | None = ALLOWED_UNITS


@dataclass
class Stream:
    spec: StreamSpec
    model: Model
    waves: list[list[Input]]
    inbox_after_wave: list[int]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def inputs(self) -> list[Input]:
        return [item for wave in self.waves for item in wave]

    @property
    def personnummer(self) -> list[str]:
        return list(self.model.customers)


@dataclass
class _CustomerState:
    personnummer: str
    bookings: list[tuple[str, datetime]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # vaccination ids, in order
    ready: list[str] = field(default_factory=list)  # started in an earlier wave
    pending: list[Input] = field(default_factory=list)  # redeliveries still to send


class StreamGenerator:
    """Builds a `Stream` from a seed: bookings, starts and commands for `customers`
    customers, with duplicates (the same bytes again), repeated starts, stale booking
    updates and commands that break each business rule."""

    def __init__(self, spec: StreamSpec, catalog: Catalog, today: date) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.catalog = catalog
        self.today = today
        self.model = Model(catalog, today, spec.allowed_units)
        self.selectable = catalog.selectable_on(today)
        self.retired = [g.code for g in catalog.groups if not g.is_selectable_on(today)]
        self._serial = 0
        self.counts: dict[str, int] = {}

    # -- ids and events ---------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}-{self.spec.seed}-{self._serial}"

    def _time(self) -> datetime:
        return BASE_TIME + timedelta(seconds=self._serial)

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def _emit(
        self,
        state: _CustomerState,
        role: str,
        type_: str,
        data: dict[str, Any],
        *,
        time: datetime | None = None,
        key: str | None = None,
    ) -> Input:
        event_id = self._id(role[:3])
        moment = time or self._time()
        value = cloudevent_bytes(type_, data, event_id, moment)
        event = {"id": event_id, "type": type_, "time": iso(moment), "data": data}
        self.model.apply(role, event)
        item = Input(
            role,
            (key or state.personnummer).encode(),
            value,
            event_id,
            group=state.personnummer,
        )
        if self.rng.random() < self.spec.redelivery_rate:
            state.pending.append(
                Input(role, item.key, value, event_id, group=item.group, redelivery=True)
            )
        self._count(type_)
        return item

    # -- generation -----------------------------------------------------------------------
    def generate(self) -> Stream:
        people = unique_personnummer(self.rng, self.spec.customers)
        states = [_CustomerState(p) for p in people]
        per_wave = max(1, round(self.spec.inputs / self.spec.waves))
        waves: list[list[Input]] = []
        inbox_after: list[int] = []
        produced = 0
        for wave in range(self.spec.waves):
            for state in states:
                state.ready = list(state.started)
            last = wave == self.spec.waves - 1
            target = self.spec.inputs - produced if last else per_wave
            lists: dict[str, list[Input]] = {s.personnummer: [] for s in states}
            made = 0
            while made < target:
                state = self.rng.choice(states)
                items = lists[state.personnummer]
                if state.pending and self.rng.random() < 0.3:
                    items.append(state.pending.pop(0))
                else:
                    items.append(self._step(state, allow_start=not last))
                made += 1
            for state in states:  # redeliveries still owed: after their originals
                lists[state.personnummer].extend(state.pending)
                made += len(state.pending)
                state.pending.clear()
            produced += made
            waves.append(self._interleave(lists))
            inbox_after.append(len(self.model.inbox))
        stream = Stream(self.spec, self.model, waves, inbox_after, dict(self.counts))
        stream.counts["redeliveries"] = sum(1 for i in stream.inputs if i.redelivery)
        return stream

    def _interleave(self, lists: dict[str, list[Input]]) -> list[Input]:
        """A uniformly random merge that keeps each customer's own order."""
        order = [group for group, items in lists.items() for _ in items]
        self.rng.shuffle(order)
        cursors = dict.fromkeys(lists, 0)
        merged: list[Input] = []
        for group in order:
            merged.append(lists[group][cursors[group]])
            cursors[group] += 1
        return merged

    def _step(self, state: _CustomerState, *, allow_start: bool) -> Input:
        rng = self.rng
        customer = self.model.customers.get(state.personnummer)
        active = customer.active() if customer else []
        historical = customer.historical() if customer else []
        options: list[tuple[float, str]] = [(1.0, "book"), (2.5, "add"), (0.9, "reject")]
        if state.bookings:
            options += [(0.6, "book_update"), (0.15, "book_stale"), (0.25, "book_cancel")]
        if allow_start:
            options.append((1.0, "start"))
        if state.started:
            options.append((0.2, "restart"))
        if state.ready:
            options += [(0.8, "add_prompted"), (1.0, "close")]
        if active:
            options += [(1.0, "update"), (1.0, "remove")]
        if historical:
            options.append((0.2, "touch_historical"))
        options.append((0.15, "unauthorized"))
        weights = [weight for weight, _ in options]
        action = rng.choices([name for _, name in options], weights=weights)[0]
        step: Input = getattr(self, f"_do_{action}")(state)
        return step

    # -- bookings and starts ----------------------------------------------------------------
    def _booking_data(self, state: _CustomerState, booking_id: str) -> dict[str, Any]:
        rng = self.rng
        code, name = rng.choice(VACCINES)
        data: dict[str, Any] = {
            "booking_id": booking_id,
            "unit_id": rng.choice(ALLOWED_UNITS),
            "start_time": (BASE_TIME + timedelta(days=rng.randrange(1, 90))).isoformat(),
            "customer": {
                "personnummer": state.personnummer,
                "first_name": rng.choice(["Anna", "Björn", "Märta", "Öjvind", "Li"]),
                "last_name": rng.choice(["Andersson", "Åberg", "Nguyen", "O'Brien"]),
            },
            "vaccine": {"code": code, "name": name, "dose": rng.randrange(1, 4)},
        }
        if rng.random() < 0.6:
            group = rng.choice(self.selectable)
            requested: dict[str, Any] = {"group_code": group.code}
            if group.subgroups and rng.random() < 0.7:
                requested["subgroup_code"] = rng.choice(group.subgroups).code
            data["requested_group"] = requested
        return data

    def _do_book(self, state: _CustomerState) -> Input:
        booking_id = self._id("bk")
        time = self._time()
        state.bookings.append((booking_id, time))
        data = self._booking_data(state, booking_id)
        return self._emit(state, BOOKINGS, "booking.created", data, time=time)

    def _do_book_update(self, state: _CustomerState) -> Input:
        index = self.rng.randrange(len(state.bookings))
        booking_id, _ = state.bookings[index]
        time = self._time()
        state.bookings[index] = (booking_id, time)
        data = self._booking_data(state, booking_id)
        return self._emit(state, BOOKINGS, "booking.updated", data, time=time)

    def _do_book_stale(self, state: _CustomerState) -> Input:
        """An update older than the one applied: must not overwrite it."""
        booking_id, newest = self.rng.choice(state.bookings)
        data = self._booking_data(state, booking_id)
        self._count("stale_booking_update")
        return self._emit(
            state, BOOKINGS, "booking.updated", data, time=newest - timedelta(minutes=5)
        )

    def _do_book_cancel(self, state: _CustomerState) -> Input:
        booking_id, _ = self.rng.choice(state.bookings)
        data = {"booking_id": booking_id, "unit_id": self.rng.choice(ALLOWED_UNITS)}
        return self._emit(state, BOOKINGS, "booking.cancelled", data)

    def _start_data(self, state: _CustomerState, vaccination_id: str) -> dict[str, Any]:
        code, name = VACCINES[zlib.crc32(vaccination_id.encode()) % len(VACCINES)]
        data: dict[str, Any] = {
            "vaccination_id": vaccination_id,
            "unit_id": ALLOWED_UNITS[len(vaccination_id) % len(ALLOWED_UNITS)],
            "user_id": f"nurse-{len(vaccination_id) % 7}",
            "personnummer": state.personnummer,
            "vaccine": {"code": code, "name": name},
        }
        if state.bookings:
            data["booking_id"] = state.bookings[-1][0]
        return data

    def _do_start(self, state: _CustomerState) -> Input:
        vaccination_id = self._id("vac")
        state.started.append(vaccination_id)
        return self._emit(
            state, STARTED, "vaccination.started", self._start_data(state, vaccination_id)
        )

    def _do_restart(self, state: _CustomerState) -> Input:
        """The same vaccination started again under a new event id: the same prompt."""
        vaccination_id = self.rng.choice(state.started)
        prompt = self.model.prompts[vaccination_id]
        data = self._start_data(state, vaccination_id)
        data.update(unit_id=prompt["unit_id"], user_id=prompt["user_id"])
        data["booking_id"] = prompt["booking_id"]
        if data["booking_id"] is None:
            del data["booking_id"]
        self._count("repeated_start")
        return self._emit(state, STARTED, "vaccination.started", data)

    # -- commands ---------------------------------------------------------------------------
    def _actor(self, unit: str | None = None) -> dict[str, str]:
        return {
            "user_id": f"nurse-{self.rng.randrange(20)}",
            "unit_id": unit or self.rng.choice(ALLOWED_UNITS),
        }

    def _command(
        self, state: _CustomerState, name: str, fields: dict[str, Any], **kw: Any
    ) -> Input:
        data = {"personnummer": state.personnummer, "actor": self._actor(), **fields}
        data.update(kw)
        return self._emit(state, COMMANDS, f"customer_group.{name}", data)

    def _past(self, max_days: int = 400, min_days: int = 0) -> date:
        return self.today - timedelta(days=self.rng.randrange(min_days, max_days + 1))

    def _add_fields(self, state: _CustomerState) -> dict[str, Any]:
        rng = self.rng
        customer = self.model.customers.get(state.personnummer)
        taken = {m.group_code for m in customer.active()} if customer else set()
        free = [g for g in self.selectable if g.code not in taken] or list(self.selectable)
        group = rng.choice(free)
        fields: dict[str, Any] = {"group_code": group.code, "valid_from": self._past().isoformat()}
        if group.subgroups and rng.random() < 0.8:
            fields["subgroup_code"] = rng.choice(group.subgroups).code
        if rng.random() < 0.4:
            fields["reference_code"] = f"REF-{rng.randrange(10**6)}"
        return fields

    def _do_add(self, state: _CustomerState) -> Input:
        return self._command(state, "add", self._add_fields(state))

    def _do_add_prompted(self, state: _CustomerState) -> Input:
        prompt = self.model.prompts[self.rng.choice(state.ready)]
        return self._command(state, "add", self._add_fields(state), prompt_id=prompt["prompt_id"])

    def _do_close(self, state: _CustomerState) -> Input:
        """Mostly by the prompt's own unit, as a nurse would; now and then by another
        allowed unit, which the service must refuse."""
        vaccination_id = self.rng.choice(state.ready)
        prompt = self.model.prompts[vaccination_id]
        unit = prompt["unit_id"] if self.rng.random() < 0.9 else self.rng.choice(ALLOWED_UNITS)
        if unit != prompt["unit_id"]:
            self._count("unauthorized")
        fields = {"prompt_id": prompt["prompt_id"], "vaccination_id": vaccination_id}
        return self._command(state, "prompt_close", fields, actor=self._actor(unit))

    def _do_update(self, state: _CustomerState) -> Input:
        rng = self.rng
        membership = rng.choice(self.model.customers[state.personnummer].active())
        fields: dict[str, Any] = {"membership_id": membership.membership_id}
        group = self.catalog.group(membership.group_code)
        choice = rng.random()
        if group.subgroups and choice < 0.5:
            fields["subgroup_code"] = rng.choice(group.subgroups).code
        if choice >= 0.3 or "subgroup_code" not in fields:
            fields["reference_code"] = rng.choice([None, f"FIX-{rng.randrange(10**5)}"])
        return self._command(state, "update", fields)

    def _do_remove(self, state: _CustomerState) -> Input:
        membership = self.rng.choice(self.model.customers[state.personnummer].active())
        if self.rng.random() < 0.15:  # added by mistake: never applied, period kept
            fields = {"membership_id": membership.membership_id, "reason": "entered_in_error"}
            return self._command(state, "remove", fields)
        span = (self.today - membership.valid_from).days
        valid_to = membership.valid_from + timedelta(days=self.rng.randrange(0, span + 1))
        return self._command(
            state,
            "remove",
            {"membership_id": membership.membership_id, "valid_to": valid_to.isoformat()},
        )

    def _do_touch_historical(self, state: _CustomerState) -> Input:
        """Remove a historical membership (ALREADY_HISTORICAL) or correct it (accepted
        since contract revision 2)."""
        membership = self.rng.choice(self.model.customers[state.personnummer].historical())
        if self.rng.random() < 0.5:
            return self._command(state, "remove", {"membership_id": membership.membership_id})
        return self._command(
            state, "update", {"membership_id": membership.membership_id, "reference_code": "X"}
        )

    def _do_unauthorized(self, state: _CustomerState) -> Input:
        self._count("unauthorized")
        data = {
            "personnummer": state.personnummer,
            "actor": self._actor(FOREIGN_UNIT),
            **self._add_fields(state),
        }
        return self._emit(state, COMMANDS, "customer_group.add", data)

    def _do_reject(self, state: _CustomerState) -> Input:
        """A well-formed command that breaks one rule (the model names the reason)."""
        rng = self.rng
        kind = rng.choice(
            [
                "unknown_group",
                "unknown_subgroup",
                "retired_group",
                "future",
                "long_reference",
                "no_prompt",
                "no_membership",
                "bad_personnummer",
                "already_active",
                "period_before_start",
            ]
        )
        self._count(f"reject_{kind}")
        fields = self._add_fields(state)
        customer = self.model.customers.get(state.personnummer)
        active = customer.active() if customer else []
        if kind == "unknown_group":
            fields.update(group_code="NO_SUCH_GROUP")
        elif kind == "unknown_subgroup":
            fields.update(subgroup_code="NO_SUCH_SUBGROUP")
        elif kind == "retired_group" and self.retired:
            # today (no valid_from): not selectable; on a day it applied it would be taken
            fields = {"group_code": rng.choice(self.retired)}
        elif kind == "future":
            fields["valid_from"] = (self.today + timedelta(days=5)).isoformat()
        elif kind == "long_reference":
            fields["reference_code"] = "R" * 65
        elif kind == "no_prompt":
            fields["prompt_id"] = prompt_id_for(self._id("no-such-vaccination"))
        elif kind == "no_membership":
            return self._command(
                state, "remove", {"membership_id": membership_id_for(self._id("nothing"))}
            )
        elif kind == "bad_personnummer":
            wrong = state.personnummer[:-1] + str((int(state.personnummer[-1]) + 1) % 10)
            data = {"personnummer": wrong, "actor": self._actor(), **fields}
            return self._emit(state, COMMANDS, "customer_group.add", data, key=wrong)
        elif kind == "already_active" and active:
            fields = {
                "group_code": rng.choice(active).group_code,
                "valid_from": self._past().isoformat(),
            }
        elif kind == "period_before_start" and active:
            membership = rng.choice(active)
            return self._command(
                state,
                "remove",
                {
                    "membership_id": membership.membership_id,
                    "valid_to": (membership.valid_from - timedelta(days=1)).isoformat(),
                },
            )
        return self._command(state, "add", fields)


def reason_counts(model: Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in model.results.values():
        name = result.reason_code or result.type.rsplit(".", 1)[-1]
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def inputs_by_role(inputs: Sequence[Input]) -> dict[str, int]:
    counts = dict.fromkeys(ROLES, 0)
    for item in inputs:
        counts[item.role] += 1
    return counts
