#!/usr/bin/env node
// A corebus webhook receiver on Node.js's standard library only.
//
// Usage: WEBHOOK_SECRET=whsec_... node webhook_receiver.js [PORT]
//
// Prints "listening PORT" once, then one JSON line per request received:
// {"verified": true|false, "webhook": ..., "delivery": ..., "seq": ..., "topic": ..., "payload": ...}
// and answers 204 to a verified request, 401 to any other. See docs/webhooks.md.
"use strict";
const http = require("node:http");

// --- verify (docs/webhooks.md) ---
const crypto = require("node:crypto");

// True when the Corebus-Signature `header` signs the raw request `body` (a
// Buffer, as received: not re-serialized JSON) with `secret` and its
// timestamp is within `toleranceSecs` of now.
function verify(secret, header, body, toleranceSecs = 300) {
  const fields = header
    .split(",")
    .filter((part) => part.includes("="))
    .map((part) => [part.slice(0, part.indexOf("=")), part.slice(part.indexOf("=") + 1)]);
  const stamps = fields.filter(([key]) => key === "t").map(([, value]) => value);
  if (stamps.length !== 1 || !/^[0-9]+$/.test(stamps[0])) return false;
  const timestamp = Number(stamps[0]);
  if (Math.abs(Date.now() / 1000 - timestamp) > toleranceSecs) return false;
  const expected = crypto
    .createHmac("sha256", secret)
    .update(`${timestamp}.`)
    .update(body)
    .digest();
  return fields.some(
    ([key, value]) =>
      key === "v1" &&
      /^[0-9a-f]{64}$/.test(value) &&
      crypto.timingSafeEqual(Buffer.from(value, "hex"), expected),
  );
}
// --- end verify ---

const secret = process.env.WEBHOOK_SECRET;

const server = http.createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = Buffer.concat(chunks);
    const ok = verify(secret, request.headers["corebus-signature"] || "", body);
    const event = ok ? JSON.parse(body) : {};
    console.log(
      JSON.stringify({
        verified: ok,
        webhook: request.headers["corebus-webhook"],
        delivery: request.headers["corebus-delivery"],
        seq: event.seq,
        topic: event.topic,
        payload: event.payload,
      }),
    );
    response.writeHead(ok ? 204 : 401);
    response.end();
  });
});

server.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
