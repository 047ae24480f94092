"""The access-token verifier with real signed tokens (keys generated here), no infrastructure
beyond a JWKS served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from devinfra.tokens import TokenIssuer
from services.common.settings import AppSettings, AuthSettings, GroupsSettings, UnsafeSettings
from services.groups.adapters.access_tokens import (
    AccessTokenVerifier,
    Identity,
    InvalidToken,
    JwksFileKeys,
    JwksUrlKeys,
)
from services.groups.bootstrap import (
    GroupsService,
    GroupsSettingsBundle,
    access_tokens_from,
    unsafe_settings,
)
from tests.http_tools import JwksServer

USER, UNIT = "SE2321000016-1234", "SE2321000016-UNIT"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(issuer="https://idp.region.test/oidc", audience="customer-groups")


@pytest.fixture
def verifier(issuer: TokenIssuer, tmp_path: Path) -> AccessTokenVerifier:
    keys = JwksFileKeys(issuer.write_jwks(tmp_path / "jwks.json"))
    return AccessTokenVerifier(
        keys, issuer=issuer.issuer, audience=issuer.audience, leeway_seconds=30
    )


async def _refused(verifier: AccessTokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return str(caught.value)


async def test_a_valid_token_names_its_user_and_unit(
    issuer: TokenIssuer, verifier: AccessTokenVerifier
) -> None:
    assert await verifier.verify(issuer.token(USER, UNIT)) == Identity(USER, UNIT)


async def test_expiry_and_not_before_allow_only_the_leeway(
    issuer: TokenIssuer, verifier: AccessTokenVerifier
) -> None:
    now = int(time.time())
    claims = issuer.claims(user_id=USER, unit_id=UNIT)
    assert await verifier.verify(issuer.sign({**claims, "exp": now - 10})) == Identity(USER, UNIT)
    assert await _refused(verifier, issuer.sign({**claims, "exp": now - 120})) == "token expired"
    assert await verifier.verify(issuer.sign({**claims, "nbf": now + 10}))
    late = {**claims, "nbf": now + 120, "iat": now}
    assert await _refused(verifier, issuer.sign(late)) == "token not yet valid"
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    assert await _refused(verifier, issuer.sign(no_exp)) == "invalid token"


async def test_issuer_and_audience_must_be_the_configured_ones(
    issuer: TokenIssuer, verifier: AccessTokenVerifier
) -> None:
    claims = issuer.claims(user_id=USER, unit_id=UNIT)
    for iss in ("https://idp.elsewhere.test", "https://idp.region.test", issuer.issuer + "/x"):
        assert await _refused(verifier, issuer.sign({**claims, "iss": iss})) == "wrong issuer"
    other_aud = {**claims, "aud": "another-service"}
    assert await _refused(verifier, issuer.sign(other_aud)) == "wrong audience"
    assert await verifier.verify(issuer.sign({**claims, "aud": ["x", issuer.audience]}))


async def test_keys_the_issuer_did_not_publish_are_refused(
    issuer: TokenIssuer, verifier: AccessTokenVerifier
) -> None:
    stranger = TokenIssuer(issuer=issuer.issuer, audience=issuer.audience)
    assert await _refused(verifier, stranger.token(USER, UNIT)) == "unknown signing key"
    # Same kid as the published key, different private key: the signature fails.
    impostor = TokenIssuer(issuer=issuer.issuer, audience=issuer.audience, kid=issuer.kid)
    assert await _refused(verifier, impostor.token(USER, UNIT)) == "invalid token"
    no_kid = jwt.encode(
        issuer.claims(user_id=USER, unit_id=UNIT), issuer.private_key, algorithm="ES256"
    )
    assert await _refused(verifier, no_kid) == "token names no signing key"


async def test_a_tampered_payload_is_refused(
    issuer: TokenIssuer, verifier: AccessTokenVerifier
) -> None:
    header, _payload, signature = issuer.token(USER, "unit-a").split(".")
    forged = _b64(json.dumps(issuer.claims(user_id=USER, unit_id="unit-b")).encode())
    assert await _refused(verifier, f"{header}.{forged}.{signature}") == "invalid token"


async def test_alg_none_and_hs256_with_the_public_key_are_refused(
    issuer: TokenIssuer, verifier: AccessTokenVerifier
) -> None:
    claims = issuer.claims(user_id=USER, unit_id=UNIT)
    none = _unsigned({"alg": "none", "typ": "JWT", "kid": issuer.kid}, claims) + "."
    assert await _refused(verifier, none) == "algorithm not allowed"
    # The classic key-confusion forgery: HMAC keyed with the public key anyone can read.
    public_pem = issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}, claims)
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert await _refused(verifier, f"{signing_input}.{_b64(mac)}") == "algorithm not allowed"
    jwk_secret = json.dumps(issuer.public_jwk()).encode()
    mac = hmac.new(jwk_secret, signing_input.encode(), hashlib.sha256).digest()
    assert await _refused(verifier, f"{signing_input}.{_b64(mac)}") == "algorithm not allowed"


async def test_user_and_unit_claims_are_required(
    issuer: TokenIssuer, verifier: AccessTokenVerifier
) -> None:
    no_user = issuer.sign(issuer.claims(user_id=None, unit_id=UNIT))
    assert await _refused(verifier, no_user) == "token has no hsa_id claim"
    no_unit = issuer.sign(issuer.claims(user_id=USER, unit_id=None))
    assert await _refused(verifier, no_unit) == "token has no unit_id claim"
    blank = issuer.token(USER, UNIT, unit_id="  ")
    assert await _refused(verifier, blank) == "token has no unit_id claim"
    not_text = issuer.token(USER, UNIT, hsa_id=["a", "b"])
    assert await _refused(verifier, not_text) == "token has no hsa_id claim"
    too_long = issuer.token("u" * 129, UNIT)
    assert await _refused(verifier, too_long) == "hsa_id claim too long"


async def test_claim_names_are_configurable(issuer: TokenIssuer, tmp_path: Path) -> None:
    settings = AuthSettings(
        issuer=issuer.issuer,
        audience=issuer.audience,
        jwks_file=str(issuer.write_jwks(tmp_path / "jwks.json")),
        user_claim="employeeHsaId",
        unit_claim="https://region.test/claims/unit",
    )
    verifier = AccessTokenVerifier.from_settings(settings)
    token = issuer.sign(
        {
            **issuer.claims(user_id=None, unit_id=None),
            "employeeHsaId": USER,
            "https://region.test/claims/unit": UNIT,
        }
    )
    assert await verifier.verify(token) == Identity(USER, UNIT)
    assert await _refused(verifier, issuer.token(USER, UNIT)) == "token has no employeeHsaId claim"


async def test_garbage_is_refused(verifier: AccessTokenVerifier) -> None:
    for token in ("", "abc", "a.b.c", "x" * 20_000):
        with pytest.raises(InvalidToken):
            await verifier.verify(token)


async def test_a_replaced_jwks_file_is_read_again_for_an_unknown_key(
    issuer: TokenIssuer, verifier: AccessTokenVerifier, tmp_path: Path
) -> None:
    rotated = TokenIssuer(issuer=issuer.issuer, audience=issuer.audience)
    assert await _refused(verifier, rotated.token(USER, UNIT)) == "unknown signing key"
    await asyncio.sleep(0.01)  # a new mtime even on coarse clocks
    rotated.write_jwks(tmp_path / "jwks.json", issuer)
    assert await verifier.verify(rotated.token(USER, UNIT)) == Identity(USER, UNIT)
    assert await verifier.verify(issuer.token(USER, UNIT)) == Identity(USER, UNIT)


@pytest.fixture
def jwks_server(issuer: TokenIssuer) -> Iterator[JwksServer]:
    server = JwksServer(issuer.jwks())
    yield server
    server.close()


async def test_jwks_url_is_cached_and_refreshed_once_for_an_unknown_key(
    issuer: TokenIssuer, jwks_server: JwksServer
) -> None:
    cooldown = 0.5
    verifier = AccessTokenVerifier(
        JwksUrlKeys(jwks_server.url, refresh_cooldown=cooldown),
        issuer=issuer.issuer,
        audience=issuer.audience,
    )
    for _ in range(3):
        assert await verifier.verify(issuer.token(USER, UNIT)) == Identity(USER, UNIT)
    assert jwks_server.fetches == 1, "the key set is cached"

    rotated = TokenIssuer(issuer=issuer.issuer, audience=issuer.audience)
    jwks_server.jwks = rotated.jwks()
    await asyncio.sleep(cooldown + 0.1)
    assert await verifier.verify(rotated.token(USER, UNIT)) == Identity(USER, UNIT)
    assert jwks_server.fetches == 2, "an unknown kid triggers one refresh"
    for _ in range(3):
        assert await verifier.verify(rotated.token(USER, UNIT)) == Identity(USER, UNIT)
    # The retired key is gone from the set, and random kids do not refetch in the cooldown.
    assert await _refused(verifier, issuer.token(USER, UNIT)) == "unknown signing key"
    stranger = TokenIssuer(issuer=issuer.issuer, audience=issuer.audience)
    assert await _refused(verifier, stranger.token(USER, UNIT)) == "unknown signing key"
    assert jwks_server.fetches == 2


async def test_an_unreachable_jwks_url_refuses_without_raising_anything_else(
    issuer: TokenIssuer, jwks_server: JwksServer
) -> None:
    url = jwks_server.url
    jwks_server.close()
    verifier = AccessTokenVerifier(
        JwksUrlKeys(url, timeout=1.0), issuer=issuer.issuer, audience=issuer.audience
    )
    assert await _refused(verifier, issuer.token(USER, UNIT)) == "signing keys unavailable"


def test_missing_settings_are_named_and_stop_the_start_outside_dev_mode() -> None:
    empty = AuthSettings(issuer=None, audience=None, jwks_url=None, jwks_file=None)
    assert empty.missing() == ["AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL or AUTH_JWKS_FILE"]
    units = GroupsSettings(allowed_units="unit-1")
    prod = GroupsSettingsBundle(app=AppSettings(app_env="prod"), auth=empty, groups=units)
    [problem] = unsafe_settings(prod)
    for name in ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL or AUTH_JWKS_FILE"):
        assert name in problem
    with pytest.raises(UnsafeSettings, match="AUTH_ISSUER"):
        GroupsService(prod)
    partial = AuthSettings(issuer="https://idp", audience=None, jwks_url="https://idp/jwks")
    [problem] = unsafe_settings(
        GroupsSettingsBundle(app=AppSettings(app_env="prod"), auth=partial, groups=units)
    )
    assert "AUTH_AUDIENCE" in problem and "AUTH_ISSUER" not in problem
    dev = GroupsSettingsBundle(app=AppSettings(app_env="dev"), auth=empty)
    assert unsafe_settings(dev) == [] and access_tokens_from(dev) is None


def test_one_key_source_only(tmp_path: Path, issuer: TokenIssuer) -> None:
    both = AuthSettings(
        issuer="https://idp",
        audience="customer-groups",
        jwks_url="https://idp/jwks",
        jwks_file=str(issuer.write_jwks(tmp_path / "jwks.json")),
    )
    with pytest.raises(ValueError, match="not both"):
        AccessTokenVerifier.from_settings(both)
