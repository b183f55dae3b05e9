#!/usr/bin/env bash
# The cluster scenario: three corebus nodes (127.0.0.1, .2, .3, gossiping
# through the first) against a three-node NATS cluster (routes), one after
# the other, each node with the same CPUs and one core's worth of threads
# (corebus --shards 1, NATS GOMAXPROCS=1). One publisher on node 1,
# subscribers spread over the three nodes in turn, 128-byte payloads:
#   - delivered msg/s: `many` (1 publisher, CLUSTER_SUBSCRIBERS subscribers,
#     CLUSTER_TOPICS topics), flat out under flow control;
#   - latency at a fixed rate (CLUSTER_RATE messages/s on one topic read by
#     CLUSTER_SUBSCRIBERS / 10 subscribers), twice for corebus: with the
#     publisher on the topic's owner node, and on another node (the
#     routing tier's cost: --publisher-on); NATS runs the same twice with
#     the publisher on node 1 (it has no owner).
# Writes
#   bench/results/<kind>-cluster.json  every run's report plus the machine
#   bench/results/<kind>-cluster.md    the tables (ratios corebus / NATS)
#   bench/results/<kind>-cluster.svg   the picture
# and exits non-zero if a run failed or lost a message. See
# docs/benchmarks.md. Installs nats-server from Debian's package when it is
# missing (needs root or sudo).
#
# Settings (environment): ROUNDS (3), DURATION (seconds per throughput run,
# 5), LATENCY_DURATION (5), CLUSTER_RATE (2000), CLUSTER_SUBSCRIBERS (300),
# CLUSTER_TOPICS (30), PIN_SHARDS (false: corebus's --pin-shards), CLUSTER_BASE_PORT (17500: node n uses BASE+n for
# clients and BASE+10+n for the cluster), CARGO_TARGET_DIR (target), STAMP
# (<machine kind>-cluster, see bench/results/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
# Three nodes share the same CPUs: pinned, each node's one shard would sit
# on the first CPU of the list, all three on one core, while NATS's threads
# move freely. Unpinned, as a host shared by several processes is run.
PIN_SHARDS=${PIN_SHARDS:-false}
DURATION=${DURATION:-5}
LATENCY_DURATION=${LATENCY_DURATION:-5}
CLUSTER_RATE=${CLUSTER_RATE:-2000}
CLUSTER_SUBSCRIBERS=${CLUSTER_SUBSCRIBERS:-300}
CLUSTER_TOPICS=${CLUSTER_TOPICS:-30}
BASE=${CLUSTER_BASE_PORT:-17500}
# shellcheck source=bench/lib.sh
. bench/lib.sh
STAMP=${STAMP:-$(machine_kind)-cluster}

install_brokers nats-server
raise_limits
build

NODES=(1 2 3)
PIDS=()
stop_nodes() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap 'stop_nodes; cleanup' EXIT

port_open_at() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() { # host port pid
    for _ in $(seq 100); do
        port_open_at "$1" "$2" && return 0
        kill -0 "$3" 2>/dev/null || { cat "$WORK"/node*.log >&2; die "a node exited at start-up"; }
        sleep 0.1
    done
    cat "$WORK"/node*.log >&2
    die "nothing listens on $1:$2 after 10 s"
}

# Starts the three nodes of `target` and sets URLS (their client addresses,
# node 1 first).
start_nodes() { # target
    local target=$1 n host urls=()
    for n in "${NODES[@]}"; do
        host=127.0.0.$n
        port_open_at "$host" $((BASE + n)) && die "port $host:$((BASE + n)) is taken; set CLUSTER_BASE_PORT"
        case $target in
            corebus)
                taskset -c "$CPU_LIST" "$COREBUS" serve --shards 1 --pin-shards="$PIN_SHARDS" \
                    --listen "$host:$((BASE + n))" \
                    --cluster-listen "$host:$((BASE + 10 + n))" \
                    --seed "127.0.0.1:$((BASE + 11))" >"$WORK/node$n.log" 2>&1 &
                urls+=("$host:$((BASE + n))")
                ;;
            nats)
                GOMAXPROCS=1 taskset -c "$CPU_LIST" nats-server -a "$host" -p $((BASE + n)) \
                    --cluster_name bench --cluster "nats://$host:$((BASE + 10 + n))" \
                    --routes "nats://127.0.0.1:$((BASE + 11)),nats://127.0.0.2:$((BASE + 12)),nats://127.0.0.3:$((BASE + 13))" \
                    >"$WORK/node$n.log" 2>&1 &
                urls+=("nats://$host:$((BASE + n))")
                ;;
        esac
        PIDS+=($!)
        wait_for "$host" $((BASE + n)) "$!"
    done
    URLS=("${urls[@]}")
    # Both kinds of cluster settle (gossip, routes) before the load.
    sleep 2
}

LATENCY_SUBSCRIBERS=$((CLUSTER_SUBSCRIBERS / 10))
THROUGHPUT="--scenario many --publishers 1 --subscribers $CLUSTER_SUBSCRIBERS --topics $CLUSTER_TOPICS --size 128 --duration $DURATION"
LATENCY="--scenario latency --publishers 1 --subscribers $LATENCY_SUBSCRIBERS --topics 1 --size 128 --rate $CLUSTER_RATE --duration $LATENCY_DURATION"

run_group() { # round target
    local round=$1 target=$2 spread place direct=()
    log "round $round/$ROUNDS, $target: three nodes on CPUs $CPU_LIST"
    start_nodes "$target"
    spread=$(IFS=,; echo "${URLS[*]}")
    # shellcheck disable=SC2086 # $THROUGHPUT is a list of options
    run_bench "round $round/$ROUNDS, $target: $THROUGHPUT" --target "$target" --url "${URLS[0]}" \
        --subscriber-urls "$spread" $THROUGHPUT
    # corebus: the harness asks node 1 which node owns the topic and puts
    # the publisher there, then elsewhere. NATS has no owner: node 1 both
    # times, under the same labels.
    for place in owner other; do
        if [ "$target" = corebus ]; then
            direct=(--publisher-on "$place")
        elif [ "$place" = owner ]; then
            direct=(--variant "publisher on the owner node")
        else
            direct=(--variant "publisher on another node")
        fi
        # shellcheck disable=SC2086 # $LATENCY is a list of options
        run_bench "round $round/$ROUNDS, $target: $LATENCY, publisher on the $place node" \
            --target "$target" --url "${URLS[0]}" --subscriber-urls "$spread" $LATENCY "${direct[@]}"
    done
    stop_nodes
}

for round in $(seq "$ROUNDS"); do
    for target in corebus nats; do
        run_group "$round" "$target"
    done
done

summarize_results \
    "nodes=3 per broker on 127.0.0.1-3, each on CPUs $CPU_LIST with one core's worth of threads (corebus --shards 1, NATS GOMAXPROCS=1)" \
    "procedure=$ROUNDS rounds, fresh nodes for each broker every round; publisher on node 1 (latency: on the topic's owner, then on another node; NATS has no owner: node 1 both times), subscribers spread over the three nodes in turn" \
    "cluster=corebus gossip through 127.0.0.1 (no secret, loopback); NATS routes between all three"
report_failures
