#!/usr/bin/env bash
# What a webhook whose endpoint never answers costs publishing. One release
# broker on loopback; ROUNDS times in turn, the same acknowledged pair run
# (corebus-bench --scenario pair --acks) with no webhook, then with a webhook
# that takes every topic of the bench's namespace and posts to an endpoint
# that accepts connections and never answers (webhook_queue 64,
# webhook_timeout 60s). Prints the best rate of each and their ratio; exits
# 1 when the ratio is below MIN_RATIO. The test suite checks only that
# publishing never waits for such an endpoint and that the drops are counted
# (broker/tests/webhooks.rs); the figure comes from here. See
# docs/benchmarks.md.
#
#   bench/webhook_hang.sh                        # 3 rounds of 5 s each way
#   ROUNDS=5 DURATION=10 bench/webhook_hang.sh
#
# Settings (environment): ROUNDS (3), DURATION (seconds per run, 5),
# MIN_RATIO (0.6), SHARDS (default nproc), PORT (7412). Needs python3 for
# the endpoint and for reading the reports.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true

rounds=${ROUNDS:-3}
duration=${DURATION:-5}
min_ratio=${MIN_RATIO:-0.6}
shards=${SHARDS:-$(nproc)}
port=${PORT:-7412}
server=127.0.0.1:$port

cargo build --release -q -p corebus -p corebus-bench
target=${CARGO_TARGET_DIR:-target}
broker=$target/release/corebus
bench=$target/release/corebus-bench

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# The endpoint: accepts every connection, reads nothing, answers nothing.
python3 -u -c '
import socket
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1024)
print(listener.getsockname()[1], flush=True)
held = []
while True:
    held.append(listener.accept()[0])
' >"$work/endpoint.port" &
pids+=($!)

"$broker" serve --listen "$server" --shards "$shards" --log-level warn \
    --data-dir "$work/data" --webhook-allow-networks 127.0.0.0/8 \
    --webhook-queue 64 --webhook-timeout 60s >/dev/null &
pids+=($!)
for _ in $(seq 100); do
    if [ -s "$work/endpoint.port" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    sleep 0.1
done
endpoint_port=$(cat "$work/endpoint.port")
[ -n "$endpoint_port" ] || { echo "webhook_hang.sh: the endpoint did not start" >&2; exit 1; }

# Acknowledged publishes per second of one pair run (the bench exits non-zero
# when a message is lost).
rate() {
    "$bench" --target corebus --url "$server" --scenario pair --acks \
        --duration "$duration" --json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["delivered_per_sec"])'
}

best_without=0
best_with=0
for round in $(seq "$rounds"); do
    without=$(rate)
    id=$("$broker" webhook add --server "$server" --url "http://127.0.0.1:$endpoint_port/hook" \
        --ns bench --topic "" --prefix | head -n 1 | cut -d ' ' -f 1)
    with=$(rate)
    "$broker" webhook remove --server "$server" "$id" >/dev/null
    echo "round $round: ${without%.*}/s without a webhook, ${with%.*}/s with a hanging one"
    best_without=$(python3 -c "print(max($best_without, $without))")
    best_with=$(python3 -c "print(max($best_with, $with))")
done
ratio=$(python3 -c "print(f'{$best_with / $best_without:.2f}')")
echo "best of $rounds: ${best_without%.*}/s without, ${best_with%.*}/s with a hanging webhook; ratio $ratio (at least $min_ratio wanted)"
python3 -c "import sys; sys.exit(0 if $ratio >= $min_ratio else 1)"
