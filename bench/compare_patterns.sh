#!/usr/bin/env bash
# What pattern subscriptions cost the publishes they do not match: the same
# workloads through one corebus with no pattern subscribed to, then with
# PATTERNS (10,000) held by another client (`--idle-patterns`: `idle-N/*`,
# `*/idle-N`, `idle/N/>`), so that every publish is matched against all of
# them on its owner shard. Two shapes, 128-byte payloads:
#   - pair: one publisher, one subscriber, one topic;
#   - many: 16 publishers, 64 subscribers, 1024 topics.
# For each: delivered messages/s and the broker's CPU time per delivered
# message, the median of ROUNDS rounds, a fresh broker per round, and the
# ratio with patterns to without (the goal: at most 2x). Writes
#   bench/results/<kind>-patterns.jsonl  every run's report
#   bench/results/<kind>-patterns.md     the table
# and exits non-zero if a run failed or lost a message. See
# docs/benchmarks.md, "Wildcard patterns".
#
# Settings (environment): SHARDS (default nproc), ROUNDS (3), DURATION
# (seconds per run, 5), PATTERNS (10000), COREBUS_PORT (17400),
# CARGO_TARGET_DIR (target), STAMP (<machine kind>-patterns).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PATTERNS=${PATTERNS:-10000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
STAMP=${STAMP:-$(machine_kind)-patterns}
command -v python3 >/dev/null || die "python3 is needed to tabulate the runs"

build corebus-only

SHAPES=("pair" "many")
for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS: starting corebus on CPUs $CPU_LIST"
    for shape in "${SHAPES[@]}"; do
        for patterns in 0 "$PATTERNS"; do
            # A fresh broker for each run: the patterns of one run are not
            # left to the next.
            start_broker corebus
            broker_args corebus
            run_bench "round $round/$ROUNDS: $shape, $patterns idle patterns" \
                --target corebus --url "$URL" --scenario "$shape" --size 128 \
                --idle-patterns "$patterns" --duration "$DURATION" "${extra[@]}"
            stop_broker
        done
    done
done

mkdir -p "$RESULTS"
cp "$RUNS" "$RESULTS/$STAMP.jsonl"
python3 - "$RUNS" "$(commit_fact)" "$CPU_LIST" "$ROUNDS" >"$RESULTS/$STAMP.md" <<'PY'
import json, statistics, sys

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
commit, cpus, rounds = sys.argv[2], sys.argv[3], sys.argv[4]
groups = {}
for run in runs:
    variant = run.get("variant") or ""
    patterns = int(variant.split()[0]) if variant.endswith("idle patterns") else 0
    groups.setdefault((run["scenario"], patterns), []).append(run)

def median(rows, field):
    return statistics.median(row[field] for row in rows if row.get(field) is not None)

print("# Pattern subscriptions: what they cost the publishes they do not match\n")
print(f"{commit}; corebus with {runs[0].get('broker_shards')} shards on CPUs {cpus}, the harness beside it; "
      f"128-byte payloads; each cell the median of {rounds} rounds, a fresh broker per run.\n")
print("| shape | patterns held | delivered msg/s | broker CPU µs/msg | CPU ratio to none | goal |")
print("|---|---:|---:|---:|---:|---|")
for scenario in sorted({key[0] for key in groups}):
    base = median(groups[(scenario, 0)], "broker_cpu_us_per_msg")
    for (name, patterns), rows in sorted(groups.items()):
        if name != scenario:
            continue
        cpu = median(rows, "broker_cpu_us_per_msg")
        ratio = cpu / base
        verdict = "–" if patterns == 0 else ("**met** (≤ 2×)" if ratio <= 2 else "not met (≤ 2×)")
        print(f"| {scenario} | {patterns:,} | {median(rows, 'delivered_per_sec'):,.0f} | {cpu:.3f} | {ratio:.2f}× | {verdict} |")
lost = sum(run["lost"] + run["disorder"] for run in runs)
print(f"\nMessages lost or out of order over all runs: {lost}.")
PY
log "results: $RESULTS/$STAMP.jsonl, $RESULTS/$STAMP.md"
cat "$RESULTS/$STAMP.md"
report_failures
