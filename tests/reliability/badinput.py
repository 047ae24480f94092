"""Malformed and hostile records for every inbound topic, each with the one outcome the
contract allows for it:

- `dlq`: dead-lettered with its original key and bytes and this error code;
- `rejected`: a command answered by `customer_group.command_rejected` with this reason;
- `processed`: odd but valid (SQL-looking text, emoji, quotes, unknown extra fields, a
  record just under the size limit): applied like any other record and stored verbatim.

Rejected and processed records are applied to the model, so the reconciliation covers
them (every rejection is an expected event with its reason code).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from services.groups.service_layer import messages
from tests.reliability.model import (
    ALLOWED_UNITS,
    BASE_TIME,
    BOOKINGS,
    COMMANDS,
    EVENT_SOURCE,
    FOREIGN_UNIT,
    STARTED,
    CommandResult,
    Input,
    Model,
    Stream,
    iso,
    unique_personnummer,
)

SQL = "x'); DROP TABLE memberships; --"
EMOJI = "💉🙂🇸🇪"


@dataclass(frozen=True)
class Bad:
    input: Input
    kind: str
    expect: str  # dlq | rejected | processed
    code: str | None


def _event(type_: str, data: Any, event_id: str, **attributes: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": EVENT_SOURCE,
        "type": type_,
        "time": iso(BASE_TIME),
        "datacontenttype": "application/json",
        "data": data,
    }
    event.update(attributes)
    return event


def _bytes(obj: Any) -> bytes:
    """UTF-8 JSON; a lone surrogate (not encodable) becomes its JSON escape `\\udXXX`,
    which is valid JSON that decodes back to the lone surrogate."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", errors="backslashreplace"
    )


class BadInputGenerator:
    """`count` malformed records per inbound topic, plus a few valid-but-odd ones."""

    def __init__(
        self,
        model: Model,
        seed: int,
        customers: list[str],
        *,
        today: date,
        max_bytes: int,
    ) -> None:
        self.model = model
        self.rng = random.Random(seed)
        self.seed = seed
        self.customers = customers
        self.today = today
        self.max_bytes = max_bytes
        self._serial = 0
        self.odd_customers = unique_personnummer(random.Random(seed + 1), 200)
        self.odd_customers = [p for p in self.odd_customers if p not in model.customers]

    def _id(self, prefix: str = "bad") -> str:
        self._serial += 1
        return f"{prefix}-bad{self.seed}-{self._serial}"

    def _key(self, personnummer: str | None = None) -> bytes | None:
        choice = self.rng.random()
        if personnummer is not None and choice < 0.8:
            return personnummer.encode()
        if choice < 0.9:
            return None
        return self.rng.randbytes(self.rng.randrange(1, 40))

    # -- envelope-level faults, any topic ---------------------------------------------------
    def _valid_like(self, role: str) -> bytes:
        pnr = self.rng.choice(self.customers)
        data: dict[str, Any]
        if role == BOOKINGS:
            type_, data = "booking.created", self._booking(pnr)
        elif role == STARTED:
            type_, data = "vaccination.started", self._start(pnr)
        else:
            type_, data = "customer_group.add", self._add(pnr)
        return _bytes(_event(type_, data, self._id()))

    def envelope_faults(self, role: str) -> list[tuple[str, bytes | None, str]]:
        rng = self.rng
        valid = self._valid_like(role)
        type_ = {BOOKINGS: "booking.created", STARTED: "vaccination.started"}.get(
            role, "customer_group.add"
        )
        base = json.loads(valid)
        faults: list[tuple[str, bytes | None, str]] = [
            ("random bytes", b"\xff" + rng.randbytes(rng.randrange(0, 400)), "INVALID_JSON"),
            ("truncated JSON", valid[: rng.randrange(1, len(valid) - 1)], "INVALID_JSON"),
            ("empty value", b"", "INVALID_JSON"),
            ("tombstone (no value)", None, "EMPTY_RECORD"),
            ("deeply nested JSON", b"[" * 50_000, "INVALID_JSON"),
            ("invalid UTF-8 inside JSON", b'{"specversion":"1\xc3\x28"}', "INVALID_JSON"),
        ]
        for text in (
            b"{",
            b'{"a":}',
            b"{'id': 1}",
            b"[1, 2,",
            b'{"specversion": "1.0",}',
            b"nul",
            b'"unterminated',
            b'{"a" 1}',
            b"}{",
        ):
            faults.append(("invalid JSON", text, "INVALID_JSON"))
        for text in (b"[]", b"42", b'"text"', b"null", b"true", b"{}"):
            faults.append(("JSON that is not a CloudEvent", text, "NOT_A_CLOUDEVENT"))
        for change in (
            {"specversion": "0.3"},
            {"specversion": 1.0},
            {"id": ""},
            {"id": 12345},
            {"id": "x" * 2000},
            {"id": "a\u0007b"},
            {"source": None},
            {"type": ["t"]},
            {"time": "yesterday"},
            {"time": "2026-11-26T10:00:00"},
            {"time": 1732615200},
            {"datacontenttype": "text/xml"},
            {"datacontenttype": "application/jsonx"},
        ):
            faults.append(
                ("CloudEvent attribute wrong", _bytes({**base, **change}), "NOT_A_CLOUDEVENT")
            )
        for drop in ("id", "source", "type", "specversion"):
            faults.append(
                (
                    "CloudEvent attribute missing",
                    _bytes({k: v for k, v in base.items() if k != drop}),
                    "NOT_A_CLOUDEVENT",
                )
            )
        for unknown in ("booking.deleted", "customer_group.delete", f"{type_}.v2", EMOJI, SQL):
            faults.append(("unknown type", _bytes({**base, "type": unknown}), "UNKNOWN_TYPE"))
        other = {BOOKINGS: "vaccination.started", STARTED: "booking.created"}.get(
            role, "booking.created"
        )
        faults.append(("type of another topic", _bytes({**base, "type": other}), "UNKNOWN_TYPE"))
        return faults

    def oversize(self, role: str) -> tuple[bytes, bytes]:
        """A valid record just under the size limit and one just over it."""
        pnr = self.rng.choice(self.odd_customers[:50])
        if role == BOOKINGS:
            type_, data = "booking.created", self._booking(pnr, booking_id=self._id("bk-big"))
        elif role == STARTED:
            type_, data = "vaccination.started", self._start(pnr, self._id("vac-big"))
        else:
            type_, data = "customer_group.add", self._add(pnr)
        event = _event(type_, data, self._id("big"))
        event["padding"] = ""
        bare = len(_bytes(event))
        under = dict(event, padding="p" * (self.max_bytes - bare - 1))
        over = dict(event, id=self._id("big"), padding="p" * (self.max_bytes - bare + 1))
        return _bytes(under), _bytes(over)

    # -- payloads -------------------------------------------------------------------------
    def _booking(self, pnr: str, booking_id: str | None = None) -> dict[str, Any]:
        return {
            "booking_id": booking_id or self._id("bk"),
            "unit_id": "unit-1",
            "start_time": "2026-03-02T09:30:00+01:00",
            "customer": {"personnummer": pnr, "first_name": "Test", "last_name": "Testsson"},
            "vaccine": {"code": "J07BB02", "name": "Influvac Tetra", "dose": 1},
        }

    def _start(self, pnr: str, vaccination_id: str | None = None) -> dict[str, Any]:
        return {
            "vaccination_id": vaccination_id or self._id("vac"),
            "unit_id": "unit-1",
            "user_id": "nurse-1",
            "personnummer": pnr,
            "vaccine": {"code": "J07BB02", "name": "Influvac Tetra"},
        }

    def _add(self, pnr: str, **fields: Any) -> dict[str, Any]:
        data = {
            "personnummer": pnr,
            "actor": {"user_id": "nurse-1", "unit_id": self.rng.choice(ALLOWED_UNITS)},
            "group_code": "OVRIGT",
            "subgroup_code": "RESEVACCINATIONER",
            "valid_from": (self.today - timedelta(days=3)).isoformat(),
        }
        data.update(fields)
        return data

    # -- schema and rule faults -------------------------------------------------------------
    def bad_personnummer(self) -> list[tuple[str, Any]]:
        pnr = self.rng.choice(self.customers)
        wrong_check = pnr[:-1] + str((int(pnr[-1]) + 1) % 10)
        return [
            ("personnummer wrong check digit", wrong_check),
            ("personnummer 10 digits", pnr[2:]),
            ("personnummer with hyphen", f"{pnr[:8]}-{pnr[8:]}"),
            ("personnummer month 13", pnr[:4] + "13" + pnr[6:]),
            ("personnummer year 1800", "1800" + pnr[4:]),
            ("personnummer with letters", "19121212ABCD"),
            ("personnummer Arabic-Indic digits", "١٩١٢١٢١٢١٢١٢"),
            ("personnummer empty", ""),
            ("personnummer SQL", "1' OR '1'='1"),
            ("personnummer emoji", EMOJI),
            ("personnummer with spaces", f" {pnr} "),
        ]

    def booking_faults(self) -> list[tuple[str, dict[str, Any] | Any, str, str]]:
        pnr = self.rng.choice(self.customers)
        ok = self._booking(pnr)
        out: list[tuple[str, Any, str, str]] = []

        def change(kind: str, code: str, /, **edit: object) -> None:
            data = json.loads(json.dumps(ok))
            for path, value in edit.items():
                target = data
                parts = path.split("__")
                for part in parts[:-1]:
                    target = target[part]
                if value is _DROP:
                    target.pop(parts[-1], None)
                else:
                    target[parts[-1]] = value
            out.append((kind, data, code, "booking.created"))

        for field in ("booking_id", "unit_id", "start_time", "customer", "customer__personnummer"):
            drop: dict[str, object] = {field: _DROP}
            change(f"missing {field}", "SCHEMA_VIOLATION", **drop)
        change("booking_id number", "SCHEMA_VIOLATION", booking_id=123)
        change("customer a string", "SCHEMA_VIOLATION", customer="x")
        change("start_time a list", "SCHEMA_VIOLATION", start_time=["x"])
        change("start_time not a date", "SCHEMA_VIOLATION", start_time="2026-13-45T25:00:00Z")
        change("start_time without offset", "SCHEMA_VIOLATION", start_time="2026-11-26T10:00:00")
        change("dose a word", "SCHEMA_VIOLATION", vaccine__dose="many")
        change("requested_group a list", "SCHEMA_VIOLATION", requested_group=[])
        change("booking_id 129 characters", "SCHEMA_VIOLATION", booking_id="b" * 129)
        change("first_name 201 characters", "SCHEMA_VIOLATION", customer__first_name="n" * 201)
        change("vaccine code 65 characters", "SCHEMA_VIOLATION", vaccine__code="C" * 65)
        change("NUL in first_name", "SCHEMA_VIOLATION", customer__first_name="An\u0000na")
        change("newline in booking_id", "SCHEMA_VIOLATION", booking_id="b\n1")
        change("lone surrogate in last_name", "SCHEMA_VIOLATION", customer__last_name="\ud800")
        change("personnummer 40 characters", "SCHEMA_VIOLATION", customer__personnummer="1" * 40)
        change("personnummer a number", "SCHEMA_VIOLATION", customer__personnummer=int(pnr))
        for kind, value in self.bad_personnummer():
            code = "SCHEMA_VIOLATION" if len(value) > 32 else "INVALID_PERSONNUMMER"
            change(kind, code, customer__personnummer=value)
        nothing: tuple[object, ...] = (None, "text", [], 5)
        for data in nothing:
            out.append((f"data {json.dumps(data)}", data, "SCHEMA_VIOLATION", "booking.created"))
        out.append(
            ("cancel without unit_id", {"booking_id": "b"}, "SCHEMA_VIOLATION", "booking.cancelled")
        )
        out.append(
            (
                "cancel with NUL id",
                {"booking_id": "\u0000", "unit_id": "u"},
                "SCHEMA_VIOLATION",
                "booking.cancelled",
            )
        )
        return out

    def start_faults(self) -> list[tuple[str, Any, str, str]]:
        pnr = self.rng.choice(self.customers)
        ok = self._start(pnr)
        out: list[tuple[str, Any, str, str]] = []
        type_ = "vaccination.started"
        for field in ("vaccination_id", "unit_id", "user_id", "personnummer"):
            out.append(
                (
                    f"missing {field}",
                    {k: v for k, v in ok.items() if k != field},
                    "SCHEMA_VIOLATION",
                    type_,
                )
            )
        for kind, edit in (
            ("vaccination_id a number", {"vaccination_id": 7}),
            ("vaccine a string", {"vaccine": "x"}),
            ("vaccination_id 129 characters", {"vaccination_id": "v" * 129}),
            ("control character in user_id", {"user_id": "nurse\u00071"}),
            ("lone surrogate in user_id", {"user_id": "\udfff"}),
            ("booking_id empty", {"booking_id": ""}),
            ("personnummer a list", {"personnummer": [pnr]}),
        ):
            out.append((kind, {**ok, **edit}, "SCHEMA_VIOLATION", type_))
        for kind, value in self.bad_personnummer():
            out.append((kind, {**ok, "personnummer": value}, "INVALID_PERSONNUMMER", type_))
        nothing: tuple[object, ...] = (None, "text", [], 5)
        for data in nothing:
            out.append((f"data {json.dumps(data)}", data, "SCHEMA_VIOLATION", type_))
        return out

    def command_faults(self) -> list[tuple[str, Any, str, str]]:
        """(kind, data, reason, type): each is answered by command_rejected."""
        rng = self.rng
        pnr = rng.choice(self.customers)
        add = "customer_group.add"
        ok = self._add(pnr)
        future = (self.today + timedelta(days=3)).isoformat()
        out: list[tuple[str, Any, str, str]] = []
        for field in ("personnummer", "actor", "group_code"):
            out.append(
                (
                    f"missing {field}",
                    {k: v for k, v in ok.items() if k != field},
                    "INVALID_COMMAND",
                    add,
                )
            )
        for kind, edit, reason in (
            ("personnummer a number", {"personnummer": int(pnr)}, "INVALID_COMMAND"),
            ("actor a string", {"actor": "nurse"}, "INVALID_COMMAND"),
            ("actor without unit", {"actor": {"user_id": "n"}}, "INVALID_COMMAND"),
            ("group_code a number", {"group_code": 5}, "INVALID_COMMAND"),
            ("valid_from not a date", {"valid_from": "yesterday"}, "INVALID_COMMAND"),
            ("valid_from 30 February", {"valid_from": "2026-02-30"}, "INVALID_COMMAND"),
            ("group_code 65 characters", {"group_code": "G" * 65}, "INVALID_COMMAND"),
            ("reference_code 5000 characters", {"reference_code": "r" * 5000}, "INVALID_COMMAND"),
            ("reference_code 65 characters", {"reference_code": "r" * 65}, "INVALID_COMMAND"),
            (
                "control character in reference_code",
                {"reference_code": "a\u0007b"},
                "INVALID_COMMAND",
            ),
            ("NUL in group_code", {"group_code": "\u0000"}, "INVALID_COMMAND"),
            (
                "lone surrogate in user_id",
                {"actor": {"user_id": "\ud800", "unit_id": "unit-1"}},
                "INVALID_COMMAND",
            ),
            ("SQL-looking group_code", {"group_code": SQL}, "UNKNOWN_GROUP"),
            ("emoji group_code", {"group_code": EMOJI}, "UNKNOWN_GROUP"),
            ("SQL-looking subgroup_code", {"subgroup_code": SQL}, "UNKNOWN_SUBGROUP"),
            ("valid_from in the future", {"valid_from": future}, "INVALID_PERIOD"),
            ("prompt_id not a UUID", {"prompt_id": "abc"}, "PROMPT_NOT_FOUND"),
            ("prompt_id SQL", {"prompt_id": SQL}, "PROMPT_NOT_FOUND"),
            (
                "unit not on the allowlist",
                {"actor": {"user_id": "n", "unit_id": FOREIGN_UNIT}},
                "UNAUTHORIZED",
            ),
            ("unit SQL", {"actor": {"user_id": "n", "unit_id": SQL}}, "UNAUTHORIZED"),
        ):
            out.append((kind, {**ok, **edit}, reason, add))
        for kind, value in self.bad_personnummer():
            reason = "INVALID_COMMAND" if len(value) > 32 else "INVALID_PERSONNUMMER"
            out.append((kind, {**ok, "personnummer": value}, reason, add))
        actor = ok["actor"]
        base = {"personnummer": pnr, "actor": actor}
        out += [
            (
                "update without membership_id",
                {**base, "reference_code": "x"},
                "INVALID_COMMAND",
                "customer_group.update",
            ),
            (
                "update changing nothing",
                {**base, "membership_id": SQL},
                "INVALID_COMMAND",
                "customer_group.update",
            ),
            (
                "update SQL membership_id",
                {**base, "membership_id": SQL, "reference_code": "x"},
                "MEMBERSHIP_NOT_FOUND",
                "customer_group.update",
            ),
            (
                "remove emoji membership_id",
                {**base, "membership_id": EMOJI},
                "MEMBERSHIP_NOT_FOUND",
                "customer_group.remove",
            ),
            (
                "remove valid_to not a date",
                {**base, "membership_id": "m", "valid_to": "soon"},
                "INVALID_COMMAND",
                "customer_group.remove",
            ),
            (
                "close without prompt_id",
                {**base, "vaccination_id": "v"},
                "INVALID_COMMAND",
                "customer_group.prompt_close",
            ),
            (
                "close unknown prompt",
                {
                    **base,
                    "vaccination_id": "v",
                    "prompt_id": "00000000-0000-0000-0000-000000000000",
                },
                "PROMPT_NOT_FOUND",
                "customer_group.prompt_close",
            ),
        ]
        nothing: tuple[object, ...] = (None, "text", [], 5)
        for data in nothing:
            out.append((f"data {json.dumps(data)}", data, "INVALID_COMMAND", add))
        return out

    # -- valid but odd -----------------------------------------------------------------------
    def odd_valid(self) -> list[tuple[str, str, str, dict[str, Any], dict[str, Any]]]:
        """(kind, role, personnummer, data, extra CloudEvent attributes) of valid records."""
        people = iter(self.odd_customers[50:])
        out: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = []
        for kind, first, last in (
            ("SQL-looking names", "Robert'); DROP TABLE customers;--", "1' OR '1'='1"),
            ("emoji names", f"Anna {EMOJI}", "Åström-Ölund"),
            ("quotes and backslashes", 'Sven "The \\ Man"', "O'Brien"),
            ("right-to-left and CJK names", "محمد", "李"),
        ):
            pnr = next(people)
            data = self._booking(pnr, booking_id=self._id(f"bk-{SQL}"))
            data["customer"].update(first_name=first, last_name=last)
            out.append((kind, BOOKINGS, pnr, data, {}))
        pnr = next(people)
        data = self._booking(pnr)
        data.update(unknown_field={"nested": [1, 2, 3]}, another="ignored")
        out.append(("unknown extra fields", BOOKINGS, pnr, data, {"extension": "x"}))
        pnr = next(people)
        out.append(
            ("content type with charset", BOOKINGS, pnr, self._booking(pnr),
             {"datacontenttype": "application/json; charset=utf-8"})
        )  # fmt: skip
        pnr = next(people)
        out.append(
            ("SQL-looking vaccination id", STARTED, pnr, self._start(pnr, self._id(SQL)), {})
        )
        pnr = next(people)
        start = self._start(pnr, self._id(f"vac-{EMOJI}"))
        start["user_id"] = 'nurse-ü-"quoted"'
        out.append(("emoji vaccination id", STARTED, pnr, start, {}))
        for kind, reference in (
            ("emoji reference code", f"REF-{EMOJI}-ÅÄÖ"),
            ("SQL-looking reference code", "1' OR '1'='1"),
            ("reference code of exactly 64 characters", "r" * 64),
        ):
            pnr = next(people)
            out.append((kind, COMMANDS, pnr, self._add(pnr, reference_code=reference), {}))
        return out

    # -- assembling ------------------------------------------------------------------------
    def generate(self, per_topic: int, roles: tuple[str, ...]) -> list[Bad]:
        made: list[Bad] = []
        for role in roles:
            builders: list[Callable[[str], list[Bad]]] = [self._envelope_batch, self._schema_batch]
            count = 0
            while count < per_topic:
                batch = self.rng.choice(builders)(role)
                take = batch[: per_topic - count]
                made += take
                count += len(take)
            under, over = self.oversize(role)
            made.append(
                self._dlq(role, over, "record just over the size limit", "RECORD_TOO_LARGE")
            )
            made.append(self._processed(role, under, "record just under the size limit"))
            for _ in range(2):
                _under, far = self.oversize(role)
                far = far[:-1] + b" " * self.rng.randrange(1000, 100_000) + far[-1:]
                made.append(self._dlq(role, far, "oversize payload", "RECORD_TOO_LARGE"))
        for kind, role, pnr, data, attributes in self.odd_valid():
            type_ = {BOOKINGS: "booking.created", STARTED: "vaccination.started"}.get(
                role, "customer_group.add"
            )
            event = _event(type_, data, self._id(f"odd-{EMOJI}"), **attributes)
            made.append(self._processed(role, _bytes(event), kind, key=pnr))
        for item in made:  # what the model must expect of them
            role, event_id = item.input.role, item.input.event_id
            if item.expect == "rejected" and event_id is not None:
                self.model.inbox.add((role, event_id))
                self.model.results[event_id] = CommandResult(messages.REJECTED, item.code)
            elif item.expect == "processed" and item.input.value is not None:
                self.model.apply(role, json.loads(item.input.value))
        return made

    def _envelope_batch(self, role: str) -> list[Bad]:
        return [
            self._dlq(role, value, kind, code) for kind, value, code in self.envelope_faults(role)
        ]

    def _schema_batch(self, role: str) -> list[Bad]:
        if role == COMMANDS:
            made = []
            for kind, data, reason, type_ in self.command_faults():
                event_id = self._id()
                value = _bytes(_event(type_, data, event_id))
                pnr = data.get("personnummer") if isinstance(data, dict) else None
                key = self._key(pnr if isinstance(pnr, str) else None)
                item = Input(role, key, value, event_id, group=event_id)
                made.append(Bad(item, kind, "rejected", reason))
            return made
        faults = self.booking_faults() if role == BOOKINGS else self.start_faults()
        made = []
        for kind, data, code, type_ in faults:
            value = _bytes(_event(type_, data, self._id()))
            made.append(self._dlq(role, value, kind, code))
        return made

    def _dlq(self, role: str, value: bytes | None, kind: str, code: str) -> Bad:
        key = self._key(self.rng.choice(self.customers))
        if value is None and key is None:  # Kafka needs one of the two
            key = self.rng.choice(self.customers).encode()
        return Bad(Input(role, key, value, None, group=self._id("g")), kind, "dlq", code)

    def _processed(self, role: str, value: bytes, kind: str, *, key: str | None = None) -> Bad:
        event = json.loads(value)
        data = event["data"]
        pnr = key or data.get("personnummer") or data["customer"]["personnummer"]
        return Bad(
            Input(role, pnr.encode(), value, event["id"], group=pnr), kind, "processed", None
        )


def mix_into_waves(
    stream: Stream, bad: list[Bad], rng: random.Random
) -> tuple[list[list[Input]], list[int]]:
    """The stream's waves with the bad records at random places (the valid records keep
    their order), and how many distinct inputs the inbox holds after each wave."""
    waves = [list(wave) for wave in stream.waves]
    for item in bad:
        wave = waves[rng.randrange(len(waves))]
        wave.insert(rng.randrange(len(wave) + 1), item.input)
    seen: set[tuple[str, str]] = set()
    inbox_after: list[int] = []
    for wave in waves:
        seen |= {(i.role, i.event_id) for i in wave if i.event_id is not None}
        inbox_after.append(len(seen))
    assert inbox_after[-1] == len(stream.model.inbox)
    return waves, inbox_after


class _Drop:
    pass


_DROP = _Drop()
