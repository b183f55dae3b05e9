"""Idle MQTT connections: a broker process's RSS growth per connection.

    python3 bench/mqtt_idle.py PID HOST PORT COUNT

Opens COUNT MQTT 3.1.1 connections to HOST:PORT (CONNECT without
credentials, then waits for a successful CONNACK), 500 at a time, waits
2 s, and prints the RSS of process PID (the broker) before and after and
the growth per connection. Run it against each broker in turn on the same
machine (docs/mqtt.md, Connections: corebus with --mqtt-listen, Mosquitto
with `allow_anonymous true` and `max_connections -1`). Needs an open-file
limit above COUNT (`ulimit -n`).
"""
import asyncio, sys, time

pid, host, port, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

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
    print(f"{len(keep)} connections: RSS {before} -> {after} KiB, {(after - before) / len(keep):.2f} KiB per connection")

asyncio.run(main())
