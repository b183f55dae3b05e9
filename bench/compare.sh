#!/usr/bin/env bash
# Runs the standard benchmark suite against corebus, NATS and Redis on this
# machine, one broker after the other, and writes
#   bench/results/<date>.json  every run's report plus the machine
#   bench/results/<date>.md    the issue's targets (met / not met), then the
#                              tables with ratios corebus/NATS and corebus/Redis
#   bench/results/<date>.svg   delivered msgs/s and latency percentiles per broker
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
# subscribers receives all of them), CONNECTIONS (default 10000),
# COREBUS_PORT / NATS_PORT / REDIS_PORT (defaults 17400 / 14222 / 16379).
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=${SHARDS:-$(nproc)}
DURATION=${DURATION:-5}
LATENCY_DURATION=${LATENCY_DURATION:-10}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}
CONNECTIONS=${CONNECTIONS:-10000}
COREBUS_PORT=${COREBUS_PORT:-17400}
NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
RESULTS=bench/results
STAMP=$(date -u +%Y-%m-%d)
BENCH=target/release/corebus-bench
# Every broker gets the same CPUs: the first SHARDS of this process's set.
first_cpus() { # "0-3,8" 2 -> "0,1"
    local parts part lo hi cpu out=()
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        lo=${part%-*} hi=${part#*-}
        for ((cpu = lo; cpu <= hi && ${#out[@]} < $2; cpu++)); do out+=("$cpu"); done
    done
    (IFS=,; echo "${out[*]}")
}
CPU_LIST=$(first_cpus "$(taskset -pc $$ | sed 's/.*: //')" "$SHARDS")

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------
if ! command -v nats-server >/dev/null || ! command -v redis-server >/dev/null; then
    log "installing nats-server and redis-server (Debian packages)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "run as root or install sudo: apt-get needs root"
        SUDO=sudo
    fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y nats-server redis-server
    # The redis-server package may start a system instance; it listens on
    # 6379, not on our port, and is left alone.
fi
command -v cargo >/dev/null || die "cargo is needed to build corebus and the harness"

# The broker and the harness are separate processes, each with this shell's
# open-file limit. The harness needs one descriptor per connection (plus 256
# spare, checked by corebus-bench itself); corebus needs two (the socket and
# its writer's dup) plus BROKER_SPARE for listeners, io_uring rings, eventfds
# and logs (15 when idle with 2 shards), which is what binds: 10,000
# connections need a limit of 2 x 10,000 + BROKER_SPARE = 20,200. Where the
# hard limit cannot be raised (no CAP_SYS_RESOURCE, e.g. in a container), the
# suite shrinks CONNECTIONS to the largest multiple of 100 that fits (9,900
# under a hard limit of 20000), says so, and the results name the count used.
BROKER_SPARE=200
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
FITS=$(( ($(ulimit -n) - BROKER_SPARE) / 2 / 100 * 100 ))
if [ "$FITS" -lt "$CONNECTIONS" ]; then
    [ "$FITS" -ge 1000 ] || die "open-file limit $(ulimit -n) is too low for the connections scenario; raise it (ulimit -n)"
    printf 'compare.sh: WARNING: the open-file limit is %s (hard %s): running the connections scenario with %s connections instead of %s\n' \
        "$(ulimit -n)" "$(ulimit -Hn)" "$FITS" "$CONNECTIONS" >&2
    CONNECTIONS=$FITS
fi
# glommio needs locked memory for io_uring.
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -Hl)" 2>/dev/null || true

log "building corebus and corebus-bench (release)"
cargo build --release -p corebus -p corebus-bench

# --- broker lifecycle ----------------------------------------------------------
WORK=$(mktemp -d)
BROKER_PID=""
stop_broker() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
}
cleanup() {
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
    for _ in $(seq 100); do
        port_open "$1" && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; die "the broker exited at start-up"; }
        sleep 0.1
    done
    cat "$WORK/broker.log" >&2
    die "nothing listens on 127.0.0.1:$1 after 10 s"
}

start_broker() { # target [corebus shards, default SHARDS]
    local target=$1 shards=${2:-$SHARDS} port
    case $target in
        corebus)
            port=$COREBUS_PORT
            port_open "$port" && die "port $port is taken; set COREBUS_PORT"
            taskset -c "$CPU_LIST" target/release/corebus serve \
                --listen "127.0.0.1:$port" --shards "$shards" >"$WORK/broker.log" 2>&1 &
            ;;
        nats)
            port=$NATS_PORT
            port_open "$port" && die "port $port is taken; set NATS_PORT"
            # Core NATS only (no JetStream): nothing is persisted.
            GOMAXPROCS=$SHARDS taskset -c "$CPU_LIST" nats-server \
                -a 127.0.0.1 -p "$port" >"$WORK/broker.log" 2>&1 &
            ;;
        redis)
            port=$REDIS_PORT
            port_open "$port" && die "port $port is taken; set REDIS_PORT"
            # No persistence; room for every idle connection. Redis runs
            # commands on one thread by design; it gets the same CPUs.
            taskset -c "$CPU_LIST" redis-server --bind 127.0.0.1 --port "$port" \
                --save '' --appendonly no --maxclients $((CONNECTIONS + 1000)) \
                --daemonize no >"$WORK/broker.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    wait_for_port "$port"
    URL=$(case $target in
        corebus) echo "127.0.0.1:$port" ;;
        nats) echo "nats://127.0.0.1:$port" ;;
        redis) echo "redis://127.0.0.1:$port" ;;
    esac)
}

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
CONNECTIONS_RUN="--scenario connections --subscribers $CONNECTIONS --size 128 --duration 10"

# corebus only, with --acks (first round): the 128-byte throughput runs.
ACKED=("${SUITE[0]}" "${SUITE[2]}" "${SUITE[3]}")
# corebus only, with --no-affinity (first round): the runs whose connections
# use one topic each and sit on its shard in the suite (fanout's too, but
# there it makes no difference).
NO_AFFINITY=("${SUITE[0]}" "${SUITE[4]}")

RUNS=$WORK/runs.jsonl
: >"$RUNS"
FAILED=()
run_bench() { # label, then corebus-bench arguments
    local label=$1 status
    shift
    log "$label"
    if "$BENCH" "$@" --json >>"$RUNS"; then
        :
    else
        status=$?
        FAILED+=("$label (exit $status)")
    fi
}

broker_args() { # target: the harness's extra arguments for it
    extra=(--broker-pid "$BROKER_PID")
    if [ "$1" = corebus ]; then extra+=(--broker-shards "$SHARDS"); fi
}

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

mkdir -p "$RESULTS"
"$BENCH" summarize --input "$RUNS" \
    --json "$RESULTS/$STAMP.json" --markdown "$RESULTS/$STAMP.md" --svg "$RESULTS/$STAMP.svg" \
    --generated "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --fact "shards/GOMAXPROCS=$SHARDS on CPUs $CPU_LIST (scaling run: corebus --shards 1, same CPUs)" \
    --fact "procedure=$ROUNDS rounds, each broker restarted every round; the connections scenario once per broker, on a fresh broker" \
    --fact "corebus=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- . ':(exclude)bench/results' 2>/dev/null || echo '+changes')" \
    --fact "nats-server=$(nats-server --version | awk '{print $NF}')" \
    --fact "redis-server=$(redis-server --version | awk '{print $3}' | sed 's/v=//')"
log "results: $RESULTS/$STAMP.json, $RESULTS/$STAMP.md, $RESULTS/$STAMP.svg"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'compare.sh: runs that failed (see the messages above):\n' >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
