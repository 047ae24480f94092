"""The audit hash chain's parts that need no database: a row's canonical form, sealing,
the verifying walk, and the sealer's horizon."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.groups.adapters.audit_rows import (
    canonical_bytes,
    canonical_instant,
    canonical_json,
    entry_of,
)
from services.groups.adapters.audit_sealer import SealHorizon
from services.groups.domain.audit_chain import (
    GENESIS,
    AuditEntry,
    ChainWalk,
    Link,
    StoredLink,
    link_hash,
    seal,
)

AT = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def row(n: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": n,
        "at": AT + timedelta(seconds=n),
        "action": "customer_card.read",
        "user_id": "nurse-1",
        "unit_id": "unit-1",
        "personnummer": "191212121212",
        "membership_id": None,
        "detail": {"n": n},
    }
    return {**values, **overrides}


def entry(n: int, **overrides: Any) -> AuditEntry:
    return entry_of(row(n, **overrides))


@given(json_values)
def test_canonical_json_is_json_and_stable(value: Any) -> None:
    text = canonical_json(value)
    assert json.loads(text) == value or value != value
    assert canonical_json(json.loads(text)) == text


@given(st.dictionaries(st.text(), st.integers(), min_size=2))
def test_key_order_does_not_matter(value: dict[str, int]) -> None:
    reversed_order = dict(reversed(list(value.items())))
    assert canonical_json(reversed_order) == canonical_json(value)


def test_canonical_json_by_example() -> None:
    assert canonical_json({"b": [1, 2.5, None], "a": 'å\n"\\', "c": True}) == (
        '{"a":"å\\n\\"\\\\","b":[1,2.5,null],"c":true}'
    )
    with pytest.raises(ValueError):
        canonical_json(float("nan"))
    with pytest.raises(TypeError):
        canonical_json(b"bytes")


def test_an_instant_is_utc_with_microseconds_whatever_its_zone() -> None:
    stockholm = AT.astimezone(timezone(timedelta(hours=1)))
    assert (
        canonical_instant(stockholm) == canonical_instant(AT) == "2026-11-30T12:00:00.123456+00:00"
    )
    assert canonical_instant(AT.replace(microsecond=0)).endswith(".000000+00:00")
    with pytest.raises(ValueError):
        canonical_instant(AT.replace(tzinfo=None))


@pytest.mark.parametrize(
    "change",
    [
        {"id": 2},
        {"at": AT + timedelta(seconds=1, microseconds=1)},
        {"action": "x"},
        {"user_id": "nurse-2"},
        {"unit_id": "unit-2"},
        {"personnummer": None},
        {"membership_id": "m"},
        {"detail": {"n": 1, "extra": None}},
    ],
)
def test_every_column_is_covered(change: dict[str, Any]) -> None:
    assert canonical_bytes(row(1, **change)) != canonical_bytes(row(1))


def stored(entries: list[AuditEntry]) -> list[StoredLink]:
    return [StoredLink(link, e) for link, e in zip(seal(None, entries), entries, strict=True)]


def walk(links: list[StoredLink], sealed_twice: set[int] | None = None) -> ChainWalk:
    chain = ChainWalk(sealed_twice=sealed_twice or set())
    for link in links:
        if chain.add(link) is not None:
            break
    return chain


def test_sealing_continues_after_the_head() -> None:
    first = seal(None, [entry(1), entry(2)])
    assert first[0] == Link(1, 1, GENESIS, link_hash(GENESIS, entry(1)))
    more = seal(first[-1], [entry(5), entry(3)])  # a late commit is sealed where it comes
    assert [(link.position, link.audit_id) for link in more] == [(3, 5), (4, 3)]
    assert more[0].prev_hash == first[-1].hash
    assert seal(None, [entry(1), entry(2), entry(5), entry(3)]) == first + more


def test_an_intact_chain_verifies_to_its_head() -> None:
    links = stored([entry(n) for n in range(1, 6)])
    chain = walk(links)
    assert chain.broken is None and chain.verified == 5
    assert (chain.head_position, chain.head_hash) == (5, links[-1].link.hash)


def test_a_changed_row_is_named() -> None:
    links = stored([entry(n) for n in range(1, 6)])
    links[2] = StoredLink(links[2].link, entry(3, detail={"n": 33}))
    chain = walk(links)
    assert chain.broken is not None and chain.verified == 2
    assert (chain.broken.kind, chain.broken.position, chain.broken.audit_id) == ("changed", 3, 3)


def test_a_removed_row_is_named() -> None:
    links = stored([entry(n) for n in range(1, 4)])
    links[1] = StoredLink(links[1].link, None)
    broken = walk(links).broken
    assert broken is not None and (broken.kind, broken.audit_id) == ("removed", 2)
    assert "removed" in broken.describe()


def test_a_removed_link_is_a_gap_and_an_inserted_link_breaks_the_chain() -> None:
    links = stored([entry(n) for n in range(1, 5)])
    broken = walk(links[:1] + links[2:]).broken
    assert broken is not None and (broken.kind, broken.position) == ("gap", 2)

    forged = [entry(1), entry(9), entry(2)]  # a row slipped in, later links kept
    relinked = [*stored(forged)[:2], StoredLink(replace(links[1].link, position=3), entry(2))]
    broken = walk(relinked).broken
    assert broken is not None and (broken.kind, broken.position) == ("relinked", 3)


def test_a_row_sealed_twice_is_named_at_its_second_link() -> None:
    entries = [entry(1), entry(2), entry(1)]
    broken = walk(stored(entries), sealed_twice={1}).broken
    assert broken is not None and (broken.kind, broken.position) == ("sealed_twice", 3)


def test_the_horizon_moves_only_after_every_older_transaction_ended() -> None:
    horizon = SealHorizon(settle_seconds=1.0)
    horizon.observe(now=0.0, xmin=100, xmax=105, sealed_through=10)
    assert horizon.floor == 0
    horizon.observe(now=1.5, xmin=100, xmax=107, sealed_through=12)  # barrier 107 for id 10
    horizon.observe(now=2.0, xmin=106, xmax=108, sealed_through=12)  # 100..106 may run
    assert horizon.floor == 0
    horizon.observe(now=3.0, xmin=107, xmax=110, sealed_through=12)
    assert horizon.floor == 10
    horizon.observe(now=4.0, xmin=110, xmax=110, sealed_through=12)
    assert horizon.floor == 12


def test_the_horizon_never_passes_what_a_round_sealed() -> None:
    horizon = SealHorizon(settle_seconds=0.0)
    horizon.observe(now=0.0, xmin=1, xmax=2, sealed_through=50)
    horizon.observe(now=1.0, xmin=1, xmax=3, sealed_through=50)
    horizon.observe(now=2.0, xmin=5, xmax=5, sealed_through=40)  # a full round behind
    assert horizon.floor == 0
