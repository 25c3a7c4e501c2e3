// 19. The service monitor through the real binary: HTTP/TCP/UDP targets driven up → down → up (events, log entries,
// stored status across a restart), seed-000 and seed-002 frontends by configuration alone, and bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import dgram from 'node:dgram';
import { readFileSync, writeFileSync } from 'node:fs';
import { io } from 'socket.io-client';
import { startHerald, request, connected, Recorder, waitFor, withTimeout } from '../lib/herald.js';
import { openWs, wsBase } from '../lib/plain.js';
import { KEY_BLOCKS } from '../lib/auth.js';
import { sign } from '../lib/jwt.js';

/** An HTTP target whose status, delay and body the test sets. */
async function httpTarget(t) {
  const state = { status: 200, body: 'all good', hang: false };
  const server = http.createServer((req, res) => {
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

test('HTTP, TCP and UDP monitors go up → down → up: events, log entries and stored status (across a restart)', async (t) => {
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


test('a restart republishes nothing that did not change: every channel keeps its position; a change made meanwhile is sent', async (t) => {
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
  const h = await startHerald(t, { config: `[monitor]\npreset = "targets"\nthrottle = "0s"\n[socketio]\nserver_side_channels = ["monitors", "monitors:stats"]\n${MONITORS(web)}` });
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

test('seed 002 frontend (JWT, subscribe:status, service:bulk-update then changed fields, request:refresh) by configuration alone', async (t) => {
  const web = await httpTarget(t);
  const config = `[auth]\n${KEY_BLOCKS.RS256}
[monitor]
preset = "services"
channel = "status"
refresh_interval = "0s"
[socketio.client_events]
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
  const h = await startHerald(t, { config });
  const token = sign({ sub: 'alice' });
  // lib/socket.ts of the seed.
  const socket = io(h.url, { auth: { token }, transports: ['websocket'], reconnection: true, reconnectionDelay: 1000, timeout: 10000, forceNew: true });
  t.after(() => socket.disconnect());
  const rec = new Recorder(socket);
  let services = null;
  socket.on('service:bulk-update', (all) => { services = all; });
  socket.on('service:status', (u) => {
    services = services?.map((s) => (s.id === u.serviceId ? { ...s, ...u, details: u.details ? { ...s.details, ...u.details } : s.details } : s));
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
  // Only changed fields: an update after which the status stayed the same carries no `status`.
  assert.ok(updates.some((u) => !('status' in u)), 'some updates carry only what changed');
  // At most one update per second per service (seed 002's debounce), the final state always arrives.
  const times = rec.named('service:status').filter((e) => e.args[0].serviceId === 'api').map((e) => Date.parse(e.args[0].timestamp));
  for (let i = 1; i < times.length; i++) assert.ok(times[i] - times[i - 1] >= 900, `updates ${times[i] - times[i - 1]} ms apart`);

  // request:refresh runs the check now (rate-limited); unknown ids get the seed's `error` event.
  const errors = [];
  socket.on('error', (e) => errors.push(e));
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
