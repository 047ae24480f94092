#!/usr/bin/env bash
# Lint docker-compose.yml with dclint (Compose specification schema + best-practice rules).
#
#   scripts/validate-compose.sh [compose-file ...]
#
# dclint is installed, pinned, into .tools/ (gitignored) on first use; needs npm and node.
# Warnings count as failures (--max-warnings 0). Override the pin with DCLINT_VERSION.
set -euo pipefail

DCLINT_VERSION="${DCLINT_VERSION:-3.1.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
DCLINT="$TOOLS/node_modules/.bin/dclint"

installed_version() {
    node -p "require(process.argv[1]).version" "$TOOLS/node_modules/dclint/package.json" \
        2>/dev/null || true
}

if [[ ! -x "$DCLINT" || "$(installed_version)" != "$DCLINT_VERSION" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "validate-compose: npm is needed to install dclint $DCLINT_VERSION" >&2
        exit 127
    fi
    echo "validate-compose: installing dclint $DCLINT_VERSION into .tools/" >&2
    npm install --prefix "$TOOLS" --ignore-scripts --no-audit --no-fund --loglevel=error \
        "dclint@$DCLINT_VERSION" >&2
fi

cd "$ROOT"
if [[ $# -eq 0 ]]; then
    set -- docker-compose.yml
fi
exec "$DCLINT" --no-color --max-warnings 0 "$@"
