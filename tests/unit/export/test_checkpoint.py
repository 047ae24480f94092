"""The backfill checkpoint: its phases, its file, and what it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.export.adapters.checkpoint import FileCheckpointStore
from services.export.domain.checkpoint import Checkpoint, Phase

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_phases_run_main_then_catch_up_then_complete() -> None:
    checkpoint = Checkpoint(topic="t", started_at=START)
    checkpoint = checkpoint.after_chunk("memberships", "k-2", 2).after_chunk(
        "memberships", "k-4", 2
    )
    assert checkpoint.done == {"memberships": "k-4"} and checkpoint.published == 4
    checkpoint = checkpoint.next_phase()
    assert (checkpoint.phase, checkpoint.done, checkpoint.published) == (Phase.CATCH_UP, {}, 4)
    assert checkpoint.next_phase().phase is Phase.COMPLETE


def test_file_round_trip_leaves_no_partial_file(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path / "cp" / "backfill.json")
    assert store.load() is None
    checkpoint = Checkpoint(topic="t", started_at=START).after_chunk("memberships", "k", 1)
    store.save(checkpoint)
    store.save(checkpoint.next_phase())
    assert store.load() == checkpoint.next_phase()
    assert [p.name for p in (tmp_path / "cp").iterdir()] == ["backfill.json"]


@pytest.mark.parametrize(
    "text",
    [
        "not json at all",
        json.dumps({"format": 99, "topic": "t", "started_at": START.isoformat(), "phase": "main"}),
        json.dumps({"format": 1, "topic": "t", "started_at": "2026-11-26T09:00", "phase": "main"}),
        json.dumps({"format": 1, "topic": "t", "started_at": START.isoformat(), "phase": "?"}),
        json.dumps({"format": 1, "topic": "t", "started_at": START.isoformat(), "phase": "main",
                    "done": {"memberships": 7}}),
    ],
)  # fmt: skip
def test_a_file_that_is_no_checkpoint_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "backfill.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="not a backfill checkpoint"):
        FileCheckpointStore(path).load()
