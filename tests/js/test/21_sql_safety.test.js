// 21. SQL sources at scale and under bad input: 1,000 subscribers over 10 parameter sets cost 10 queries per interval
// (read from PostgreSQL's pg_stat_statements) and none once they leave; invalid SQL, unknown parameters and bad URLs
// stop start-up with the source and field named; a database that is down, slow, or returns too many rows is reported
// to subscribers as a status event while the rest of Herald keeps serving, and the source recovers by itself; a query
// that writes is refused by the read-only session.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, request, withTimeout, publish } from '../lib/herald.js';
import { openWs, wsBase, directPath } from '../lib/plain.js';
import { startPostgres, freePort, sqliteDb } from '../lib/sqldb.js';

const DIRECT_DATA = `
[[websocket.direct]]
pattern = "*"
payload = "data"
`;

async function sourceInfo(h, id) {
  const r = await request(h.url, `/api/sources/${id}`);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

/** Resolves once `pred(info)` holds for source `id` (the API read again and again: awaiting a condition). */
async function sourceUntil(h, id, pred, label, ms = 20_000) {
  let info;
  await withTimeout((async () => {
    while (!pred(info = await sourceInfo(h, id))) await new Promise((r) => setImmediate(r));
  })(), ms, `${label}; last: ${JSON.stringify(info)}`);
  return info;
}

const queriesOf = (info, channel) => info.channels.find((c) => c.channel === channel)?.queries ?? 0;

/** Calls of statements over table `counts` recorded by pg_stat_statements. */
const countsCalls = (pg) => Number(pg.exec("select coalesce(sum(calls), 0) from pg_stat_statements where query like '%from counts%'").trim());

test('multiplexing: 1,000 subscribers over 10 parameter sets → 10 queries per interval; 0 after they leave', async (t) => {
  const pg = await startPostgres(t);
  pg.exec('create table counts (unit text primary key, n int)');
  pg.exec(`insert into counts select 'u' || i, i from generate_series(0, 9) i`);
  const INTERVAL = 300;
  const h = await startHerald(t, { config: `${DIRECT_DATA}
[limits]
connections_per_second_per_ip = 0
connections_per_ip = 0

[[sources.sql]]
id = "mux"
url = "${pg.url}"
sql = "select unit, n from counts where unit = {unit}"
channel = "mux:{unit}"
interval = "${INTERVAL}ms"

[[sources.sql]]
id = "control"
url = "${pg.url}"
sql = "select 1 as one where {c} = 'x'"
channel = "control:{c}"
interval = "100ms"
` });
  const clients = [];
  for (let batch = 0; batch < 10; batch++) {
    const opened = [];
    for (let i = 0; i < 100; i++) {
      const unit = `u${(batch * 100 + i) % 10}`;
      opened.push(openWs(t, `${wsBase(h)}${directPath('/ws', `mux:${unit}`)}`).then((c) => { c.unit = unit; return c; }));
    }
    clients.push(...await Promise.all(opened));
  }
  await Promise.all(clients.map((c) => c.until((x) => x.messages.length >= 1, 20_000, `snapshot of ${c.unit}`)));
  for (const c of clients) assert.deepEqual(c.messages[0], [{ unit: c.unit, n: Number(c.unit.slice(1)) }]);

  // Reset the statistics first, then read Herald's counters: every query Herald counts from here on ran after the
  // reset, except at most one in flight per channel whose execution ended just before it.
  pg.exec('select pg_stat_statements_reset()');
  const t0 = Date.now();
  const before = await sourceInfo(h, 'mux');
  assert.equal(before.channels.length, 10, 'one poller per parameter set');
  const start = Object.fromEntries(before.channels.map((c) => [c.channel, c.queries]));
  await sourceUntil(h, 'mux', (info) => info.channels.every((c) => c.queries >= start[c.channel] + 5), '5 polls per channel');
  const elapsed = Date.now() - t0;
  const calls = countsCalls(pg);
  const intervals = elapsed / INTERVAL;
  console.log(`# multiplexing: ${calls} queries in ${elapsed} ms (${intervals.toFixed(1)} intervals) for 1000 subscribers on 10 channels`);
  assert.ok(calls >= 40, `at least 4 queries per channel recorded by PostgreSQL: ${calls}`);
  assert.ok(calls <= 10 * (intervals + 2), `${calls} queries in ${intervals.toFixed(1)} intervals: more than 10 per interval`);

  // A change reaches the 100 subscribers of its unit, and no one else.
  pg.exec("update counts set n = 100 where unit = 'u3'");
  const u3 = clients.filter((c) => c.unit === 'u3');
  await Promise.all(u3.map((c) => c.until((x) => x.messages.length === 2, 20_000, 'u3 change')));
  for (const c of u3) assert.deepEqual(c.messages[1], [{ unit: 'u3', n: 100 }]);
  assert.ok(clients.filter((c) => c.unit !== 'u3').every((c) => c.messages.length === 1), 'other units got nothing');

  // Everyone leaves: the pollers stop, and the database sees no more queries (while another source still polls).
  const control = await openWs(t, `${wsBase(h)}${directPath('/ws', 'control:x')}`);
  await Promise.all(clients.map((c) => c.close()));
  await sourceUntil(h, 'mux', (info) => info.channels.length === 0, 'every mux poller stopped');
  pg.exec('select pg_stat_statements_reset()');
  const c0 = queriesOf(await sourceInfo(h, 'control'), 'control:x');
  await sourceUntil(h, 'control', (info) => queriesOf(info, 'control:x') >= c0 + 5, 'control polls');
  assert.equal(countsCalls(pg), 0, 'queries after every subscriber left');
  await control.close();
});

test('start-up refuses invalid SQL, unknown parameters and bad URLs, naming the source and field', async (t) => {
  const pg = await startPostgres(t);
  const cases = [
    [`sql = "selec 1 where {u} = 'x'"`, `url = "${pg.url}"`, /sources\.sql "bad", field `sql`: .*syntax error/],
    [`sql = "select * from no_such_table where {u} = 'x'"`, `url = "${pg.url}"`, /sources\.sql "bad", field `sql`: .*no_such_table/],
    [`sql = "select 1 where {unit} = 'x'"`, `url = "${pg.url}"`, /sources\.sql\[0\] \(id "bad"\) field `sql`: unknown parameter \{unit\}/],
    [`sql = "select 1 where {u} = 'x'"`, 'url = "oracle://db/x"', /sources\.sql\[0\] \(id "bad"\) field `url`/],
    [`sql = "select 1 where {u} = 'x'"`, 'url = "postgres://u@[::1"', /sources\.sql "bad", field `url`/],
  ];
  for (const [sql, url, expected] of cases) {
    const config = `[[sources.sql]]\nid = "bad"\n${url}\n${sql}\nchannel = "bad:{u}"\n`;
    await assert.rejects(startHerald(t, { config, env: { RUST_BACKTRACE: '0', RUST_LIB_BACKTRACE: '0' } }), (e) => {
      assert.match(e.message, expected);
      return true;
    }, `config ${sql} ${url}`);
  }
});

test('database down, then up: subscribers get an error status, Herald keeps serving, the source recovers', async (t) => {
  const port = await freePort();
  const h = await startHerald(t, { config: `${DIRECT_DATA}
[[sources.sql]]
id = "later"
url = "postgres://postgres@127.0.0.1:${port}/postgres"
sql = "select {u} as unit, 42 as n"
channel = "later:{u}"
interval = "100ms"
statement_timeout = "1s"
` });
  // A data-only client on the direct URL (errors arrive typed), and the JSON protocol (status events as events).
  const ws = await openWs(t, `${wsBase(h)}${directPath('/ws', 'later:A')}`);
  const env = await openWs(t, `${wsBase(h)}/ws`);
  await env.subscribeOk('later:A');
  const status = await ws.next((m) => m?.status === 'error', 20_000, 'error status');
  assert.equal(status.type, 'error');
  assert.equal(status.code, 'source_error');
  assert.equal(status.source, 'later');
  assert.equal(status.channel, 'later:A');
  assert.match(status.message, /unavailable|refused/i);
  assert.match(h.stderr(), /source failing/);
  // The rest of Herald is unaffected.
  await h.assertHealthy();
  await publish(h.url, 'other', 'e', { ok: 1 });

  await startPostgres(t, { port });
  const ok = await env.next((m) => m?.event === 'source:status' && m.data.status === 'ok', 60_000, 'ok status after the database came up');
  assert.equal(ok.data.source, 'later');
  await ws.until((c) => c.messages.some((m) => Array.isArray(m)), 20_000, 'the result');
  assert.deepEqual(ws.messages.find((m) => Array.isArray(m)), [{ unit: 'A', n: 42 }]);
  // The data-only client got the error typed and then the result: nothing untyped but data.
  assert.ok(ws.messages.every((m) => Array.isArray(m) || m?.type !== undefined), JSON.stringify(ws.messages));
});

test('a slow query hits the statement timeout and is reported; the row limit keeps the last good result', async (t) => {
  const pg = await startPostgres(t);
  pg.exec("create table many (unit text, i int); insert into many values ('A', 1), ('A', 2)");
  const h = await startHerald(t, { config: `${DIRECT_DATA}
[[sources.sql]]
id = "slow"
url = "${pg.url}"
sql = "select pg_sleep(2) as slept, {u} as u"
channel = "slow:{u}"
interval = "100ms"
statement_timeout = "200ms"

[[sources.sql]]
id = "limited"
url = "${pg.url}"
sql = "select i from many where unit = {u} order by i"
channel = "limited:{u}"
interval = "100ms"
max_rows = 3
` });
  const slow = await openWs(t, `${wsBase(h)}${directPath('/ws', 'slow:A')}`);
  const s = await slow.next((m) => m?.status === 'error', 20_000, 'timeout status');
  assert.match(s.message, /statement timeout|timed out/);
  const info = await sourceInfo(h, 'slow');
  assert.equal(info.channels[0].status, 'error');

  const lim = await openWs(t, `${wsBase(h)}${directPath('/ws', 'limited:A')}`);
  await lim.until((c) => c.messages.length === 1, 10_000, 'first result');
  assert.deepEqual(lim.messages[0], [{ i: 1 }, { i: 2 }]);
  pg.exec("insert into many values ('A', 3), ('A', 4), ('A', 5)");
  const over = await lim.next((m) => m?.status === 'error', 10_000, 'row limit status');
  assert.match(over.message, /more than 3 rows/);
  assert.equal(lim.messages.filter((m) => Array.isArray(m)).length, 1, 'no partial result pushed');
  // A new subscriber still gets the last good result.
  const late = await openWs(t, `${wsBase(h)}${directPath('/ws', 'limited:A')}`);
  await late.until((c) => c.messages.length >= 1, 10_000, 'last good result');
  assert.deepEqual(late.messages[0], [{ i: 1 }, { i: 2 }]);
  assert.equal(over.type, 'error', 'typed on a data URL');
  pg.exec("delete from many where i > 1");
  await lim.until((c) => c.messages.filter((m) => Array.isArray(m)).length === 2, 10_000, 'new result');
  assert.deepEqual(lim.messages.filter((m) => Array.isArray(m))[1], [{ i: 1 }]);
  await sourceUntil(h, 'limited', (i) => i.channels[0]?.status === 'ok', 'limited recovered');
  await h.assertHealthy();
});

test('sessions are read-only: a query that writes is refused by the database and reported', async (t) => {
  const pg = await startPostgres(t);
  pg.exec('create sequence s; create table w (v text)');
  const sqlite = sqliteDb(t);
  sqlite.exec('create table w (v text)');
  const h = await startHerald(t, { config: `${DIRECT_DATA}
[[sources.sql]]
id = "pg-writes"
url = "${pg.url}"
sql = "select nextval('s') as n where {u} = 'A'"
channel = "pgw:{u}"
interval = "100ms"

[[sources.sql]]
id = "sqlite-writes"
url = "${sqlite.url}"
sql = "insert into w values ({u}) returning v"
channel = "litew:{u}"
interval = "100ms"
` });
  const a = await openWs(t, `${wsBase(h)}${directPath('/ws', 'pgw:A')}`);
  const s1 = await a.next((m) => m?.status === 'error', 10_000, 'postgres refuses the write');
  assert.match(s1.message, /read-only transaction/);
  const b = await openWs(t, `${wsBase(h)}${directPath('/ws', 'litew:A')}`);
  const s2 = await b.next((m) => m?.status === 'error', 10_000, 'sqlite refuses the write');
  assert.match(s2.message, /readonly|read-only|query_only/i);
  assert.equal(pg.exec("select last_value from s").trim(), '1', 'the sequence never advanced past its start');
  assert.equal(pg.exec("select is_called from s").trim(), 'f');
  assert.equal(sqlite.exec('select count(*) from w').trim(), '0');
  await h.assertHealthy();
});
