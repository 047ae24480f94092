"""The one check that an id is a canonical UUID string, for the domain and the layers above it.

Ids stored and compared as text must have one spelling per UUID, so only the canonical
form (lower-case, hyphenated, no braces or `urn:uuid:`) is accepted.
"""

from __future__ import annotations

import uuid


def is_canonical_uuid(value: str) -> bool:
    """True when `value` is a UUID written exactly as `str(uuid.UUID(value))` writes it."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
