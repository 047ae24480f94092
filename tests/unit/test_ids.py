"""Uuid5Namespace gives exactly `str(uuid.uuid5(namespace, name))`."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.common.ids import Uuid5Namespace

NAMESPACE = uuid.UUID("6f1d7a52-1c1e-4b7e-9a57-5d0c6f0b7f01")
IDS = Uuid5Namespace(NAMESPACE)


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_the_same_text_as_uuid5(name: str) -> None:
    assert IDS(name) == str(uuid.uuid5(NAMESPACE, name))
