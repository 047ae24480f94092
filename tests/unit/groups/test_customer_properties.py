"""Stateful property test: random command sequences never break the aggregate's rules."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from services.groups.catalog import default_catalog_path
from services.groups.domain.catalog import Catalog
from services.groups.domain.errors import DomainError
from services.groups.domain.membership import (
    UNCHANGED,
    Actor,
    Customer,
    Membership,
    MembershipStatus,
    RemovalReason,
    Unchanged,
)
from services.groups.domain.personnummer import Personnummer

CATALOG = Catalog.from_dict(json.loads(default_catalog_path().read_text(encoding="utf-8")))
GROUP_CODES = [g.code for g in CATALOG.groups] + ["NOPE"]
SUBGROUP_CODES = [*sorted({s.code for g in CATALOG.groups for s in g.subgroups}), "NOPE", ""]

codes_or_none = st.sampled_from([*SUBGROUP_CODES, None])
# Mostly valid values, so that many sequences get far; the rest probe the rules.
references = st.sampled_from([None, None, "", "R1", "R1", "R2", "R2", "x" * 64, "x" * 65, "a\tb"])


def _own_subgroups(group: str) -> st.SearchStrategy[str | None]:
    own = [s.code for g in CATALOG.groups if g.code == group for s in g.subgroups]
    return st.sampled_from([*own, None]) if own else st.none()


group_and_subgroup = st.sampled_from(GROUP_CODES).flatmap(
    lambda g: st.tuples(st.just(g), st.one_of(_own_subgroups(g), _own_subgroups(g), codes_or_none))
)
offsets = st.integers(min_value=-800, max_value=3)
groups_or_unchanged = st.one_of(st.just(UNCHANGED), st.sampled_from([*GROUP_CODES, None]))
NURSE = Actor("nurse-1", "unit-1")


def _state(customer: Customer) -> list[Membership]:
    return copy.deepcopy(customer.memberships)


class CustomerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.customer = Customer(Personnummer.parse("191212121212"))
        self.today = date(2023, 9, 1)
        self.seen: dict[str, Membership] = {}

    def _pick(self, index: int) -> str:
        ids = [m.membership_id for m in self.customer.memberships]
        return ids[index % len(ids)] if ids and index >= 0 else str(uuid.uuid4())

    def _attempt(self, command: Callable[[], object]) -> object | None:
        """Run a command; a rejected one must leave the aggregate untouched."""
        before = _state(self.customer)
        try:
            result = command()
        except DomainError as exc:
            assert _state(self.customer) == before, f"{exc.reason_code} changed state"
            event(f"rejected {exc.reason_code}")
            return None
        event("accepted")
        return result

    @rule(days=st.integers(min_value=0, max_value=200))
    def advance(self, days: int) -> None:
        self.today += timedelta(days=days)

    @rule(choice=group_and_subgroup, ref=references, offset=offsets)
    def add(self, choice: tuple[str, str | None], ref: str | None, offset: int) -> None:
        group, sub = choice
        valid_from = None if offset == 0 else self.today + timedelta(days=offset)
        result = self._attempt(
            lambda: self.customer.add_group(
                CATALOG,
                membership_id=str(uuid.uuid4()),
                group_code=group,
                subgroup_code=sub,
                reference_code=ref,
                valid_from=valid_from,
                actor=NURSE,
                now=datetime.combine(self.today, time(9), UTC),
                today=self.today,
            )
        )
        if isinstance(result, Membership):
            assert result.version == 1 and result.updated_by is None
            assert result.valid_from <= self.today
            CATALOG.require_selectable(group, result.subgroup_code, result.valid_from)
            if not result.is_active:  # an after-registration into a group ended since
                last = CATALOG.last_day(group, result.subgroup_code)
                assert last is not None and result.valid_to == last < self.today

    @rule(
        index=st.integers(-1, 20),
        group=groups_or_unchanged,
        sub=st.one_of(st.just(UNCHANGED), codes_or_none),
        ref=st.one_of(st.just(UNCHANGED), references),
    )
    def correct(
        self,
        index: int,
        group: str | Unchanged | None,
        sub: str | Unchanged | None,
        ref: str | Unchanged | None,
    ) -> None:
        mid = self._pick(index)
        result = self._attempt(
            lambda: self.customer.correct(
                CATALOG,
                membership_id=mid,
                group_code=group,
                subgroup_code=sub,
                reference_code=ref,
                actor=NURSE,
                today=self.today,
            )
        )
        if isinstance(result, tuple):
            previous, current = result
            assert current.version == previous.version + 1 and current.updated_by == NURSE
            assert previous.status is not MembershipStatus.ENTERED_IN_ERROR
            assert current.valid_from == previous.valid_from
            if group is UNCHANGED:
                assert current.group_code == previous.group_code
            if previous.valid_to is not None:
                assert current.valid_to is not None and current.valid_to <= previous.valid_to

    @rule(
        index=st.integers(-1, 20),
        offset=st.one_of(st.none(), offsets),
        reason=st.sampled_from(RemovalReason),
    )
    def remove(self, index: int, offset: int | None, reason: RemovalReason) -> None:
        mid = self._pick(index)
        valid_to = None if offset is None else self.today + timedelta(days=offset)
        result = self._attempt(
            lambda: self.customer.remove(
                membership_id=mid, valid_to=valid_to, reason=reason, actor=NURSE, today=self.today
            )
        )
        if isinstance(result, Membership):
            if reason is RemovalReason.ENDED:
                assert result.status is MembershipStatus.HISTORICAL
                assert result.valid_to is not None and result.valid_to <= self.today
            else:
                assert result.status is MembershipStatus.ENTERED_IN_ERROR

    @invariant()
    def one_active_membership_per_group(self) -> None:
        active = [m.group_code for m in self.customer.active()]
        assert len(active) == len(set(active))

    @invariant()
    def history_is_append_only(self) -> None:
        current = {m.membership_id: m for m in self.customer.memberships}
        for mid, old in self.seen.items():
            assert mid in current, "a membership was deleted"
            new = current[mid]
            assert new.version >= old.version
            assert (new.valid_from, new.created_at, new.created_by) == (
                old.valid_from,
                old.created_at,
                old.created_by,
            )
            if old.status is MembershipStatus.ENTERED_IN_ERROR:
                assert new == old, "an entered-in-error membership changed"
            if old.status is MembershipStatus.HISTORICAL:
                assert not new.is_active, "a historical membership became active again"
        self.seen = copy.deepcopy(current)

    @invariant()
    def periods_are_sane(self) -> None:
        for m in self.customer.memberships:
            assert m.valid_to is None or m.valid_from <= m.valid_to
            assert m.reference_code is None or 0 < len(m.reference_code) <= 64
        in_error = [
            m for m in self.customer.memberships if m.status is MembershipStatus.ENTERED_IN_ERROR
        ]
        assert len(self.customer.active()) + len(self.customer.historical()) + len(in_error) == len(
            self.customer.memberships
        )


CustomerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestCustomerMachine = CustomerMachine.TestCase
