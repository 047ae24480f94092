"""BatchPipeline: batches overlap, yet records of one subject stay in order and offsets
are only handed on in submission order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.common.envelope import CloudEvent
from services.common.records import SourceRecord
from services.groups.service_layer.applier import BatchOutcome
from services.groups.service_layer.commands import Message
from services.groups.service_layer.messagebus import Decoded, DecodedBatch
from services.groups.service_layer.scheduling import BatchPipeline, split


class Probe(Message):
    s: list[str]

    def subjects(self) -> tuple[str, ...]:
        return tuple(self.s)


def item(record: SourceRecord, subjects: Sequence[str]) -> Decoded:
    event = CloudEvent(str(record.offset), "test", "test.event", None, {"s": list(subjects)})
    message = Probe(s=list(subjects))
    return Decoded(record, event, message, message.subjects())


class ControlledProcessor:
    """A record's key is its subject. A part is named by its batch (the records' topic)
    and subjects, e.g. "b:bo+cecilia"; the test decides when a part's apply finishes,
    and sees when it started."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()

    def decode(self, records: Sequence[SourceRecord]) -> DecodedBatch:
        return DecodedBatch([item(r, [r.key.decode()] if r.key else []) for r in records])

    async def apply(self, batch: DecodedBatch) -> BatchOutcome:
        name = f"{batch.items[0].record.topic}:{'+'.join(sorted(batch.subjects))}"
        self.started.append(name)
        await self.release.setdefault(name, asyncio.Event()).wait()
        if name in self.fail:
            raise RuntimeError("a bug")
        return BatchOutcome(processed=len(batch))

    def finish(self, name: str) -> None:
        self.release.setdefault(name, asyncio.Event()).set()


def batch(name: str, *subjects: str) -> list[SourceRecord]:
    return [SourceRecord(name, 0, n, s.encode(), b"{}", ()) for n, s in enumerate(subjects)]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_batches_without_a_common_subject_run_side_by_side() -> None:
    processor = ControlledProcessor()
    pipeline = BatchPipeline(processor, depth=2)
    applied: list[str] = []
    await pipeline.submit(batch("a", "anna"), lambda: applied.append("a"))
    await pipeline.submit(batch("b", "bo"), lambda: applied.append("b"))
    await settle()
    assert processor.started == ["a:anna", "b:bo"]
    processor.finish("b:bo")
    await settle()
    assert applied == [], "b's offsets wait until a is applied"
    processor.finish("a:anna")
    await pipeline.drain()
    assert applied == ["a", "b"]


async def test_records_of_a_subject_in_flight_wait_and_the_others_do_not() -> None:
    processor = ControlledProcessor()
    pipeline = BatchPipeline(processor, depth=2)
    applied: list[str] = []
    await pipeline.submit(batch("a", "anna", "bo"), lambda: applied.append("a"))
    await pipeline.submit(batch("b", "cecilia", "bo"), lambda: applied.append("b"))
    await settle()
    assert processor.started == ["a:anna+bo", "b:cecilia"], "b's bo waits for a"
    processor.finish("b:cecilia")
    processor.finish("a:anna+bo")
    await settle()
    assert processor.started == ["a:anna+bo", "b:cecilia", "b:bo"]
    assert applied == ["a"], "b is applied only once all its parts are"
    processor.finish("b:bo")
    await pipeline.drain()
    assert applied == ["a", "b"]


async def test_no_more_than_depth_batches_are_in_flight() -> None:
    processor = ControlledProcessor()
    pipeline = BatchPipeline(processor, depth=2)
    await pipeline.submit(batch("a", "anna"), lambda: None)
    await pipeline.submit(batch("b", "bo"), lambda: None)
    third = asyncio.create_task(pipeline.submit(batch("c", "cecilia"), lambda: None))
    await settle()
    assert not third.done() and processor.started == ["a:anna", "b:bo"]
    processor.finish("a:anna")
    await third
    await settle()
    assert processor.started == ["a:anna", "b:bo", "c:cecilia"]
    processor.finish("b:bo")
    processor.finish("c:cecilia")
    await pipeline.drain()


async def test_after_a_batch_fails_unexpectedly_nothing_later_is_handed_on() -> None:
    processor = ControlledProcessor()
    processor.fail.add("a:anna+bo")
    failures: list[BaseException] = []
    pipeline = BatchPipeline(processor, depth=2, on_failure=failures.append)
    applied: list[str] = []
    await pipeline.submit(batch("a", "anna", "bo"), lambda: applied.append("a"))
    await pipeline.submit(batch("b", "bo", "cecilia"), lambda: applied.append("b"))
    waiting = asyncio.create_task(pipeline.submit(batch("c", "dan"), lambda: None))
    await settle()
    assert not waiting.done(), "depth 2: c waits for a slot"
    processor.finish("b:cecilia")
    processor.finish("a:anna+bo")
    with pytest.raises(RuntimeError, match="stopped"):
        await asyncio.wait_for(waiting, 1.0)  # raises at once, no spinning
    await pipeline.drain()
    assert applied == []
    assert "b:bo" not in processor.started, "bo's later record never overtakes the failed one"
    assert [type(f) for f in failures] == [RuntimeError]
    with pytest.raises(RuntimeError, match="stopped"):
        await pipeline.submit(batch("d", "erik"), lambda: applied.append("d"))


async def test_a_batch_that_cannot_be_started_stops_the_pipeline() -> None:
    class Exploding(ControlledProcessor):
        def decode(self, records: Sequence[SourceRecord]) -> DecodedBatch:
            raise ValueError("a decoder bug")

    pipeline = BatchPipeline(Exploding(), depth=2)
    with pytest.raises(ValueError):
        await pipeline.submit(batch("a", "anna"), lambda: None)
    with pytest.raises(RuntimeError, match="stopped"):
        await pipeline.submit(batch("b", "bo"), lambda: None)


def decoded(*subject_lists: tuple[str, ...]) -> DecodedBatch:
    """Records (numbered in order) whose data names their subjects."""
    items = [
        item(SourceRecord("t", 0, n, None, b"{}", ()), subjects)
        for n, subjects in enumerate(subject_lists)
    ]
    return DecodedBatch(items)


def offsets(part: DecodedBatch) -> list[int]:
    return [item.record.offset for item in part.items]


def test_a_split_keeps_linked_subjects_together_and_in_order() -> None:
    batch = decoded(
        ("anna",),  # 0
        ("bo", "booking:1"),  # 1
        ("cecilia",),  # 2
        ("booking:1",),  # 3: a cancellation, linked to bo through the booking
        ("anna",),  # 4
        ("dan",),  # 5
    )
    parts = split(batch, 2)
    assert len(parts) == 2
    assert sorted(o for part in parts for o in offsets(part)) == list(range(6))
    by_offset = {o: i for i, part in enumerate(parts) for o in offsets(part)}
    assert by_offset[0] == by_offset[4] and by_offset[1] == by_offset[3]
    for part in parts:
        assert offsets(part) == sorted(offsets(part))
        assert part.subjects == frozenset(s for i in part.items for s in i.event.data["s"])
    assert not parts[0].subjects & parts[1].subjects
    assert sorted(len(part) for part in parts) == [3, 3], "balanced by records"


def test_a_batch_of_one_subject_is_not_split() -> None:
    assert [offsets(p) for p in split(decoded(("anna",), ("anna",), ("anna",)), 2)] == [[0, 1, 2]]


def test_records_linked_to_a_held_subject_form_their_own_part() -> None:
    batch = decoded(("anna",), ("bo", "booking:1"), ("cecilia",), ("booking:1",))
    parts = split(batch, 1, held=lambda subject: subject == "booking:1")
    assert [offsets(p) for p in parts] == [[0, 2], [1, 3]]
