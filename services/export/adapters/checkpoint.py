"""Where a backfill records how far it got: a small JSON file, replaced atomically.

Written only after the broker acknowledged every record up to the key it names, so a
crash at any moment resumes at or before the first record not yet acknowledged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.export.domain.checkpoint import Checkpoint


class FileCheckpointStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return Checkpoint.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.path}: not a backfill checkpoint ({error})") from None

    def save(self, checkpoint: Checkpoint) -> None:
        # Write aside, fsync, rename: a crash leaves the old file or the new one, never half.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w", encoding="utf-8") as file:
            json.dump(checkpoint.to_dict(), file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, self.path)


class MemoryCheckpointStore:
    """No --checkpoint given: progress lives as long as the run."""

    def __init__(self) -> None:
        self.checkpoint: Checkpoint | None = None

    def load(self) -> Checkpoint | None:
        return self.checkpoint

    def save(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
