"""A local stand-in for a region's identity provider: an EC P-256 key pair, its JWKS
and signed access tokens, for the demo and the tests (never for production).

`python -m devinfra.tokens --key .run/auth/dev-idp.pem --user U --unit V` mints a token
with the key `make run` generated, e.g. for curl against the running demo.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEV_ISSUER = "http://127.0.0.1/dev-idp"
DEV_AUDIENCE = "customer-groups"


class TokenIssuer:
    """Signs access tokens as an OIDC provider would (ES256, `kid` in the header)."""

    def __init__(
        self,
        *,
        issuer: str = DEV_ISSUER,
        audience: str = DEV_AUDIENCE,
        kid: str | None = None,
        private_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.kid = kid or f"dev-{uuid.uuid4().hex[:8]}"
        self.private_key = private_key or ec.generate_private_key(ec.SECP256R1())

    @classmethod
    def load(cls, pem_path: Path, **options: Any) -> TokenIssuer:
        """An issuer from a key written by `save_key` (its kid is stored beside it)."""
        key = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("expected an EC private key")
        kid = pem_path.with_suffix(".kid").read_text(encoding="utf-8").strip()
        return cls(private_key=key, kid=kid, **options)

    def save_key(self, pem_path: Path) -> Path:
        pem_path.parent.mkdir(parents=True, exist_ok=True)
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem_path.unlink(missing_ok=True)
        pem_path.touch(mode=0o600)  # a private key: readable by its owner only
        pem_path.write_bytes(pem)
        pem_path.with_suffix(".kid").write_text(self.kid, encoding="utf-8")
        return pem_path

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key())
        )
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}

    def jwks(self, *others: TokenIssuer) -> dict[str, Any]:
        """The key set a provider publishes: this key and any others (rotation)."""
        return {"keys": [self.public_jwk(), *(o.public_jwk() for o in others)]}

    def write_jwks(self, path: Path, *others: TokenIssuer) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.jwks(*others)), encoding="utf-8")
        return path

    def claims(
        self, *, user_id: str | None, unit_id: str | None, lifetime: int = 3600
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id or "anonymous",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if user_id is not None:
            claims["hsa_id"] = user_id
        if unit_id is not None:
            claims["unit_id"] = unit_id
        return claims

    def sign(self, claims: dict[str, Any], *, headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(
            claims,
            self.private_key,
            algorithm="ES256",
            headers={"kid": self.kid, **(headers or {})},
        )

    def token(self, user_id: str, unit_id: str, /, *, lifetime: int = 3600, **extra: Any) -> str:
        """A valid access token for this user acting for this unit."""
        return self.sign(
            {**self.claims(user_id=user_id, unit_id=unit_id, lifetime=lifetime), **extra}
        )

    def env(self, jwks_path: Path) -> dict[str, str]:
        """The groups service's `AUTH_*` settings that trust this issuer."""
        return {
            "AUTH_ISSUER": self.issuer,
            "AUTH_AUDIENCE": self.audience,
            "AUTH_JWKS_FILE": str(jwks_path),
            "AUTH_USER_CLAIM": "hsa_id",
            "AUTH_UNIT_CLAIM": "unit_id",
        }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--key", type=Path, default=Path(".run/auth/dev-idp.pem"))
    parser.add_argument("--user", default="demo-nurse")
    parser.add_argument("--unit", default="demo-unit")
    parser.add_argument("--lifetime", type=int, default=3600, help="seconds")
    args = parser.parse_args(argv)
    print(TokenIssuer.load(args.key).token(args.user, args.unit, lifetime=args.lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
