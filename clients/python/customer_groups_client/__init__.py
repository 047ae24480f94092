"""Typed asyncio client for the customer groups (kundgrupper) service's message
contract: see README.md next to this package and docs/integration-guide.md."""

from customer_groups_client.client import UNCHANGED, CustomerGroupsClient
from customer_groups_client.config import KafkaConfig, Topics
from customer_groups_client.correlation import Correlator
from customer_groups_client.envelope import (
    CONTENT_TYPE,
    Event,
    InvalidEvent,
    build_event,
    decode,
    encode,
    new_event_id,
    record_key,
)
from customer_groups_client.http import HttpError, fetch_catalog, fetch_prompt
from customer_groups_client.models import (
    Actor,
    Catalog,
    CommandRejected,
    Confirmation,
    Group,
    Membership,
    Outcome,
    OutcomeTimeout,
    Prompt,
    Rejection,
    RequestedGroup,
    Subgroup,
    Suggestion,
    Vaccine,
)

__all__ = [
    "CONTENT_TYPE",
    "UNCHANGED",
    "Actor",
    "Catalog",
    "CommandRejected",
    "Confirmation",
    "Correlator",
    "CustomerGroupsClient",
    "Event",
    "Group",
    "HttpError",
    "InvalidEvent",
    "KafkaConfig",
    "Membership",
    "Outcome",
    "OutcomeTimeout",
    "Prompt",
    "Rejection",
    "RequestedGroup",
    "Subgroup",
    "Suggestion",
    "Topics",
    "Vaccine",
    "build_event",
    "decode",
    "encode",
    "fetch_catalog",
    "fetch_prompt",
    "new_event_id",
    "record_key",
]
