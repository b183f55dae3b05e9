// Opens a client against the fake network, the test playing the broker.

import { connect } from '../dist/index.js';
import { FakeClock, fakeNetwork, server } from './helpers.js';

export const URL = 'ws://broker.test:7401/v1/ws';
export const E = 0x0123456789abcdefn;
export const E2 = 0xfedcba9876543210n;

/**
 * Connects a client (static token "key" unless options say otherwise) and
 * completes the handshake. Heartbeats are off unless asked for, so that
 * moving the fake clock far does not trip them.
 */
export async function openClient(options = {}, welcome = {}) {
  const network = fakeNetwork();
  const clock = options.clock ?? new FakeClock();
  const events = [];
  const connecting = connect({
    url: URL,
    name: 'test',
    WebSocket: network.WebSocket,
    clock,
    random: () => 0.5,
    pingIntervalMs: 0,
    ...(options.tokenProvider === undefined ? { token: 'key' } : {}),
    ...options,
  });
  const socket = await network.socket(0);
  const hello = await socket.handshake(welcome);
  const client = await connecting;
  for (const name of ['state', 'connecting', 'connected', 'disconnected', 'closed', 'error']) {
    client.on(name, (payload) => events.push({ name, payload }));
  }
  const eventsNamed = (name) => events.filter((event) => event.name === name).map((event) => event.payload);
  return { client, network, clock, socket, hello, events, eventsNamed };
}

/** Subscribes, answers the SUBSCRIBE with SUB_OK (epoch, startAfter) and returns both. */
export async function subscribeWith(client, socket, log, { namespace = 'app', topic = 'news', epoch = E, startAfter = 5n, options } = {}) {
  const pending = client.subscribe(namespace, topic, log.handlers, options);
  const frame = await socket.next('subscribe');
  socket.deliver(server.subOk(frame.requestId, frame.subId, epoch, startAfter));
  const subscription = await pending;
  return { subscription, frame };
}
