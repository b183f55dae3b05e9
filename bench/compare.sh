#!/usr/bin/env bash
# Runs the standard benchmark suite against corebus, NATS and Redis on this
# machine, one broker after the other, and writes
#   bench/results/<date>.json  every run's report plus the machine
#   bench/results/<date>.md    the table, with ratios corebus/NATS and corebus/Redis
#   bench/results/<date>.svg   delivered msgs/s and latency percentiles per broker
# See docs/benchmarks.md. Unattended: installs nats-server and redis-server
# from Debian packages when missing (needs root or sudo).
#
# Settings (environment): SHARDS (cores per broker, default nproc), DURATION
# (seconds per throughput run, default 5), LATENCY_DURATION (default 10),
# RATE (latency scenario msgs/s, default 10000), CONNECTIONS (default 10000),
# COREBUS_PORT / NATS_PORT / REDIS_PORT (defaults 17400 / 14222 / 16379).
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=${SHARDS:-$(nproc)}
DURATION=${DURATION:-5}
LATENCY_DURATION=${LATENCY_DURATION:-10}
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

# corebus holds two descriptors per connection (reader and writer), the
# harness one; keep 1024 spare. Where the hard limit cannot be raised (no
# CAP_SYS_RESOURCE, e.g. in a container), the suite shrinks CONNECTIONS to
# what fits, says so, and the results name the count used.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
FITS=$(( ($(ulimit -n) - 1024) / 2 / 1000 * 1000 ))
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

start_broker() {
    local target=$1 port
    case $target in
        corebus)
            port=$COREBUS_PORT
            port_open "$port" && die "port $port is taken; set COREBUS_PORT"
            taskset -c "$CPU_LIST" target/release/corebus serve \
                --listen "127.0.0.1:$port" --shards "$SHARDS" >"$WORK/broker.log" 2>&1 &
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
# Each line: extra arguments of one run (the same for every broker).
SUITE=(
    "--scenario pair --size 128 --duration $DURATION"
    "--scenario pair --size 16384 --duration $DURATION"
    "--scenario fanout --subscribers 16 --size 128 --duration $DURATION"
    "--scenario many --publishers 8 --subscribers 8 --topics 8 --size 128 --duration $DURATION"
    "--scenario latency --rate $RATE --size 128 --duration $LATENCY_DURATION"
    "--scenario connections --subscribers $CONNECTIONS --size 128 --duration 10"
)

RUNS=$WORK/runs.jsonl
: >"$RUNS"
FAILED=()
for target in corebus nats redis; do
    log "$target: starting the broker on CPUs $CPU_LIST"
    start_broker "$target"
    for args in "${SUITE[@]}"; do
        log "$target: $args"
        # shellcheck disable=SC2086 # $args is a list of options
        if "$BENCH" --target "$target" --url "$URL" $args --broker-pid "$BROKER_PID" --json >>"$RUNS"; then
            :
        else
            status=$?
            FAILED+=("$target $args (exit $status)")
        fi
    done
    stop_broker
done

mkdir -p "$RESULTS"
"$BENCH" summarize --input "$RUNS" \
    --json "$RESULTS/$STAMP.json" --markdown "$RESULTS/$STAMP.md" --svg "$RESULTS/$STAMP.svg" \
    --generated "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --fact "shards/GOMAXPROCS=$SHARDS on CPUs $CPU_LIST" \
    --fact "corebus=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')" \
    --fact "nats-server=$(nats-server --version | awk '{print $NF}')" \
    --fact "redis-server=$(redis-server --version | awk '{print $3}' | sed 's/v=//')"
log "results: $RESULTS/$STAMP.json, $RESULTS/$STAMP.md, $RESULTS/$STAMP.svg"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'compare.sh: runs that failed (see the messages above):\n' >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
