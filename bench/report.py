"""The one results table (figure, value, limit/target, ratio, verdict) and its JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    target: str = ""
    ratio: float | None = None
    verdict: str = "info"  # PASS | FAIL | info


def rate(value: float, unit: str = "rec/s") -> str:
    return f"{value:,.0f} {unit}"


def millis(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "not received" if math.isinf(value) else f"{value:,.1f} ms"


def check(figure: str, value: str, target: str, ratio: float | None, ok: bool | None) -> Row:
    verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
    return Row(figure, value, target, None if ratio is None else round(ratio, 2), verdict)


def render(rows: list[Row]) -> str:
    header = ("figure", "value", "limit / target", "ratio", "verdict")
    cells = [
        (r.figure, r.value, r.target, "" if r.ratio is None else f"{r.ratio:.2f}", r.verdict)
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(c) for c in cells)])


def render_facts(facts: dict[str, Any]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**payload, "table": [asdict(r) for r in rows]}
    path.write_text(json.dumps(_finite(document), indent=2, ensure_ascii=False) + "\n")
