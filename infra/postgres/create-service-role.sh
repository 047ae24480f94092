#!/bin/bash
# Run once by the postgres image on a new data directory (docker-entrypoint-initdb.d):
# the service role logs in with its own password; `migrate` grants it what it needs.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v role="customer_groups_service" -v password="$SERVICE_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
SQL
