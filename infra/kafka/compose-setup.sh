#!/usr/bin/env bash
# docker-compose's one-shot step after the broker is up, as the admin: the SCRAM
# credentials of the product's principals (set again on every run, so a changed password
# takes effect) and the ACLs of acls.sh (generated from devinfra/acls.py).
set -euo pipefail
: "${KAFKA_BOOTSTRAP:?}" "${BROKER_ADMIN_PASSWORD:?}"
: "${GROUPS_KAFKA_PASSWORD:?}" "${EXPORT_KAFKA_PASSWORD:?}" "${MIGRATE_KAFKA_PASSWORD:?}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
CONFIG_DIR="${CONFIG_DIR:-/tmp}"
umask 077

export KAFKA_ADMIN_CONFIG="$CONFIG_DIR/setup-admin.properties"
printf 'security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=%s\n' \
    "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${BROKER_ADMIN_PASSWORD}\";" \
    >"$KAFKA_ADMIN_CONFIG"

scram_user() {
    "$KAFKA_BIN/kafka-configs.sh" --bootstrap-server "$KAFKA_BOOTSTRAP" \
        --command-config "$KAFKA_ADMIN_CONFIG" --alter --entity-type users --entity-name "$1" \
        --add-config "SCRAM-SHA-512=[password=$2]" >/dev/null
    echo "SCRAM credential of User:$1 set"
}
scram_user customer-groups "$GROUPS_KAFKA_PASSWORD"
scram_user customer-groups-export "$EXPORT_KAFKA_PASSWORD"
scram_user customer-groups-migrate "$MIGRATE_KAFKA_PASSWORD"

export KAFKA_ACLS="$KAFKA_BIN/kafka-acls.sh"
bash "$(dirname "${BASH_SOURCE[0]}")/acls.sh" >/dev/null
echo "ACLs in place"
