"""The groups service's HTTP reads a client needs (standard library only):
`GET /prompt` for a prompt missed on the topic, `GET /catalog` for the groups."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from customer_groups_client import envelope
from customer_groups_client.models import Catalog, Group, Prompt


class HttpError(Exception):
    """The service refused: 401 (no valid token), 403 (unit off the allowlist), 400, or
    it is unreachable or failing (`status` 0 or 5xx: try again later)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    if not url.startswith(("http://", "https://")):
        raise ValueError("the service's address must be an http(s) URL")
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())
    except (urllib.error.URLError, OSError) as error:
        raise HttpError(0, f"service unreachable: {type(error).__name__}") from None


def _error(status: int, body: bytes) -> HttpError:
    try:
        detail: Any = json.loads(body)
    except ValueError:
        detail = {}
    message = detail.get("error", "") if isinstance(detail, dict) else ""
    return HttpError(status, str(message)[:200])


async def fetch_prompt(
    base_url: str, vaccination_id: str, *, token: str, timeout: float = 10.0
) -> Prompt | None:
    """The stored prompt of a vaccination started at the token's unit (`GET /prompt`),
    the very event the topic got; None when there is none (unknown, another unit's, or
    the start not applied yet). `token` is the nurse's OIDC access token."""
    query = urllib.parse.urlencode({"vaccination_id": vaccination_id})
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/cloudevents+json"}
    status, body = await asyncio.to_thread(
        _get, f"{base_url.rstrip('/')}/prompt?{query}", headers, timeout
    )
    if status == 404:
        return None
    if status != 200:
        raise _error(status, body)
    return Prompt.from_event(envelope.decode(body))


async def fetch_catalog(base_url: str, *, timeout: float = 10.0) -> Catalog:
    """`GET /catalog`: every group and subgroup with its validity (no token)."""
    status, body = await asyncio.to_thread(
        _get, f"{base_url.rstrip('/')}/catalog", {"Accept": "application/json"}, timeout
    )
    if status != 200:
        raise _error(status, body)
    document = json.loads(body)
    return Catalog(
        str(document["catalog_version"]),
        tuple(Group.from_data(g) for g in document["groups"]),
    )
