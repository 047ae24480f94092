"""Reconcile what the services left behind (database rows, topics) with the model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.groups.service_layer import messages
from services.groups.service_layer.outgoing import prompt_id_for
from tests.reliability.harness import Stack, distinct_by_id, read_topic
from tests.reliability.model import Model

_SQL = {
    "memberships": (
        "SELECT membership_id::text, personnummer, group_code, subgroup_code, reference_code,"
        " valid_from, valid_to, version, status, created_by_user, created_by_unit,"
        " updated_by_user, updated_by_unit FROM memberships"
    ),
    "bookings": (
        "SELECT booking_id, unit_id, personnummer, start_time, vaccine_code, vaccine_name, dose,"
        " requested_group_code, requested_subgroup_code, status, source_event_time FROM bookings"
    ),
    "prompts": (
        "SELECT vaccination_id, prompt_id::text, personnummer, unit_id, user_id, booking_id,"
        " vaccine_code, closed_at IS NOT NULL FROM prompts"
    ),
    "vaccination_confirmations": (
        "SELECT vaccination_id, prompt_id::text, personnummer, unit_id, actor_user_id,"
        " command_id, memberships, version FROM vaccination_confirmations"
    ),
    "customers": "SELECT personnummer, first_name, last_name FROM customers",
}


def _confirmation(row: tuple[Any, ...]) -> tuple[Any, ...]:
    memberships = row[6] if isinstance(row[6], list) else json.loads(row[6])
    active = tuple(sorted((m["membership_id"], m["version"]) for m in memberships))
    return (*row[1:6], active, row[7])


async def database_state(stack: Stack) -> dict[str, dict[str, tuple[Any, ...]]]:
    state: dict[str, dict[str, tuple[Any, ...]]] = {}
    for table, sql in _SQL.items():
        rows = [tuple(r) for r in await stack.rows(sql)]
        if table == "vaccination_confirmations":
            state[table] = {r[0]: _confirmation(r) for r in rows}
        else:
            state[table] = {r[0]: tuple(r[1:]) for r in rows}
    return state


def expected_state(model: Model) -> dict[str, dict[str, tuple[Any, ...]]]:
    return {
        "memberships": model.membership_rows(),
        "bookings": model.booking_rows(),
        "prompts": model.prompt_rows(),
        "vaccination_confirmations": model.confirmation_rows(),
        "customers": model.customer_rows(),
    }


@dataclass
class Reconciliation:
    figures: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, count: int) -> None:
        self.figures[name] = self.figures.get(name, 0) + count

    def problem(self, text: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(text)


def compare_tables(
    expected: Mapping[str, Mapping[str, tuple[Any, ...]]],
    actual: Mapping[str, Mapping[str, tuple[Any, ...]]],
    result: Reconciliation,
) -> None:
    for table, rows in expected.items():
        found = actual[table]
        missing = rows.keys() - found.keys()
        extra = found.keys() - rows.keys()
        different = [k for k in rows.keys() & found.keys() if rows[k] != found[k]]
        result.add("db_rows_compared", len(rows))
        result.add("lost", len(missing))
        result.add("duplicated_effects", len(extra))
        result.add("db_rows_different", len(different))
        for key in sorted(missing)[:3]:
            result.problem(f"{table}: row {key} missing; expected {rows[key]}")
        for key in sorted(extra)[:3]:
            result.problem(f"{table}: unexpected row {key}: {found[key]}")
        for key in sorted(different)[:5]:
            result.problem(f"{table}: row {key} is {found[key]}, expected {rows[key]}")


async def reconcile(stack: Stack, model: Model, *, dead_letters: int | None = 0) -> Reconciliation:
    """Database vs model; events distinct by id vs the expected set; every command exactly
    one result; every vaccination exactly one prompt id; `dead_letters` (None: any) rows in
    the dead-letter table."""
    result = Reconciliation()
    compare_tables(expected_state(model), await database_state(stack), result)
    if dead_letters is not None:
        found = len(await stack.rows("SELECT id FROM dead_letters"))
        if found != dead_letters:
            result.add("db_rows_different", abs(found - dead_letters))
            codes = await stack.rows(
                "SELECT error_code, count(*) FROM dead_letters GROUP BY error_code"
            )
            result.problem(f"{found} dead letters, expected {dead_letters}: {codes}")

    inbox = await stack.inbox_count()
    if inbox != len(model.inbox):
        result.problem(f"inbox holds {inbox} event ids, the model {len(model.inbox)}")
        result.add("db_rows_different", abs(inbox - len(model.inbox)))

    # Events: at least once on the topic, exactly the expected set by id.
    records = await read_topic(stack.bootstrap, stack.topics.events)
    events, conflicts = distinct_by_id(records)
    expected = model.expected_event_ids()
    lost = expected.keys() - events.keys()
    extra = events.keys() - expected.keys()
    result.add("events_published", len(records))
    result.add("events_distinct", len(events))
    result.add("events_resent_copies", len(records) - len(events))
    result.add("lost", len(lost))
    result.add("duplicated_effects", len(extra) + conflicts)
    for event_id in sorted(lost)[:5]:
        result.problem(f"event {expected[event_id]} ({event_id}) never published")
    for event_id in sorted(extra)[:5]:
        result.problem(f"unexpected event {event_id}: {events[event_id][:300]!r}")
    if conflicts:
        result.problem(f"{conflicts} event ids published with different contents")
    results_per_command: dict[str, int] = {}
    for value in events.values():
        event = json.loads(value)
        command_id = event["data"].get("command_id")
        results_per_command[command_id] = results_per_command.get(command_id, 0) + 1
        want = model.results.get(command_id)
        if want is None:
            continue
        reason = event["data"].get("reason_code")
        if (event["type"], reason) != (want.type, want.reason_code):
            result.add("wrong_results", 1)
            result.problem(
                f"command {command_id}: got {event['type']} {reason}, "
                f"expected {want.type} {want.reason_code}"
            )
    # A re-confirmation (command_id null) answers no command.
    multiple = [c for c, n in results_per_command.items() if n > 1 and c is not None]
    without = [c for c in model.results if c not in results_per_command]
    result.add("commands", len(model.results))
    result.add("commands_with_more_than_one_result", len(multiple))
    result.add("commands_without_result", len(without))
    for command_id in multiple[:3]:
        result.problem(f"command {command_id} has {results_per_command[command_id]} results")

    # Prompts: one prompt id per vaccination, re-sent copies identical.
    prompt_records = await read_topic(stack.bootstrap, stack.topics.prompts)
    prompts, prompt_conflicts = distinct_by_id(prompt_records)
    expected_prompts = model.expected_prompt_event_ids()
    prompt_ids: dict[str, set[str]] = {}
    for value in prompts.values():
        data = json.loads(value)["data"]
        prompt_ids.setdefault(data["vaccination_id"], set()).add(data["prompt_id"])
    result.add("prompts_published", len(prompt_records))
    result.add("prompts_distinct", len(prompts))
    result.add("lost", len(expected_prompts.keys() - prompts.keys()))
    result.add("duplicated_effects", len(prompts.keys() - expected_prompts.keys()))
    result.add("duplicated_effects", prompt_conflicts)
    bad = {
        vid: ids
        for vid, ids in prompt_ids.items()
        if ids != {prompt_id_for(vid)} or vid not in model.prompts
    }
    result.add("vaccinations_without_exactly_one_prompt_id", len(bad))
    for vid in sorted(set(model.prompts) - set(prompt_ids))[:3]:
        result.problem(f"vaccination {vid} got no prompt")
    for vid, ids in list(bad.items())[:3]:
        result.problem(f"vaccination {vid} got prompt ids {ids}")
    if prompt_conflicts:
        result.problem(f"{prompt_conflicts} prompts re-sent with different contents")
    return result


def zero_problem_figures(result: Reconciliation) -> dict[str, int]:
    """The figures that must all be zero."""
    names = (
        "lost",
        "duplicated_effects",
        "db_rows_different",
        "wrong_results",
        "commands_with_more_than_one_result",
        "commands_without_result",
        "vaccinations_without_exactly_one_prompt_id",
    )
    return {name: result.figures.get(name, 0) for name in names}


EVENT_TYPES = (
    messages.ADDED,
    messages.UPDATED,
    messages.REMOVED,
    messages.REJECTED,
    messages.CONFIRMED,
)
