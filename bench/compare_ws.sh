#!/usr/bin/env bash
# The WebSocket scenario: corebus and NATS, each with its WebSocket listener,
# one after the other on the same CPUs, loaded with one native publisher and
# WS_SUBSCRIBERS (1000) subscribers over WebSocket on WS_TOPICS (100)
# topics, 128-byte payloads:
#   - delivered msg/s (the `many` scenario: flat out under flow control),
#   - latency percentiles at a fixed rate (WS_RATE messages/s published,
#     each delivered to WS_SUBSCRIBERS / WS_TOPICS subscribers),
#   - broker memory per idle WebSocket connection, next to the native figure
#     (the connections scenario over each transport, on fresh brokers).
# With NATIVE=1 (default) the throughput and latency runs are repeated with
# native subscribers, for reference (corebus's with --no-affinity: placed on
# the shards as its WebSocket subscribers are). Writes
#   bench/results/<kind>-ws.json  every run's report plus the machine
#   bench/results/<kind>-ws.md    target 6 (>= 2x NATS's delivered msg/s,
#                                 <= 0.5x its p99) met or not, WebSocket
#                                 next to native per broker, the tables
#   bench/results/<kind>-ws.svg   the picture
# and exits non-zero if a run failed or lost a message. See
# docs/benchmarks.md. Installs nats-server from Debian's package when it is
# missing (needs root or sudo).
#
# Settings (environment): SHARDS (cores per broker, default nproc), ROUNDS
# (3), DURATION (seconds per throughput run, 5), LATENCY_DURATION (5),
# WS_RATE (2000), WS_SUBSCRIBERS (1000), WS_TOPICS (100), CONNECTIONS (idle
# connections, 10000, fitted to the open-file limit), NATIVE (1),
# COREBUS_PORT / COREBUS_WS_PORT / NATS_PORT / NATS_WS_PORT (17400 / 17401 /
# 14222 / 14223), CARGO_TARGET_DIR (target), STAMP (<machine kind>-ws, see bench/results/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
LATENCY_DURATION=${LATENCY_DURATION:-5}
WS_RATE=${WS_RATE:-2000}
WS_SUBSCRIBERS=${WS_SUBSCRIBERS:-1000}
WS_TOPICS=${WS_TOPICS:-100}
CONNECTIONS=${CONNECTIONS:-10000}
NATIVE=${NATIVE:-1}
WS_LISTENERS=1
# shellcheck source=bench/lib.sh
. bench/lib.sh
STAMP=${STAMP:-$(machine_kind)-ws}

install_brokers nats-server
raise_limits
CONNECTIONS=$(fit_connections "$CONNECTIONS")
# The harness holds one descriptor per subscriber (corebus-bench checks it).
[ "$(ulimit -n)" -ge $((WS_SUBSCRIBERS + 300)) ] ||
    die "open-file limit $(ulimit -n) is too low for $WS_SUBSCRIBERS subscribers"
build

# Every run: the same arguments for both brokers. Subscriber i reads topic
# i mod WS_TOPICS, so each topic has WS_SUBSCRIBERS / WS_TOPICS subscribers;
# the publisher sends to the topics in turn.
SHAPE="--publishers 1 --subscribers $WS_SUBSCRIBERS --topics $WS_TOPICS --size 128"
THROUGHPUT="--scenario many $SHAPE --duration $DURATION"
LATENCY="--scenario latency $SHAPE --rate $WS_RATE --duration $LATENCY_DURATION"
IDLE="--scenario connections --subscribers $CONNECTIONS --size 128 --duration 10"

over() { # target transport: the harness's arguments for subscribers over it
    over_args=()
    if [ "$2" = websocket ]; then
        over_args=(--subscribers-over websocket --ws-url "$WS_URL")
    elif [ "$1" = corebus ]; then
        # A WebSocket subscriber lands on whichever shard accepted it (a
        # browser cannot choose its source port); native corebus subscribers
        # of one topic would sit on its shard. Placed alike, the two runs
        # differ only in the transport.
        over_args=(--no-affinity)
    fi
}

run_group() { # round target transport: a fresh broker, throughput then latency
    local round=$1 target=$2 transport=$3 args
    log "round $round/$ROUNDS, $target: starting the broker on CPUs $CPU_LIST ($transport subscribers)"
    start_broker "$target"
    broker_args "$target"
    over "$target" "$transport"
    for args in "$THROUGHPUT" "$LATENCY"; do
        # shellcheck disable=SC2086 # $args is a list of options
        run_bench "round $round/$ROUNDS, $target, $transport subscribers: $args" \
            --target "$target" --url "$URL" $args "${over_args[@]}" "${extra[@]}"
    done
    stop_broker
}

for round in $(seq "$ROUNDS"); do
    for target in corebus nats; do
        run_group "$round" "$target" websocket
        if [ "$NATIVE" = 1 ]; then run_group "$round" "$target" native; fi
    done
done

# Memory per idle connection: the growth of a fresh broker's resident
# memory, once per broker and transport.
for target in corebus nats; do
    for transport in websocket native; do
        log "$target: a fresh broker for idle connections ($transport)"
        start_broker "$target"
        broker_args "$target"
        # As compare.sh measures it: native corebus subscribers of one topic
        # on its shard (where a connection sits does not change its memory).
        over_args=()
        [ "$transport" = native ] || over "$target" "$transport"
        # shellcheck disable=SC2086 # $IDLE is a list of options
        run_bench "$target, $transport: $IDLE" --target "$target" --url "$URL" $IDLE \
            "${over_args[@]}" "${extra[@]}"
        stop_broker
    done
done

summarize_results \
    "shards/GOMAXPROCS=$SHARDS on CPUs $CPU_LIST" \
    "procedure=$ROUNDS rounds, each broker restarted for each transport every round; the connections scenario once per broker and transport, on a fresh broker" \
    "websocket=corebus --ws-listen (subprotocol corebus.v1), nats-server websocket { no_tls: true }; subscribers through tokio-tungstenite, publishers native"
report_failures
