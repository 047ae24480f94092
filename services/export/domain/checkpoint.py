"""How far a backfill got, as a value: enough to resume it and nothing sensitive.

A run goes through the main pass (every row), then the catch-up pass (rows changed since
the run started), then is complete. `done` holds, per table, the last key whose record
the broker acknowledged in the current pass; the next chunk starts after it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

FORMAT = 1


class Phase(enum.StrEnum):
    MAIN = "main"
    CATCH_UP = "catch_up"
    COMPLETE = "complete"


@dataclass(frozen=True)
class Checkpoint:
    topic: str
    started_at: datetime
    phase: Phase = Phase.MAIN
    done: dict[str, str] = field(default_factory=dict)
    published: int = 0

    def after_chunk(self, table: str, last_key: str, count: int) -> Checkpoint:
        return replace(self, done={**self.done, table: last_key}, published=self.published + count)

    def next_phase(self) -> Checkpoint:
        following = Phase.CATCH_UP if self.phase is Phase.MAIN else Phase.COMPLETE
        return replace(self, phase=following, done={})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "topic": self.topic,
            "started_at": self.started_at.isoformat(),
            "phase": self.phase.value,
            "done": dict(self.done),
            "published": self.published,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {data.get('format')!r}")
        started_at = datetime.fromisoformat(str(data["started_at"]))
        if started_at.tzinfo is None:
            raise ValueError("started_at has no offset")
        done = data.get("done") or {}
        if not isinstance(done, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in done.items()
        ):
            raise ValueError("done must map table names to keys")
        return cls(
            topic=str(data["topic"]),
            started_at=started_at,
            phase=Phase(data["phase"]),
            done=dict(done),
            published=int(data.get("published", 0)),
        )
