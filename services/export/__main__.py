"""`python -m services.export`: the export service, or a backfill / snapshot (see cli.py)."""

from __future__ import annotations

from services.export.entrypoints.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
