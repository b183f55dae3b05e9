#!/usr/bin/env python3
"""corebus's MQTT listener as Eclipse Paho (paho-mqtt) sees it.

Run by broker/tests/mqtt_interop.rs against a `corebus serve` with an MQTT
listener and API keys; with the interpreter of the virtual environment that
scripts/mqtt-tools.sh makes:

    mqtt_interop.py HOST PORT NATIVE_ADDR COREBUS_BIN FULL_KEY LIMITED_KEY

FULL_KEY may publish and subscribe to everything; LIMITED_KEY only to
topics of namespace `mqtt` starting with `interop/`. Prints one line per
check and exits 1 at the first that fails.
"""

import json
import socket
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 10.0

HOST, PORT, NATIVE, BIN, FULL_KEY, LIMITED_KEY = sys.argv[1:7]
PORT = int(PORT)


def fail(text):
    print(f"FAIL {text}", flush=True)
    sys.exit(1)


def ok(text):
    print(f"ok {text}", flush=True)


class Client:
    """A paho client that records what it receives and how it connected."""

    def __init__(self, name, version, key):
        self.version = version
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=name, protocol=version
        )
        if key is not None:
            self.client.username_pw_set("user", key)
        self.connected = threading.Event()
        self.reason = None
        self.messages = []
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.reason = reason
        self.connected.set()

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, message.payload.decode()))

    def connect(self):
        if self.version == mqtt.MQTTv5:
            self.client.connect(HOST, PORT, keepalive=30, clean_start=True)
        else:
            self.client.connect(HOST, PORT, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(WAIT):
            fail(f"{self.client._client_id!r}: no CONNACK")
        return self.reason

    def subscribe(self, filters):
        done = threading.Event()
        granted = []

        def on_subscribe(client, userdata, mid, reasons, properties):
            granted.extend(reasons)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe([(f, q) for f, q in filters])
        if not done.wait(WAIT):
            fail("no SUBACK")
        return granted

    def publish(self, topic, payload, qos):
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(WAIT)
        if not info.is_published():
            fail(f"publish to {topic} at QoS {qos} not completed")

    def wait_for(self, count):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return sorted(self.messages)
            time.sleep(0.02)
        with self.lock:
            fail(f"{count} messages expected, got {sorted(self.messages)}")

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def both_versions():
    for version, label in ((mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5.0")):
        sub = Client(f"sub-{label}", version, FULL_KEY)
        sub.connect()
        granted = sub.subscribe([("interop/+/temp", 1), ("interop/all/#", 2)])
        if [int(getattr(g, "value", g)) for g in granted] != [1, 2]:
            fail(f"{label}: granted {granted}")
        pub = Client(f"pub-{label}", version, FULL_KEY)
        pub.connect()
        pub.publish("interop/k1/temp", "t0", 0)
        pub.publish("interop/k2/temp", "t1", 1)
        pub.publish("interop/all", "a2", 2)
        pub.publish("interop/all/x/y", "a3", 1)
        pub.publish("interop/k1/humidity", "h4", 2)
        got = sub.wait_for(4)
        want = sorted(
            [
                ("interop/k1/temp", "t0"),
                ("interop/k2/temp", "t1"),
                ("interop/all", "a2"),
                ("interop/all/x/y", "a3"),
            ]
        )
        if got != want:
            fail(f"{label}: got {got}")
        time.sleep(0.2)
        if len(sub.messages) != 4:
            fail(f"{label}: more than the matching messages: {sub.messages}")
        pub.stop()
        sub.stop()
        ok(f"paho {label}: QoS 0, 1 and 2 publishes reach + and # filters (a/# matches a)")


def auth():
    for version, label in ((mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5.0")):
        client = Client(f"wrong-{label}", version, "cbk_not_a_key")
        reason = client.connect()
        # paho reports 3.1.1's return code 4 as 5.0's 0x86: the same name.
        if str(reason) != "Bad user name or password":
            fail(f"{label}: a wrong key got {reason}")
        client.client.loop_stop()
        ok(f"paho {label}: a wrong key is refused: {reason}")
    limited = Client("limited", mqtt.MQTTv5, LIMITED_KEY)
    reason = limited.connect()
    if reason.is_failure:
        fail(f"the limited key was refused: {reason}")
    granted = limited.subscribe([("interop/limited", 0), ("elsewhere", 0)])
    codes = [int(g.value) for g in granted]
    if codes != [0, 0x87]:
        fail(f"limited key granted {codes}")
    limited.stop()
    ok("paho 5.0: the key's permissions hold (0x87 outside them)")


def anonymous():
    """The broker's [anonymous] rule set: public/ allowed, public/secret
    denied for subscribing, everything else refused."""
    publisher = Client("anon-feed", mqtt.MQTTv5, FULL_KEY)
    publisher.connect()
    for version, label, refused in ((mqtt.MQTTv311, "3.1.1", 0x80), (mqtt.MQTTv5, "5.0", 0x87)):
        client = Client(f"anon-{label}", version, None)
        reason = client.connect()
        if str(reason) != "Success":
            fail(f"{label}: a client without credentials was refused: {reason}")
        granted = client.subscribe([("public/#", 1), ("public/secret", 1), ("private/x", 1)])
        codes = [int(getattr(g, "value", g)) for g in granted]
        if codes != [1, refused, refused]:
            fail(f"{label}: anonymous subscribe granted {codes}")
        publisher.publish("public/secret", "hidden", 1)
        publisher.publish("public/news", "shown", 1)
        if client.wait_for(1) != [("public/news", "shown")]:
            fail(f"{label}: anonymous got {client.messages}")
        time.sleep(0.3)
        if len(client.messages) != 1:
            fail(f"{label}: a denied topic reached # : {client.messages}")
        client.stop()
        ok(f"paho {label}: the anonymous rule set grants public/#, refuses and hides public/secret")
    publisher.stop()


def malformed():
    watcher = Client("watcher", mqtt.MQTTv311, FULL_KEY)
    watcher.connect()
    watcher.subscribe([("interop/still", 0)])
    raw = socket.create_connection((HOST, PORT), timeout=WAIT)
    # CONNECT 3.1.1, client id "raw", the full key as password...
    key = FULL_KEY.encode()
    body = (
        b"\x00\x04MQTT\x04\xc2\x00\x00"
        + b"\x00\x03raw"
        + b"\x00\x04user"
        + len(key).to_bytes(2, "big")
        + key
    )
    raw.sendall(bytes([0x10, len(body)]) + body)
    if raw.recv(4) != b"\x20\x02\x00\x00":
        fail("raw CONNECT not accepted")
    # ...then a SUBSCRIBE whose flags are wrong: the broker closes it.
    raw.sendall(b"\x80\x02\x00\x01")
    raw.settimeout(WAIT)
    if raw.recv(16) != b"":
        fail("a malformed packet did not close the connection")
    raw.close()
    pub = Client("after-malformed", mqtt.MQTTv311, FULL_KEY)
    pub.connect()
    pub.publish("interop/still", "fine", 1)
    if watcher.wait_for(1) != [("interop/still", "fine")]:
        fail("the other connection was disturbed")
    pub.stop()
    watcher.stop()
    ok("a malformed packet closes only its own connection")


def native():
    # MQTT to native: `corebus sub` sees what paho publishes, with its seq.
    sub = subprocess.Popen(
        [BIN, "sub", "-s", NATIVE, "--key", FULL_KEY, "-n", "1", "-j", "mqtt", "interop/bridge"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    pub = Client("bridge", mqtt.MQTTv5, FULL_KEY)
    pub.connect()
    pub.publish("interop/bridge", "to native", 1)
    out, _ = sub.communicate(timeout=WAIT)
    line = json.loads(out.splitlines()[0]) if out else {}
    if (line.get("topic"), line.get("seq"), line.get("payload")) != ("interop/bridge", "1", "to native"):
        fail(f"corebus sub printed {out!r}")
    ok("paho 5.0 -> corebus sub, with the owner's sequence number")
    # Native to MQTT.
    watcher = Client("from-native", mqtt.MQTTv5, FULL_KEY)
    watcher.connect()
    watcher.subscribe([("interop/from-native", 0)])
    subprocess.run(
        [BIN, "pub", "-s", NATIVE, "--key", FULL_KEY, "mqtt", "interop/from-native", "hello mqtt"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if watcher.wait_for(1) != [("interop/from-native", "hello mqtt")]:
        fail("corebus pub did not reach paho")
    watcher.stop()
    pub.stop()
    ok("corebus pub -> paho 5.0")


both_versions()
auth()
anonymous()
malformed()
native()
