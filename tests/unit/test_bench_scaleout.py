"""The scale-out benchmark's arithmetic: the CPU meter and the projection model."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.infra import CpuMeter
from bench.scaleout import model

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"


def test_cpu_meter_counts_children_that_end_in_the_window() -> None:
    # As PostgreSQL's autovacuum workers: children of the measured root, each ending
    # (and reaped by it) before the window closes.
    script = (
        "import subprocess, sys, time\n"
        "sys.stdin.readline()\n"
        f"for _ in range(2): subprocess.run([sys.executable, '-c', {BURN!r}])\n"
        "print('done', flush=True)\n"
        "time.sleep(60)\n"
    )
    root = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        meter = CpuMeter({"tree": [root.pid]})
        time.sleep(0.2)  # the root's own start-up stays outside the window
        meter.start()
        assert root.stdin is not None and root.stdout is not None
        root.stdin.write("go\n")
        root.stdin.flush()
        assert root.stdout.readline().strip() == "done"
        meter.stop()
    finally:
        root.kill()
        root.wait()
    assert 0.75 <= meter.cpu_seconds["tree"] <= 2.0
    assert meter.ended_seconds["tree"] >= 0.75
    assert meter.wall > 0


COSTS = model.Costs(
    service=120.0,  # CPU-us per inbound record
    postgresql=90.0,
    kafka=60.0,
    outputs_per_record=0.8,
    relay_per_row=20.0,
    relay_rows_per_s=30_000.0,
)


def test_costs_split_the_service_into_apply_and_relay() -> None:
    assert COSTS.relay == pytest.approx(16.0)
    assert COSTS.apply == pytest.approx(104.0)
    assert COSTS.per_record == pytest.approx(270.0)


def test_few_cores_are_bound_by_the_machine() -> None:
    found = model.project(COSTS, cores=4, partitions=6)
    assert found.limit == "machine"
    assert found.rate == round(4e6 / 270)


def test_the_partitions_bind_the_busiest_process_then_the_relay() -> None:
    six = model.project(COSTS, cores=16, partitions=6)
    assert six.processes == 6
    assert six.limit == "busiest process (partitions: 6)"
    assert six.rate == round(1e6 / (104 / 6 + 16))
    more = model.project(COSTS, cores=16, partitions=24)
    assert more.limit == "relay rounds"
    assert more.rate == round(30_000 / 0.8)
    sharded = model.project(COSTS, cores=16, partitions=24, shards=4)
    assert sharded.limit == "machine"
    assert sharded.rate > more.rate


def test_the_busiest_process_takes_the_rounded_up_share() -> None:
    # 6 partitions over 4 processes: two hold 2 partitions, a third of the records.
    found = model.ceilings(COSTS, cores=64, processes=4, partitions=6)
    assert found["busiest process"] == pytest.approx(1e6 / (104 / 3 + 16))
