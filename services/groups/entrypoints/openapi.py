"""The OpenAPI 3.1 document of the groups service's HTTP routes (`GET /openapi.json`).

Written by hand because the routes are plain ASGI; a unit test keeps it in step with
`build_routes`.
"""

from __future__ import annotations

from typing import Any

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


_CATALOG_GROUP_SCHEMA_ID = (
    "https://schemas.customer-groups.example/v1/customer_group.catalog_group.schema.json"
)


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
        },
    }
