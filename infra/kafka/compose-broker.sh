#!/usr/bin/env bash
# The docker-compose broker: SASL/SCRAM-SHA-512 for clients, the StandardAuthorizer with
# ACLs, the controller on loopback only (what devinfra.kafka.LocalKafka does with sasl=).
#
# KAFKA_* variables become server.properties by the image's own convention (KAFKA_A_B ->
# a.b, ___ -> -, __ -> _). The admin's password (BROKER_ADMIN_PASSWORD) goes into the
# listener's JAAS login and, at the first start, into the storage as its SCRAM credential:
# the admin must exist before any client can authenticate. Secrets are never echoed.
set -euo pipefail
: "${CLUSTER_ID:?}" "${BROKER_ADMIN_PASSWORD:?}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
CONFIG_DIR="${CONFIG_DIR:-/tmp}"
umask 077

jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${BROKER_ADMIN_PASSWORD}\";"
config="$CONFIG_DIR/server.properties"
{
    while IFS='=' read -r name value; do
        case "$name" in
            # JVM options of the start scripts, not broker properties.
            KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JMX_OPTS | KAFKA_LOG4J_OPTS | KAFKA_VERSION | \
                KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_BIN) ;;
            KAFKA_*)
                key="$(printf '%s' "${name#KAFKA_}" | tr '[:upper:]' '[:lower:]' |
                    sed -e 's/_/./g' -e 's/\.\.\./-/g' -e 's/\.\./_/g')"
                printf '%s=%s\n' "$key" "$value"
                ;;
        esac
    done < <(env)
    printf 'listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=%s\n' "$jaas"
} >"$config"

# Client properties of the admin, for the healthcheck (kafka-broker-api-versions.sh).
printf 'security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=%s\n' \
    "$jaas" >"$CONFIG_DIR/admin.properties"

"$KAFKA_BIN/kafka-storage.sh" format --ignore-formatted --cluster-id "$CLUSTER_ID" \
    --config "$config" --add-scram "SCRAM-SHA-512=[name=admin,password=${BROKER_ADMIN_PASSWORD}]" \
    >/dev/null
exec "$KAFKA_BIN/kafka-server-start.sh" "$config"
