"""HTTP test tools: call an ASGI route in this process as a client would, a JWKS endpoint,
and tokens forged every way a verifier must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization

from devinfra.tokens import TokenIssuer
from services.common.asgi import ASGIApp


async def call(
    app: ASGIApp,
    method: str = "GET",
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, response headers with lower-case names, decoded JSON body or text)."""
    body = json.dumps(json_body).encode() if json_body is not None else b""
    scope = {
        "type": "http",
        "method": method,
        "query_string": urlencode(query or {}).encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    start, content = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    try:
        return start["status"], response_headers, json.loads(content)
    except ValueError:
        return start["status"], response_headers, content.decode(errors="replace")


class JwksServer:
    """A provider's JWKS endpoint on 127.0.0.1 whose key set the test swaps."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_tokens(issuer: TokenIssuer, user_id: str, unit_id: str) -> dict[str, str]:
    """Tokens a verifier must refuse, each wrong in one way, named by how."""
    now = int(time.time())
    claims = issuer.claims(user_id=user_id, unit_id=unit_id)
    header, _, signature = issuer.token(user_id, unit_id).split(".")
    tampered = _b64(json.dumps({**claims, "unit_id": unit_id + "-other"}).encode())
    public_pem = issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_input = (
        f"{_b64(json.dumps({'alg': 'HS256', 'kid': issuer.kid}).encode())}."
        f"{_b64(json.dumps(claims).encode())}"
    )
    hs_signature = _b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())
    none_input = (
        f"{_b64(json.dumps({'alg': 'none', 'kid': issuer.kid}).encode())}."
        f"{_b64(json.dumps(claims).encode())}."
    )
    stranger = TokenIssuer(issuer=issuer.issuer, audience=issuer.audience)
    return {
        "expired": issuer.sign({**claims, "exp": now - 300}),
        "not yet valid": issuer.sign({**claims, "nbf": now + 300}),
        "wrong issuer": issuer.sign({**claims, "iss": "https://idp.elsewhere.test"}),
        "wrong audience": issuer.sign({**claims, "aud": "another-service"}),
        "unknown kid": stranger.token(user_id, unit_id),
        "tampered": f"{header}.{tampered}.{signature}",
        "alg none": none_input,
        "HS256 with the public key": f"{hs_input}.{hs_signature}",
        "no user": issuer.sign(issuer.claims(user_id=None, unit_id=unit_id)),
        "no unit": issuer.sign(issuer.claims(user_id=user_id, unit_id=None)),
        "garbage": "not.a.token",
    }
