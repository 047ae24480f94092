"""The garbage collector, set for a long-running consumer once it has started.

Under load, full (generation 2) collections paused the event loop and young ones ran
hundreds of times a second, and every record in flight waited those pauses out
(BENCHMARKS.md, fix 6). Freezing what start-up allocated (modules, SQLAlchemy and pydantic models,
the catalog) takes it out of every later collection, and a larger first threshold
lets batches' short-lived objects die between fewer, larger young collections.
"""

from __future__ import annotations

import gc

# Allocations before a young collection (Python's default: 700).
YOUNG_THRESHOLD = 20_000


async def settle_after_start() -> None:
    """A start-up hook of the service processes (not of services run inside tests)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
