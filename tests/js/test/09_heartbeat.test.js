// 9. Heartbeat: with a short ping interval (from the config), stock clients stay connected across several
// ping/pong rounds on both transports, and a peer that never answers pings is dropped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  startHerald, connected, subscribeOk, publish, Recorder, chan, withTimeout,
} from '../lib/herald.js';

const CONFIG = `
[socketio]
ping_interval = "300ms"
ping_timeout = "200ms"
`;

for (const transports of [['websocket'], ['polling']]) {
  test(`stock client stays connected across ping rounds (${transports[0]})`, async (t) => {
    const h = await startHerald(t, { config: CONFIG });
    const socket = await connected(t, h.url, { transports });
    const disconnects = [];
    socket.on('disconnect', (r) => disconnects.push(r));
    const rec = new Recorder(socket);
    const channel = chan('hb');
    await subscribeOk(socket, channel);
    let pings = 0;
    await withTimeout(new Promise((resolve) => {
      socket.io.engine.on('ping', () => { if (++pings === 5) resolve(); });
    }), 10_000, '5 pings from the server');
    assert.deepEqual(disconnects, [], 'no disconnect during ping rounds');
    await publish(h.url, channel, 'tick', { n: 1 });
    await rec.until((r) => r.named('tick').length === 1, 10_000, 'event after ping rounds');
    assert.deepEqual(disconnects, []);
  });
}

test('a WebSocket peer that never answers pings is disconnected', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const ws = new WebSocket(`${h.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  ws.on('message', (d) => frames.push(d.toString()));
  ws.on('error', () => {});
  const closed = new Promise((resolve) => ws.on('close', resolve));
  await new Promise((resolve) => ws.once('open', resolve));
  ws.send('40');
  await withTimeout(closed, 5000, 'server closes a connection whose pings go unanswered (300 ms + 200 ms)');
  assert.ok(frames.includes('2'), `the server sent a ping before giving up: ${JSON.stringify(frames)}`);
  await h.assertHealthy();
});
