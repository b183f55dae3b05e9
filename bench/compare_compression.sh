#!/usr/bin/env bash
# Payload compression: the same 16 KiB JSON-like payloads (`--payload json`)
# published as they are and zstd-compressed by the publishers
# (`--compress`: the client's Compression::zstd(), level 3), through one
# corebus on the same CPUs, in two shapes:
#   - fanout 1 -> FANOUT_SUBSCRIBERS (16): one publisher, every subscriber
#     decompresses each message;
#   - pair: one publisher, one subscriber.
# For each run: delivered messages/s, delivered payload MB/s (10^6 bytes of
# the uncompressed payload: what the applications got), the bytes the broker
# carried per message, and the broker's and the harness's CPU time per
# delivered message. Every cell is the median of ROUNDS rounds, a fresh
# broker per round. Writes
#   bench/results/<kind>-compression.jsonl  every run's report
#   bench/results/<kind>-compression.md     the table
# and exits non-zero if a run failed or lost a message. See
# docs/benchmarks.md, "Compression".
#
# Settings (environment): SHARDS (default nproc), ROUNDS (3), DURATION
# (seconds per run, 5), SIZE (16384), FANOUT_SUBSCRIBERS (16), COREBUS_PORT
# (17400), CARGO_TARGET_DIR (target), STAMP (<machine kind>-compression).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
SIZE=${SIZE:-16384}
FANOUT_SUBSCRIBERS=${FANOUT_SUBSCRIBERS:-16}
# shellcheck source=bench/lib.sh
. bench/lib.sh
STAMP=${STAMP:-$(machine_kind)-compression}
command -v python3 >/dev/null || die "python3 is needed to tabulate the runs"

build corebus-only

SHAPES=("fanout --subscribers $FANOUT_SUBSCRIBERS" "pair")
for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS: starting corebus on CPUs $CPU_LIST"
    start_broker corebus
    broker_args corebus
    for shape in "${SHAPES[@]}"; do
        for compress in "" "--compress"; do
            # shellcheck disable=SC2086 # $shape and $compress are lists of options
            run_bench "round $round/$ROUNDS: $shape, $SIZE B JSON ${compress:-plain}" \
                --target corebus --url "$URL" --scenario $shape --size "$SIZE" \
                --payload json $compress --duration "$DURATION" "${extra[@]}"
        done
    done
    stop_broker
done

mkdir -p "$RESULTS"
cp "$RUNS" "$RESULTS/$STAMP.jsonl"
python3 - "$RUNS" "$(commit_fact)" "$CPU_LIST" "$ROUNDS" >"$RESULTS/$STAMP.md" <<'EOF'
import json, statistics, sys

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
commit, cpus, rounds = sys.argv[2], sys.argv[3], sys.argv[4]
groups = {}
for run in runs:
    key = (run["scenario"], run["subscribers"], run.get("compressed_size") is not None)
    groups.setdefault(key, []).append(run)

def median(rows, field):
    values = [row[field] for row in rows if row.get(field) is not None]
    return statistics.median(values) if values else float("nan")

print(f"# Compression: {runs[0]['size']}-byte JSON payloads, plain and zstd-compressed\n")
print(f"{commit}; corebus with {runs[0].get('broker_shards')} shards on CPUs {cpus}, the harness beside it; "
      f"each cell the median of {rounds} rounds.\n")
print("| shape | payloads | bytes carried per message | delivered msg/s | delivered payload MB/s | broker CPU µs/msg | harness CPU µs/msg |")
print("|---|---|---:|---:|---:|---:|---:|")
for (scenario, subscribers, compressed), rows in sorted(groups.items()):
    shape = f"fanout 1→{subscribers}" if scenario == "fanout" else scenario
    carried = rows[0].get("compressed_size") or rows[0]["size"]
    print(f"| {shape} | {'zstd level 3' if compressed else 'plain'} | {carried} "
          f"| {median(rows, 'delivered_per_sec'):,.0f} | {median(rows, 'delivered_mb_per_sec'):,.0f} "
          f"| {median(rows, 'broker_cpu_us_per_msg'):.2f} | {median(rows, 'harness_cpu_us_per_msg'):.2f} |")
lost = sum(run["lost"] + run["disorder"] for run in runs)
print(f"\nMessages lost or out of order over all runs: {lost}.")
EOF
log "results: $RESULTS/$STAMP.jsonl, $RESULTS/$STAMP.md"
cat "$RESULTS/$STAMP.md"
report_failures
