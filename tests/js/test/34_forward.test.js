// 34. Forwarding to the user's backend (docs/client-events.md "forward"; src/binding/forward): seed 004's frontend
// sends `start_scan` and Herald POSTs it, with the identity, to a scanning backend (a node http server here) whose
// answer is the ack and publishes `scan_started` through Herald's durable path; the seed's useLiveScans cache and
// ScanProgressIndicator compute what they would against the seed's own backend. A backend that is down, slow,
// failing or talking garbage is answered with its own code within `[forward] timeout`, while another client is
// unaffected; the in-flight limits answer `too_many_forwards`; the connect hook refuses or adds rooms; disconnect
// notices come from the durable outbox, later, when the backend was down — across a Herald restart too — and on two
// nodes of one Redis, once each from the cluster's one deliverer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { io } from 'socket.io-client';
import {
  startHerald, publish, request, Recorder, withTimeout, waitFor, DURABLE_ONLY,
} from '../lib/herald.js';
import { wsBase, openWs } from '../lib/plain.js';
import { sign, nowSecs } from '../lib/jwt.js';
import { KEY_BLOCKS, rule, sioRefused, assertConnectError, wsRefused } from '../lib/auth.js';
import { startRedis, startNodes } from '../lib/cluster.js';

const token = (claims) => sign({ exp: nowSecs() + 3600, ...claims }, { alg: 'HS256' });
const barrier = (socket) => withTimeout(socket.emitWithAck('barrier'), 10_000, 'barrier');

/** A loopback port nobody listens on (bound, then closed): a backend that is down. */
async function freePort() {
  const s = http.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * The user's backend: `routes[path](body, res)` answers; every request is recorded (`requests`, awaitable with
 * `until`). Held responses (a slow backend) are ended when the test ends.
 */
async function backend(t, routes, port = 0) {
  const be = { requests: [], waiters: [], held: [] };
  be.check = () => { be.waiters = be.waiters.filter((w) => { const ok = w.pred(be); if (ok) w.resolve(); return !ok; }); };
  be.until = (pred, ms, label) => {
    if (pred(be)) return Promise.resolve();
    return withTimeout(new Promise((resolve) => be.waiters.push({ pred, resolve })), ms, `${label}; backend saw ${JSON.stringify(be.requests.map((r) => r.path))}`);
  };
  be.server = http.createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (d) => { text += d; });
    req.on('end', () => {
      let body;
      try { body = JSON.parse(text); } catch { body = text; }
      be.requests.push({ path: req.url, body, headers: req.headers });
      be.check();
      const route = routes[req.url];
      if (!route) { res.writeHead(404); res.end(); return; }
      route(body, res, be);
      be.check();
    });
  });
  await new Promise((r) => be.server.listen(port, '127.0.0.1', r));
  be.url = `http://127.0.0.1:${be.server.address().port}`;
  be.close = () => new Promise((r) => {
    for (const res of be.held) res.destroy();
    be.server.closeAllConnections();
    be.server.close(r);
  });
  t.after(() => be.close());
  return be;
}

const json = (res, value, status = 200) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
};

test('seed 004 (scan progress): start_scan reaches the scanning backend with the identity; its answer is the ack and its scan_started lands in the seed\'s cache', async (t) => {
  // The scanning backend: what the seed's own server did on start_scan, reduced to an HTTP endpoint.
  const be = await backend(t, {
    '/hooks/start_scan': (body, res) => {
      const [{ scan_id: scanId }] = body.args;
      json(res, {
        ack: { ok: true, scan_id: scanId, status: 'queued' },
        publish: [
          { channel: `user_${body.identity.user}`, event: 'scan_started', data: { scan_id: scanId, scan_name: `Scan ${scanId}`, progress: 0 } },
        ],
        subscribe: [`scan_${scanId}`],
      });
    },
  });
  const h = await startHerald(t, {
    config: `[auth]
${KEY_BLOCKS.HS256}${rule({ pattern: 'scan_*', subscribe: true })}${rule({ pattern: 'user_{sub}', subscribe: true })}
[socketio.client_events]
"join_room" = { subscribe = "{arg.room|arg}" }
"leave_room" = { unsubscribe = "{arg.room|arg}" }
"start_scan" = { forward = "${be.url}/hooks/start_scan" }
[forward]
timeout = "2s"
headers = { authorization = "Bearer backend-secret" }
`,
  });

  // src/lib/websocket.js of the seed; the guide elides the bodies (as in 33_client_events): `send` emits without
  // an ack callback, joinRoom/leaveRoom send the room as given or as {room}.
  function service(argument, authToken) {
    class WebSocketService {
      constructor() {
        this.socket = null;
        this.listeners = new Map();
        this.reconnectAttempts = 0;
        this.maxReconnectAttempts = 5;
        this.isConnecting = false;
      }

      connect(url) {
        this.socket = io(url, {
          reconnection: true, reconnectionDelay: 1000, reconnectionDelayMax: 5000, reconnectionAttempts: 5, forceNew: true, auth: { token: authToken },
        });
        for (const [event, callbacks] of this.listeners) for (const cb of callbacks) this.socket.on(event, cb);
      }

      disconnect() { this.socket?.disconnect(); this.socket = null; }

      on(event, callback) {
        if (!this.listeners.has(event)) this.listeners.set(event, new Set());
        this.listeners.get(event).add(callback);
        this.socket?.on(event, callback);
        return () => { this.listeners.get(event)?.delete(callback); this.socket?.off(event, callback); };
      }

      send(event, data) { this.socket?.emit(event, data); }

      joinRoom(room) { this.send('join_room', argument(room)); }

      leaveRoom(room) { this.send('leave_room', argument(room)); }
    }
    return new WebSocketService();
  }

  for (const [label, argument] of [['a string', (room) => room], ['an object', (room) => ({ room })]]) {
    const websocketService = service(argument, token({ sub: '7' }));
    // React and react-query, reduced to what the seed's hooks use.
    const cleanups = [];
    const useEffect = (fn) => { cleanups.push(fn()); };
    const state = { progress: 0, phase: '' };
    const useState = (key) => [state[key], (v) => { state[key] = v; }];
    const cache = new Map();
    const toasts = [];
    const toast = { info: (m) => toasts.push(['info', m]), success: (m) => toasts.push(['success', m]), error: (m) => toasts.push(['error', m]), warning: (m) => toasts.push(['warning', m]) };
    const queryClient = {
      setQueryData(key, updater) { const k = JSON.stringify(key); cache.set(k, typeof updater === 'function' ? updater(cache.get(k)) : updater); },
      invalidateQueries() {},
    };
    const useQueryClient = () => queryClient;

    // src/hooks/useWebSocket.js, as written.
    function useWebSocket(events) {
      useEffect(() => {
        const unsubscribers = events.map(({ event, handler }) =>
          websocketService.on(event, handler)
        );

        // Cleanup: unsubscribe from all events
        return () => {
          unsubscribers.forEach(unsub => unsub());
        };
      }, [events]);
    }

    // src/hooks/useLiveScans.js, as written (the two handlers this test drives).
    function useLiveScans() {
      const queryClient = useQueryClient();

      useWebSocket([
        {
          event: 'scan_started',
          handler: (data) => {
            toast.info(`Scan started: ${data.scan_name}`);

            // Add to cache optimistically
            queryClient.setQueryData(['scans', 'list'], (old) => {
              return [data, ...(old || [])];
            });
          },
        },
        {
          event: 'scan_progress',
          handler: (data) => {
            // Update specific scan in cache
            queryClient.setQueryData(['scans', data.scan_id], (old) => ({
              ...old,
              progress: data.progress,
              current_phase: data.phase,
            }));
          },
        },
      ]);
    }

    // src/components/scans/ScanProgressIndicator.js, as written (its effects; the JSX is what `state` shows).
    function ScanProgressIndicator({ scanId }) {
      const [progress, setProgress] = useState('progress');
      const [phase, setPhase] = useState('phase');

      useEffect(() => {
        websocketService.joinRoom(`scan_${scanId}`);

        return () => {
          websocketService.leaveRoom(`scan_${scanId}`);
        };
      }, [scanId]);

      useWebSocket([
        {
          event: 'scan_progress',
          handler: (data) => {
            if (data.scan_id === scanId) {
              setProgress(data.progress);
              setPhase(data.phase);
            }
          },
        },
      ]);
      return { progress, phase };
    }

    // RealtimeProvider: connect, then the page's hooks.
    websocketService.connect(h.url);
    t.after(() => websocketService.disconnect());
    const errors = [];
    websocketService.on('error', (e) => errors.push(e));
    await waitFor(websocketService.socket, 'connect', 10_000, `${label}: connect`);
    const rec = new Recorder(websocketService.socket);
    useLiveScans();
    websocketService.joinRoom(`user_${7}`);

    // "Emitting Events", as written: no ack callback. The backend's answer subscribes to scan_123 and publishes
    // scan_started to the user's room.
    websocketService.send('start_scan', {
      scan_id: 123,
      options: { /* ... */ },
    });
    await rec.until((r) => r.named('scan_started').length === 1, 10_000, `${label}: scan_started`);
    assert.deepEqual(cache.get('["scans","list"]'), [{ scan_id: 123, scan_name: 'Scan 123', progress: 0 }], `${label}: the cache`);
    assert.deepEqual(toasts, [['info', 'Scan started: Scan 123']]);
    const seen = be.requests.at(-1);
    assert.equal(seen.path, '/hooks/start_scan');
    assert.equal(seen.headers.authorization, 'Bearer backend-secret', 'the configured headers go along');
    assert.equal(seen.body.event, 'start_scan');
    assert.deepEqual(seen.body.args, [{ scan_id: 123, options: {} }]);
    assert.equal(seen.body.identity.user, '7');
    assert.equal(seen.body.identity.claims.sub, '7');
    assert.equal(seen.body.identity.anonymous, false);
    assert.deepEqual([seen.body.connection.transport, seen.body.connection.id], ['socketio', websocketService.socket.id]);

    // The backend's own scanning work publishes progress; the scan's room was joined by its answer, and the
    // indicator joins it again as the seed does (with either argument shape).
    const indicator = ScanProgressIndicator({ scanId: 123 });
    assert.deepEqual(indicator, { progress: 0, phase: '' });
    await barrier(websocketService.socket);
    await publish(h.url, 'scan_123', 'scan_progress', { scan_id: 123, progress: 40, phase: 'crawling' });
    await rec.until((r) => r.named('scan_progress').length === 1, 10_000, `${label}: progress`);
    assert.deepEqual(state, { progress: 40, phase: 'crawling' }, `${label}: the indicator`);
    assert.deepEqual(cache.get('["scans",123]'), { progress: 40, current_phase: 'crawling' });

    // With an ack callback, the backend's answer is the ack itself.
    const ack = await withTimeout(websocketService.socket.emitWithAck('start_scan', { scan_id: 124, options: {} }), 5000, 'ack');
    assert.deepEqual(ack, { ok: true, scan_id: 124, status: 'queued' });

    // Unmount: leaveRoom(scan_123); nothing more of it arrives.
    cleanups.reverse().forEach((c) => c?.());
    await barrier(websocketService.socket);
    await publish(h.url, 'scan_123', 'scan_progress', { scan_id: 123, progress: 90, phase: 'done' });
    await publish(h.url, 'user_7', 'notification', { message: 'marker' });
    await rec.until((r) => r.named('notification').length === 1, 10_000, `${label}: marker`);
    assert.equal(rec.named('scan_progress').length, 1, `${label}: nothing of scan_123 after leaveRoom`);
    assert.deepEqual(errors, [], `${label}: no refusals`);
    websocketService.disconnect();
  }

  // /ws's emit op forwards the same mapping; the ack carries the backend's answer.
  const ws = await openWs(t, `${wsBase(h)}/ws?token=${encodeURIComponent(token({ sub: '9' }))}`);
  const r = await ws.request('emit', { event: 'start_scan', args: [{ scan_id: 5 }] });
  assert.deepEqual([r.type, r.event, r.data], ['ack', 'start_scan', { ok: true, scan_id: 5, status: 'queued' }], JSON.stringify(r));
  assert.equal(be.requests.at(-1).body.connection.transport, 'websocket');
  assert.equal(be.requests.at(-1).body.identity.user, '9');
  await h.assertHealthy();
});

test('a backend that is down, slow, failing or talking garbage: a clear code within the timeout, other clients unaffected; the limits answer too_many_forwards', async (t) => {
  const down = await freePort();
  const gate = [];
  const be = await backend(t, {
    '/slow': (body, res, b) => { b.held.push(res); },
    '/crash': (body, res) => json(res, { detail: 'boom' }, 500),
    '/garbage': (body, res) => { res.writeHead(200, { 'content-type': 'text/html' }); res.end('<html>oops</html>'); },
    '/refuse': (body, res) => json(res, { error: { code: 'scan_not_found', message: `no scan ${body.args[0]}` } }, 404),
    '/gate': (body, res, b) => { b.held.push(res); gate.push(() => json(res, { ack: { ok: true, n: body.args[0] } })); },
    '/kick': (body, res) => json(res, { ack: { ok: true, bye: true }, disconnect: true }),
    '/late': (body, res, b) => { b.held.push(res); b.late = () => json(res, { subscribe: 'ghost' }); },
  });
  const h = await startHerald(t, {
    config: `[socketio.client_events]
"down" = { forward = "http://127.0.0.1:${down}/x" }
"slow" = { forward = "${be.url}/slow" }
"crash" = { forward = "${be.url}/crash" }
"garbage" = { forward = "${be.url}/garbage" }
"refuse" = { forward = "${be.url}/refuse" }
"gate" = { forward = "${be.url}/gate" }
"kick" = { forward = "${be.url}/kick" }
"late" = { forward = "${be.url}/late" }
"join_room" = { subscribe = "{arg}" }
[forward]
timeout = "1s"
per_connection = 2
in_flight = 3
`,
  });
  const open = async () => {
    const s = io(h.url, { forceNew: true, reconnection: false });
    t.after(() => s.disconnect());
    await waitFor(s, 'connect');
    return s;
  };
  const a = await open();
  const other = await open();
  const otherRec = new Recorder(other);
  await withTimeout(other.emitWithAck('join_room', 'news'), 5000, 'join');

  // Without an ack callback the refusal is an `error` event naming the event; with one, it is the ack.
  const aRec = new Recorder(a);
  const started = Date.now();
  a.emit('slow', 1);
  a.emit('down', 2);
  // Meanwhile another client is served at once, and so are this client's own next events.
  await publish(h.url, 'news', 'item', { n: 1 });
  await otherRec.until((r) => r.named('item').length === 1, 900, 'the other client, while a forward hangs');
  assert.equal((await withTimeout(a.emitWithAck('join_room', 'news'), 900, 'a\'s own join, while its forwards hang')).ok, true);
  // The backend's own refusal keeps its code.
  assert.deepEqual(await withTimeout(other.emitWithAck('refuse', 77), 900, 'refuse'), { ok: false, error: { code: 'scan_not_found', message: 'no scan 77' } });
  await aRec.until((r) => r.named('error').length === 2, 5000, 'two error events');
  const elapsed = Date.now() - started;
  const byEvent = Object.fromEntries(aRec.named('error').map((e) => [e.args[0].event, e.args[0]]));
  assert.equal(byEvent.down.code, 'backend_unavailable', JSON.stringify(byEvent));
  assert.equal(byEvent.slow.code, 'backend_timeout', JSON.stringify(byEvent));
  assert.match(byEvent.slow.message, /1000 ms/);
  assert.ok(elapsed < 2500, `answered within the timeout (took ${elapsed} ms)`);
  for (const [event, code, pattern] of [['crash', 'backend_error', /HTTP 500/], ['garbage', 'backend_error', /not usable/]]) {
    const ack = await withTimeout(a.emitWithAck(event, 1), 3000, event);
    assert.equal(ack.ok, false);
    assert.equal(ack.error.code, code, JSON.stringify(ack));
    assert.match(ack.error.message, pattern);
  }

  // In flight: two per connection, three in the server.
  const held = [a.emitWithAck('gate', 1), a.emitWithAck('gate', 2)];
  await be.until((b) => gate.length === 2, 5000, 'two forwards held');
  const third = await withTimeout(a.emitWithAck('gate', 3), 3000, 'third');
  assert.equal(third.error.code, 'too_many_forwards', JSON.stringify(third));
  assert.match(third.error.message, /this connection/);
  const b = await open();
  const bHeld = b.emitWithAck('gate', 4);
  await be.until(() => gate.length === 3, 5000, 'three forwards held');
  const over = await withTimeout(b.emitWithAck('gate', 5), 3000, 'server bound');
  assert.equal(over.error.code, 'too_many_forwards');
  assert.match(over.error.message, /the server/);
  gate.forEach((release) => release());
  assert.deepEqual((await Promise.all([...held, bHeld])).map((x) => x.n), [1, 2, 4]);
  // The places are given back.
  const again = a.emitWithAck('gate', 6);
  await be.until(() => gate.length === 4, 5000, 'room again');
  gate[3]();
  assert.equal((await again).n, 6);

  const metrics = await request(h.url, '/metrics');
  for (const code of ['backend_timeout', 'backend_unavailable', 'backend_error', 'too_many_forwards', 'scan_not_found']) {
    assert.match(metrics.text, new RegExp(`herald_client_event_refusals_total\\{code="${code}"\\} [1-9]`), code);
  }
  assert.match(metrics.text, /herald_forwards_total\{outcome="ok"\} [1-9]/);

  // The answer may disconnect the connection (after its ack).
  const gone = waitFor(b, 'disconnect', 5000);
  const bye = await withTimeout(b.emitWithAck('kick'), 3000, 'kick');
  assert.deepEqual(bye, { ok: true, bye: true });
  const [reason] = await gone;
  assert.equal(reason, 'io server disconnect');

  // An answer that subscribes a connection which left meanwhile leaves nobody on the channel.
  const c = await open();
  c.emit('late');
  await be.until((x) => x.late !== undefined, 5000, 'the late forward');
  c.disconnect();
  const okCount = async () => Number(/herald_forwards_total\{outcome="ok"\} (\d+)/.exec((await request(h.url, '/metrics')).text)?.[1] ?? 0);
  const before = await okCount();
  be.late();
  await withTimeout((async () => { while (await okCount() === before) await new Promise((r) => setTimeout(r, 20)); })(), 5000, 'the late answer handled');
  await barrier(other);
  const ghost = await request(h.url, '/api/channels/ghost/presence');
  assert.equal(ghost.status, 200, ghost.text);
  assert.deepEqual(ghost.json.counts.connections, 0, JSON.stringify(ghost.json));
  await h.assertHealthy();
});

test('connect hook: refuses or adds rooms; disconnect notices come later from the durable outbox when the backend was down, across a restart', DURABLE_ONLY, async (t) => {
  const hookPort = await freePort();
  const connects = [];
  const hooks = await backend(t, {
    '/connect': (body, res) => {
      connects.push(body);
      if (body.identity.user === 'mallory') return json(res, { error: { code: 'banned', message: 'not you' } }, 403);
      return json(res, { subscribe: [`user_${body.identity.user}`] });
    },
  });
  const h = await startHerald(t, {
    config: `[auth]
${KEY_BLOCKS.HS256}${rule({ pattern: 'user_{sub}', subscribe: true })}
[forward]
connect = "${hooks.url}/connect"
disconnect = "http://127.0.0.1:${hookPort}/disconnect"
retry_max = "200ms"
`,
  });

  const refused = await sioRefused(t, h.url, { auth: { token: token({ sub: 'mallory' }) } });
  assertConnectError(refused, 'banned', 'the connect hook refuses');
  assert.equal(refused.message, 'not you');

  // Added by the hook: user_7, with no joinRoom.
  const s = io(h.url, { forceNew: true, reconnection: false, auth: { token: token({ sub: '7' }) } });
  t.after(() => s.disconnect());
  await waitFor(s, 'connect');
  const rec = new Recorder(s);
  await publish(h.url, 'user_7', 'notification', { message: 'hi' });
  await rec.until((r) => r.named('notification').length === 1, 5000, 'the hook\'s room');
  const connectedAs = connects.at(-1).connection.id;
  assert.equal(connectedAs, s.id);

  // The disconnect hook is down: the notice waits in the outbox (attempts fail, counted).
  s.disconnect();
  const failed = async () => {
    const m = await request(h.url, '/metrics');
    return Number(/herald_forward_disconnects_total\{result="failed_attempt"\} (\d+)/.exec(m.text)?.[1] ?? 0);
  };
  await withTimeout((async () => { while (await failed() < 2) await new Promise((r) => setTimeout(r, 50)); })(), 10_000, 'failed attempts');

  // Herald stops with the notice undelivered; the backend comes up; the restarted Herald delivers it.
  await h.stop();
  const notices = await backend(t, {
    '/disconnect': (body, res) => { res.writeHead(204); res.end(); },
  }, hookPort);
  await h.restart();
  await notices.until((b) => b.requests.length >= 1, 15_000, 'the disconnect notice');
  const [notice] = notices.requests;
  assert.equal(notice.body.event, 'disconnect');
  assert.equal(notice.body.identity.user, '7');
  assert.equal(notice.body.connection.id, connectedAs, 'the same connection id as its connect');
  assert.deepEqual(notice.body.args, [{ reason: 'client namespace disconnect' }]);
  assert.match(notice.body.id, /^[0-9a-f]{32}$/);

  // A disconnect while the backend is up is delivered at once (and nothing twice in this run).
  const s2 = io(h.url, { forceNew: true, reconnection: false, auth: { token: token({ sub: '8' }) } });
  await waitFor(s2, 'connect');
  s2.disconnect();
  await notices.until((b) => b.requests.some((r) => r.body.identity?.user === '8'), 10_000, 'the second notice');
  assert.equal(notices.requests.filter((r) => r.body.id === notice.body.id).length, 1);

  // /ws: the same hooks (a refusal is the upgrade's HTTP answer).
  const no = await wsRefused(t, h, `/ws?token=${encodeURIComponent(token({ sub: 'mallory' }))}`);
  assert.deepEqual([no.status, no.json?.error?.code], [400, 'banned'], JSON.stringify(no));
  const ws = await openWs(t, `${wsBase(h)}/ws?token=${encodeURIComponent(token({ sub: '9' }))}`);
  await ws.barrier();
  await publish(h.url, 'user_9', 'notification', { message: 'ws' });
  const got = await ws.next((m) => m.type === 'event' && m.channel === 'user_9', 5000, 'the hook\'s room on /ws');
  assert.deepEqual(got.data, { message: 'ws' });
  await ws.close();
  await notices.until((b) => b.requests.some((r) => r.body.identity?.user === '9'), 10_000, 'the /ws notice');
  assert.equal(notices.requests.find((r) => r.body.identity?.user === '9').body.connection.transport, 'websocket');
  await h.assertHealthy();
});

test('two nodes on one Redis: disconnects on either node reach the hook once each, from the cluster\'s one deliverer', async (t) => {
  const notices = await backend(t, { '/disconnect': (body, res) => { res.writeHead(204); res.end(); } });
  const redis = await startRedis(t);
  const nodes = await startNodes(t, redis, 2, { config: `[forward]\ndisconnect = "${notices.url}/disconnect"\n` });
  const ids = [];
  for (const [i, node] of [nodes[0], nodes[1], nodes[1], nodes[0]].entries()) {
    const s = io(node.url, { forceNew: true, reconnection: false, query: { n: String(i) } });
    await waitFor(s, 'connect');
    ids.push(s.id);
    s.disconnect();
  }
  await notices.until((b) => ids.every((id) => b.requests.some((r) => r.body.connection?.id === id)), 15_000, 'every notice');
  // Both nodes drained the outbox through the lease: nobody delivered a notice twice.
  const delivered = notices.requests.map((r) => r.body.id);
  assert.equal(new Set(delivered).size, delivered.length, `no duplicates: ${delivered}`);
  assert.equal(delivered.length, 4);
  for (const n of nodes) await n.assertHealthy();
});
