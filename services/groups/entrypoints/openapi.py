"""The OpenAPI 3.1 document of the groups service's HTTP routes (`GET /openapi.json`).

Written by hand because the routes are plain ASGI; a unit test keeps it in step with
`build_routes`.
"""

from __future__ import annotations

from typing import Any

from services.common.envelope import dataschema_for
from services.groups.service_layer import messages

_JSON = "application/json"
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON: {"schema": schema or {"type": "object"}}},
    }


def _refusals() -> dict[str, Any]:
    return {
        "401": {
            "description": "no token, or a token that is not valid (see WWW-Authenticate)",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            "content": {_JSON: {"schema": {"type": "object"}}},
        },
        "403": _json("the token's unit is not on the allowlist (the refusal is audited)"),
    }


_SCHEMAS = "https://schemas.customer-groups.example/v1"
_CATALOG_GROUP_SCHEMA_ID = dataschema_for(messages.CATALOG_GROUP)


def _period(required: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    date = {"type": "string", "format": "date"}
    return {
        "type": "object",
        "required": [*required, "valid_from", "valid_to"],
        "properties": {
            **extra,
            "valid_from": date,
            "valid_to": {**date, "type": ["string", "null"]},
        },
    }


def _catalog_schema() -> dict[str, Any]:
    """The answer of GET /catalog; each group is a `customer_group.catalog_group`'s data
    (schemas/customer_group.catalog_group.schema.json)."""
    text = {"type": "string"}
    subgroup = _period(["subgroup_code", "name"], {"subgroup_code": text, "name": text})
    group = _period(
        ["group_code", "name", "subgroups", "catalog_version"],
        {
            "group_code": text,
            "name": text,
            "subgroups": {"type": "array", "items": subgroup},
            "catalog_version": text,
        },
    )
    group["description"] = f"a customer_group.catalog_group's data ({_CATALOG_GROUP_SCHEMA_ID})"
    return {
        "type": "object",
        "required": ["catalog_version", "groups"],
        "properties": {"catalog_version": text, "groups": {"type": "array", "items": group}},
    }


def _prompt_operation() -> dict[str, Any]:
    """GET /prompt: the stored `customer_group.prompt` CloudEvent of one vaccination."""
    event = {
        "type": "object",
        "description": (
            "the CloudEvent exactly as the topic customer-groups.prompts.v1 got it "
            f"({_SCHEMAS}/envelope.schema.json); its data is a customer_group.prompt "
            f"({_SCHEMAS}/customer_group.prompt.schema.json)"
        ),
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string"},
            "type": {"const": "customer_group.prompt"},
            "data": {"type": "object"},
        },
    }
    return {
        "get": {
            "summary": "the prompt of a vaccination started at the caller's unit",
            "description": (
                "For a client that missed the prompt on the topic (late, or the client was "
                "away): the very event the topic got (same CloudEvent id, prompt_id and data, "
                "the state when the vaccination was first started), also after the popup "
                "was closed. Only the unit that started the vaccination (the prompt's "
                "unit_id) reads it: for another unit's vaccination the answer is the same "
                "404 as for an unknown one, and the attempt is audited (access_refused). "
                "Each answer is written to the PDL audit log (prompt_read)."
            ),
            "security": _BEARER,
            "parameters": [
                {
                    "name": "vaccination_id",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "maxLength": 128},
                }
            ],
            "responses": {
                "200": {
                    "description": "the stored prompt (CloudEvents HTTP binding, structured mode)",
                    "content": {"application/cloudevents+json": {"schema": event}},
                },
                "400": _json("no vaccination_id"),
                **_refusals(),
                "404": _json("no prompt for this vaccination at the caller's unit"),
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Customer groups: groups service",
            "version": "1",
            "description": (
                "Operational routes, the catalog and the nurse's read views. Patient-data "
                "routes need an "
                "OIDC access token; user and unit come from its claims, and every answer "
                "is written to the PDL audit log."
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "access token from the region's identity provider",
                }
            }
        },
        "paths": {
            "/livez": {
                "get": {
                    "summary": "the process works (its event loop answers): the liveness probe",
                    "responses": {"200": _json("alive")},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "database, broker and consumer answer",
                    "responses": {"200": _json("healthy"), "503": _json("what is down")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "topics, schema and catalog in place, consumer running: the "
                    "readiness probe",
                    "responses": {"200": _json("ready"), "503": _json("not ready")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": _json("OpenAPI 3.1")},
                }
            },
            "/catalog": {
                "get": {
                    "summary": "every customer group and subgroup with its validity",
                    "description": (
                        "The catalog in force, retired groups and subgroups included (codes "
                        "in old records always resolve). No patient data, so no token; the "
                        "same groups as the topic customer-groups.catalog.v1."
                    ),
                    "responses": {"200": _json("the catalog", _catalog_schema())},
                }
            },
            "/customer-card": {
                "post": {
                    "summary": "a customer's active and historical groups",
                    "description": (
                        "The personnummer goes in the body, never in the URL. `active` and "
                        "`historical` hold memberships as in schemas/common.schema.json "
                        "(every historical one; entered-in-error ones in neither)."
                    ),
                    "security": _BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["personnummer"],
                                    "properties": {
                                        "personnummer": {
                                            "type": "string",
                                            "pattern": "^[0-9]{12}$",
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("the customer card"),
                        "400": _json("no personnummer in the body"),
                        **_refusals(),
                        "422": _json("not a valid personnummer (reason_code)"),
                    },
                }
            },
            "/booking": {
                "get": {
                    "summary": "a booking, its customer and the customer's groups",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "booking_id",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "maxLength": 128},
                        }
                    ],
                    "responses": {
                        "200": _json("the booking and the customer card"),
                        "400": _json("no booking_id"),
                        **_refusals(),
                        "404": _json("no such booking"),
                    },
                }
            },
            "/prompt": _prompt_operation(),
        },
    }
