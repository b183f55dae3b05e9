# shellcheck shell=bash disable=SC2034 # its variables are for the scripts that source it
# Shared by bench/compare.sh and bench/compare_ws.sh (sourced, not run):
# the CPUs every broker gets, installing the brokers, the open-file limit,
# building, starting and stopping one broker at a time, and running the
# harness into a file of reports. Expects `set -euo pipefail` and the
# repository root as the working directory.
#
# Settings read here (environment): SHARDS (cores per broker, default nproc),
# COREBUS_PORT / NATS_PORT / REDIS_PORT (17400 / 14222 / 16379),
# COREBUS_WS_PORT / NATS_WS_PORT (17401 / 14223: the WebSocket listeners,
# started only when WS_LISTENERS=1), CARGO_TARGET_DIR (default target).

SHARDS=${SHARDS:-$(nproc)}
COREBUS_PORT=${COREBUS_PORT:-17400}
NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
COREBUS_WS_PORT=${COREBUS_WS_PORT:-17401}
NATS_WS_PORT=${NATS_WS_PORT:-14223}
WS_LISTENERS=${WS_LISTENERS:-0}
MAX_CLIENTS=${MAX_CLIENTS:-11000}
RESULTS=bench/results
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET_DIR/release/corebus-bench
COREBUS=$TARGET_DIR/release/corebus

# The kind of machine, which names result files: bench/results/ keeps the
# latest run of each benchmark per kind (older runs are in git history).
# MACHINE overrides it; by default the CPU's make and the CPU count
# (epyc-2cpu, xeon-16cpu).
machine_kind() {
    if [ -n "${MACHINE:-}" ]; then echo "$MACHINE"; return; fi
    local model
    model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    case "$model" in
    *EPYC*) model=epyc ;;
    *Xeon*) model=xeon ;;
    *) model=$(printf '%s' "${model:-cpu}" | tr -cs 'A-Za-z0-9' '-' | tr 'A-Z' 'a-z' | cut -c1-20) ;;
    esac
    echo "${model%-}-$(nproc)cpu"
}

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

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

# Installs the named Debian packages whose command is missing (apt-get
# update once, then install; needs root or sudo).
install_brokers() { # package...
    local missing=() package
    for package in "$@"; do
        command -v "$package" >/dev/null || missing+=("$package")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    log "installing ${missing[*]} (Debian packages)"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "run as root or install sudo: apt-get needs root"
        sudo=sudo
    fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
    # The redis-server package may start a system instance; it listens on
    # 6379, not on our port, and is left alone.
}

# The broker and the harness are separate processes, each with this shell's
# open-file limit. Each needs one descriptor per connection, plus a few:
# the harness 256 (checked by corebus-bench itself), corebus about 15 when
# idle with 2 shards (listeners, io_uring rings, eventfds, logs), NATS and
# Redis a few more. FILES_SPARE covers them all: a limit of 20000 runs
# 19,700 connections. CONNECTIONS=auto (the default) takes the most the
# limit allows, up to MAX_AUTO_CONNECTIONS; a count asked for that does not
# fit shrinks to the largest multiple of 100 that does, with a warning.
FILES_SPARE=300
MAX_AUTO_CONNECTIONS=100000
raise_limits() {
    ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    # glommio needs locked memory for io_uring.
    ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -Hl)" 2>/dev/null || true
}
fit_connections() { # wanted count or auto -> the count to run
    local fits=$(( ($(ulimit -n) - FILES_SPARE) / 100 * 100 ))
    if [ "$1" = auto ]; then
        [ "$fits" -ge 1000 ] || die "open-file limit $(ulimit -n) is too low for the connections scenario; raise it (ulimit -n)"
        echo $(( fits < MAX_AUTO_CONNECTIONS ? fits : MAX_AUTO_CONNECTIONS ))
    elif [ "$fits" -lt "$1" ]; then
        [ "$fits" -ge 1000 ] || die "open-file limit $(ulimit -n) is too low for the connections scenario; raise it (ulimit -n)"
        printf '%s: WARNING: the open-file limit is %s (hard %s): running the connections scenario with %s connections instead of %s\n' \
            "$(basename "$0")" "$(ulimit -n)" "$(ulimit -Hn)" "$fits" "$1" >&2
        echo "$fits"
    else
        echo "$1"
    fi
}

build() { # [corebus-only]: without the peer brokers' clients in the harness
    command -v cargo >/dev/null || die "cargo is needed to build corebus and the harness"
    log "building corebus and corebus-bench (release)"
    if [ "${1:-}" = corebus-only ]; then
        cargo build --release -p corebus -p corebus-bench
    else
        cargo build --release -p corebus -p corebus-bench --features corebus-bench/peers
    fi
}

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

# Starts one broker on the CPUs of CPU_LIST and sets BROKER_PID, URL (its
# native address for the harness) and, with WS_LISTENERS=1, WS_URL (its
# WebSocket listener's). Redis admits MAX_CLIENTS connections (11000).
start_broker() { # target [corebus shards, default SHARDS]
    local target=$1 shards=${2:-$SHARDS} port ws_args=()
    WS_URL=""
    case $target in
        corebus)
            port=$COREBUS_PORT
            port_open "$port" && die "port $port is taken; set COREBUS_PORT"
            if [ "$WS_LISTENERS" = 1 ]; then
                port_open "$COREBUS_WS_PORT" && die "port $COREBUS_WS_PORT is taken; set COREBUS_WS_PORT"
                ws_args=(--ws-listen "127.0.0.1:$COREBUS_WS_PORT")
                WS_URL=ws://127.0.0.1:$COREBUS_WS_PORT/v1/ws
            fi
            taskset -c "$CPU_LIST" "$COREBUS" serve \
                --listen "127.0.0.1:$port" --shards "$shards" "${ws_args[@]}" >"$WORK/broker.log" 2>&1 &
            ;;
        nats)
            port=$NATS_PORT
            port_open "$port" && die "port $port is taken; set NATS_PORT"
            # Core NATS only (no JetStream): nothing is persisted. Its
            # WebSocket listener exists only in a configuration file.
            : >"$WORK/nats.conf"
            if [ "$WS_LISTENERS" = 1 ]; then
                port_open "$NATS_WS_PORT" && die "port $NATS_WS_PORT is taken; set NATS_WS_PORT"
                printf 'websocket {\n  listen: "127.0.0.1:%s"\n  no_tls: true\n}\n' \
                    "$NATS_WS_PORT" >"$WORK/nats.conf"
                WS_URL=ws://127.0.0.1:$NATS_WS_PORT
            fi
            GOMAXPROCS=$SHARDS taskset -c "$CPU_LIST" nats-server -c "$WORK/nats.conf" \
                -a 127.0.0.1 -p "$port" >"$WORK/broker.log" 2>&1 &
            ;;
        redis)
            port=$REDIS_PORT
            port_open "$port" && die "port $port is taken; set REDIS_PORT"
            # No persistence; room for every idle connection. Redis runs
            # commands on one thread by design; it gets the same CPUs.
            taskset -c "$CPU_LIST" redis-server --bind 127.0.0.1 --port "$port" \
                --save '' --appendonly no --maxclients "$MAX_CLIENTS" \
                --daemonize no >"$WORK/broker.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    wait_for_port "$port"
    if [ -n "$WS_URL" ]; then
        case $target in
            corebus) wait_for_port "$COREBUS_WS_PORT" ;;
            nats) wait_for_port "$NATS_WS_PORT" ;;
        esac
    fi
    URL=$(case $target in
        corebus) echo "127.0.0.1:$port" ;;
        nats) echo "nats://127.0.0.1:$port" ;;
        redis) echo "redis://127.0.0.1:$port" ;;
    esac)
}

broker_args() { # target: the harness's extra arguments for it, in `extra`
    extra=(--broker-pid "$BROKER_PID")
    if [ "$1" = corebus ]; then extra+=(--broker-shards "$SHARDS"); fi
}

# Each run appends its report to RUNS; a failed run is listed in FAILED.
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

# The commit measured, marked when the working tree differs from it.
commit_fact() {
    echo "corebus=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- . ':(exclude)bench/results' 2>/dev/null || echo '+changes')"
}

# Writes RESULTS/STAMP.json, .md and .svg from the runs, with the facts
# given, the commit and the peer versions (redis-server's when it ran), and
# says where they are.
summarize_results() { # fact...
    local facts=() fact
    for fact in "$@" "$(commit_fact)" "nats-server=$(nats-server --version | awk '{print $NF}')"; do
        facts+=(--fact "$fact")
    done
    if grep -Eq '"target": *"redis"' "$RUNS"; then
        facts+=(--fact "redis-server=$(redis-server --version | awk '{print $3}' | sed 's/v=//')")
    fi
    mkdir -p "$RESULTS"
    "$BENCH" summarize --input "$RUNS" \
        --json "$RESULTS/$STAMP.json" --markdown "$RESULTS/$STAMP.md" --svg "$RESULTS/$STAMP.svg" \
        --generated "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${facts[@]}"
    log "results: $RESULTS/$STAMP.json, $RESULTS/$STAMP.md, $RESULTS/$STAMP.svg"
}

report_failures() {
    if [ ${#FAILED[@]} -gt 0 ]; then
        printf '%s: runs that failed (see the messages above):\n' "$(basename "$0")" >&2
        printf '  %s\n' "${FAILED[@]}" >&2
        exit 1
    fi
}
