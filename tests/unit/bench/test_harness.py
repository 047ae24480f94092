"""The benchmark's own logic: its options, the comparison's mix and table, the steady
state and the saturation rule. (The measurements themselves run in `python -m bench`.)"""

from __future__ import annotations

import argparse
import math

import pytest

from bench.__main__ import PHASES, parse, parse_loads, parse_phases
from bench.groups import LatencyResult, LatencySeries, ThroughputResult, saturated, steady_rate
from bench.versus import GROUPS, PLAIN, ServiceFigures, rows
from bench.workload import _SEED_COLUMNS, SEED_TABLES, VERSUS_MIX, Workload


def test_loads_are_sorted_unique_and_positive() -> None:
    assert parse_loads("200,20, 200") == (20, 200)
    for bad in ("", "0,20", "x", "20;200"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_loads(bad)


def test_phases_keep_the_runs_order_and_refuse_unknown_ones() -> None:
    assert parse_phases("export,versus") == ("versus", "export")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_phases("versus,plain")
    args = parse(["--quick", "--only", "versus", "--loads", "20,200"])
    assert args.phases == ("versus",) and args.loads == (20, 200)
    defaults = parse([])
    assert defaults.phases == PHASES and defaults.loads is None


def test_the_versus_mix_holds_starts_and_adds_only_each_with_one_output() -> None:
    workload = Workload(2_000)
    mix = workload.mix(3_000, VERSUS_MIX)
    assert set(mix.by_type) == {"vaccination.started", "customer_group.add"}
    assert mix.prompts + mix.events == len(mix.records)
    assert 1.6 < mix.prompts / mix.events < 2.5  # two starts per add
    head = mix.head(100)
    assert head.records == mix.records[:100]
    assert head.prompts == sum(r.kind == "started" for r in head.records)
    assert head.events == 100 - head.prompts
    assert sum(head.by_type.values()) == 100


def test_seed_rows_fit_their_columns() -> None:
    seeded = Workload(10).seed_rows()
    assert set(seeded) == set(SEED_TABLES)
    for table, table_rows in seeded.items():
        assert table_rows, table
        assert {len(row) for row in table_rows} == {len(_SEED_COLUMNS[table])}, table
    assert len(seeded["memberships"]) == 15  # one active each, a historical for half


def test_steady_rate_spans_the_middle_eighty_percent() -> None:
    marks = {100: 1.0, 900: 3.0}
    assert steady_rate(marks.get, 1_000) == pytest.approx(400.0)
    assert steady_rate(marks.get, 1_000, scale=1.5) == pytest.approx(600.0)
    assert steady_rate({}.get, 1_000) == 0.0
    assert steady_rate({100: 2.0, 900: 2.0}.get, 1_000) == 0.0


def _latency(load: int, p99: float, *, received: int = 100, p50: float = 5.0) -> LatencyResult:
    return LatencyResult(
        offered_starts_per_s=load, offered_commands_per_s=load // 2, seconds=3.0, starts=100,
        received=received, achieved_send_rate=float(load), p50_ms=p50, p95_ms=p99 * 0.8,
        p99_ms=p99, max_ms=p99, rejected=0,
    )  # fmt: skip


def _throughput(rate: float, name: str) -> ThroughputResult:
    return ThroughputResult(
        processes=1, records=1_000, complete=True, seconds=1_000 / rate, produce_seconds=0.1,
        rate=rate, steady_rate=rate, lag_after=0, outbox_after=None, rejected=0,
        cpu_cores={name: 0.9}, by_type={}, until="outputs",
    )  # fmt: skip


def test_saturation_is_a_missing_prompt_or_a_median_above_a_second() -> None:
    assert not saturated(_latency(20, 10.0))
    assert saturated(_latency(20, 10.0, received=99))
    assert saturated(_latency(20, 2_000.0, p50=1_500.0))


def test_the_table_sets_each_load_side_by_side_and_checks_the_ratio() -> None:
    figures = {
        GROUPS: ServiceFigures(
            1_000,
            _throughput(5_000.0, "groups service"),
            LatencySeries([_latency(20, 9.0), _latency(200, 30.0), _latency(500, 40.0)]),
        ),
        PLAIN: ServiceFigures(
            1_000,
            _throughput(400.0, "plain service"),
            LatencySeries(
                [_latency(20, 8.0), _latency(200, 5_000.0, p50=4_000.0)], skipped={500: 200}
            ),
        ),
    }
    table = {row.figure: row for row in rows(figures)}
    ratio = table["versus: throughput groups / plain"]
    assert ratio.value == "x 12.5" and ratio.verdict == "PASS"
    assert table["versus: groups, 1,000 starts + adds, 1 process"].value == (
        "5,000 rec/s, 0.90 cores"
    )
    assert table["versus @20 starts/s p50 / p95 / p99, groups"].verdict == "FAIL"  # 9 > 8 ms
    assert table["versus @200 starts/s p50 / p95 / p99, groups"].verdict == "PASS"
    assert table["versus @500 starts/s p50 / p95 / p99, plain"].value == (
        "skipped: saturated at 200 starts/s"
    )
    assert table["versus @500 starts/s p50 / p95 / p99, groups"].verdict == "PASS"
    figures[GROUPS].throughput = _throughput(3_000.0, "groups service")
    assert {r.figure: r for r in rows(figures)}["versus: throughput groups / plain"].verdict == (
        "FAIL"
    )


def test_a_lost_prompt_fails_the_groups_row_even_against_a_saturated_plain_service() -> None:
    figures = {
        GROUPS: ServiceFigures(1, None, LatencySeries([_latency(500, math.inf, received=99)])),
        PLAIN: ServiceFigures(1, None, LatencySeries([], skipped={500: 200})),
    }
    [row] = [r for r in rows(figures) if "groups" in r.figure]
    assert row.verdict == "FAIL"
    assert "(99/100 received)" in row.value
