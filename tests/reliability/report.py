"""The reliability suite's figures: collected while it runs, saved as JSON, rendered into
RELIABILITY.md.

    .venv/bin/pytest tests/reliability            # writes .run/reliability/results.json
    .venv/bin/python -m tests.reliability.report  # rewrites the figures in RELIABILITY.md

Each run also keeps `results-<scale>.json`; the document holds one section per scale,
between `<!-- reliability:<scale>:begin -->` and `<!-- reliability:<scale>:end -->`, and
only the section of the run's scale is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS_FILE = REPO / ".run" / "reliability" / "results.json"
DOCUMENT = REPO / "RELIABILITY.md"


def markers(scale: str) -> tuple[str, str]:
    return f"<!-- reliability:{scale}:begin -->", f"<!-- reliability:{scale}:end -->"


SUMMARY = (
    ("inputs", "inputs sent"),
    ("faults", "faults injected"),
    ("bad_inputs", "bad inputs tried"),
    ("lost", "lost"),
    ("duplicated_effects", "duplicated effects"),
    ("stuck_partitions", "stuck partitions"),
    ("personnummer_found", "personnummer found"),
    ("names_and_reference_codes_found", "names and reference codes found"),
)
ORDER = (
    "crash",
    "broker_restart",
    "database_outage",
    "export_crash",
    "export_rebalance",
    "relay_refused_row",
    "relay_frozen_leader",
    "relay_broker_restart",
    "long_run",
    "bad_input",
    "record_size_limit",
    "handler_properties",
    "decoder_properties",
    "allowlist",
    "security_configuration",
    "tokens",
    "kafka_acls",
    "audit_tamper",
    "log_scan",
)


TrustRow = tuple[str, int, int, int]  # what was tried, tried, refused or detected, got through
# table, kept for, rows written, most rows at once, rows at the end, largest kB after a
# week, kB at the end
PrunedRow = tuple[str, str, int, int, int, int, int]


class Results:
    """Figures per check, written to RESULTS_FILE when the session ends."""

    def __init__(self, scale: str) -> None:
        self.scale = scale
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.checks: dict[str, dict[str, Any]] = {}
        self.infrastructure = ""

    def record(
        self,
        check: str,
        title: str,
        *,
        summary: dict[str, int],
        counted: bool = True,
        trust: list[TrustRow] | None = None,
        pruned: list[PrunedRow] | None = None,
        **details: Any,
    ) -> None:
        """`counted=False`: the check's inputs are part of another check's, so the totals
        leave them out. `trust`: rows of the security table (what was tried, how often,
        how often it was refused or detected, how often it got through). `pruned`: rows
        of the table of the pruned tables' sizes over a long run."""
        unknown = set(summary) - {name for name, _ in SUMMARY}
        if unknown:
            raise ValueError(f"unknown summary figures {unknown}")
        entry = self.checks.setdefault(check, {"outcome": "running"})
        # Several tests may add to one check: figures add up, details merge.
        total = dict(entry.get("summary", {}))
        for name, value in summary.items():
            total[name] = total.get(name, 0) + value
        entry.update(
            title=title,
            summary=total,
            counted=counted,
            details={**entry.get("details", {}), **details},
            trust=[*entry.get("trust", []), *(list(row) for row in trust or [])],
            pruned=[*entry.get("pruned", []), *(list(row) for row in pruned or [])],
        )

    def outcome(self, check: str, outcome: str, seconds: float) -> None:
        entry = self.checks.setdefault(check, {})
        entry["outcome"] = outcome
        entry["seconds"] = round(seconds, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "duration_seconds": round(time.monotonic() - self.started, 1),
            "infrastructure": self.infrastructure,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(terse=True),
            },
            "checks": self.checks,
        }

    def save(self, path: Path = RESULTS_FILE) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2, default=str) + "\n"
        path.write_text(text)
        path.with_name(f"{path.stem}-{self.scale}{path.suffix}").write_text(text)
        return path


def _ordered(checks: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(checks.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0]))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def render(results: dict[str, Any]) -> str:
    """The Markdown section with the figures of one run."""
    checks = _ordered(results["checks"])
    lines = [
        f"Run of {results['started_at']} (scale `{results['scale']}`), "
        f"{results['duration_seconds']:.0f} s in all, on {results['machine']['cpus']} CPUs, "
        f"Python {results['machine']['python']}; {results['infrastructure']}.",
        "",
        "| check | outcome | " + " | ".join(label for _, label in SUMMARY) + " | seconds |",
        "|---|---|" + "---:|" * (len(SUMMARY) + 1),
    ]
    totals = dict.fromkeys((name for name, _ in SUMMARY), 0)
    for name, entry in checks:
        summary = entry.get("summary", {})
        counted = entry.get("counted", True)
        for key in totals:
            totals[key] += int(summary.get(key, 0)) if counted else 0
        cells = [str(summary.get(key, 0)) for key, _ in SUMMARY]
        title = entry.get("title", name) + ("" if counted else " ¹")
        lines.append(
            f"| {title} | {entry.get('outcome', '?')} | "
            + " | ".join(cells)
            + f" | {entry.get('seconds', '')} |"
        )
    lines.append(
        "| **total** | | " + " | ".join(f"**{totals[key]}**" for key, _ in SUMMARY) + " | |"
    )
    if any(not entry.get("counted", True) for _, entry in checks):
        lines += ["", "¹ its inputs are part of the check above it; not added to the totals."]
    trust = [row for _, entry in checks for row in entry.get("trust", [])]
    if trust:
        lines += [
            "",
            "Security, tried from outside (measured by the suite):",
            "",
            "| what was tried | tried | refused or detected | got through |",
            "|---|---:|---:|---:|",
            *(
                f"| {what} | {tried} | {refused} | {through} |"
                for what, tried, refused, through in trust
            ),
        ]
    pruned = [row for _, entry in checks for row in entry.get("pruned", [])]
    if pruned:
        lines += [
            "",
            "The pruned tables over the long run (measured by the suite; sizes are "
            "`pg_total_relation_size`, indexes and TOAST included):",
            "",
            "| table | kept for | rows written | most rows at once | rows at the end "
            "| largest size after a week | size at the end |",
            "|---|---|---:|---:|---:|---:|---:|",
            *(
                f"| `{table}` | {kept} | {written} | {most} | {end} | {largest} kB | {size} kB |"
                for table, kept, written, most, end, largest, size in pruned
            ),
        ]
    lines += ["", "Details per check (measured by the suite):", ""]
    for name, entry in checks:
        details = entry.get("details", {})
        if not details:
            continue
        lines.append(
            f"- **{entry.get('title', name)}**: "
            + "; ".join(
                f"{key.replace('_', ' ')}: {_cell(value)}" for key, value in details.items()
            )
        )
    return "\n".join(lines)


def write_document(results: dict[str, Any], document: Path = DOCUMENT) -> None:
    begin, end = markers(results["scale"])
    text = document.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{document} has no {begin} … {end} section")
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(end, 1)
    document.write_text(f"{head}{begin}\n{render(results)}\n{end}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--results", type=Path, default=RESULTS_FILE, help="default: the latest run's"
    )
    parser.add_argument("--document", type=Path, default=DOCUMENT)
    parser.add_argument("--print", action="store_true", help="print, do not write")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results} not found: run the suite first", file=sys.stderr)
        return 1
    results = json.loads(args.results.read_text())
    failed = [n for n, e in results["checks"].items() if e.get("outcome") != "passed"]
    missing = [n for n in ORDER if n not in results["checks"]]
    if (failed or missing) and not args.print:
        print(
            f"not writing figures of a run with failed {failed} or missing {missing} checks",
            file=sys.stderr,
        )
        return 1
    if args.print:
        print(render(results))
    else:
        write_document(results, args.document)
        print(f"figures of {results['started_at']} written to {args.document}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
