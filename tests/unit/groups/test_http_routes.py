"""The groups service's HTTP routes without infrastructure: refusals before any database
access, and the OpenAPI document against the routes actually served."""

from __future__ import annotations

from pathlib import Path

import pytest

from devinfra.tokens import TokenIssuer, bearer
from services.common.asgi import ASGIApp
from services.common.settings import AppSettings, AuthSettings, GroupsSettings
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle, read_catalog_file
from services.groups.catalog import default_catalog_path
from services.groups.entrypoints.http import PATIENT_DATA_ROUTES, build_routes
from services.groups.service_layer import messages
from tests.http_tools import call
from tests.schema_validation import validate_data

PNR = "191212121212"


def _routes(auth: AuthSettings) -> dict[str, ASGIApp]:
    settings = GroupsSettingsBundle(
        app=AppSettings(app_env="test"), groups=GroupsSettings(allowed_units="unit-1"), auth=auth
    )
    return dict(build_routes(GroupsService(settings)))


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture
def routes(issuer: TokenIssuer, tmp_path: Path) -> dict[str, ASGIApp]:
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    return _routes(
        AuthSettings(issuer=issuer.issuer, audience=issuer.audience, jwks_file=str(jwks))
    )


async def _read(app: ASGIApp, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    if path == "/customer-card":
        status, response_headers, _ = await call(
            app, "POST", headers=headers, json_body={"personnummer": PNR}
        )
    else:
        query = {"booking_id": "b-1"} if path == "/booking" else {"vaccination_id": "v-1"}
        status, response_headers, _ = await call(app, headers=headers, query=query)
    return status, response_headers


@pytest.mark.parametrize("path", PATIENT_DATA_ROUTES)
async def test_patient_data_needs_a_bearer_token(
    routes: dict[str, ASGIApp], issuer: TokenIssuer, path: str
) -> None:
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer "}):
        status, response_headers = await _read(routes[path], path, headers)
        assert (status, response_headers["www-authenticate"]) == (401, "Bearer")
    stranger = TokenIssuer(issuer=issuer.issuer, audience=issuer.audience)
    for token in ("not-a-jwt", stranger.token("nurse-1", "unit-1")):
        status, response_headers = await _read(routes[path], path, bearer(token))
        assert status == 401
        challenge = response_headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token", error_description="')


async def test_user_and_unit_in_the_request_do_not_replace_a_token(
    routes: dict[str, ASGIApp],
) -> None:
    status, _, _ = await call(
        routes["/customer-card"],
        "POST",
        json_body={"personnummer": PNR, "user_id": "nurse-1", "unit_id": "unit-1"},
    )
    assert status == 401
    status, _, _ = await call(
        routes["/booking"], query={"booking_id": "b-1", "user_id": "nurse-1", "unit_id": "unit-1"}
    )
    assert status == 401


@pytest.mark.parametrize("path", PATIENT_DATA_ROUTES)
async def test_without_an_identity_provider_dev_mode_refuses_every_read(
    issuer: TokenIssuer, path: str
) -> None:
    routes = _routes(AuthSettings(issuer=None, audience=None, jwks_url=None, jwks_file=None))
    status, response_headers = await _read(routes[path], path, bearer(issuer.token("n", "u")))
    assert status == 401
    assert 'error="invalid_token"' in response_headers["www-authenticate"]


async def test_openapi_describes_every_served_route(routes: dict[str, ASGIApp]) -> None:
    status, _, document = await call(routes["/openapi.json"])
    assert status == 200
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == set(routes)
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path != "/healthz":  # which would wait for a database and a broker
                # The method the route answers; any other gets 405.
                status, _, _ = await call(routes[path], method.upper())
                assert status != 405, (path, method)
            if path in PATIENT_DATA_ROUTES:
                assert operation["security"] == [{"bearer": []}], path
                assert {"401", "403"} <= set(operation["responses"]), path
            else:
                assert "security" not in operation, path


async def test_the_catalog_needs_no_token_and_lists_every_group(
    routes: dict[str, ASGIApp],
) -> None:
    status, headers, document = await call(routes["/catalog"])
    assert status == 200 and headers["content-type"] == "application/json"
    catalog = read_catalog_file(default_catalog_path())
    assert document == messages.catalog_document(catalog)
    assert [g["group_code"] for g in document["groups"]] == [g.code for g in catalog.groups]
    retired = {g["group_code"]: g["valid_to"] for g in document["groups"] if g["valid_to"]}
    assert retired == {
        "HAR_HEMSJUKVARD_HEMTJANST": "2024-03-18",
        "ALDER_65_PLUS_EJ_SABO_HEMTJANST": "2024-03-13",
        "COVID": "2023-09-27",
    }
    for group in document["groups"]:
        validate_data(messages.CATALOG_GROUP, group)
    status, _, _ = await call(routes["/catalog"], "POST")
    assert status == 405


async def test_a_prompt_read_names_its_vaccination_and_never_reaches_for_an_overlong_id(
    routes: dict[str, ASGIApp], issuer: TokenIssuer
) -> None:
    token = bearer(issuer.token("nurse-1", "unit-1"))
    for query in ({}, {"vaccination_id": ""}):
        status, _, body = await call(routes["/prompt"], headers=token, query=query)
        assert (status, body) == (400, {"error": "vaccination_id is required"})
    # No id longer than an id may be was ever started: not found, without a database.
    status, _, _ = await call(routes["/prompt"], headers=token, query={"vaccination_id": "v" * 129})
    assert status == 404
    status, _, _ = await call(routes["/prompt"], "POST", headers=token)
    assert status == 405
