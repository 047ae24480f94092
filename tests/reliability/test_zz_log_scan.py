"""Every log line the suite's service processes wrote, scanned for personal data: the
personnummer, and the names and reference codes the stream sent.

Runs last (by name), so it sees the logs of every fault test of the session; it first
runs a small stream of its own (with personnummer in keys, in payloads, in invalid and
rejected input) through both services so there is always something to scan.

The scan is independent of the services' own redaction (services/common/logs.py): any
10- or 12-digit run, with or without a `-`/`+` before the last four digits, whose last
10 digits pass the Luhn check counts. UUIDs and long hex digests are blanked first (a
UUID's last group can be 12 decimal digits by chance).
"""

from __future__ import annotations

import json
import re
from datetime import date

from services.groups.domain.catalog import Catalog
from tests.reliability.badinput import BadInputGenerator
from tests.reliability.conftest import Check
from tests.reliability.exportcheck import compare_export
from tests.reliability.harness import (
    LOG_DIR,
    Stack,
    StreamProducer,
    caught_up,
    gate,
    read_topic,
    settle,
)
from tests.reliability.model import ROLES, StreamGenerator, StreamSpec

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{16,}(?![0-9A-Za-z])")
_CANDIDATE = re.compile(r"(?<!\d)(\d{6}|\d{8})[-+]?(\d{4})(?!\d)")


def _luhn(digits: str) -> bool:
    """Textbook Luhn over the whole string (weights 2, 1, 2, … from the left of 10)."""
    total = 0
    for index, char in enumerate(digits):
        product = int(char) * (2 if index % 2 == 0 else 1)
        total += product // 10 + product % 10
    return total % 10 == 0


def personnummer_in(text: str) -> list[str]:
    blanked = _HEX.sub(" ", _UUID.sub(" ", text))
    return [
        m.group(0) for m in _CANDIDATE.finditer(blanked) if _luhn((m.group(1) + m.group(2))[-10:])
    ]


# Shorter names and codes ("Li", "X") would match ordinary words in log lines.
_MIN_FREE_TEXT = 4


def personal_strings(values: list[bytes | None]) -> set[str]:
    """The names and reference codes in the inputs' payloads: free text about a patient."""
    found: set[str] = set()
    for value in values:
        try:
            data = json.loads(value or b"null").get("data")
        except (ValueError, AttributeError, RecursionError):  # the bad inputs among them
            continue
        if not isinstance(data, dict):
            continue
        customer = data.get("customer") if isinstance(data.get("customer"), dict) else {}
        for text in (
            customer.get("first_name"),
            customer.get("last_name"),
            data.get("reference_code"),
        ):
            if isinstance(text, str) and len(text) >= _MIN_FREE_TEXT:
                found.add(text)
    return found


def free_text_in(text: str, strings: set[str]) -> list[str]:
    return [s for s in strings if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text)]


def test_the_scanner_finds_what_it_must() -> None:
    for form in ("191212121212", "19121212-1212", "121212-1212", "1212121212", "121212+1212"):
        assert personnummer_in(f'{{"msg": "key={form}"}}') == [form], form
    assert personnummer_in("191212121213 and 1912121212120 and <personnummer>") == []
    assert personnummer_in("consumer 123e4567-e89b-12d3-a456-426614174000") == []
    strings = {"Björn", "REF-123456"}
    assert set(free_text_in('{"msg": "name Björn, code REF-123456"}', strings)) == strings
    assert free_text_in('{"msg": "Björnsson REF-1234567"}', strings) == []


async def test_no_personnummer_in_any_service_log(
    stack: Stack, catalog: Catalog, today: date, check: Check
) -> None:
    spec = StreamSpec(seed=5009, customers=20, inputs=300, waves=2, allowed_units=None)
    stream = StreamGenerator(spec, catalog, today).generate()
    bad = BadInputGenerator(stream.model, 5009, stream.personnummer, today=today, max_bytes=65536)
    noise = bad.generate(60, ROLES)
    await stack.start_groups({"KAFKA_MAX_MESSAGE_BYTES": "65536"})
    await stack.start_export()
    async with StreamProducer(stack.bootstrap) as producer:
        for number, wave in enumerate(stream.waves):
            extra = [b.input for b in noise[number :: len(stream.waves)]]
            await producer.send_inputs(stack, [*wave, *extra])
            await gate(stack, stream.inbox_after_wave[number])
    await settle(stack, len(stream.model.inbox))
    await caught_up(stack, stack.export_group, [stack.topics.events])
    exported = await compare_export(stack, stream.personnummer)
    export_hits = [
        hit
        for r in await read_topic(stack.bootstrap, stack.topics.export)
        for hit in personnummer_in((r.key or b"").decode() + " " + (r.value or b"").decode())
    ]

    free_text = personal_strings([i.value for i in [*stream.inputs, *(b.input for b in noise)]])
    assert {"Andersson", "Björn"} <= free_text and any(t.startswith("REF-") for t in free_text)
    files = sorted(LOG_DIR.rglob("*.log"))
    lines = 0
    found: list[tuple[str, str]] = []
    free_text_found: list[tuple[str, str]] = []
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            lines += 1
            for hit in personnummer_in(line):
                found.append((str(path.relative_to(LOG_DIR)), hit))
            for hit in free_text_in(line, free_text):
                free_text_found.append((str(path.relative_to(LOG_DIR)), hit))
    masked = sum(
        path.read_text(encoding="utf-8", errors="replace").count("<personnummer>") for path in files
    )
    check.record(
        "log_scan",
        "Personnummer in service logs and the default export",
        summary={
            "inputs": len(stream.inputs) + len(noise),
            "bad_inputs": len(noise),
            "personnummer_found": len(found) + len(export_hits) + exported.personnummer_found,
            "names_and_reference_codes_found": len(free_text_found),
        },
        log_files_scanned=len(files),
        log_lines_scanned=lines,
        trust=[
            (
                "service log lines scanned for personal data (personnummer, names, "
                "reference codes); a clean line counts as refused",
                lines,
                lines - len(found) - len(free_text_found),
                len(found) + len(free_text_found),
            )
        ],
        personnummer_in_logs=len(found),
        free_text_strings_sought=len(free_text),
        names_and_reference_codes_in_logs=len(free_text_found),
        masked_by_the_services_redaction=masked,
        export_records_scanned=exported.records_on_topic,
        personnummer_in_export=len(export_hits) + exported.personnummer_found,
    )
    assert lines > 0 and len(files) >= 2
    assert found == [], json.dumps(found[:10])
    assert free_text_found == [], json.dumps(free_text_found[:10], ensure_ascii=False)
    assert export_hits == [] and exported.personnummer_found == 0
