// 4. Seed 000 (uptime dashboard): the frontend does `io(url)` and listens for `target:updated` /
// `log:new` without subscribing; the backend publishes them over HTTP to the server-side channel `uptime`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startHerald, publish, waitFor, withTimeout } from '../lib/herald.js';

const CONFIG = `
[socketio]
server_side_channels = ["uptime"]
`;

test('seed-style frontend (no subscribe) receives target:updated and log:new from channel uptime', async (t) => {
  const h = await startHerald(t, { config: CONFIG });

  // services/socket.js, as in the seed: a plain io(url) and two listeners. Two "browser tabs".
  const tabs = [];
  for (let i = 0; i < 2; i++) {
    const socket = io(h.url, { forceNew: true });
    t.after(() => socket.disconnect());
    const store = { targets: [], logs: [] };
    let resolveDone;
    const done = new Promise((r) => { resolveDone = r; });
    const check = () => { if (store.targets.length >= 2 && store.logs.length >= 2) resolveDone(); };
    socket.on('target:updated', (data) => { store.targets.push(data); check(); });
    socket.on('log:new', (data) => { store.logs.unshift(data); check(); }); // "new log added to top"
    tabs.push({ socket, store, done });
  }
  await Promise.all(tabs.map(({ socket }) => waitFor(socket, 'connect', 10_000)));

  // The monitoring service: status change → target:updated + log:new (global.io.emit in the seed).
  const target = {
    _id: '665f1c2e9b1e8a0012345678', name: 'API', url: 'https://api.example.com/health', type: 'http',
    status: 'down', responseTime: null, lastChecked: '2026-11-23T04:00:00.000Z', isPaused: false,
    tags: ['prod', 'eu'], meta: { attempts: 3, nested: { ok: false } },
  };
  const log = {
    _id: '665f1c2e9b1e8a0012345679', target: target._id, status: 'down', message: 'ECONNREFUSED 10.0.0.1:443',
    responseTime: 0, createdAt: '2026-11-23T04:00:00.000Z',
  };
  const up = { ...target, status: 'up', responseTime: 87 };
  const upLog = { ...log, _id: '665f1c2e9b1e8a001234567a', status: 'up', message: 'OK', responseTime: 87 };

  await publish(h.url, 'uptime', 'target:updated', target);
  await publish(h.url, 'uptime', 'log:new', log);
  await publish(h.url, 'uptime', 'target:updated', up);
  await publish(h.url, 'uptime', 'log:new', upLog);
  await withTimeout(Promise.all(tabs.map((x) => x.done)), 10_000, 'both tabs to receive 2 target:updated and 2 log:new');

  for (const { store } of tabs) {
    assert.deepEqual(store.targets, [target, up]);
    assert.deepEqual(store.logs, [upLog, log]);
  }
});

test('server-side channel: a client that connects later gets only new events; still subscribed after a reconnect', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  await publish(h.url, 'uptime', 'target:updated', { old: true });
  const socket = io(h.url, { forceNew: true, transports: ['websocket'], reconnectionDelay: 100, reconnectionDelayMax: 200 });
  t.after(() => socket.disconnect());
  const got = [];
  const waiters = [];
  const gotN = (n) => new Promise((r) => { waiters.push([n, r]); if (got.length >= n) r(); });
  socket.on('target:updated', (d) => { got.push(d); for (const [n, r] of waiters) if (got.length >= n) r(); });
  await waitFor(socket, 'connect', 10_000);
  await publish(h.url, 'uptime', 'target:updated', { n: 1 });
  await publish(h.url, 'uptime', 'target:updated', { n: 2 });
  await withTimeout(gotN(2), 10_000, 'two live target:updated events');
  assert.deepEqual(got, [{ n: 1 }, { n: 2 }], 'events from before the connection are not pushed to a fresh client');

  // Transport dies; the stock client reconnects by itself and the server-side channel still delivers.
  const reconnected = waitFor(socket, 'connect', 10_000, 'reconnect');
  socket.io.engine.close();
  await reconnected;
  await publish(h.url, 'uptime', 'target:updated', { n: 3 });
  await withTimeout(gotN(3), 10_000, 'target:updated after reconnect');
  assert.deepEqual(got, [{ n: 1 }, { n: 2 }, { n: 3 }]);
});
