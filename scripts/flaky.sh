#!/usr/bin/env bash
# Finds flaky tests: builds once, runs the selected tests RUNS times under the
# checked profile with no retries (nextest profile `flaky`, which writes a
# JUnit report of each run), then prints, for every test that failed at
# least once, in how many runs it failed. Exits 1 when any did. See
# docs/testing.md.
#
#   scripts/flaky.sh 20                          # every integration test binary
#   scripts/flaky.sh 50 'test(/reconnect|resume/)'   # a nextest filterset
#   NEXTEST_TEST_THREADS=1 scripts/flaky.sh 20   # one test at a time
#
# Each run's output and report are kept in target/flaky/ (under the
# workspace root, where nextest writes its reports whatever CARGO_TARGET_DIR
# says).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/flaky.sh RUNS [FILTERSET]   (default filterset: 'kind(test)')" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] && [[ $1 =~ ^[1-9][0-9]*$ ]] || usage
runs=$1
filter=${2:-kind(test)}
logs=target/flaky
report=target/nextest/flaky/junit.xml
rm -rf "$logs"
mkdir -p "$logs"
rm -f "$report"

nextest=(cargo nextest run --cargo-profile checked --workspace --profile flaky -E "$filter")
"${nextest[@]}" --no-run
for run in $(seq "$runs"); do
    if "${nextest[@]}" >"$logs/run-$run.log" 2>&1; then
        verdict=passed
    else
        verdict="FAILED (see $logs/run-$run.log)"
    fi
    # A run that fails before any test ran leaves no report: that is not a flaky test.
    [ -f "$report" ] || { echo "run $run: no JUnit report; see $logs/run-$run.log" >&2; exit 1; }
    mv "$report" "$logs/run-$run.xml"
    echo "run $run/$runs: $verdict"
done

python3 - "$runs" "$logs" <<'PY'
import collections, pathlib, sys
import xml.etree.ElementTree as ET

runs, logs = int(sys.argv[1]), pathlib.Path(sys.argv[2])
seen, failed = collections.Counter(), collections.Counter()
for report in sorted(logs.glob("run-*.xml")):
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')} {case.get('name')}"
        seen[name] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed[name] += 1
print(f"{len(seen)} tests, {runs} runs")
if not failed:
    print("no test failed")
    sys.exit(0)
print("failed  test")
for name, count in sorted(failed.items(), key=lambda item: (-item[1], item[0])):
    print(f"{count:>3}/{seen[name]:<3} {name}")
sys.exit(1)
PY
