"""The catalog of customer groups (kundgrupper) and their subgroups (undergrupper).

Groups are never deleted, only retired by setting `valid_to`: memberships keep
referring to them by code and need their names for history and export. A
group or subgroup is selectable on a day inside its (inclusive) validity.

The catalog is data (a JSON file shipped in `services.groups.catalog`); this
module only validates and queries it, it never reads files. Longer than most modules
because the catalog's model and the strict parser of its file format (the second half)
change together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Final, TypeVar

from services.groups.domain.errors import (
    GroupNotSelectable,
    UnknownGroup,
    UnknownSubgroup,
    show,
)

REQUESTED_AT_BOOKING: Final = "REQUESTED_AT_BOOKING"
"""Suggestion reason: the patient chose this group when booking (see `suggestions`)."""
CATALOG_RULE: Final = "CATALOG_RULE"
"""Suggestion reason: a subgroup's rule matched the customer's age / vaccine."""
SUGGESTION_REASONS: Final = frozenset({REQUESTED_AT_BOOKING, CATALOG_RULE})

CODE_PATTERN: Final = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*", re.ASCII)
"""Group and subgroup codes: stable ASCII upper snake case, starting with a letter."""
VACCINE_CODE_PATTERN: Final = re.compile(r"[A-Z0-9]+", re.ASCII)
_ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def _check_code(code: object, what: str) -> None:
    if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
        raise ValueError(f"{what} code must be ASCII UPPER_SNAKE_CASE, got {code!r}")


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"{what} name must be a non-empty string without outer spaces")


def _check_period(valid_from: object, valid_to: object, what: str) -> None:
    if not isinstance(valid_from, date):
        raise ValueError(f"{what} valid_from must be a date")
    if valid_to is not None:
        if not isinstance(valid_to, date):
            raise ValueError(f"{what} valid_to must be a date or None")
        if valid_to < valid_from:
            raise ValueError(f"{what} valid_to is before valid_from")


def _within(valid_from: date, valid_to: date | None, day: date) -> bool:
    return valid_from <= day and (valid_to is None or day <= valid_to)


@dataclass(frozen=True, slots=True)
class SuggestionRule:
    """Who a subgroup is likely right for; a hint to the nurse, never automatic.

    Ages are inclusive bounds in completed years. `vaccine_codes` are ATC codes
    or ATC prefixes: a vaccination's code matches when it equals one of them or
    starts with one (so "J07BB" matches the product level "J07BB02"),
    case-insensitively. An empty set means any vaccine.
    """

    min_age: int | None = None
    max_age: int | None = None
    vaccine_codes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for bound in (self.min_age, self.max_age):
            if bound is not None and (
                not isinstance(bound, int) or isinstance(bound, bool) or bound < 0
            ):
                raise ValueError("rule ages must be non-negative integers or None")
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            raise ValueError("rule min_age is greater than max_age")
        if not isinstance(self.vaccine_codes, frozenset):
            raise ValueError("rule vaccine_codes must be a frozenset")
        for code in self.vaccine_codes:
            if not isinstance(code, str) or not VACCINE_CODE_PATTERN.fullmatch(code):
                raise ValueError(f"rule vaccine code must be upper-case ASCII, got {code!r}")
        if self.min_age is None and self.max_age is None and not self.vaccine_codes:
            raise ValueError("a rule must constrain age or vaccine; an empty rule matches all")

    def matches(self, age: int | None, vaccine_code: str | None) -> bool:
        """True when the customer fits; an unknown age/vaccine never fits a bound on it."""
        if self.min_age is not None or self.max_age is not None:
            if age is None:
                return False
            if self.min_age is not None and age < self.min_age:
                return False
            if self.max_age is not None and age > self.max_age:
                return False
        if self.vaccine_codes:
            if vaccine_code is None:
                return False
            code = vaccine_code.strip().upper()
            if not code or not any(code.startswith(prefix) for prefix in self.vaccine_codes):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Subgroup:
    code: str
    name: str
    valid_from: date
    valid_to: date | None = None
    rule: SuggestionRule | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        _check_code(self.code, "subgroup")
        _check_name(self.name, "subgroup")
        _check_period(self.valid_from, self.valid_to, f"subgroup {self.code}")

    def is_selectable_on(self, day: date) -> bool:
        return _within(self.valid_from, self.valid_to, day)


@dataclass(frozen=True, slots=True)
class Group:
    code: str
    name: str
    valid_from: date
    valid_to: date | None = None
    subgroups: tuple[Subgroup, ...] = ()
    notes: str | None = None

    def __post_init__(self) -> None:
        _check_code(self.code, "group")
        _check_name(self.name, "group")
        _check_period(self.valid_from, self.valid_to, f"group {self.code}")
        if not isinstance(self.subgroups, tuple):
            raise ValueError(f"group {self.code} subgroups must be a tuple")
        _check_unique((s.code for s in self.subgroups), f"subgroup code in group {self.code}")
        _check_unique((s.name for s in self.subgroups), f"subgroup name in group {self.code}")

    def is_selectable_on(self, day: date) -> bool:
        """valid_from <= day <= valid_to (an open end never expires)."""
        return _within(self.valid_from, self.valid_to, day)

    def subgroup(self, code: str) -> Subgroup:
        for subgroup in self.subgroups:
            if subgroup.code == code:
                return subgroup
        raise UnknownSubgroup(f"Group {show(self.code)} has no subgroup {show(code)}")


def _check_unique(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what}: {value!r}")
        seen.add(value)


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A group offered to the nurse in the prompt, with why it was suggested."""

    group_code: str
    subgroup_code: str | None
    reason: str

    def __post_init__(self) -> None:
        if self.reason not in SUGGESTION_REASONS:
            raise ValueError(f"unknown suggestion reason {self.reason!r}")


_VERSION = re.compile(r"[0-9]+(-[0-9]+)*(\.[0-9]+(-[0-9]+)*)*")


def version_key(version: str) -> tuple[tuple[int, ...], ...]:
    """The order of catalog versions (contract: dot-separated numbers and dates, compared
    part by part as numbers), so `2026-11-26.10` is newer than `2026-11-26.9`.

    Raises ValueError for a version of any other form."""
    if not _VERSION.fullmatch(version):
        raise ValueError(
            f"catalog version {version[:40]!r} is not dot-separated numbers and dates "
            "(e.g. 2026-11-26.1)"
        )
    return tuple(tuple(int(n) for n in part.split("-")) for part in version.split("."))


@dataclass(frozen=True, slots=True)
class Catalog:
    """A versioned, validated set of groups, in display order."""

    version: str
    groups: tuple[Group, ...]
    notes: str | None = None
    # An example catalog (its file says `"example": true`): for development and tests
    # only, a production process refuses it (bootstrap).
    example: bool = False
    # selectable_on's answers, cached since every start asks and building them is costly
    # (BENCHMARKS.md, fix 4); the catalog never changes.
    _selectable: dict[date, tuple[Group, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version.strip():
            raise ValueError("catalog version must be a non-empty string")
        version_key(self.version)
        if not isinstance(self.groups, tuple):
            raise ValueError("catalog groups must be a tuple")
        if not isinstance(self.example, bool):
            raise ValueError("catalog example must be true or false")
        _check_unique((g.code for g in self.groups), "group code")
        _check_unique((g.name for g in self.groups), "group name")

    # -- queries -----------------------------------------------------------

    def group(self, code: str) -> Group:
        for group in self.groups:
            if group.code == code:
                return group
        raise UnknownGroup(f"Unknown customer group {show(code)}")

    def subgroup(self, group_code: str, subgroup_code: str) -> Subgroup:
        return self.group(group_code).subgroup(subgroup_code)

    def require_selectable(
        self, group_code: str, subgroup_code: str | None, on: date
    ) -> tuple[Group, Subgroup | None]:
        """The group and subgroup if both exist and may be chosen on `on`.

        Existence is checked before validity, so a typo is UNKNOWN_* rather
        than GROUP_NOT_SELECTABLE.
        """
        group = self.group(group_code)
        subgroup = None if subgroup_code is None else group.subgroup(subgroup_code)
        if not group.is_selectable_on(on):
            raise GroupNotSelectable(
                f"Customer group {show(group.code)} is not selectable on {on.isoformat()} "
                f"({_period(group.valid_from, group.valid_to)})"
            )
        if subgroup is not None and not subgroup.is_selectable_on(on):
            raise GroupNotSelectable(
                f"Subgroup {show(subgroup.code)} of group {show(group.code)} is not selectable "
                f"on {on.isoformat()} ({_period(subgroup.valid_from, subgroup.valid_to)})"
            )
        return group, subgroup

    def last_day(self, group_code: str, subgroup_code: str | None) -> date | None:
        """The last day a membership in this group (and subgroup) can apply: the earlier
        of the group's and the subgroup's `valid_to`, or None while both are open.

        A code the catalog does not know never ends here (None): the catalog keeps every
        code it ever had, so an unknown one is a data error to report, not a retirement.
        The contract's retirement rule: such a membership ends on this day, or on its own
        `valid_from` if that is later."""
        try:
            group = self.group(group_code)
            subgroup = None if subgroup_code is None else group.subgroup(subgroup_code)
        except (UnknownGroup, UnknownSubgroup):
            return None
        ends = [d for d in (group.valid_to, subgroup.valid_to if subgroup else None) if d]
        return min(ends) if ends else None

    def selectable_on(self, day: date) -> tuple[Group, ...]:
        """Groups selectable on `day`, each trimmed to its subgroups selectable that day."""
        selectable = self._selectable.get(day)
        if selectable is None:
            selectable = tuple(
                replace(g, subgroups=tuple(s for s in g.subgroups if s.is_selectable_on(day)))
                for g in self.groups
                if g.is_selectable_on(day)
            )
            if len(self._selectable) > 366:
                self._selectable.clear()
            self._selectable[day] = selectable
        return selectable

    def suggestions(self, age: int | None, vaccine_code: str | None, on: date) -> list[Suggestion]:
        """Selectable subgroups whose rule matches, in catalog order (deterministic)."""
        return [
            Suggestion(group.code, subgroup.code, CATALOG_RULE)
            for group in self.selectable_on(on)
            for subgroup in group.subgroups
            if subgroup.rule is not None and subgroup.rule.matches(age, vaccine_code)
        ]

    def keeping_codes_of(self, previous: Catalog | None, day: date) -> Catalog:
        """What importing this catalog on `day` leaves in force: this catalog, then every
        group of `previous` it no longer lists, and in each group every subgroup it no
        longer lists, ended on `day` if open or ending later (contract: codes in old
        records can always be resolved).

        A period cannot end before it starts, so a dropped code that had not started yet
        ends on its first day. A dropped code whose name a listed one now uses is
        refused (ValueError): the file must list it, ended, under a name of its own."""
        if previous is None:
            return self
        before = {g.code: g for g in previous.groups}
        listed = {g.code for g in self.groups}
        groups = [
            g if g.code not in before else _with_dropped_subgroups(g, before[g.code], day)
            for g in self.groups
        ]
        names = {g.name: g.code for g in self.groups}
        for old in previous.groups:
            if old.code in listed:
                continue
            if old.name in names:
                raise ValueError(_renamed("group", old.code, old.name, names[old.name]))
            subgroups = tuple(_ended(s, day) for s in old.subgroups)
            groups.append(replace(_ended(old, day), subgroups=subgroups))
        return replace(self, groups=tuple(groups))

    # -- (de)serialisation -------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        """Parse and validate the catalog file's JSON structure; ValueError names the spot."""
        obj = _mapping(
            data, "catalog", {"version", "groups", "notes", "example"}, {"version", "groups"}
        )
        version = _str(obj["version"], "version")
        items = _sequence(obj["groups"], "groups")
        groups = tuple(_group_from(g, f"groups[{i}]") for i, g in enumerate(items))
        notes = _opt_str(obj.get("notes"), "notes")
        example = obj.get("example", False)
        if not isinstance(example, bool):
            raise ValueError("example: expected true or false")
        return _build("catalog", lambda: cls(version, groups, notes, example))

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure `from_dict` reads (round-trips exactly)."""
        out: dict[str, Any] = {"version": self.version}
        if self.example:
            out["example"] = True
        if self.notes is not None:
            out["notes"] = self.notes
        out["groups"] = [_group_to(g) for g in self.groups]
        return out


_Dated = TypeVar("_Dated", Group, Subgroup)


def _ended(item: _Dated, day: date) -> _Dated:
    """`item` ended on `day` unless it ends earlier; never before its own start."""
    end = day if item.valid_to is None else min(item.valid_to, day)
    return replace(item, valid_to=max(end, item.valid_from))


def _renamed(what: str, code: str, name: str, other: str) -> str:
    return (
        f"{what} {code} is no longer listed and is kept, ended, but {other} now has its "
        f"name {name!r}: list {code} in the file, ended, under a name of its own"
    )


def _with_dropped_subgroups(group: Group, before: Group, day: date) -> Group:
    listed = {s.code for s in group.subgroups}
    names = {s.name: s.code for s in group.subgroups}
    dropped = []
    for old in before.subgroups:
        if old.code in listed:
            continue
        if old.name in names:
            raise ValueError(
                _renamed(f"subgroup of {group.code}", old.code, old.name, names[old.name])
            )
        dropped.append(_ended(old, day))
    return replace(group, subgroups=group.subgroups + tuple(dropped)) if dropped else group


def _period(valid_from: date, valid_to: date | None) -> str:
    end = "open" if valid_to is None else valid_to.isoformat()
    return f"valid from {valid_from.isoformat()} to {end}"


# -- parsing helpers (kept out of the dataclasses so they stay plain) ------------

_T = TypeVar("_T")


def _build(path: str, make: Callable[[], _T]) -> _T:
    """Run a constructor, prefixing its ValueError with where in the file we are."""
    try:
        return make()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _mapping(value: object, path: str, allowed: set[str], required: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}")
    missing = sorted(required - set(value))
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    return value


def _sequence(value: object, path: str) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{path}: expected an array")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{path}: expected a string")
    return value


def _opt_str(value: object, path: str) -> str | None:
    return None if value is None else _str(value, path)


def _date(value: object, path: str) -> date:
    # date.fromisoformat also takes "20240318" and week dates; the file must not.
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError(f"{path}: expected a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{path}: not a real date: {value!r}") from None


def _opt_date(value: object, path: str) -> date | None:
    return None if value is None else _date(value, path)


def _opt_age(value: object, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected an integer or null")
    return value


def _rule_from(value: object, path: str) -> SuggestionRule | None:
    if value is None:
        return None
    obj = _mapping(value, path, {"min_age", "max_age", "vaccine_codes"}, set())
    items = _sequence(obj.get("vaccine_codes", []), f"{path}.vaccine_codes")
    codes = [_str(c, f"{path}.vaccine_codes[{i}]") for i, c in enumerate(items)]
    if len(set(codes)) != len(codes):
        raise ValueError(f"{path}.vaccine_codes: duplicate code")
    min_age = _opt_age(obj.get("min_age"), f"{path}.min_age")
    max_age = _opt_age(obj.get("max_age"), f"{path}.max_age")
    return _build(path, lambda: SuggestionRule(min_age, max_age, frozenset(codes)))


def _subgroup_from(value: object, path: str) -> Subgroup:
    obj = _mapping(
        value,
        path,
        {"code", "name", "valid_from", "valid_to", "rule", "notes"},
        {"code", "name", "valid_from"},
    )
    code = _str(obj["code"], f"{path}.code")
    name = _str(obj["name"], f"{path}.name")
    valid_from = _date(obj["valid_from"], f"{path}.valid_from")
    valid_to = _opt_date(obj.get("valid_to"), f"{path}.valid_to")
    rule = _rule_from(obj.get("rule"), f"{path}.rule")
    notes = _opt_str(obj.get("notes"), f"{path}.notes")
    return _build(path, lambda: Subgroup(code, name, valid_from, valid_to, rule, notes))


def _group_from(value: object, path: str) -> Group:
    obj = _mapping(
        value,
        path,
        {"code", "name", "valid_from", "valid_to", "subgroups", "notes"},
        {"code", "name", "valid_from"},
    )
    code = _str(obj["code"], f"{path}.code")
    name = _str(obj["name"], f"{path}.name")
    valid_from = _date(obj["valid_from"], f"{path}.valid_from")
    valid_to = _opt_date(obj.get("valid_to"), f"{path}.valid_to")
    items = _sequence(obj.get("subgroups", []), f"{path}.subgroups")
    subgroups = tuple(_subgroup_from(s, f"{path}.subgroups[{i}]") for i, s in enumerate(items))
    notes = _opt_str(obj.get("notes"), f"{path}.notes")
    return _build(path, lambda: Group(code, name, valid_from, valid_to, subgroups, notes))


def _rule_to(rule: SuggestionRule) -> dict[str, Any]:
    return {
        "min_age": rule.min_age,
        "max_age": rule.max_age,
        "vaccine_codes": sorted(rule.vaccine_codes),
    }


def _subgroup_to(s: Subgroup) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": s.code,
        "name": s.name,
        "valid_from": s.valid_from.isoformat(),
        "valid_to": None if s.valid_to is None else s.valid_to.isoformat(),
    }
    if s.rule is not None:
        out["rule"] = _rule_to(s.rule)
    if s.notes is not None:
        out["notes"] = s.notes
    return out


def _group_to(g: Group) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": g.code,
        "name": g.name,
        "valid_from": g.valid_from.isoformat(),
        "valid_to": None if g.valid_to is None else g.valid_to.isoformat(),
    }
    if g.notes is not None:
        out["notes"] = g.notes
    out["subgroups"] = [_subgroup_to(s) for s in g.subgroups]
    return out
