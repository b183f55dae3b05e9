"""What a client id's home on another node costs an MQTT connection: the
time from CONNECT to CONNACK on node 1 of a 3-node cluster (processes on
127.0.0.1-3), for 400 client ids whose home is node 1 itself and 400 whose
home is node 3 (claimed over a link first). Sequential, one at a time.

    python3 bench/cluster_mqtt_connect.py target/release/corebus
"""
import os, socket, struct, subprocess, sys, tempfile, time, statistics

BIN = sys.argv[1]
CP, MP, QP = 17950, 17951, 17952
def fnv(h, bs):
    for b in bs:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h
def key_hash(ns, topic):
    return fnv(fnv(fnv(0xcbf29ce484222325, bytes([len(ns)])), ns), topic)
def mix(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)
ids = [f"127.0.0.{n}:{CP}" for n in (1, 2, 3)]
def home(cid):
    key = key_hash(b"", cid.encode())
    def score(i):
        node = key_hash(b"", ids[i].encode())
        return (mix(key ^ mix((node + 0x9e3779b97f4a7c15) & 0xFFFFFFFFFFFFFFFF)), -node)
    return max(range(3), key=score)
WORK = tempfile.mkdtemp(prefix="corebus-claims-")
SECRET = os.path.join(WORK, "secret")
open(SECRET, "w").write("a-cluster-secret-of-enough-length-0123456789"); os.chmod(SECRET, 0o600)
procs = []
for n in (1, 2, 3):
    ip = f"127.0.0.{n}"
    procs.append(subprocess.Popen([BIN, "serve", "--log-level", "error", "--listen", f"{ip}:0",
        "--cluster-listen", f"{ip}:{CP}", "--seed", f"127.0.0.1:{CP}", "--cluster-secret-file",
        SECRET, "--metrics", f"{ip}:{MP}", "--data-dir", os.path.join(WORK, f"d{n}"),
        "--cluster-advertise", "off", "--mqtt-listen", f"{ip}:{QP}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
time.sleep(4)
def connect_packet(cid):
    cid = cid.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack(">H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body
def once(cid):
    s = socket.create_connection(("127.0.0.1", QP))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.perf_counter()
    s.sendall(connect_packet(cid))
    got = s.recv(4)
    took = time.perf_counter() - start
    assert got[:1] == b"\x20" and got[3] == 0, got
    s.sendall(b"\xe0\x00")
    s.close()
    return took * 1e6
try:
    groups = {"home here (node 1)": [], "home on node 3": []}
    i = 0
    while min(len(v) for v in groups.values()) < 400:
        cid = f"lat-{i}"; i += 1
        h = home(cid)
        key = "home here (node 1)" if h == 0 else "home on node 3" if h == 2 else None
        if key and len(groups[key]) < 400:
            groups[key].append(once(cid))
    for name, xs in groups.items():
        xs.sort()
        print(f"{name}: n={len(xs)} median {statistics.median(xs):.0f} us, p90 {xs[int(len(xs)*0.9)]:.0f} us, p99 {xs[int(len(xs)*0.99)]:.0f} us")
finally:
    for p in procs:
        p.kill()
