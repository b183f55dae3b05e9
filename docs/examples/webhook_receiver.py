#!/usr/bin/env python3
"""A corebus webhook receiver on Python's standard library only.

Usage: WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py [PORT]

Prints "listening PORT" once, then one JSON line per request received:
{"verified": true|false, "webhook": ..., "delivery": ..., "seq": ..., "topic": ..., "payload": ...}
and answers 204 to a verified request, 401 to any other. See docs/webhooks.md.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# --- verify (docs/webhooks.md) ---
import hashlib
import hmac
import re
import time


def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """True when the Corebus-Signature `header` signs the raw request `body`
    with `secret` and its timestamp is within `tolerance` seconds of now."""
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [value for key, value in fields if key == "t"]
    if len(stamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", stamps[0]):
        return False
    timestamp = int(stamps[0])
    if abs(time.time() - timestamp) > tolerance:
        return False  # Too old (or from the future): a replay, or a bad clock.
    signed = str(timestamp).encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
    return any(key == "v1" and hmac.compare_digest(value.encode(), expected) for key, value in fields)
# --- end verify ---


SECRET = os.environ["WEBHOOK_SECRET"]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = verify(SECRET, self.headers.get("Corebus-Signature", ""), body)
        event = json.loads(body) if ok else {}
        # Log before answering: corebus sends the next message once it has
        # the answer, and this server handles each request in its own thread.
        print(json.dumps({
            "verified": ok,
            "webhook": self.headers.get("Corebus-Webhook"),
            "delivery": self.headers.get("Corebus-Delivery"),
            "seq": event.get("seq"),
            "topic": event.get("topic"),
            "payload": event.get("payload"),
        }), flush=True)
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass  # One JSON line per request on stdout is the log.


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()
