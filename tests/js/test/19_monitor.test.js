// 19. The service monitor through the real binary: HTTP/TCP/UDP targets driven up → down → up (events, log entries,
// stored status across a restart), seed-000 and seed-002 frontends by configuration alone, and bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import dgram from 'node:dgram';
import { readFileSync, writeFileSync } from 'node:fs';
import { io } from 'socket.io-client';
import { startHerald, DURABLE_ONLY, request, connected, Recorder, waitFor, withTimeout } from '../lib/herald.js';
import { openWs, wsBase } from '../lib/plain.js';
import { KEY_BLOCKS } from '../lib/auth.js';
import { sign } from '../lib/jwt.js';

/** An HTTP target whose status, delay and body the test sets. */
async function httpTarget(t) {
  // `hits` counts the requests (the checks) it got; `hit(n)` resolves once it has had n.
  const state = { status: 200, body: 'all good', hang: false, hits: 0, waiters: [] };
  state.hit = (n) => new Promise((resolve) => { state.waiters.push({ n, resolve }); state.onHit(); });
  state.onHit = () => { state.waiters = state.waiters.filter((w) => (state.hits >= w.n ? (w.resolve(), false) : true)); };
  const server = http.createServer((req, res) => {
    state.hits++;
    state.onHit();
    if (state.hang) return; // never answers
    if (req.url === '/huge') {
      // 1 GB, generated as it is read; stops when the client goes away.
      res.writeHead(200, { 'content-type': 'text/plain' });
      const chunk = Buffer.alloc(1 << 20, 'x');
      let sent = 0;
      const pump = () => {
        while (sent < 1024 && res.write(chunk)) sent++;
        if (sent >= 1024) res.end(); else res.once('drain', pump);
      };
      res.on('close', () => { sent = 1024; });
      return pump();
    }
    res.writeHead(state.status, { 'content-type': 'text/plain' });
    res.end(state.body);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => { server.closeAllConnections?.(); server.close(); });
  return { state, url: `http://127.0.0.1:${server.address().port}` };
}

/** A TCP port that can be opened and closed. */
async function tcpTarget(t) {
  let server = null;
  const port = await new Promise((r) => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
  const open = () => new Promise((r) => { server = net.createServer((c) => c.destroy()); server.listen(port, '127.0.0.1', r); });
  const close = () => new Promise((r) => { server.close(r); server = null; });
  t.after(() => server?.close());
  await open();
  return { port, open, close };
}

/** A UDP responder that answers "pong <payload>" or stays silent. */
async function udpTarget(t) {
  const state = { answer: true };
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, rinfo) => { if (state.answer) sock.send(`pong ${msg}`, rinfo.port, rinfo.address); });
  await new Promise((r) => sock.bind(0, '127.0.0.1', r));
  t.after(() => sock.close());
  return { state, port: sock.address().port };
}

async function createMonitor(h, body) {
  const r = await request(h.url, '/api/monitors', { method: 'POST', body });
  assert.equal(r.status, 201, `create monitor: ${r.status} ${r.text}`);
  return r.json;
}

/** Follows the `monitors` channel over /ws and lets a test await a monitor's status. */
async function follow(t, h, channel = 'monitors') {
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk(channel);
  return {
    ws,
    statuses: (id) => ws.events(channel).filter((e) => e.event === 'monitor:status' && e.data.id === id).map((e) => e.data.status),
    logs: (id) => ws.events(channel).filter((e) => e.event === 'monitor:log' && e.data.monitorId === id),
    async until(id, status, ms = 10_000) {
      await ws.until(() => this.statuses(id).at(-1) === status, ms, `monitor ${id} → ${status}`);
    },
  };
}

test('HTTP, TCP and UDP monitors go up → down → up: events, log entries and stored status (across a restart)', DURABLE_ONLY, async (t) => {
  const h = await startHerald(t, { config: '[monitor]\nthrottle = "0s"\n' });
  const web = await httpTarget(t);
  const tcp = await tcpTarget(t);
  const udp = await udpTarget(t);
  const f = await follow(t, h);
  const a = await createMonitor(h, { id: 'web', name: 'Web', check: { kind: 'http', url: `${web.url}/health`, keyword: 'good' }, interval: 1, timeout: 0.8 });
  const b = await createMonitor(h, { id: 'db', name: 'DB port', check: { kind: 'tcp', host: '127.0.0.1', port: tcp.port }, interval: 1, timeout: 0.8 });
  const c = await createMonitor(h, { id: 'dns', name: 'UDP', check: { kind: 'udp', host: '127.0.0.1', port: udp.port, payload: 'ping', expect: 'pong ping' }, interval: 1, timeout: 0.8 });
  assert.equal(a.status, 'pending');
  for (const id of ['web', 'db', 'dns']) await f.until(id, 'up');

  web.state.body = 'something else'; // keyword gone → down
  await tcp.close();
  udp.state.answer = false;
  for (const id of ['web', 'db', 'dns']) await f.until(id, 'down');
  const down = (await request(h.url, '/api/monitors/web')).json;
  assert.equal(down.status, 'down');
  assert.match(down.message, /keyword "good" not found/);

  web.state.body = 'all good again';
  await tcp.open();
  udp.state.answer = true;
  for (const id of ['web', 'db', 'dns']) await f.until(id, 'up');

  for (const id of ['web', 'db', 'dns']) {
    const seq = f.statuses(id);
    const firstDown = seq.indexOf('down');
    assert.ok(seq.indexOf('up') < firstDown && seq.lastIndexOf('up') > firstDown, `${id}: up → down → up in ${seq}`);
    // Every check wrote a log entry, and each was announced.
    const log = (await request(h.url, `/api/monitors/${id}/log?limit=100`)).json.log;
    assert.ok(log.some((e) => e.status === 'down') && log[0].status === 'up', `${id} log: ${JSON.stringify(log.slice(0, 3))}`);
    assert.ok(f.logs(id).length >= 3, `${id}: log events`);
    assert.deepEqual(Object.keys(log[0]).sort(), ['createdAt', 'id', 'message', 'monitorId', 'responseTime', 'status']);
  }
  const stored = (await request(h.url, '/api/monitors')).json.monitors;
  assert.deepEqual(stored.map((m) => [m.id, m.status]), [['db', 'up'], ['dns', 'up'], ['web', 'up']]);
  assert.ok(stored.every((m) => m.uptime24h > 0 && m.uptime24h < 1), 'uptime counts both');

  // Monitors, their status and their log survive a restart; a new subscriber first gets every monitor.
  await h.stop('SIGTERM');
  await h.restart();
  const again = (await request(h.url, '/api/monitors/web')).json;
  assert.equal(again.definition.check.url, `${web.url}/health`);
  assert.ok((await request(h.url, '/api/monitors/web/log')).json.log.length >= 3);
  const f2 = await follow(t, h);
  await f2.ws.until(() => ['web', 'db', 'dns'].every((id) => f2.statuses(id).length >= 1), 10_000, 'snapshot of every monitor');
  assert.equal(f2.ws.events('monitors')[0].event, 'monitor:status', 'the snapshot comes first');

  // Pause, resume, check now, delete.
  const paused = (await request(h.url, '/api/monitors/web/pause', { method: 'POST' })).json;
  assert.equal(paused.status, 'paused');
  await f2.until('web', 'paused');
  const resumed = await request(h.url, '/api/monitors/web/resume', { method: 'POST' });
  assert.equal(resumed.json.status, 'pending');
  const now = await request(h.url, '/api/monitors/web/check', { method: 'POST' });
  assert.equal(now.status, 200, now.text);
  assert.equal(now.json.outcome.ok, true);
  assert.equal((await request(h.url, '/api/monitors/db', { method: 'DELETE' })).status, 200);
  await f2.ws.until((w) => w.events('monitors').some((e) => e.event === 'monitor:removed' && e.data.id === 'db'), 10_000, 'removal');
  assert.equal((await request(h.url, '/api/monitors/db')).status, 404);

  // Moving a monitor to another channel removes it from the old channel's state: new subscribers there no longer
  // see it, while the new channel has it.
  const def = (await request(h.url, '/api/monitors/dns')).json.definition;
  const moved = await request(h.url, '/api/monitors/dns', { method: 'PUT', body: { ...def, channel: 'monitors:infra' } });
  assert.equal(moved.status, 200, moved.text);
  const old = await follow(t, h);
  const infra = await follow(t, h, 'monitors:infra');
  await infra.ws.until(() => infra.ws.events('monitors:infra').some((e) => e.data.id === 'dns'), 10_000, 'dns on its new channel');
  await old.ws.until(() => old.statuses('web').length >= 1, 10_000, 'old channel snapshot');
  await old.ws.barrier();
  assert.equal(old.statuses('dns').length, 0, 'no ghost of the moved monitor on its old channel');

  // Prometheus metrics in Uptime Kuma's names.
  const metrics = (await request(h.url, '/metrics')).text;
  assert.match(metrics, /monitor_status\{monitor_id="web",monitor_name="Web",monitor_type="keyword",monitor_url="http:\/\/127\.0\.0\.1:\d+\/health"[^}]*\} 1/);
  assert.match(metrics, /monitor_response_time\{monitor_id="dns"[^}]*\} [\d.]+/);
  assert.match(metrics, /herald_monitor_checks_total \d+/);
});


test('a restart republishes nothing that did not change: every channel keeps its position; a change made meanwhile is sent', DURABLE_ONLY, async (t) => {
  const h = await startHerald(t, { config: '[monitor]\nthrottle = "0s"\n' });
  const tcp = await tcpTarget(t);
  const f = await follow(t, h);
  await createMonitor(h, { id: 'quiet', name: 'Quiet', check: { kind: 'tcp', host: '127.0.0.1', port: tcp.port }, interval: 60, timeout: 0.8 });
  await f.until('quiet', 'up');
  assert.equal((await request(h.url, '/api/monitors/quiet/pause', { method: 'POST' })).status, 200);
  await f.until('quiet', 'paused');
  const positions = async () => {
    const r = await request(h.url, '/api/channels');
    assert.equal(r.status, 200, r.text);
    return Object.fromEntries(r.json.channels.map((c) => [c.channel ?? c.name, c.last_offset]));
  };
  // Once the stats event of the pause is out, nothing else is pending.
  const stats = await openWs(t, `${wsBase(h)}/ws`);
  await stats.subscribeOk('monitors:stats');
  await stats.until((w) => w.events('monitors:stats').some((e) => e.data.paused === 1), 10_000, 'stats of the pause');
  await stats.close();
  const before = await positions();
  assert.ok(before.monitors > 0, JSON.stringify(before));

  // Start-up (monitors loaded, state compared) completes before Herald listens: what it published is visible now.
  await h.stop('SIGTERM');
  await h.restart();
  assert.deepEqual(await positions(), before, 'no event published at start for an unchanged monitor or unchanged stats');

  // A monitor changed while Herald was down (the config declares it differently) is published at start.
  await h.stop('SIGTERM');
  writeFileSync(h.configPath, `[monitor]\nthrottle = "0s"\n[[monitor.monitors]]\nid = "quiet"\nname = "Renamed"\ninterval = 60\npaused = true\ncheck = { kind = "tcp", host = "127.0.0.1", port = ${tcp.port} }\n`);
  await h.restart();
  const after = await positions();
  assert.equal(after.monitors, before.monitors + 1, `one status event for the renamed monitor: ${JSON.stringify(after)}`);
  const last = (await request(h.url, `/api/channels/monitors/history?since=${before.monitors}`)).json.events;
  assert.deepEqual(last.map((e) => [e.event, e.data.id, e.data.name, e.data.status]), [['monitor:status', 'quiet', 'Renamed', 'paused']]);
});
test('invalid monitor definitions get 400s naming the field; a hanging target is cut off by its timeout; a 1 GB body does not exhaust memory', async (t) => {
  const h = await startHerald(t, { config: '[monitor]\nthrottle = "0s"\n' });
  const cases = [
    [{ name: 'x', check: { kind: 'http', url: 'not a url' } }, 'check.url'],
    [{ name: 'x', check: { kind: 'http', url: 'ftp://example.com/' } }, 'check.url'],
    [{ name: 'x', check: { kind: 'tcp', host: '127.0.0.1', port: 80 }, interval: 0 }, 'interval'],
    [{ name: 'x', check: { kind: 'smtp', host: 'a' } }, 'check.kind'],
    [{ name: 'x', check: { kind: 'tcp', host: 'nonexistent.invalid', port: 80 } }, 'check.host'],
    [{ name: 'x', check: { kind: 'http', url: 'http://nonexistent.invalid/' } }, 'check.url'],
    [{ name: '', check: { kind: 'tcp', host: '127.0.0.1', port: 80 } }, 'name'],
    [{ name: 'x' }, 'check'],
    [{ name: 'x', check: { kind: 'dns', name: 'example.com', record_type: 'BOGUS' } }, 'check.record_type'],
  ];
  for (const [body, field] of cases) {
    const r = await request(h.url, '/api/monitors', { method: 'POST', body });
    assert.equal(r.status, 400, `${JSON.stringify(body)} → ${r.status} ${r.text}`);
    assert.equal(r.json.error.field, field, `${JSON.stringify(body)} → ${r.text}`);
  }
  assert.equal((await request(h.url, '/api/monitors', { method: 'POST', rawBody: '{', headers: { 'content-type': 'application/json' } })).status, 400);
  assert.equal((await request(h.url, '/api/monitors')).json.monitors.length, 0, 'nothing was created');

  const web = await httpTarget(t);
  web.state.hang = true;
  const started = Date.now();
  await createMonitor(h, { id: 'hang', name: 'Hangs', check: { kind: 'http', url: web.url }, interval: 5, timeout: 1 });
  const now = await request(h.url, '/api/monitors/hang/check', { method: 'POST' });
  assert.equal(now.json.outcome.ok, false);
  assert.match(now.json.outcome.message, /timed out after 1s/);
  assert.ok(Date.now() - started < 4000, 'cut off by the timeout');

  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${h.proc.pid}/status`, 'utf8'))[1]);
  const before = rss();
  await createMonitor(h, { id: 'huge', name: 'Huge', check: { kind: 'http', url: `${web.url}/huge`, keyword: 'needle' }, interval: 5 });
  web.state.hang = false;
  const huge = await request(h.url, '/api/monitors/huge/check', { method: 'POST' });
  assert.equal(huge.json.outcome.ok, false);
  assert.match(huge.json.outcome.message, /not found in the first \d+ bytes/);
  assert.ok(rss() - before < 100 * 1024, `RSS grew by ${rss() - before} KiB`);
});

const MONITORS = (web) => `
[[monitor.monitors]]
id = "api"
name = "API"
interval = 1
timeout = 0.8
check = { kind = "http", url = "${web.url}/api" }

[[monitor.monitors]]
id = "site"
name = "Site"
interval = 1
timeout = 0.8
check = { kind = "http", url = "${web.url}/site" }
`;

test('seed 000 frontend (io(url), target:updated + log:new) works by configuration alone', async (t) => {
  const web = await httpTarget(t);
  // `dashboardStats` comes with the monitors channel: nothing else to list.
  const h = await startHerald(t, { config: `[monitor]\npreset = "targets"\nthrottle = "0s"\n[socketio]\nserver_side_channels = ["monitors"]\n${MONITORS(web)}` });
  // services/socket.js of the seed: connect, listen; no subscribe.
  const socket = io(h.url, { forceNew: true });
  t.after(() => socket.disconnect());
  const store = { targets: new Map(), logs: [], stats: null };
  const rec = new Recorder(socket);
  socket.on('target:updated', (data) => store.targets.set(data.id, data));
  socket.on('log:new', (data) => store.logs.unshift(data));
  socket.on('dashboardStats', (data) => { store.stats = data; });
  await waitFor(socket, 'connect');
  await rec.until(() => store.targets.get('api')?.status === 'up' && store.targets.get('site')?.status === 'up', 10_000, 'both targets up');
  web.state.status = 503;
  await rec.until(() => store.targets.get('api')?.status === 'down', 10_000, 'target down');
  await rec.until(() => store.stats?.down === 2, 10_000, 'dashboard stats');
  assert.ok(store.logs.some((l) => l.monitorId === 'api' && l.status === 'down' && /503/.test(l.message)), JSON.stringify(store.logs.slice(0, 2)));
  const t0 = store.targets.get('api');
  for (const k of ['id', 'name', 'status', 'responseTime', 'lastCheckAt', 'message', 'uptime24h']) assert.ok(k in t0, `target object has ${k}`);
});

/** Seed 002's backend as configuration: the `services` preset on channel `status`, JWT, its client events. */
const seed002Config = (web, monitorExtra = '') => `[auth]\n${KEY_BLOCKS.RS256}
[monitor]
preset = "services"
channel = "status"
${monitorExtra}[socketio.client_events]
"subscribe:status" = { subscribe = "status" }
"unsubscribe:status" = { unsubscribe = "status" }
"request:refresh" = { action = "monitor.refresh" }
${MONITORS(web)}
[[monitor.monitors]]
id = "slow"
name = "Checked hourly"
interval = 3600
check = { kind = "http", url = "${web.url}/slow" }
`;

test('seed 002 frontend (JWT, subscribe:status, service:bulk-update then changed fields, request:refresh) by configuration alone', async (t) => {
  const web = await httpTarget(t);
  const config = seed002Config(web, 'refresh_interval = "0s"\n');
  const h = await startHerald(t, { config });
  const token = sign({ sub: 'alice' });
  // lib/socket.ts of the seed.
  const socket = io(h.url, { auth: { token }, transports: ['websocket'], reconnection: true, reconnectionDelay: 1000, timeout: 10000, forceNew: true });
  t.after(() => socket.disconnect());
  const rec = new Recorder(socket);
  let services = null;
  // The recorder sees an event before these handlers run: each re-checks what the test awaits once it has applied it.
  socket.on('service:bulk-update', (all) => { services = all; rec._check(); });
  socket.on('service:status', (u) => {
    services = services?.map((s) => (s.id === u.serviceId ? { ...s, ...u, details: u.details ? { ...s.details, ...u.details } : s.details } : s));
    rec._check();
  });
  await waitFor(socket, 'connect');
  socket.emit('subscribe:status');
  await rec.until(() => services !== null, 10_000, 'bulk update');
  assert.equal(rec.events[0].name, 'service:bulk-update', 'the snapshot comes before any update');
  assert.deepEqual(rec.events[0].args[0].map((s) => s.id), ['api', 'site', 'slow']);
  await rec.until(() => services.every((s) => s.status === 'up'), 10_000, 'all up');
  web.state.status = 500;
  const checked = (id) => services.filter((s) => s.id === id).map((s) => s.status);
  await rec.until(() => checked('api')[0] === 'down' && checked('site')[0] === 'down', 10_000, 'both down');
  const updates = rec.named('service:status').map((e) => e.args[0]);
  for (const u of updates) {
    assert.equal(typeof u.serviceId, 'string');
    assert.equal(typeof u.timestamp, 'string');
    assert.ok(Object.keys(u).every((k) => ['serviceId', 'status', 'responseTime', 'timestamp', 'details'].includes(k)), JSON.stringify(u));
  }
  // Seed 002's contract: every update carries the id, the status, the response time and the timestamp (its handler
  // copies them all); `details` only when they changed.
  assert.ok(updates.length > 0 && updates.every((u) => 'status' in u && 'responseTime' in u), JSON.stringify(updates));
  // At most one update per second per service (seed 002's debounce), the final state always arrives.
  const times = rec.named('service:status').filter((e) => e.args[0].serviceId === 'api').map((e) => Date.parse(e.args[0].timestamp));
  for (let i = 1; i < times.length; i++) assert.ok(times[i] - times[i - 1] >= 900, `updates ${times[i] - times[i - 1]} ms apart`);

  // request:refresh runs the check now (rate-limited); unknown ids get the seed's `error` event.
  const errors = [];
  socket.on('error', (e) => { errors.push(e); rec._check(); });
  // `slow` is checked hourly: only the refresh can notice that it is down now.
  assert.equal(checked('slow')[0], 'up');
  socket.emit('request:refresh', 'slow');
  await rec.until(() => checked('slow')[0] === 'down', 10_000, 'refreshed');
  socket.emit('request:refresh', 'nope');
  await rec.until(() => errors.length === 1, 10_000, 'error event');
  assert.equal(errors[0].code, 'monitor_not_found');

  // Without a token the seed's client is refused (JWT on every connection).
  const anon = io(h.url, { transports: ['websocket'], forceNew: true, reconnection: false });
  t.after(() => anon.disconnect());
  const err = await withTimeout(new Promise((r) => anon.once('connect_error', r)), 10_000, 'refusal');
  assert.match(err.message, /authentication required/i);
});

test('seed 002 useRealtimeStatus, replayed verbatim: its React Query cache stays right across checks, a status change and a restart', DURABLE_ONLY, async (t) => {
  const web = await httpTarget(t);
  const config = seed002Config(web);
  const h = await startHerald(t, { config });
  const token = sign({ sub: 'alice' });

  // Stand-ins for what the seed imports: a mounted component runs each effect once; React Query's client keeps
  // the cache by key and runs the updater functions given to setQueryData on the current value, as it does.
  // It also notifies what observes the cache: here, the test's awaited conditions.
  const cache = new Map();
  let rec = null;
  const queryClient = {
    setQueryData(key, updater) {
      const k = JSON.stringify(key);
      cache.set(k, typeof updater === 'function' ? updater(cache.get(k)) : updater);
      rec?._check();
    },
    getQueryData: (key) => cache.get(JSON.stringify(key)),
  };
  const useQueryClient = () => queryClient;
  const useEffect = (effect) => { effect(); };
  const useState = (initial) => [initial, () => {}];
  const useCallback = (fn) => fn;
  const process = { env: { NEXT_PUBLIC_SOCKET_URL: h.url } };
  const getAuthToken = () => token;

  // ---- The seed's code, verbatim but for its TypeScript annotations. ----
  // frontend/src/lib/socket.ts
  class SocketManager {
    socket = null;
    listeners = new Map();

    connect() {
      if (this.socket?.connected) {
        return this.socket;
      }

      const token = getAuthToken();

      this.socket = io(process.env.NEXT_PUBLIC_SOCKET_URL, {
        auth: { token },
        transports: ['websocket'],
        reconnection: true,
        reconnectionDelay: 1000,
        reconnectionDelayMax: 5000,
        reconnectionAttempts: 5,
        timeout: 10000,
      });

      this.setupEventHandlers();
      return this.socket;
    }

    setupEventHandlers() {
      this.socket.on('connect', () => {
        console.log('WebSocket connected');
        this.emit('connection:status', { connected: true });
      });

      this.socket.on('disconnect', (reason) => {
        console.log('WebSocket disconnected:', reason);
        this.emit('connection:status', { connected: false });
      });

      this.socket.on('connect_error', (error) => {
        console.error('WebSocket connection error:', error);
      });
    }

    on(event, callback) {
      if (!this.listeners.has(event)) {
        this.listeners.set(event, new Set());
      }
      this.listeners.get(event).add(callback);
      this.socket?.on(event, callback);
    }

    off(event, callback) {
      this.listeners.get(event)?.delete(callback);
      this.socket?.off(event, callback);
    }

    emit(event, data) {
      this.socket?.emit(event, data);
    }

    disconnect() {
      this.socket?.disconnect();
      this.socket = null;
    }
  }

  const socketManager = new SocketManager();

  // frontend/src/hooks/useWebSocket.ts
  function useWebSocket() {
    const [isConnected, setIsConnected] = useState(false);
    const [connectionError, setConnectionError] = useState(null);

    useEffect(() => {
      const socket = socketManager.connect();

      const handleConnectionStatus = (status) => {
        setIsConnected(status.connected);
        if (status.connected) {
          setConnectionError(null);
        }
      };

      const handleError = (error) => {
        setConnectionError(error.message);
      };

      socketManager.on('connection:status', handleConnectionStatus);
      socketManager.on('error', handleError);

      // Subscribe to status updates
      socket.emit('subscribe:status');

      return () => {
        socket.emit('unsubscribe:status');
        socketManager.off('connection:status', handleConnectionStatus);
        socketManager.off('error', handleError);
      };
    }, []);

    const refreshService = useCallback((serviceId) => {
      socketManager.emit('request:refresh', serviceId);
    }, []);

    return { isConnected, connectionError, refreshService };
  }

  // frontend/src/hooks/useRealtimeStatus.ts
  function useRealtimeStatus() {
    const queryClient = useQueryClient();

    useEffect(() => {
      const handleStatusUpdate = (update) => {
        // Update single service
        queryClient.setQueryData(['services', 'status'], (old) => {
          if (!old) return old;

          return old.map((service) =>
            service.id === update.serviceId
              ? {
                  ...service,
                  status: update.status,
                  responseTime: update.responseTime,
                  lastCheckAt: new Date(update.timestamp),
                  details: update.details
                    ? { ...service.details, ...update.details }
                    : service.details,
                }
              : service,
          );
        });

        // Trigger update animation
        queryClient.setQueryData(['service-update', update.serviceId], update);
      };

      const handleBulkUpdate = (services) => {
        // Update all services at once
        queryClient.setQueryData(['services', 'status'], services);
      };

      socketManager.on('service:status', handleStatusUpdate);
      socketManager.on('service:bulk-update', handleBulkUpdate);

      return () => {
        socketManager.off('service:status', handleStatusUpdate);
        socketManager.off('service:bulk-update', handleBulkUpdate);
      };
    }, [queryClient]);
  }
  // ---- End of the seed's code. ----

  // The dashboard page: React runs the child's effect (ConnectionStatus → useWebSocket, which connects) before
  // the page's own (useRealtimeStatus, which attaches its handlers to the connected socket).
  useWebSocket();
  useRealtimeStatus();
  t.after(() => socketManager.disconnect());
  rec = new Recorder(socketManager.socket);
  const cached = () => queryClient.getQueryData(['services', 'status']);
  const status = (id) => cached()?.find((s) => s.id === id)?.status;
  const ids = ['api', 'site', 'slow'];

  /** What a client that subscribes now gets (the bulk snapshot), and what REST says now. */
  async function fresh() {
    const s = io(h.url, { auth: { token }, transports: ['websocket'], forceNew: true, reconnection: false });
    try {
      const bulk = new Promise((r) => s.once('service:bulk-update', r));
      s.emit('subscribe:status');
      return await withTimeout(bulk, 10_000, 'bulk snapshot of a new client');
    } finally {
      s.disconnect();
    }
  }
  /** The cache holds, for every service, what a fresh snapshot holds (the fields the seed's handler maintains). */
  async function assertCacheRight(label) {
    const snapshot = await fresh();
    const rest = (await request(h.url, '/api/monitors')).json.monitors;
    assert.deepEqual(cached().map((s) => s.id), ids, label);
    for (const s of snapshot) {
      const c = cached().find((x) => x.id === s.id);
      assert.equal(c.status, s.status, `${label}: ${s.id} status`);
      assert.equal(c.status, rest.find((r) => r.id === s.id).status, `${label}: ${s.id} status is the current one`);
      assert.equal(c.responseTime, s.responseTime, `${label}: ${s.id} responseTime`);
      assert.ok(Number.isFinite(c.responseTime), `${label}: ${s.id} responseTime ${c.responseTime}`);
      const at = c.lastCheckAt instanceof Date ? c.lastCheckAt.getTime() : Date.parse(c.lastCheckAt);
      assert.equal(at, Date.parse(s.lastCheckAt), `${label}: ${s.id} lastCheckAt`);
      assert.deepEqual(c.details, s.details, `${label}: ${s.id} details`);
    }
  }

  await rec.until(() => cached() !== undefined, 10_000, 'bulk update');
  await rec.until(() => ids.every((id) => status(id) === 'up'), 10_000, 'all up');
  // Several checks of api and site that find them as they were: nothing to send, and the cache stays right.
  const quiet = rec.named('service:status').length;
  await web.state.hit(web.state.hits + 6);
  await assertCacheRight('after unchanged checks');
  assert.equal(rec.named('service:status').length, quiet, 'an unchanged check sends nothing');

  // A status change reaches the cache; later checks that find the same change nothing.
  web.state.status = 500;
  await rec.until(() => status('api') === 'down' && status('site') === 'down', 10_000, 'both down');
  await web.state.hit(web.state.hits + 4);
  await assertCacheRight('after the status change');

  // Herald restarts; the target recovers meanwhile. The seed's socket reconnects by itself.
  await h.stop('SIGTERM');
  web.state.status = 200;
  await h.restart();
  await rec.until(() => status('api') === 'up' && status('site') === 'up', 20_000, 'up again after the restart');
  await web.state.hit(web.state.hits + 4);
  await assertCacheRight('after the restart');

  // Every update carried seed 002's fields and a change: none repeats what the previous one of its service said.
  const updates = rec.named('service:status').map((e) => e.args[0]);
  const last = new Map();
  for (const u of updates) {
    for (const k of ['serviceId', 'status', 'responseTime', 'timestamp']) assert.ok(k in u, `${k} in ${JSON.stringify(u)}`);
    assert.ok(!Number.isNaN(Date.parse(u.timestamp)), u.timestamp);
    const prev = last.get(u.serviceId);
    assert.ok(!prev || prev.status !== u.status || 'details' in u, `a repeated update: ${JSON.stringify(prev)} → ${JSON.stringify(u)}`);
    last.set(u.serviceId, u);
  }
});

test('seed 000 REST, replayed: POST /api/targets with a flat target, pause and delete; answers are the objects target:updated carries; dashboardStats with the monitors channel alone', async (t) => {
  const web = await httpTarget(t);
  const tcp = await tcpTarget(t);
  const udp = await udpTarget(t);
  const h = await startHerald(t, { config: `api_keys = ["admin-key", { key = "publisher", publish = ["x"] }]\n[monitor]\npreset = "targets"\nthrottle = "0s"\n[socketio]\nserver_side_channels = ["monitors"]\n` });
  const auth = { Authorization: 'Bearer admin-key' };

  // The seed's frontend as its diagram describes it: services/socket.js dispatches target:updated and log:new into
  // a Redux store; the addTarget thunk POSTs /api/targets, waits, and pushes the answer onto targets.items.
  function tab() {
    const state = { targets: { items: [] }, logs: { items: [] }, dashboard: { stats: null } };
    const reducers = {
      'targets/addTarget/fulfilled': (s, newTarget) => { s.targets.items.push(newTarget); },
      'targets/targetUpdated': (s, data) => {
        const i = s.targets.items.findIndex((x) => x.id === data.id);
        if (i >= 0) s.targets.items[i] = data; else s.targets.items.push(data); // "appears instantly" in other tabs
      },
      'targets/deleteTarget/fulfilled': (s, id) => { s.targets.items = s.targets.items.filter((x) => x.id !== id); },
      'logs/logAdded': (s, log) => { s.logs.items.unshift(log); },
      'dashboard/statsUpdated': (s, stats) => { s.dashboard.stats = stats; },
    };
    const store = {
      state,
      dispatch(action) {
        if (typeof action === 'function') return action(store.dispatch);
        reducers[action.type](state, action.payload);
        waiter._check();
        return action;
      },
    };
    const targetUpdated = (payload) => ({ type: 'targets/targetUpdated', payload });
    const logAdded = (payload) => ({ type: 'logs/logAdded', payload });
    const socket = io(h.url, { forceNew: true });
    t.after(() => socket.disconnect());
    const waiter = new Recorder(socket);
    socket.on('target:updated', (data) => { store.dispatch(targetUpdated(data)); });
    socket.on('log:new', (data) => { store.dispatch(logAdded(data)); });
    socket.on('dashboardStats', (data) => { store.dispatch({ type: 'dashboard/statsUpdated', payload: data }); });
    return { store, socket, waiter, until: (pred, label) => waiter.until(() => pred(state), 10_000, label) };
  }
  const api = async (path, init = {}) => {
    const res = await fetch(h.url + path, { ...init, headers: { 'Content-Type': 'application/json', ...auth, ...init.headers } });
    const text = await res.text();
    if (!res.ok) throw Object.assign(new Error(`${path}: ${res.status} ${text}`), { status: res.status, body: JSON.parse(text) });
    return { body: JSON.parse(text), text, status: res.status };
  };
  const answers = [];
  const addTarget = (data) => async (dispatch) => {
    const r = await api('/api/targets', { method: 'POST', body: JSON.stringify(data) });
    answers.push(r);
    dispatch({ type: 'targets/addTarget/fulfilled', payload: r.body });
    return r.body;
  };
  const pauseTarget = (id) => async (dispatch) => {
    const r = await api(`/api/targets/${id}/pause`, { method: 'PATCH' });
    dispatch({ type: 'targets/targetUpdated', payload: r.body });
    return r.body;
  };
  const deleteTarget = (id) => async (dispatch) => {
    await api(`/api/targets/${id}`, { method: 'DELETE' });
    dispatch({ type: 'targets/deleteTarget/fulfilled', payload: id });
    return id;
  };

  const one = tab();
  const two = tab();
  await Promise.all([waitFor(one.socket, 'connect'), waitFor(two.socket, 'connect')]);
  const added = [];
  for (const data of [
    { name: 'API', type: 'http', url: `${web.url}/health`, interval: 5 },
    { name: 'Shop', type: 'keyword', url: `${web.url}/shop`, keyword: 'good', interval: 5 },
    { name: 'DB', type: 'tcp', host: '127.0.0.1', port: tcp.port, interval: 5 },
    { name: 'Game server', type: 'udp', host: '127.0.0.1', port: String(udp.port), interval: '5' },
  ]) added.push(await one.store.dispatch(addTarget(data)));

  for (const x of [one, two]) {
    await x.until((s) => s.targets.items.length === 4 && s.targets.items.every((i) => i.status === 'up'), 'four targets up in each tab');
    await x.until((s) => s.dashboard.stats?.total === 4 && s.dashboard.stats?.up === 4, 'dashboard stats from the monitors channel');
    assert.deepEqual(new Set(x.store.state.targets.items.map((i) => i.id)).size, 4, 'each target once');
  }
  // The answers are the target objects the events carry, with the flat fields the frontend sent; 5 stays 5.
  const [a, , db, game] = added;
  assert.equal(answers[0].status, 201);
  assert.match(answers[0].text, /"interval":5[,}]/);
  assert.deepEqual([a.type, a.url, a.interval, a.name], ['http', `${web.url}/health`, 5, 'API']);
  assert.deepEqual([added[1].type, added[1].keyword], ['keyword', 'good']);
  assert.deepEqual([db.type, db.host, db.port], ['tcp', '127.0.0.1', tcp.port]);
  assert.deepEqual([game.type, game.port, game.interval], ['udp', udp.port, 5]);
  const event = one.waiter.named('target:updated').map((e) => e.args[0]).find((d) => d.id === a.id);
  assert.deepEqual(Object.keys(a).sort(), Object.keys(event).sort(), 'the answer has the shape of target:updated');
  assert.ok(one.store.state.logs.items.some((l) => l.monitorId === a.id), 'log:new');
  const listed = (await api('/api/targets')).body;
  assert.deepEqual(listed.map((x) => x.id).sort(), added.map((x) => x.id).sort());

  // Pause: the answer and every tab show it paused.
  const paused = await one.store.dispatch(pauseTarget(db.id));
  assert.equal(paused.status, 'paused');
  assert.equal(paused.paused, true);
  await two.until((s) => s.targets.items.find((i) => i.id === db.id)?.paused === true, 'pause seen in the other tab');
  await two.until((s) => s.dashboard.stats?.paused === 1, 'stats of the pause');
  const resumed = await api(`/api/targets/${db.id}/resume`, { method: 'POST' });
  assert.equal(resumed.body.paused, false);
  // An edit with the flat fields (a form may send the object back as it got it).
  const edited = await api(`/api/targets/${a.id}`, { method: 'PUT', body: JSON.stringify({ ...a, name: 'Public API', interval: 10 }) });
  assert.deepEqual([edited.body.name, edited.body.interval, edited.body.url], ['Public API', 10, `${web.url}/health`]);

  // Delete: gone from the list; stats updated everywhere.
  await one.store.dispatch(deleteTarget(game.id));
  assert.equal(one.store.state.targets.items.length, 3);
  await two.until((s) => s.dashboard.stats?.total === 3, 'stats after the delete');
  assert.equal((await request(h.url, `/api/targets/${game.id}`, { headers: auth })).status, 404);

  // Bad input names the flat field; same keys and scope as /api/monitors.
  const bad = async (body) => (await request(h.url, '/api/targets', { method: 'POST', body, headers: auth }));
  for (const [body, field] of [
    [{ name: 'x', type: 'http' }, 'url'],
    [{ name: 'x', type: 'smtp', url: 'http://127.0.0.1/' }, 'type'],
    [{ name: 'x', type: 'keyword', url: `${web.url}/` }, 'keyword'],
    [{ name: 'x', type: 'tcp', host: '127.0.0.1' }, 'port'],
    [{ name: 'x', type: 'http', url: 'http://nonexistent.invalid/' }, 'url'],
    [{ name: 'x', type: 'http', url: `${web.url}/`, colour: 'red' }, 'colour'],
  ]) {
    const r = await bad(body);
    assert.equal(r.status, 400, `${JSON.stringify(body)} → ${r.status} ${r.text}`);
    assert.equal(r.json.error.code, 'invalid_request');
    assert.equal(r.json.error.field, field, r.text);
  }
  assert.equal((await request(h.url, '/api/targets', { method: 'POST', body: { name: 'x', url: `${web.url}/` } })).status, 401);
  const scoped = await request(h.url, '/api/targets', { method: 'POST', body: { name: 'x', url: `${web.url}/` }, headers: { Authorization: 'Bearer publisher' } });
  assert.equal(scoped.status, 403, scoped.text);
  assert.equal((await api('/api/targets')).body.length, 3, 'nothing was created by refused requests');
});

test('whole numbers stay integers on the wire and in REST (interval = 5 is 5, not 5.0); fractions stay fractions', async (t) => {
  const tcp = await tcpTarget(t);
  const h = await startHerald(t, { config: `[monitor]\nthrottle = "0s"\n[[monitor.monitors]]\nid = "cfg"\nname = "From config"\ninterval = 5\ntimeout = 2\ncheck = { kind = "tcp", host = "127.0.0.1", port = ${tcp.port} }\n` });
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk('monitors');
  const created = await request(h.url, '/api/monitors', { method: 'POST', body: { id: 'api', name: 'API', check: { kind: 'tcp', host: '127.0.0.1', port: tcp.port }, interval: 5, timeout: 1.5, degraded_ms: 800 } });
  assert.equal(created.status, 201, created.text);
  await ws.until(() => ws.events('monitors').some((e) => e.data.id === 'api' && e.data.status === 'up'), 10_000, 'api up');
  await ws.until(() => ws.events('monitors').some((e) => e.data.id === 'cfg' && e.data.status === 'up'), 10_000, 'cfg up');
  const floatZero = /":-?\d+\.0[,}\]]|,-?\d+\.0[,\]]/; // `5.0` as a value or an array element
  const texts = {
    created: created.text,
    api: (await request(h.url, '/api/monitors/api')).text,
    cfg: (await request(h.url, '/api/monitors/cfg')).text,
    list: (await request(h.url, '/api/monitors')).text,
    log: (await request(h.url, '/api/monitors/api/log')).text,
    check: (await request(h.url, '/api/monitors/api/check', { method: 'POST' })).text,
    wire: ws.raw.filter((r) => r.includes('"monitor:')).join('\n'),
  };
  for (const [where, text] of Object.entries(texts)) assert.doesNotMatch(text, floatZero, `${where}: ${text.slice(0, 400)}`);
  const api = JSON.parse(texts.api);
  assert.deepEqual([api.interval, api.definition.interval, api.definition.timeout, api.definition.degraded_ms], [5, 5, 1.5, 800]);
  assert.match(texts.created, /"interval":5[,}]/);
  assert.match(texts.api, /"interval":5[,}][^]*"interval":5[,}]/, 'the object and its definition');
  assert.match(texts.api, /"degraded_ms":800[,}]/);
  assert.match(texts.api, /"timeout":1\.5[,}]/);
  assert.match(texts.cfg, /"interval":5[,}][^]*"timeout":2[,}]/);
  assert.match(texts.wire, /"id":"cfg"[^\n]*"interval":5[,}]/);
  assert.match(texts.wire, /"id":"api"[^\n]*"interval":5[,}]/);
  // Without the targets preset, seed 000's routes do not exist.
  assert.equal((await request(h.url, '/api/targets')).status, 404);
});
