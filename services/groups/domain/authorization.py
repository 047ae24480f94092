"""Which units may act on customer groups (the allowlist, checked before anything else)."""

from __future__ import annotations

from dataclasses import dataclass

from services.groups.domain.errors import Unauthorized

# Fixed, so a refusal tells an unknown sender nothing about any patient.
UNAUTHORIZED_MESSAGE = "The unit is not allowed to act on customer groups"


@dataclass(frozen=True)
class Authorization:
    """Units allowed to send commands, starts and registrations; None means open (set
    on purpose with `*`, or dev mode)."""

    allowed_units: frozenset[str] | None

    def allows(self, unit_id: str) -> bool:
        return self.allowed_units is None or unit_id in self.allowed_units

    def check(self, unit_id: str) -> None:
        if not self.allows(unit_id):
            raise Unauthorized(UNAUTHORIZED_MESSAGE)
