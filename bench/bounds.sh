#!/usr/bin/env bash
# Memory bounds under hostile and slow peers: each scenario against a fresh
# release broker on loopback; prints one JSON line per run and writes them to
# bench/results/<machine kind>-bounds.jsonl (bench/results/README.md). Exit status non-zero if a bound is not met.
# Figures quoted in docs/security.md come from this script.
#
#   bench/bounds.sh            # every scenario (about three minutes)
#   SECONDS_EACH=5 bench/bounds.sh   # shorter stalled runs
#   ONLY='stalled 61440' bench/bounds.sh   # the scenarios whose label matches
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
ulimit -n "$(ulimit -H -n)"

cargo build --release -q -p corebus -p corebus-bench
target=${CARGO_TARGET_DIR:-target}
broker=$target/release/corebus
bench=$target/release/corebus-bench
port=${PORT:-7411}
seconds=${SECONDS_EACH:-30}
only=${ONLY:-}
# shellcheck source=bench/lib.sh
. bench/lib.sh
out=bench/results/$(machine_kind)-bounds.jsonl
[ -n "$only" ] || : > "$out"
status=0
pid=

stop_broker() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi
}
trap stop_broker EXIT

start_broker() {
  "$broker" serve --listen "127.0.0.1:$port" --log-level warn "$@" &
  pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "bounds.sh: the broker did not start" >&2
  exit 1
}

run() {
  local label=$1; shift
  if line=$("$bench" bounds --server "127.0.0.1:$port" --broker-pid "$pid" "$@"); then
    verdict=met
  else
    verdict="NOT MET"; status=1
  fi
  echo "{\"scenario\":\"$label\",\"verdict\":\"$verdict\",\"report\":$line}" | tee -a "$out"
}

# Item 1: 2,000 connections announcing max_frame (refused at once), then
# 2,000 announcing exactly the pre-handshake limit (kept until the deadline).
wanted() { [ -z "$only" ] || [[ "$1" =~ $only ]]; }

for announce in 1048576 16384; do
  wanted "prefix $announce" || continue
  start_broker --handshake-timeout 60s
  run "prefix $announce" prefix --connections 2000 --announce "$announce"
  stop_broker
done

# Item 2: one stalled and one healthy subscriber on each of 64 topics. The
# replay rings are a separate bound (ring_bytes per topic, topic_memory in
# all); they are kept small so that the figure shows the outboxes' bound.
for payload in 600 4096 61440; do
  wanted "stalled $payload" || continue
  start_broker --outbox-limit 8388608 --ring-messages 1
  run "stalled $payload" stalled --topics 64 --payload "$payload" --seconds "$seconds" --outbox-limit 8388608
  stop_broker
done
exit $status
