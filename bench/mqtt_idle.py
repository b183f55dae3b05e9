"""Idle MQTT connections: a broker process's RSS growth per connection.

    python3 bench/mqtt_idle.py PID HOST PORT COUNT [--json LABEL]

Opens COUNT MQTT 3.1.1 connections to HOST:PORT (CONNECT without
credentials, then waits for a successful CONNACK), 500 at a time, waits
2 s, and prints the RSS of process PID (the broker) before and after and
the growth per connection; with --json, one JSON line for
bench/compare_mqtt.sh instead (broker LABEL, scenario "idle"). Run it
against each broker in turn on the same machine (bench/compare_mqtt.sh
does: corebus with --mqtt-listen, Mosquitto with `allow_anonymous true`,
nats-server's MQTT listener). Needs an open-file limit above COUNT
(`ulimit -n`).
"""
import argparse, asyncio, json, time

parser = argparse.ArgumentParser()
parser.add_argument("pid", type=int)
parser.add_argument("host")
parser.add_argument("port", type=int)
parser.add_argument("count", type=int)
parser.add_argument("--json", metavar="LABEL")
args = parser.parse_args()
pid, host, port, count = args.pid, args.host, args.port, args.count

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def connect_packet(i):
    cid = f"idle-{i}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body

async def one(i, keep):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(connect_packet(i))
    await writer.drain()
    ack = await reader.readexactly(4)
    assert ack[0] == 0x20 and ack[3] == 0, ack
    keep.append((reader, writer))

async def main():
    time.sleep(0.5)
    before = rss_kib()
    keep = []
    for start in range(0, count, 500):
        await asyncio.gather(*(one(i, keep) for i in range(start, min(count, start + 500))))
    await asyncio.sleep(2)
    after = rss_kib()
    per = (after - before) / len(keep)
    if args.json:
        print(json.dumps({"broker": args.json, "scenario": "idle", "qos": None,
                          "connections": len(keep), "rss_before_kib": before,
                          "rss_after_kib": after, "kib_per_connection": round(per, 2)}))
    else:
        print(f"{len(keep)} connections: RSS {before} -> {after} KiB, {per:.2f} KiB per connection")

asyncio.run(main())
