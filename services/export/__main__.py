"""`python -m services.export`: run the export service (settings from the environment)."""

from __future__ import annotations

import uvicorn

from services.common.logs import configure_logging
from services.common.settings import AppSettings, ExportSettings


def main() -> None:
    app_settings, settings = AppSettings(), ExportSettings()
    configure_logging(app_settings.log_level)
    from services.export.entrypoints.app import build_app

    uvicorn.run(
        build_app(),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
