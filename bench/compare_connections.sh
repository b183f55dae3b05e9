#!/usr/bin/env bash
# The connections scenario alone (the scale issue's audience on one node):
# as many idle subscriber connections as the open-file limit allows
# (CONNECTIONS=auto: 19,700 under a limit of 20000, at most 100,000), each
# subscribed to one of 1,000 topics, then one message to every topic; once
# per broker (corebus, NATS, Redis), each on a fresh start. corebus's
# connections come from source addresses spread over 127.0.0.0/8. Writes
#   bench/results/<kind>-connections.json  the runs and the machine
#   bench/results/<kind>-connections.md    the tables (memory per connection,
#       time until every subscriber and each topic's last one had its
#       message, connections opened per second), ratios to NATS and Redis
# and exits non-zero if a run failed or a subscriber missed its message.
# bench/compare.sh runs the same scenario within the whole suite. See
# docs/benchmarks.md, "A full file table of subscribers".
#
# Settings (environment): SHARDS (default nproc), CONNECTIONS (auto),
# TOPICS (1000), BROKERS ("corebus nats redis"), COREBUS_PORT, NATS_PORT,
# REDIS_PORT (default: three ports from 20000 up chosen by the script's pid),
# CARGO_TARGET_DIR (target), STAMP (<machine kind>-connections).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-auto}
TOPICS=${TOPICS:-1000}
# Ports of this run's own (from its pid, below the ephemeral range): the
# connections of a run just before linger 60 s in TIME_WAIT, and NATS's and
# Redis's client libraries cannot bind other source addresses, so against
# the same port a second run found no source port left for them.
PORT_BASE=$((20000 + $$ % 1000 * 3))
COREBUS_PORT=${COREBUS_PORT:-$PORT_BASE}
NATS_PORT=${NATS_PORT:-$((PORT_BASE + 1))}
REDIS_PORT=${REDIS_PORT:-$((PORT_BASE + 2))}
BROKERS=${BROKERS:-corebus nats redis}
# shellcheck source=bench/lib.sh
. bench/lib.sh
STAMP=${STAMP:-$(machine_kind)-connections}

install_brokers nats-server redis-server
raise_limits
CONNECTIONS=$(fit_connections "$CONNECTIONS")
MAX_CLIENTS=$((CONNECTIONS + 1000))
build

RUN="--scenario connections --subscribers $CONNECTIONS --topics $TOPICS --size 128 --duration 10"
for target in $BROKERS; do
    log "$target: a fresh broker, $CONNECTIONS connections over $TOPICS topics (open-file limit $(ulimit -n))"
    start_broker "$target"
    broker_args "$target"
    # shellcheck disable=SC2086 # $RUN is a list of options
    run_bench "$target: $RUN" --target "$target" --url "$URL" $RUN "${extra[@]}"
    stop_broker
done

summarize_results \
    "shards/GOMAXPROCS=$SHARDS on CPUs $CPU_LIST" \
    "procedure=one run per broker, each on a fresh start; open-file limit $(ulimit -n) for broker and harness alike"
report_failures
