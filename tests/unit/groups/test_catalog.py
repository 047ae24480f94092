from __future__ import annotations

import copy
import json
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.groups.catalog import default_catalog_path, example_catalog_path
from services.groups.domain.catalog import (
    CATALOG_RULE,
    CODE_PATTERN,
    REQUESTED_AT_BOOKING,
    Catalog,
    Group,
    Subgroup,
    Suggestion,
    SuggestionRule,
    version_key,
)
from services.groups.domain.errors import GroupNotSelectable, UnknownGroup, UnknownSubgroup
from tests.unit.groups.conftest import TODAY

# (group name, subgroup name or None, last day it is selectable or None)
GUIDE_ENTRIES = [
    ("Covid-19", "Rekommenderad", None),
    ("Influensa", "11. 65 år och äldre", None),
    ("Pneumokockvaccin", "65 år och äldre", None),
    ("Övrigt", "Övriga resevaccinationer", None),
    ("02 Har hemsjukvård och/eller hemtjänst", None, date(2024, 3, 18)),
    ("06. 65 år och äldre (ej SÄBO/hemsjukvård/hemtjänst)", None, date(2024, 3, 13)),
    ("Covid", "08. Övrig allmänhet 18-64 år", date(2023, 9, 27)),
]


def _by_name(
    catalog: Catalog, group_name: str, subgroup_name: str | None
) -> tuple[Group, Subgroup | None]:
    group = next(g for g in catalog.groups if g.name == group_name)
    if subgroup_name is None:
        return group, None
    return group, next(s for s in group.subgroups if s.name == subgroup_name)


# -- the shipped file ----------------------------------------------------------


def test_shipped_catalog_loads(catalog: Catalog) -> None:
    assert catalog.version == "2026-11-30.1"
    assert default_catalog_path().name == "catalog.json"
    assert not catalog.example
    assert catalog.notes and "user guide" in catalog.notes
    assert "Historiska kundgrupper" in catalog.notes


def test_shipped_catalog_is_utf8_with_swedish_letters() -> None:
    raw = default_catalog_path().read_bytes().decode("utf-8")
    for word in ("Övrigt", "år", "äldre", "SÄBO", "hemsjukvård", "hemtjänst"):
        assert word in raw


def test_the_shipped_catalog_holds_only_what_the_guide_shows(catalog: Catalog) -> None:
    """Every group and subgroup is one of the guide's rows, and the guide shows no rules."""
    shown = {(group, subgroup) for group, subgroup, _ in GUIDE_ENTRIES}
    groups_without_subgroups = {(g.name, None) for g in catalog.groups if not g.subgroups}
    listed = {(g.name, s.name) for g in catalog.groups for s in g.subgroups}
    assert listed | groups_without_subgroups == shown
    assert all(s.rule is None for g in catalog.groups for s in g.subgroups)
    assert catalog.suggestions(80, "J07BB02", TODAY) == []


@pytest.mark.parametrize(("group_name", "subgroup_name", "ends"), GUIDE_ENTRIES)
def test_guide_groups_are_present(
    catalog: Catalog, group_name: str, subgroup_name: str | None, ends: date | None
) -> None:
    group, subgroup = _by_name(catalog, group_name, subgroup_name)
    assert CODE_PATTERN.fullmatch(group.code)
    assert subgroup is None or CODE_PATTERN.fullmatch(subgroup.code)
    sub_code = None if subgroup is None else subgroup.code
    # The guide's periods start 1901-01-01 (the start of everything migrated).
    assert group.valid_from == date(1901, 1, 1)
    if ends is None:
        assert catalog.require_selectable(group.code, sub_code, TODAY) == (group, subgroup)
    else:
        assert group.valid_to == ends
        with pytest.raises(GroupNotSelectable):
            catalog.require_selectable(group.code, sub_code, TODAY)
        with pytest.raises(GroupNotSelectable):
            catalog.require_selectable(group.code, sub_code, ends + timedelta(days=1))
        assert catalog.require_selectable(group.code, sub_code, ends) == (group, subgroup)
        assert catalog.require_selectable(group.code, sub_code, ends - timedelta(days=400))


def test_exact_codes_of_the_guide_groups(catalog: Catalog) -> None:
    codes = {(g.code, s.code) for g in catalog.groups for s in g.subgroups}
    assert codes == {
        ("COVID_19", "REKOMMENDERAD"),
        ("INFLUENSA", "ALDER_65_PLUS"),
        ("PNEUMOKOCK", "ALDER_65_PLUS"),
        ("OVRIGT", "RESEVACCINATIONER"),
        ("COVID", "OVRIG_ALLMANHET_18_64"),
    }
    # The guide names no group for "02 …" and "06. …": kept as groups of their own.
    assert catalog.group("HAR_HEMSJUKVARD_HEMTJANST").subgroups == ()
    assert catalog.group("ALDER_65_PLUS_EJ_SABO_HEMTJANST").subgroups == ()


def test_selectable_today(catalog: Catalog) -> None:
    selectable = catalog.selectable_on(TODAY)
    assert [g.code for g in selectable] == ["COVID_19", "INFLUENSA", "PNEUMOKOCK", "OVRIGT"]
    for group in selectable:
        assert group.subgroups
        assert all(s.is_selectable_on(TODAY) for s in group.subgroups)


def test_selectable_before_the_retirements(catalog: Catalog) -> None:
    codes = [g.code for g in catalog.selectable_on(date(2023, 9, 27))]
    assert "COVID" in codes and "HAR_HEMSJUKVARD_HEMTJANST" in codes
    assert "COVID" not in [g.code for g in catalog.selectable_on(date(2023, 9, 28))]
    codes = [g.code for g in catalog.selectable_on(date(2024, 3, 14))]
    assert "ALDER_65_PLUS_EJ_SABO_HEMTJANST" not in codes
    assert "HAR_HEMSJUKVARD_HEMTJANST" in codes
    assert "HAR_HEMSJUKVARD_HEMTJANST" not in [
        g.code for g in catalog.selectable_on(date(2024, 3, 19))
    ]


@pytest.mark.parametrize("which", ["shipped", "example"])
def test_round_trip(which: str, request: pytest.FixtureRequest) -> None:
    data = request.getfixturevalue(f"{'' if which == 'shipped' else 'example_'}catalog_data")
    catalog = Catalog.from_dict(data)
    assert Catalog.from_dict(catalog.to_dict()) == catalog
    assert json.loads(json.dumps(catalog.to_dict())) == catalog.to_dict()
    assert catalog.to_dict() == data


# -- the example file ----------------------------------------------------------


def test_the_example_catalog_says_it_is_one(example_catalog: Catalog) -> None:
    assert example_catalog_path().name == "example.json"
    assert example_catalog.example
    assert example_catalog.notes and example_catalog.notes.startswith("AN EXAMPLE")


def test_the_example_keeps_the_guide_codes_and_names(
    catalog: Catalog, example_catalog: Catalog
) -> None:
    for group in catalog.groups:
        assert example_catalog.group(group.code).name == group.name
        for subgroup in group.subgroups:
            assert example_catalog.subgroup(group.code, subgroup.code).name == subgroup.name


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_example_is_true_or_false(catalog_data: dict[str, Any], value: object) -> None:
    with pytest.raises(ValueError, match="example"):
        Catalog.from_dict({**catalog_data, "example": value})
    assert not Catalog.from_dict({**catalog_data, "example": False}).example


def test_catalog_is_hashable_and_immutable(catalog: Catalog) -> None:
    hash(catalog)
    with pytest.raises(AttributeError):
        catalog.version = "x"  # type: ignore[misc]


# -- lookups -------------------------------------------------------------------


def test_lookups(catalog: Catalog) -> None:
    assert catalog.group("INFLUENSA").name == "Influensa"
    assert catalog.subgroup("INFLUENSA", "ALDER_65_PLUS").name == "11. 65 år och äldre"
    with pytest.raises(UnknownGroup, match="NOPE"):
        catalog.group("NOPE")
    with pytest.raises(UnknownGroup):
        catalog.subgroup("NOPE", "ALDER_65_PLUS")
    with pytest.raises(UnknownSubgroup, match="NOPE"):
        catalog.subgroup("INFLUENSA", "NOPE")
    with pytest.raises(UnknownSubgroup):
        catalog.subgroup("COVID_19", "OVRIG_ALLMANHET_18_64")  # belongs to COVID


def test_require_selectable_checks_existence_before_validity(catalog: Catalog) -> None:
    with pytest.raises(UnknownSubgroup):
        catalog.require_selectable("COVID", "NOPE", TODAY)
    with pytest.raises(UnknownGroup):
        catalog.require_selectable("nope", None, TODAY)
    group, subgroup = catalog.require_selectable("INFLUENSA", None, TODAY)
    assert group.code == "INFLUENSA" and subgroup is None


def test_unknown_group_message_redacts_a_personnummer(catalog: Catalog) -> None:
    with pytest.raises(UnknownGroup) as info:
        catalog.group("191212121212")
    assert "191212121212" not in info.value.message


def _tiny(**overrides: Any) -> Catalog:
    sub = Subgroup("S", "Sub", date(2025, 1, 1), overrides.get("sub_to"))
    group = Group("G", "Group", date(2024, 1, 1), overrides.get("group_to"), (sub,))
    return Catalog("1", (group,))


def test_subgroup_outside_validity_is_not_selectable() -> None:
    catalog = _tiny(sub_to=date(2025, 6, 30))
    with pytest.raises(GroupNotSelectable, match="Subgroup 'S'"):
        catalog.require_selectable("G", "S", date(2024, 12, 31))
    with pytest.raises(GroupNotSelectable):
        catalog.require_selectable("G", "S", date(2025, 7, 1))
    assert catalog.require_selectable("G", "S", date(2025, 6, 30))
    assert catalog.require_selectable("G", None, date(2024, 12, 31))
    assert catalog.selectable_on(date(2024, 12, 31))[0].subgroups == ()
    with pytest.raises(GroupNotSelectable, match="Customer group 'G'"):
        catalog.require_selectable("G", None, date(2023, 12, 31))


def test_selectable_on_does_not_change_the_catalog() -> None:
    catalog = _tiny(sub_to=date(2025, 6, 30))
    catalog.selectable_on(date(2026, 1, 1))
    assert len(catalog.groups[0].subgroups) == 1


# -- suggestions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "vaccine", "expected"),
    [
        (65, "J07BB02", [("INFLUENSA", "ALDER_65_PLUS")]),
        (64, "J07BB02", []),
        (70, "J07BB", [("INFLUENSA", "ALDER_65_PLUS")]),
        (70, "j07bb02 ", [("INFLUENSA", "ALDER_65_PLUS")]),
        (70, "J07AL02", [("PNEUMOKOCK", "ALDER_65_PLUS")]),
        (74, "J07BN01", []),
        (75, "J07BN01", [("COVID_19", "REKOMMENDERAD")]),
        (112, "J07BN", [("COVID_19", "REKOMMENDERAD")]),
        (30, "J07BA01", [("OVRIGT", "TBE")]),
        (None, "J07BA01", [("OVRIGT", "TBE")]),
        (None, "J07AP03", [("OVRIGT", "RESEVACCINATIONER")]),
        (None, "J07BB02", []),  # age unknown: no age rule fits
        (80, None, []),  # vaccine unknown: every example rule needs a vaccine
        (80, "J07B", []),  # a shorter code is not a match
        (80, "", []),
        (None, None, []),
    ],
)
def test_suggestions_today(
    example_catalog: Catalog, age: int | None, vaccine: str | None, expected: list[tuple[str, str]]
) -> None:
    suggestions = example_catalog.suggestions(age, vaccine, TODAY)
    assert [(s.group_code, s.subgroup_code) for s in suggestions] == expected
    assert all(s.reason == CATALOG_RULE for s in suggestions)


def test_suggestions_only_from_selectable_subgroups(example_catalog: Catalog) -> None:
    assert example_catalog.suggestions(40, "J07BN01", date(2023, 9, 27)) == [
        Suggestion("COVID", "OVRIG_ALLMANHET_18_64", CATALOG_RULE)
    ]
    assert example_catalog.suggestions(40, "J07BN01", TODAY) == []


def test_suggestions_are_in_catalog_order() -> None:
    rule = SuggestionRule(min_age=0)
    subs = tuple(Subgroup(f"S{i}", f"Sub {i}", date(2000, 1, 1), rule=rule) for i in range(3))
    groups = (
        Group("B", "B", date(2000, 1, 1), subgroups=subs),
        Group("A", "A", date(2000, 1, 1), subgroups=subs[::-1]),
    )
    got = Catalog("1", groups).suggestions(10, None, date(2026, 1, 1))
    assert [(s.group_code, s.subgroup_code) for s in got] == [
        ("B", "S0"),
        ("B", "S1"),
        ("B", "S2"),
        ("A", "S2"),
        ("A", "S1"),
        ("A", "S0"),
    ]


@given(
    st.integers(0, 130) | st.none(),
    st.sampled_from(["J07BB02", "J07AL02", "J07BN01", "X"]) | st.none(),
)
def test_suggestions_are_deterministic_and_selectable(age: int | None, vaccine: str | None) -> None:
    catalog = Catalog.from_dict(json.loads(example_catalog_path().read_text(encoding="utf-8")))
    first = catalog.suggestions(age, vaccine, TODAY)
    assert first == catalog.suggestions(age, vaccine, TODAY)
    for s in first:
        assert s.subgroup_code is not None
        catalog.require_selectable(s.group_code, s.subgroup_code, TODAY)


def test_suggestion_reasons() -> None:
    assert REQUESTED_AT_BOOKING == "REQUESTED_AT_BOOKING"
    Suggestion("INFLUENSA", None, REQUESTED_AT_BOOKING)
    with pytest.raises(ValueError):
        Suggestion("INFLUENSA", None, "WHIM")


# -- rules ---------------------------------------------------------------------


def test_rule_bounds_are_inclusive() -> None:
    rule = SuggestionRule(min_age=18, max_age=64)
    assert not rule.matches(17, None)
    assert rule.matches(18, None)
    assert rule.matches(64, "anything")
    assert not rule.matches(65, None)
    assert not rule.matches(None, None)


def test_rule_vaccine_codes_are_atc_prefixes() -> None:
    rule = SuggestionRule(vaccine_codes=frozenset({"J07BB", "J07AL02"}))
    assert rule.matches(None, "J07BB")
    assert rule.matches(None, "J07BB03")
    assert rule.matches(None, "J07AL02")
    assert not rule.matches(None, "J07AL01")
    assert not rule.matches(None, "J07B")
    assert not rule.matches(None, None)
    assert not rule.matches(None, "   ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"min_age": -1},
        {"min_age": 10, "max_age": 9},
        {"min_age": True},
        {"vaccine_codes": frozenset({"j07bb"})},
        {"vaccine_codes": frozenset({""})},
        {"vaccine_codes": {"J07BB"}},
    ],
)
def test_invalid_rules(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SuggestionRule(**kwargs)


# -- validation of the file structure -----------------------------------------


def _broken(catalog_data: dict[str, Any], change: Any) -> dict[str, Any]:
    data = copy.deepcopy(catalog_data)
    change(data)
    return data


BROKEN_FILES = {
    "version missing": lambda d: d.pop("version"),
    "version empty": lambda d: d.update(version=" "),
    "groups not a list": lambda d: d.update(groups={"a": 1}),
    "groups a string": lambda d: d.update(groups="COVID"),
    "unknown top field": lambda d: d.update(extra=1),
    "group not an object": lambda d: d["groups"].append("X"),
    "unknown group field": lambda d: d["groups"][0].update(valid_too="2020-01-01"),
    "code lower case": lambda d: d["groups"][0].update(code="covid_19"),
    "code with å": lambda d: d["groups"][0].update(code="ÖVRIGT"),
    "code starting with digit": lambda d: d["groups"][0].update(code="19_COVID"),
    "code not a string": lambda d: d["groups"][0].update(code=19),
    "name empty": lambda d: d["groups"][0].update(name=""),
    "name padded": lambda d: d["groups"][0].update(name=" Covid-19"),
    "duplicate group code": lambda d: d["groups"][1].update(code="COVID_19"),
    "duplicate group name": lambda d: d["groups"][1].update(name="Covid-19"),
    "valid_from missing": lambda d: d["groups"][0].pop("valid_from"),
    "valid_from compact": lambda d: d["groups"][0].update(valid_from="20230928"),
    "valid_from unreal": lambda d: d["groups"][0].update(valid_from="2023-02-30"),
    "valid_from week date": lambda d: d["groups"][0].update(valid_from="2023-W01-1"),
    "valid_to before valid_from": lambda d: d["groups"][0].update(valid_to="2020-01-01"),
    "duplicate subgroup code": lambda d: d["groups"][1]["subgroups"][1].update(
        code="ALDER_65_PLUS"
    ),
    "subgroup missing name": lambda d: d["groups"][1]["subgroups"][0].pop("name"),
    "rule not an object": lambda d: d["groups"][1]["subgroups"][0].update(rule=[65]),
    "rule age as string": lambda d: d["groups"][1]["subgroups"][0]["rule"].update(min_age="65"),
    "rule age as float": lambda d: d["groups"][1]["subgroups"][0]["rule"].update(min_age=65.0),
    "rule empty": lambda d: d["groups"][1]["subgroups"][0].update(rule={}),
    "rule duplicate vaccine": lambda d: d["groups"][1]["subgroups"][0]["rule"].update(
        vaccine_codes=["J07BB", "J07BB"]
    ),
    "rule unknown field": lambda d: d["groups"][1]["subgroups"][0]["rule"].update(age=1),
    "notes not a string": lambda d: d.update(notes=["x"]),
}


@pytest.mark.parametrize("change", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_bad_catalog_data_is_a_value_error(
    example_catalog_data: dict[str, Any], change: Any
) -> None:
    with pytest.raises(ValueError):
        Catalog.from_dict(_broken(example_catalog_data, change))


def test_value_errors_say_where(example_catalog_data: dict[str, Any]) -> None:
    data = _broken(
        example_catalog_data,
        lambda d: d["groups"][2]["subgroups"][1].update(valid_to="1900-01-01"),
    )
    with pytest.raises(ValueError, match=r"groups\[2\]\.subgroups\[1\]"):
        Catalog.from_dict(data)


def test_not_a_mapping_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Catalog.from_dict([])  # type: ignore[arg-type]


def test_optional_fields_default() -> None:
    catalog = Catalog.from_dict(
        {"version": "1", "groups": [{"code": "G", "name": "G", "valid_from": "2020-01-01"}]}
    )
    assert catalog.groups == (Group("G", "G", date(2020, 1, 1)),)
    assert catalog.notes is None


def test_versions_compare_part_by_part_as_numbers() -> None:
    assert version_key("2026-11-26.10") > version_key("2026-11-26.9")
    assert version_key("2026-12-01.1") > version_key("2026-11-30.99")
    assert version_key("2027-01-01") > version_key("2026-12-31.5")
    assert version_key("1.10") > version_key("1.9") > version_key("1")
    assert "2026-11-26.10" < "2026-11-26.9", "as strings they would not"


@pytest.mark.parametrize("version", ["v", "2026-11-26.x", "1..2", "1.", "-1", "2026_11_26"])
def test_a_version_that_is_not_numbers_and_dates_is_refused(version: str) -> None:
    with pytest.raises(ValueError, match="dot-separated numbers and dates"):
        version_key(version)
    data = {"version": version, "groups": [{"code": "G", "name": "G", "valid_from": "2020-01-01"}]}
    with pytest.raises(ValueError):
        Catalog.from_dict(data)


def test_last_day_is_the_earlier_end_of_group_and_subgroup() -> None:
    catalog = Catalog.from_dict(
        {
            "version": "1",
            "groups": [
                {
                    "code": "G",
                    "name": "G",
                    "valid_from": "2020-01-01",
                    "valid_to": "2025-06-30",
                    "subgroups": [
                        {
                            "code": "EARLY",
                            "name": "Early",
                            "valid_from": "2020-01-01",
                            "valid_to": "2024-12-31",
                        },
                        {"code": "OPEN", "name": "Open", "valid_from": "2020-01-01"},
                    ],
                },
                {
                    "code": "H",
                    "name": "H",
                    "valid_from": "2020-01-01",
                    "subgroups": [
                        {
                            "code": "ENDS",
                            "name": "Ends",
                            "valid_from": "2020-01-01",
                            "valid_to": "2023-03-01",
                        }
                    ],
                },
            ],
        }
    )
    assert catalog.last_day("G", None) == date(2025, 6, 30)
    assert catalog.last_day("G", "OPEN") == date(2025, 6, 30)
    assert catalog.last_day("G", "EARLY") == date(2024, 12, 31)
    assert catalog.last_day("H", None) is None
    assert catalog.last_day("H", "ENDS") == date(2023, 3, 1)
    assert catalog.last_day("NOPE", None) is None
    assert catalog.last_day("H", "NOPE") is None


# -- an import keeps every code ------------------------------------------------

IMPORT_DAY = date(2026, 11, 30)


def _catalog(version: str, *groups: dict[str, Any]) -> Catalog:
    return Catalog.from_dict({"version": version, "groups": list(groups)})


def _group(code: str, *subgroups: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": code.title(),
        "valid_from": "2020-01-01",
        "subgroups": list(subgroups),
        **fields,
    }


def _sub(code: str, **fields: Any) -> dict[str, Any]:
    return {"code": code, "name": code.title(), "valid_from": "2020-01-01", **fields}


def test_an_import_keeps_dropped_codes_ended_on_its_day() -> None:
    before = _catalog(
        "1",
        _group("KEPT", _sub("STAYS"), _sub("DROPPED"), _sub("ENDED", valid_to="2025-01-31")),
        _group("GONE", _sub("WITH_IT")),
        _group("RETIRED", valid_to="2024-03-18"),
        _group("LATER", valid_to="2030-01-01"),
    )
    new = _catalog("2", _group("NEW"), _group("KEPT", _sub("STAYS")))
    kept = new.keeping_codes_of(before, IMPORT_DAY)
    assert kept.version == "2"
    assert [g.code for g in kept.groups] == ["NEW", "KEPT", "GONE", "RETIRED", "LATER"]
    assert [(s.code, s.valid_to) for s in kept.group("KEPT").subgroups] == [
        ("STAYS", None),
        ("DROPPED", IMPORT_DAY),
        ("ENDED", date(2025, 1, 31)),  # ended earlier: its end stays
    ]
    assert kept.group("GONE").valid_to == IMPORT_DAY
    assert kept.subgroup("GONE", "WITH_IT").valid_to == IMPORT_DAY
    assert kept.group("RETIRED").valid_to == date(2024, 3, 18)
    assert kept.group("LATER").valid_to == IMPORT_DAY  # ended later: the import's day
    assert kept.last_day("GONE", "WITH_IT") == IMPORT_DAY
    assert kept.last_day("KEPT", "DROPPED") == IMPORT_DAY
    assert kept.last_day("KEPT", "STAYS") is None
    # What the new file says about a listed code wins, and a repeat changes nothing.
    assert kept.keeping_codes_of(kept, IMPORT_DAY + timedelta(days=5)) == kept
    assert new.keeping_codes_of(None, IMPORT_DAY) == new


def test_a_dropped_code_that_has_not_started_ends_on_its_first_day() -> None:
    before = _catalog("1", _group("FUTURE", valid_from="2027-01-01"))
    kept = _catalog("2", _group("NEW")).keeping_codes_of(before, IMPORT_DAY)
    future = kept.group("FUTURE")
    assert (future.valid_from, future.valid_to) == (date(2027, 1, 1), date(2027, 1, 1))


def test_a_dropped_code_whose_name_a_listed_one_took_is_refused() -> None:
    before = _catalog("1", _group("OLD", name="Covid"), _group("G", _sub("OLD_SUB", name="X")))
    renamed = _catalog("2", _group("NEW", name="Covid"), _group("G", _sub("OLD_SUB", name="X")))
    with pytest.raises(ValueError, match=r"OLD is no longer listed.*'Covid'"):
        renamed.keeping_codes_of(before, IMPORT_DAY)
    recoded = _catalog("2", _group("OLD", name="Covid"), _group("G", _sub("NEW_SUB", name="X")))
    with pytest.raises(ValueError, match="OLD_SUB is no longer listed"):
        recoded.keeping_codes_of(before, IMPORT_DAY)
