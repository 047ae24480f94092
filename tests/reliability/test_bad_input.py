"""Bad input: malformed and hostile records interleaved with valid ones on every inbound
topic, through the groups service running as its own process.

Every valid record is processed (the reconciliation against the model), every bad one
is either in the dead-letter topic with its original key and bytes and the expected
error code, or answered by `command_rejected` with the expected reason; no partition is
left behind and the service never restarts.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import date

from aiokafka.structs import RecordMetadata

from services.groups.domain.catalog import Catalog
from tests.reliability.badinput import Bad, BadInputGenerator, mix_into_waves
from tests.reliability.checks import reconcile, zero_problem_figures
from tests.reliability.conftest import Check, Scale
from tests.reliability.harness import (
    Stack,
    StreamProducer,
    caught_up,
    failed_batches,
    gate,
    read_topic,
    settle,
    wait_until,
)
from tests.reliability.model import (
    ALLOWED_UNITS,
    ROLES,
    Input,
    StreamGenerator,
    StreamSpec,
    inputs_by_role,
)

LIMIT = 64 * 1024
TIMEOUT = 300.0


async def test_bad_input_is_dead_lettered_or_rejected_and_valid_input_processed(
    stack: Stack, scale: Scale, catalog: Catalog, today: date, check: Check
) -> None:
    seed = 5005
    spec = StreamSpec(
        seed=seed,
        customers=scale.bad_valid_customers,
        inputs=scale.bad_valid_customers * 15,
        waves=2,
    )
    stream = StreamGenerator(spec, catalog, today).generate()
    generator = BadInputGenerator(
        stream.model, seed, stream.personnummer, today=today, max_bytes=LIMIT
    )
    bad = generator.generate(scale.bad_per_topic, ROLES)
    waves, inbox_after = mix_into_waves(stream, bad, random.Random(seed))

    groups = await stack.start_groups(
        {"GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS), "KAFKA_MAX_MESSAGE_BYTES": str(LIMIT)}
    )
    pid = groups.pid
    started = time.monotonic()
    sent: dict[int, RecordMetadata] = {}
    async with StreamProducer(stack.bootstrap) as producer:
        for wave, expected in zip(waves, inbox_after, strict=True):
            metas = await producer.send_inputs(stack, wave)
            sent.update((id(i), meta) for i, meta in zip(wave, metas, strict=True))
            await gate(stack, expected)

    dead = [b for b in bad if b.expect == "dlq"]

    async def dead_lettered() -> bool:
        return len(await stack.rows("SELECT id FROM dead_letters")) >= len(dead)

    await settle(stack, inbox_after[-1])
    await wait_until(dead_lettered, timeout=TIMEOUT, what="every bad record dead-lettered")
    await settle(stack, inbox_after[-1])
    lag = await caught_up(stack, stack.groups_group, stack.topics.inbound)
    elapsed = time.monotonic() - started

    reconciliation = await reconcile(stack, stream.model, dead_letters=len(dead))
    dlq_problems, dlq_wrong, matched = await check_dead_letters(stack, dead, sent)
    failed = failed_batches(groups.log_path)
    zero = zero_problem_figures(reconciliation)
    all_inputs: list[Input] = [i for wave in waves for i in wave]
    outcomes = Counter(b.expect for b in bad)
    check.record(
        "bad_input",
        "Bad input on every inbound topic",
        summary={
            "inputs": len(all_inputs),
            "faults": 0,
            "bad_inputs": len(bad),
            "lost": zero["lost"] + dlq_problems["missing"],
            "duplicated_effects": zero["duplicated_effects"] + dlq_problems["unexpected"],
            "stuck_partitions": sum(1 for v in lag.values() if v),
        },
        inputs_by_topic=inputs_by_role(all_inputs),
        bad_by_topic=inputs_by_role([b.input for b in bad]),
        bad_outcomes=dict(outcomes),
        dead_letter_codes={
            k: v for k, v in sorted(Counter(b.code for b in bad if b.expect == "dlq").items())
        },
        rejection_reasons={
            k: v for k, v in sorted(Counter(b.code for b in bad if b.expect == "rejected").items())
        },
        kinds_of_bad_input=len({b.kind for b in bad}),
        dead_letters_with_original_bytes=dlq_problems["matched"],
        dead_letters_wrong=dlq_problems["wrong"],
        batches_replayed_after_an_error=failed,
        service_restarts=groups.starts - 1,
        wall_seconds=round(elapsed, 1),
    )

    sizes = [b for b in bad if "size limit" in b.kind or b.kind == "oversize payload"]
    check.record(
        "record_size_limit",
        f"Input size limit (KAFKA_MAX_MESSAGE_BYTES={LIMIT})",
        counted=False,
        summary={
            "inputs": len(sizes),
            "bad_inputs": sum(1 for b in sizes if b.expect == "dlq"),
            "lost": sum(1 for b in sizes if b.expect == "dlq" and id(b.input) not in matched),
        },
        records_just_under_the_limit_processed=sum(1 for b in sizes if b.expect == "processed"),
        records_over_the_limit_dead_lettered_RECORD_TOO_LARGE_with_original_bytes=sum(
            1 for b in sizes if b.expect == "dlq"
        ),
        largest_record_bytes=max(len(b.input.value or b"") for b in sizes),
    )
    assert not dlq_wrong, "\n".join(dlq_wrong[:30])
    assert reconciliation.problems == [], "\n".join(reconciliation.problems)
    assert not any(zero.values()), zero
    assert dlq_problems["matched"] == len(dead), dlq_problems
    assert dlq_problems["missing"] == dlq_problems["wrong"] == dlq_problems["unexpected"] == 0
    assert groups.running() and groups.pid == pid and groups.starts == 1
    assert failed == 0, f"{failed} batches failed and were replayed record by record"


async def check_dead_letters(
    stack: Stack, dead: list[Bad], sent: dict[int, RecordMetadata]
) -> tuple[dict[str, int], list[str], set[int]]:
    """Each expected dead letter at its source position, with its original key and bytes
    and the expected error code; nothing else in the dead-letter topic."""
    records = await read_topic(stack.bootstrap, stack.topics.dlq)
    found: dict[tuple[str, int, int], tuple[bytes | None, bytes | None, str]] = {}
    for record in records:
        headers = {name: value.decode() for name, value in record.headers}
        position = (
            headers["dlq-source-topic"],
            int(headers["dlq-source-partition"]),
            int(headers["dlq-source-offset"]),
        )
        found[position] = (record.key, record.value, headers["dlq-error-code"])
    result = {"matched": 0, "missing": 0, "wrong": 0, "unexpected": 0}
    wrong: list[str] = []
    matched: set[int] = set()
    expected_positions = set()
    for item in dead:
        meta = sent[id(item.input)]
        position = (meta.topic, meta.partition, meta.offset)
        expected_positions.add(position)
        if position not in found:
            result["missing"] += 1
            wrong.append(f"missing: {item.kind} ({item.code})")
            continue
        key, value, code = found[position]
        if (key, value, code) != (item.input.key, item.input.value, item.code):
            result["wrong"] += 1
            wrong.append(f"{item.kind}: got {code}, expected {item.code}")
        else:
            result["matched"] += 1
            matched.add(id(item.input))
    result["unexpected"] = len(set(found) - expected_positions)
    return result, wrong, matched
