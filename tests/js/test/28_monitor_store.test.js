// 27. The monitor keeps its data through the engine (src/monitor/store.rs, src/monitor/migrate.rs): Herald's own
// `herald:` channels are refused to every client and hidden from the channel list; `herald serve --engine memory`
// runs the transports, the monitor and a SQL source without writing a file; a `monitors.db` left by an earlier
// version is imported once at start-up and renamed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  startHerald, request, publish, connected, subscribe, subscribeOk, Recorder, assertApiError, ENGINE, DURABLE_ONLY,
} from '../lib/herald.js';
import { openWs, wsBase, openSse, refusedUpgrade, directPath } from '../lib/plain.js';
import { sqliteDb } from '../lib/sqldb.js';

/** A TCP port that accepts connections (a target that is up). */
async function tcpTarget(t) {
  const server = net.createServer((c) => c.destroy());
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  return server.address().port;
}

/** A config declaring one TCP monitor `id` checked every second. */
const monitorConfig = (id, port) => `
[monitor]
throttle = "0s"

[[monitor.monitors]]
id = "${id}"
name = "Port"
interval = 1
check = { kind = "tcp", host = "127.0.0.1", port = ${port} }
`;

/** Resolves once monitor `id` has `n` log entries (each check writes one). */
async function logged(t, h, id, n, ms = 10_000) {
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk('monitors');
  await ws.until(() => ws.events('monitors').filter((e) => e.event === 'monitor:log' && e.data.monitorId === id).length >= n,
    ms, `${n} log events of ${id}`);
  await ws.close();
  const log = (await request(h.url, `/api/monitors/${id}/log?limit=100`)).json.log;
  assert.ok(log.length >= n, `${id}: ${log.length} log entries`);
  return log;
}

test('herald: channels are refused on every transport and the HTTP API with reserved_channel, and are not listed', async (t) => {
  const port = await tcpTarget(t);
  const h = await startHerald(t, { config: monitorConfig('web', port) });
  await logged(t, h, 'web', 1);
  const own = ['herald:monitors', 'herald:monitor-log:web'];
  for (const channel of own) {
    const sio = await connected(t, h.url, { transports: ['websocket'] });
    const ack = await subscribe(sio, channel);
    assert.equal(ack?.ok, false, `Socket.IO subscribe ${channel}: ${JSON.stringify(ack)}`);
    assert.equal(ack.error?.code, 'reserved_channel', `Socket.IO subscribe ${channel}: ${JSON.stringify(ack)}`);
    sio.disconnect();

    const ws = await openWs(t, `${wsBase(h)}/ws`);
    const from = ws.messages.length;
    ws.send({ op: 'subscribe', id: 1, channel });
    const err = await ws.next((m) => m?.type === 'error', 10_000, `/ws error for ${channel}`, from);
    assert.equal(err.code, 'reserved_channel', `/ws subscribe ${channel}: ${JSON.stringify(err)}`);
    await ws.close();

    assertApiError(await refusedUpgrade(t, `${wsBase(h)}${directPath('/ws', channel)}`), 400, 'reserved_channel', `/ws/${channel}`);
    for (const url of [`${h.url}/sse?channel=${encodeURIComponent(channel)}`, `${h.url}${directPath('/sse', channel)}`]) {
      const sse = await openSse(t, url);
      assert.equal(sse.status, 400, `${url} → ${sse.status}`);
      assert.equal(sse.json?.error?.code, 'reserved_channel', `${url}: ${sse.text}`);
    }
    assertApiError(await request(h.url, `/api/channels/${encodeURIComponent(channel)}/history`), 400, 'reserved_channel',
      `history of ${channel}`);
    assertApiError(await request(h.url, '/api/publish', { method: 'POST', body: { channel, event: 'x', data: 1 } }), 400,
      'reserved_channel', `publish to ${channel}`);
    assertApiError(await request(h.url, '/api/publish', { method: 'POST', body: { channels: ['ok', channel], event: 'x' } }), 400,
      'reserved_channel', `publish to ${channel} among others`);
  }
  // Nothing was published by the refused attempt above, and the list shows only clients' channels.
  const names = (await request(h.url, '/api/channels')).json.channels.map((c) => c.channel);
  assert.ok(names.includes('monitors'), JSON.stringify(names));
  assert.deepEqual(names.filter((n) => n.startsWith('herald:') || n === 'ok'), [], JSON.stringify(names));
  // A monitor cannot be pointed at one either.
  const r = await request(h.url, '/api/monitors', {
    method: 'POST',
    body: { name: 'x', channel: 'herald:monitors', check: { kind: 'tcp', host: '127.0.0.1', port } },
  });
  assert.equal(r.status, 400, r.text);
  assert.equal(r.json.error.field, 'channel', r.text);
  await h.assertHealthy();
});

test('herald serve --engine memory: every transport, the monitor and a SQL source run, and nothing is written to disk', async (t) => {
  const port = await tcpTarget(t);
  const db = sqliteDb(t); // the user's own database, outside Herald's directories
  db.exec("create table items (id integer primary key, name text not null); insert into items values (1, 'one');");
  const config = `${monitorConfig('web', port)}
[[sources.sql]]
id = "items"
url = "${db.url}"
sql = "select id, name from items order by id"
channel = "items"
interval = "100ms"
`;
  const h = await startHerald(t, { config, args: ENGINE === 'memory' ? [] : ['--engine', 'memory'] });

  // Socket.IO follows the monitor, /ws the SQL source, SSE a channel published to over HTTP.
  const sio = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(sio);
  await subscribeOk(sio, 'monitors');
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk('items');
  const sse = await openSse(t, `${h.url}/sse?channel=news`);
  assert.equal(sse.status, 200);
  await rec.until((r) => r.named('monitor:status').some((e) => e.args[0]?.id === 'web' && e.args[0].status === 'up'),
    10_000, 'monitor web up');
  await ws.until(() => ws.events('items').length >= 1, 10_000, 'the SQL source result');
  await publish(h.url, 'news', 'flash', { n: 1 });
  await sse.until((s) => s.named('flash').length === 1, 10_000, 'the published event over SSE');
  await logged(t, h, 'web', 2);
  const m = (await request(h.url, '/api/monitors/web')).json;
  assert.equal(m.status, 'up');
  assert.ok(m.uptime24h > 0, JSON.stringify(m));
  // A monitor created over the API, paused and deleted: all in memory.
  const created = await request(h.url, '/api/monitors', {
    method: 'POST', body: { id: 'extra', name: 'Extra', interval: 60, check: { kind: 'tcp', host: '127.0.0.1', port } },
  });
  assert.equal(created.status, 201, created.text);
  assert.equal((await request(h.url, '/api/monitors/extra/pause', { method: 'POST' })).status, 200);
  assert.equal((await request(h.url, '/api/monitors/extra', { method: 'DELETE' })).status, 200);

  await h.stop('SIGTERM');
  assert.deepEqual(h.exits.at(-1), { code: 0, signal: null }, `clean exit; stderr:\n${h.stderr()}`);
  assert.equal(existsSync(h.dataDir), false, `the data dir was created: ${existsSync(h.dataDir) && readdirSync(h.dataDir)}`);
  assert.deepEqual(readdirSync(h.dir), ['herald.toml'], 'nothing beside the config in the working directory');
});

/** The schema of the side database Herald kept before the monitor's data moved into the engine. */
const OLD_SCHEMA = `
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS monitors (id TEXT PRIMARY KEY, spec TEXT NOT NULL, runtime TEXT);
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    monitor TEXT NOT NULL,
    time INTEGER NOT NULL,
    status TEXT NOT NULL,
    ms REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_monitor ON log (monitor, id);
`;

const sqlText = (s) => `'${s.replaceAll("'", "''")}'`;

test('a monitors.db left by an earlier version is imported at start-up (definitions, status, uptime, recent log) and renamed', DURABLE_ONLY, async (t) => {
  const port = await tcpTarget(t);
  const h = await startHerald(t);
  await h.stop('SIGTERM'); // an existing data dir (herald.db) that gets an old monitors.db beside it
  const now = Date.now();
  const hour = Math.floor(now / 3_600_000);
  const day = Math.floor(now / 86_400_000);
  const spec = { id: 'legacy', name: 'Legacy \u00e9', check: { kind: 'tcp', host: '127.0.0.1', port }, interval: 60, paused: true };
  const runtime = {
    status: 'paused', last_check: now - 3000, last_change: now - 2000, message: "it's fine", response_ms: 12.5, cert_days: null,
    failures: 0, recent: [[now - 5000, 10, 'up'], [now - 4000, 20, 'down'], [now - 3000, 12.5, 'up']],
    hours: [{ start: hour, up: 3, total: 4, ms_sum: 50 }], days: [{ start: day, up: 3, total: 4, ms_sum: 50 }],
  };
  const other = { id: 'other', name: 'Other', check: { kind: 'tcp', host: '127.0.0.1', port }, interval: 60, paused: true };
  const rows = [
    ['legacy', now - 40 * 86_400_000, 'up', 9, 'too old to keep'],
    ['legacy', now - 5000, 'up', 10, 'first'],
    ['other', now - 4500, 'up', 1, 'not mine'],
    ['legacy', now - 4000, 'down', 20, 'connection refused "quoted"'],
    ['legacy', now - 3000, 'up', 12.5, "it's fine"],
  ];
  const path = join(h.dataDir, 'monitors.db');
  execFileSync('sqlite3', ['-bail', path, OLD_SCHEMA
    + `INSERT INTO monitors VALUES ('legacy', ${sqlText(JSON.stringify(spec))}, ${sqlText(JSON.stringify(runtime))});`
    + `INSERT INTO monitors VALUES ('other', ${sqlText(JSON.stringify(other))}, NULL);`
    + rows.map(([m, time, s, ms, msg]) => `INSERT INTO log (monitor, time, status, ms, message) VALUES ('${m}', ${time}, '${s}', ${ms}, ${sqlText(msg)});`).join('')]);

  await h.restart();
  assert.equal(existsSync(path), false, 'monitors.db is gone');
  assert.ok(existsSync(join(h.dataDir, 'monitors.db.migrated')), `renamed: ${readdirSync(h.dataDir)}`);
  const check = async (when) => {
    const list = (await request(h.url, '/api/monitors')).json.monitors;
    assert.deepEqual(list.map((m) => [m.id, m.status]), [['legacy', 'paused'], ['other', 'paused']], `${when}: ${JSON.stringify(list)}`);
    const m = (await request(h.url, '/api/monitors/legacy')).json;
    assert.equal(m.name, 'Legacy \u00e9');
    assert.equal(m.definition.check.port, port);
    assert.equal(m.uptime24h, 0.75, `${when}: uptime from the imported buckets`);
    assert.equal(m.message, "it's fine");
    assert.equal(m.lastChange, new Date(now - 2000).toISOString());
    assert.equal(m.recent.length, 3);
    const log = (await request(h.url, '/api/monitors/legacy/log')).json.log;
    assert.deepEqual(log.map((e) => [e.monitorId, e.status, e.responseTime, e.message, e.createdAt]), [
      ['legacy', 'up', 12.5, "it's fine", new Date(now - 3000).toISOString()],
      ['legacy', 'down', 20, 'connection refused "quoted"', new Date(now - 4000).toISOString()],
      ['legacy', 'up', 10, 'first', new Date(now - 5000).toISOString()],
    ], `${when}: the recent log, newest first, without the entry older than log_max_age`);
    assert.ok(log[0].id > log[1].id && log[1].id > log[2].id, JSON.stringify(log));
    const otherLog = (await request(h.url, '/api/monitors/other/log')).json.log;
    assert.deepEqual(otherLog.map((e) => e.message), ['not mine']);
  };
  await check('after the import');
  // The imported data is the engine's now: it survives the next restart, and the file is not read again.
  await h.stop('SIGTERM');
  await h.restart();
  await check('after another restart');
  assert.equal(h.stderr().split('imported monitors.db').length - 1, 1, 'imported once');
  await h.assertHealthy();
});
