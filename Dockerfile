# One image for both services; the command picks the service:
#   python -m services.groups   (HTTP on GROUPS_HTTP_PORT, default 8080; the default CMD)
#   python -m services.export   (HTTP on EXPORT_HTTP_PORT, default 8081)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APP_ENV=prod \
    GROUPS_HTTP_HOST=0.0.0.0 \
    EXPORT_HTTP_HOST=0.0.0.0

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin app

# Installed as a regular (non-editable) package, with the versions pinned in
# constraints.txt (as `make install` does); the source tree is not kept, so the image runs
# exactly what the wheel ships (migrations and the catalog are package data).
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY services ./services
RUN pip install --no-cache-dir --constraint constraints.txt . \
    && rm -rf /src

WORKDIR /app
USER 10001:10001

EXPOSE 8080 8081

CMD ["python", "-m", "services.groups"]
