"""Checks OIDC access tokens from the region's identity provider (PyJWT).

A token is accepted only when its signature verifies with one of the issuer's keys
(asymmetric algorithms only), its `iss` and `aud` are the configured ones, `exp` lies
ahead and `nbf` / `iat` do not (within the leeway), and it names a user and a unit in
the configured claims. Anything else raises `InvalidToken`, whose message is safe to
return to the caller: it never repeats the token or its claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from services.common.settings import AuthSettings

log = logging.getLogger(__name__)

# Fixed, never taken from the token: HS* would accept a token signed with the public
# key as the secret, and `none` any token at all.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
MAX_CLAIM_CHARS = 128  # the audit log's user and unit columns
MAX_TOKEN_BYTES = 16 * 1024


class InvalidToken(Exception):
    """No usable identity in the token; the message names the reason, not the content."""


@dataclass(frozen=True)
class Identity:
    """Who is asking, as the identity provider vouched for it."""

    user_id: str
    unit_id: str


class SigningKeys(Protocol):
    async def key_for(self, kid: str) -> PyJWK:
        """The issuer's key with this id; raises InvalidToken when there is none."""
        ...


def _signing_keys(jwks: dict[str, Any]) -> dict[str, PyJWK]:
    keys = PyJWKSet.from_dict(jwks).keys
    return {k.key_id: k for k in keys if k.key_id and k.public_key_use in ("sig", None)}


class JwksFileKeys:
    """Keys from a JWKS file; the file is read again when a token names an unknown
    key id and the file changed since (a key rotated by replacing the file)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = path.stat().st_mtime_ns
        self._keys = _signing_keys(json.loads(path.read_text(encoding="utf-8")))

    def _reload_if_changed(self) -> None:
        mtime_ns = self._path.stat().st_mtime_ns
        if mtime_ns != self._mtime_ns:
            self._keys = _signing_keys(json.loads(self._path.read_text(encoding="utf-8")))
            self._mtime_ns = mtime_ns

    async def key_for(self, kid: str) -> PyJWK:
        if kid not in self._keys:
            try:
                await asyncio.to_thread(self._reload_if_changed)
            except (OSError, ValueError, jwt.PyJWTError) as error:
                log.warning("JWKS file not reloaded: %s", type(error).__name__)
        try:
            return self._keys[kid]
        except KeyError:
            raise InvalidToken("unknown signing key") from None


class JwksUrlKeys:
    """Keys from the issuer's JWKS URL through PyJWKClient: the set is cached for
    `lifespan` seconds and fetched again when a token names an unknown key id (at most
    once per `refresh_cooldown` seconds, so random key ids cannot flood the provider).
    PyJWKClient blocks, so it runs in a worker thread, never on the event loop."""

    def __init__(
        self,
        url: str,
        *,
        lifespan: float = 300.0,
        refresh_cooldown: float = 10.0,
        timeout: float = 5.0,
    ) -> None:
        self._client = PyJWKClient(
            url, lifespan=lifespan, cooldown_duration=refresh_cooldown, timeout=timeout
        )

    async def key_for(self, kid: str) -> PyJWK:
        try:
            return await asyncio.to_thread(self._client.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError as error:
            log.warning("JWKS fetch failed: %s", type(error).__name__)
            raise InvalidToken("signing keys unavailable") from None
        except jwt.PyJWTError:
            raise InvalidToken("unknown signing key") from None


class AccessTokenVerifier:
    """Turns a bearer token into the Identity it vouches for, or raises InvalidToken."""

    def __init__(
        self,
        keys: SigningKeys,
        *,
        issuer: str,
        audience: str,
        user_claim: str = "hsa_id",
        unit_claim: str = "unit_id",
        leeway_seconds: float = 30.0,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._user_claim = user_claim
        self._unit_claim = unit_claim
        self._leeway = leeway_seconds

    @classmethod
    def from_settings(cls, settings: AuthSettings, **url_options: float) -> AccessTokenVerifier:
        """Needs complete settings (`AuthSettings.missing()` empty) and exactly one key
        source; a JWKS file is read here, a JWKS URL on the first token."""
        if settings.missing() or not settings.issuer or not settings.audience:
            raise ValueError(f"auth settings incomplete: {', '.join(settings.missing())}")
        if settings.jwks_url and settings.jwks_file:
            raise ValueError("set AUTH_JWKS_URL or AUTH_JWKS_FILE, not both")
        keys: SigningKeys
        if settings.jwks_url:
            keys = JwksUrlKeys(settings.jwks_url, **url_options)
        else:
            keys = JwksFileKeys(Path(str(settings.jwks_file)))
        return cls(
            keys,
            issuer=settings.issuer,
            audience=settings.audience,
            user_claim=settings.user_claim,
            unit_claim=settings.unit_claim,
            leeway_seconds=settings.leeway_seconds,
        )

    async def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token names no signing key")
        key = await self._keys.key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.PyJWTError:
            raise InvalidToken("invalid token") from None
        return Identity(
            self._claim(claims, self._user_claim), self._claim(claims, self._unit_claim)
        )

    @staticmethod
    def _claim(claims: dict[str, Any], name: str) -> str:
        value = claims.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidToken(f"token has no {name} claim")
        if len(value) > MAX_CLAIM_CHARS:
            raise InvalidToken(f"{name} claim too long")
        return value
