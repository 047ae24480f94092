"""What a handler knows besides its message and unit of work: the record's envelope
(event id, time, key) and the service's clock, catalog, allowlist and topics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from services.groups.domain.authorization import Authorization
from services.groups.domain.catalog import Catalog

# The zone of "the day of the dose" (CONTRACT.md), whatever GROUPS_TIMEZONE says.
DOSE_ZONE = ZoneInfo("Europe/Stockholm")


class Clock:
    """Wall clock; `today` is the clinic's local date (Europe/Stockholm)."""

    def __init__(self, timezone: str = "Europe/Stockholm") -> None:
        self._zone = ZoneInfo(timezone)

    def now(self) -> datetime:
        return datetime.now(self._zone)

    def today(self) -> date:
        return self.now().date()


class CatalogHolder:
    """The catalog in force; replaced when the catalog tables change."""

    def __init__(self, catalog: Catalog) -> None:
        self.current = catalog


@dataclass(frozen=True)
class Dependencies:
    """The service's collaborators every handler may use, wired once by bootstrap."""

    clock: Clock
    catalog: CatalogHolder
    authorization: Authorization
    prompts_topic: str
    events_topic: str


@dataclass(frozen=True)
class Context:
    """One inbound record's envelope, as its handler needs it."""

    event_id: str  # the CloudEvent id: a command's id, the seed of deterministic ids
    event_time: datetime | None
    # The record's key as received: a refusal (UNAUTHORIZED) is keyed as the refused
    # record was, since it names no patient.
    key: bytes | None
    deps: Dependencies
