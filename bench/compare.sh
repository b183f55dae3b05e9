#!/usr/bin/env bash
# Runs the standard benchmark suite against corebus, NATS and Redis on this
# machine, one broker after the other, and writes
#   bench/results/<kind>.json  every run's report plus the machine
#   bench/results/<kind>.md    the issue's targets (met / not met), then the
#                              tables with ratios corebus/NATS and corebus/Redis
#   bench/results/<kind>.svg   delivered msgs/s and latency percentiles per broker
# Besides the three brokers it runs the raw baseline (16 KiB pair through the
# harness's own loopback TCP relay, no broker) and corebus `many` once more
# with --shards 1 for the scaling ratio, and `many` from the lean generator
# (`--lean`: corebus's wire protocol spoken directly, little CPU per
# message) with SHARDS shards and with 1. The message-moving runs repeat in
# ROUNDS rounds, each round every broker in turn on a fresh start, and the
# median round stands for each (one noisy run on a shared machine decides
# nothing); the connections scenario runs once per broker.
# See docs/benchmarks.md. Unattended: installs nats-server and redis-server
# from Debian packages when missing (needs root or sudo).
#
# Settings (environment): SHARDS (cores per broker, default nproc), DURATION
# (seconds per throughput run, default 5), LATENCY_DURATION (default 10),
# ROUNDS (default 3),
# RATE (latency scenario msgs/s published, default 10000; each of the 16
# subscribers receives all of them), CONNECTIONS (default auto: as many as
# the open-file limit allows, 19,700 under 20000, at most 100,000),
# COREBUS_PORT / NATS_PORT / REDIS_PORT (defaults 17400 / 14222 / 16379),
# CARGO_TARGET_DIR (where cargo builds, default target). The WebSocket
# scenario is bench/compare_ws.sh; both share bench/lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
LATENCY_DURATION=${LATENCY_DURATION:-10}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}
CONNECTIONS=${CONNECTIONS:-auto}
# shellcheck source=bench/lib.sh
. bench/lib.sh
STAMP=${STAMP:-$(machine_kind)}

# --- prerequisites -----------------------------------------------------------
install_brokers nats-server redis-server
# The connections scenario needs CONNECTIONS + 300 open files in the broker
# and in the harness (see lib.sh).
raise_limits
CONNECTIONS=$(fit_connections "$CONNECTIONS")
MAX_CLIENTS=$((CONNECTIONS + 1000))
build

# --- the standard suite ------------------------------------------------------------
# Each line: extra arguments of one run (the same for every broker). The
# shapes are the performance issue's: 128-byte payloads except the 16 KiB
# pair; fanout 1 -> 64; many 16 publishers -> 1024 topics -> 64 subscriber
# connections (16 topics each); latency 1 -> 16 subscribers at RATE. The
# idle-connections scenario (CONNECTIONS_RUN) runs apart, once per broker.
MANY="--scenario many --publishers 16 --subscribers 64 --topics 1024 --size 128 --duration $DURATION"
LARGE_PAIR="--scenario pair --size 16384 --duration $DURATION"
SUITE=(
    "--scenario pair --size 128 --duration $DURATION"
    "$LARGE_PAIR"
    "--scenario fanout --subscribers 64 --size 128 --duration $DURATION"
    "$MANY"
    "--scenario latency --rate $RATE --subscribers 16 --size 128 --duration $LATENCY_DURATION"
)
CONNECTIONS_RUN="--scenario connections --subscribers $CONNECTIONS --topics 1000 --size 128 --duration 10"

# corebus only, with --acks (first round): the 128-byte throughput runs.
ACKED=("${SUITE[0]}" "${SUITE[2]}" "${SUITE[3]}")
# corebus only, with --no-affinity (first round): the runs whose connections
# use one topic each and sit on its shard in the suite (fanout's too, but
# there it makes no difference).
NO_AFFINITY=("${SUITE[0]}" "${SUITE[4]}")

for round in $(seq "$ROUNDS"); do
    # The raw baseline: no broker; the harness relays the 16 KiB pair through
    # its own loopback TCP relay, which bounds what any broker can deliver here.
    # shellcheck disable=SC2086 # $LARGE_PAIR is a list of options
    run_bench "round $round/$ROUNDS, raw: $LARGE_PAIR" --target raw $LARGE_PAIR

    for target in corebus nats redis; do
        log "round $round/$ROUNDS, $target: starting the broker on CPUs $CPU_LIST"
        start_broker "$target"
        broker_args "$target"
        for args in "${SUITE[@]}"; do
            # shellcheck disable=SC2086 # $args is a list of options
            run_bench "round $round/$ROUNDS, $target: $args" --target "$target" --url "$URL" $args \
                "${extra[@]}"
        done
        if [ "$target" = corebus ] && [ "$round" = 1 ]; then
            # The suite publishes fire-and-forget, as NATS does; the throughput
            # runs again with every publish acknowledged and checked.
            for args in "${ACKED[@]}"; do
                # shellcheck disable=SC2086 # $args is a list of options
                run_bench "$target: $args --acks" --target "$target" --url "$URL" $args \
                    --acks "${extra[@]}"
            done
            # One-topic connections ask for their topic's shard; the same
            # runs again wherever the kernel puts them.
            for args in "${NO_AFFINITY[@]}"; do
                # shellcheck disable=SC2086 # $args is a list of options
                run_bench "$target: $args --no-affinity" --target "$target" --url "$URL" $args \
                    --no-affinity "${extra[@]}"
            done
        fi
        stop_broker
    done

    # Scaling: corebus `many` again with one shard, on the same CPUs; then
    # `many` from the lean generator (which leaves the broker most of the
    # CPUs) on fresh brokers with SHARDS shards and with one.
    if [ "$SHARDS" -ge 2 ]; then
        log "round $round/$ROUNDS, corebus: starting the broker with 1 shard on CPUs $CPU_LIST (scaling run)"
        start_broker corebus 1
        # shellcheck disable=SC2086 # $MANY is a list of options
        run_bench "round $round/$ROUNDS, corebus --shards 1: $MANY" --target corebus --url "$URL" $MANY \
            --broker-pid "$BROKER_PID" --broker-shards 1
        stop_broker
        for shards in "$SHARDS" 1; do
            log "round $round/$ROUNDS, corebus: starting the broker with --shards $shards on CPUs $CPU_LIST (lean scaling run)"
            start_broker corebus "$shards"
            # shellcheck disable=SC2086 # $MANY is a list of options
            run_bench "round $round/$ROUNDS, corebus --shards $shards: $MANY --lean" --target corebus --url "$URL" \
                $MANY --lean --broker-pid "$BROKER_PID" --broker-shards "$shards"
            stop_broker
        done
    elif [ "$round" = 1 ]; then
        log "SHARDS=$SHARDS: no scaling run (it compares SHARDS shards with 1)"
    fi
done

# Memory per connection is the growth of the broker's resident memory:
# measured on a fresh broker, or memory that earlier runs' buffers and replay
# rings left free inside the process would absorb the connections unseen.
for target in corebus nats redis; do
    log "$target: starting a fresh broker for the connections scenario"
    start_broker "$target"
    broker_args "$target"
    # shellcheck disable=SC2086 # $CONNECTIONS_RUN is a list of options
    run_bench "$target: $CONNECTIONS_RUN" --target "$target" --url "$URL" $CONNECTIONS_RUN \
        "${extra[@]}"
    stop_broker
done

summarize_results \
    "shards/GOMAXPROCS=$SHARDS on CPUs $CPU_LIST (scaling run: corebus --shards 1, same CPUs)" \
    "procedure=$ROUNDS rounds, each broker restarted every round; the connections scenario once per broker, on a fresh broker"
report_failures
