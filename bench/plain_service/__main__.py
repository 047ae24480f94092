"""`python -m bench.plain_service`: the app under uvicorn, HTTP on PLAIN_HTTP_PORT
(`/readyz`: 204 while the broker answers)."""

from __future__ import annotations

import uvicorn

from bench.plain_service.app import app, settings

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=settings.plain_http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
