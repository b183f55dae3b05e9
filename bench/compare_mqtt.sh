#!/usr/bin/env bash
# MQTT: corebus's MQTT listener, Mosquitto and nats-server's MQTT listener,
# one after the other on the same CPUs, each loaded by `corebus-bench mqtt`
# (the same MQTT 3.1.1 client for all three: nats-server speaks no 5.0 and
# no QoS 2), at QoS 0 and QoS 1:
#   - pair (1 -> 1), fanout (1 -> 64), many (16 -> 64 over 1,024 topics):
#     delivered msg/s flat out, within a window of messages in flight;
#   - latency: 1 publisher at MQTT_RATE (2000) msg/s over 64 topics, each
#     read by one of 64 subscribers; p50/p99 from the intended send time;
#   - memory per idle connection: a fresh broker's RSS growth over
#     MQTT_IDLE (5000) connections that sent CONNECT and got their CONNACK,
#     divided by their number (bench/mqtt_idle.py).
# Writes
#   bench/results/<kind>-mqtt.jsonl  every run's report
#   bench/results/<kind>-mqtt.md     the table, ratios against both peers
# and exits non-zero if a run could not be done (a run that lost messages
# is reported with its losses). Installs mosquitto and nats-server from
# Debian's packages when they are missing (needs root or sudo).
#
# Settings (environment): SHARDS (corebus shards and GOMAXPROCS, default
# nproc), DURATION (seconds per run, 5), MQTT_RATE (2000), MQTT_IDLE
# (5000), MQTT_PORT
# (18830), CARGO_TARGET_DIR (target), STAMP (<machine kind>-mqtt).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
MQTT_RATE=${MQTT_RATE:-2000}
MQTT_IDLE=${MQTT_IDLE:-5000}
MQTT_PORT=${MQTT_PORT:-18830}
# shellcheck source=bench/lib.sh
. bench/lib.sh
STAMP=${STAMP:-$(machine_kind)-mqtt}
SHARDS=${SHARDS:-$(nproc)}

install_brokers mosquitto nats-server
raise_limits
build corebus-only
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET_DIR/release/corebus-bench
COREBUS=$TARGET_DIR/release/corebus
WORK=$(mktemp -d)
OUT=bench/results/$STAMP.jsonl
mkdir -p bench/results
: >"$OUT"
PID=""

stop() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=""
    fi
}
trap 'stop; rm -rf "$WORK"' EXIT

start() { # broker
    case "$1" in
    corebus)
        "$COREBUS" serve --listen 127.0.0.1:17400 --mqtt-listen "127.0.0.1:$MQTT_PORT" \
            --shards "$SHARDS" >"$WORK/corebus.log" 2>&1 &
        ;;
    mosquitto)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MQTT_PORT" >"$WORK/mosquitto.conf"
        "$(command -v mosquitto)" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
        ;;
    nats)
        # The MQTT listener needs JetStream (for QoS 1) and a server name.
        cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:14222
server_name: bench
jetstream { store_dir: "$WORK/jetstream" }
mqtt { listen: 127.0.0.1:$MQTT_PORT }
EOF
        GOMAXPROCS=$SHARDS nats-server -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
        ;;
    esac
    PID=$!
    for _ in $(seq 100); do
        # corebus is ready once it says so (every shard's listener is then
        # in the port's group); the others once the port answers.
        if [ "$1" = corebus ]; then
            grep -q "corebus mqtt on" "$WORK/corebus.log" && return 0
        elif port_open "$MQTT_PORT"; then
            return 0
        fi
        sleep 0.1
    done
    die "$1 did not open port $MQTT_PORT (see $WORK/$1.log)"
}

failed=0
for broker in corebus mosquitto nats; do
    for qos in 0 1; do
        for shape in "pair" "fanout --subscribers 64" \
            "many --publishers 16 --subscribers 64 --topics 1024" \
            "latency --publishers 1 --subscribers 64 --topics 64 --rate $MQTT_RATE"; do
            log "$broker, QoS $qos: $shape"
            start "$broker"
            # shellcheck disable=SC2086 # $shape is a list of options
            status=0
            "$BENCH" mqtt --url "127.0.0.1:$MQTT_PORT" --label "$broker" --qos "$qos" \
                --duration "$DURATION" --scenario $shape >>"$OUT" || status=$?
            # 2: the run finished and counted losses; anything else failed.
            if [ "$status" != 0 ] && [ "$status" != 2 ]; then failed=1; fi
            stop
        done
    done
done

for broker in corebus mosquitto nats; do
    log "$broker: $MQTT_IDLE idle connections"
    start "$broker"
    python3 bench/mqtt_idle.py "$PID" 127.0.0.1 "$MQTT_PORT" "$MQTT_IDLE" --json "$broker" \
        >>"$OUT" || failed=1
    stop
done

python3 - "$OUT" "bench/results/$STAMP.md" "$SHARDS" <<'EOF'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {(r["broker"], r["scenario"], r["qos"]): r for r in runs}
lines = [f"# MQTT: corebus, Mosquitto, nats-server (corebus-bench mqtt, MQTT 3.1.1; {sys.argv[3]} shards/GOMAXPROCS)", ""]
lines.append("| scenario | QoS | corebus msg/s | Mosquitto msg/s | NATS msg/s | vs Mosquitto | vs NATS | p50 / p99 µs (corebus, Mosquitto, NATS) | lost (c/m/n) |")
lines.append("|---|---|---:|---:|---:|---:|---:|---|---|")
for scenario in ["pair", "fanout", "many", "latency"]:
    for qos in [0, 1]:
        row = [by.get((b, scenario, qos)) for b in ["corebus", "mosquitto", "nats"]]
        if not all(row):
            continue
        rate = [r["delivered_per_sec"] for r in row]
        ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
        lat = ", ".join(f'{r["latency_us"]["p50"]:.0f} / {r["latency_us"]["p99"]:.0f}' for r in row)
        lost = "/".join(str(r["lost"]) for r in row)
        lines.append(f"| {scenario} | {qos} | {rate[0]:,.0f} | {rate[1]:,.0f} | {rate[2]:,.0f} | {ratio(rate[0], rate[1])} | {ratio(rate[0], rate[2])} | {lat} | {lost} |")
idle = [by.get((b, "idle", None)) for b in ["corebus", "mosquitto", "nats"]]
if all(idle):
    kib = [r["kib_per_connection"] for r in idle]
    lines += ["", f"Memory per idle connection ({idle[0]['connections']:,} connections, RSS growth divided by their number):", ""]
    lines.append("| corebus KiB | Mosquitto KiB | NATS KiB | vs Mosquitto | vs NATS |")
    lines.append("|---:|---:|---:|---:|---:|")
    lines.append(f"| {kib[0]:.2f} | {kib[1]:.2f} | {kib[2]:.2f} | {kib[0] / kib[1]:.2f}x | {kib[0] / kib[2]:.2f}x |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit "$failed"
