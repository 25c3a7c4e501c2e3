// 20. Live SQL sources against real databases started by the test (PostgreSQL, MariaDB) and SQLite files: the
// result of a parameterised query pushed when it changes and only then (whole result on direct /ws URLs, row deltas
// on /ws subscriptions), column types as JSON, LISTEN wake-ups, the REST endpoints, and bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, request, withTimeout } from '../lib/herald.js';
import { openWs, wsBase, directPath } from '../lib/plain.js';
import { startPostgres, startMariaDb, sqliteDb } from '../lib/sqldb.js';

const ITEMS = {
  postgres: 'create table items (id int primary key, unit text not null, name text not null, qty int not null, price numeric(10,2))',
  mysql: 'create table items (id int primary key, unit varchar(50) not null, name varchar(50) not null, qty int not null, price decimal(10,2))',
  sqlite: 'create table items (id integer primary key, unit text not null, name text not null, qty integer not null, price real)',
};

/** A config with a full-result source on `{unit}` and a rows source on `rows:{unit}` over table `items`. */
function itemsConfig(url, { interval = '100ms' } = {}) {
  return `
[[websocket.direct]]
pattern = "*"
payload = "data"

[[sources.sql]]
id = "items"
url = "${url}"
sql = "select id, name, qty, price from items where unit = {unit} order by id"
channel = "{unit}"
key = "id"
interval = "${interval}"

[[sources.sql]]
id = "item-rows"
url = "${url}"
sql = "select id, name, qty, price from items where unit = {unit} order by id"
channel = "rows:{unit}"
mode = "rows"
key = "id"
interval = "${interval}"
`;
}

/** Source `id`'s status, from the API. */
async function sourceInfo(h, id) {
  const r = await request(h.url, `/api/sources/${id}`);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

/** Queries run so far for `channel` of source `id` (0 when not polled). */
async function queriesOf(h, id, channel) {
  const info = await sourceInfo(h, id);
  return info.channels.find((c) => c.channel === channel)?.queries ?? 0;
}

/** Resolves once source `id` has queried `channel` `n` more times: proof that polls happened. */
async function pollsPass(h, id, channel, n = 3) {
  const start = await queriesOf(h, id, channel);
  await withTimeout((async () => {
    // Reading the API repeatedly is awaiting a condition, not a synchronisation sleep.
    while (await queriesOf(h, id, channel) < start + n) await new Promise((r) => setImmediate(r));
  })(), 15_000, `${n} polls of ${channel}`);
}

/** The rows a `rows`-mode subscriber holds after applying its events (bulk snapshot, insert, update, delete). */
function rowsView(events) {
  const m = new Map();
  for (const e of events) {
    if (e.event === 'snapshot') {
      m.clear();
      for (const r of e.data) m.set(r.id, r);
    } else if (e.event === 'delete') m.delete(e.data.id);
    else if (e.event === 'insert' || e.event === 'update') m.set(e.data.id, e.data);
  }
  return [...m.values()].sort((a, b) => a.id - b.id);
}

const deltas = (c, ch) => c.events(ch).filter((e) => ['insert', 'update', 'delete'].includes(e.event));
const sameJson = (a, b) => JSON.stringify(a) === JSON.stringify(b);

for (const kind of ['postgres', 'mysql', 'sqlite']) {
  test(`${kind}: insert, update and delete pushed as whole results and as row deltas; unchanged → nothing`, async (t) => {
    const db = kind === 'postgres' ? await startPostgres(t) : kind === 'mysql' ? await startMariaDb(t) : sqliteDb(t);
    db.exec(ITEMS[kind]);
    db.exec("insert into items values (1, 'Final 1A', 'X100', 5, 12.50), (2, 'Final 1B', 'Y200', 7, 3.00)");
    const h = await startHerald(t, { config: itemsConfig(db.url) });

    // Seed 003's client: a bare WebSocket per unit, receiving the bare result array.
    const unitA = await openWs(t, `${wsBase(h)}${directPath('/ws', 'Final 1A')}`);
    const unitB = await openWs(t, `${wsBase(h)}${directPath('/ws', 'Final 1B')}`);
    // The JSON protocol, subscribed to row deltas of unit A.
    const rows = await openWs(t, `${wsBase(h)}/ws`);
    await rows.subscribeOk('rows:Final 1A');

    await unitA.until((c) => c.messages.length === 1, 10_000, 'unit A snapshot');
    assert.deepEqual(unitA.messages[0], [{ id: 1, name: 'X100', qty: 5, price: 12.5 }]);
    await unitB.until((c) => c.messages.length === 1, 10_000, 'unit B snapshot');
    assert.deepEqual(unitB.messages[0], [{ id: 2, name: 'Y200', qty: 7, price: 3 }]);
    // Subscribed before the first poll: an empty snapshot, then the first result as inserts.
    const R = 'rows:Final 1A';
    await rows.until((c) => sameJson(rowsView(c.events(R)), [{ id: 1, name: 'X100', qty: 5, price: 12.5 }]),
      10_000, 'first rows');
    const base = deltas(rows, R).length;

    db.exec("insert into items values (3, 'Final 1A', 'Z300', 1, null)");
    await unitA.until((c) => c.messages.length === 2, 10_000, 'result after insert');
    assert.deepEqual(unitA.messages[1], [
      { id: 1, name: 'X100', qty: 5, price: 12.5 },
      { id: 3, name: 'Z300', qty: 1, price: null },
    ]);
    await rows.until((c) => deltas(c, R).length === base + 1, 10_000, 'insert delta');
    const ins = deltas(rows, R)[base];
    assert.equal(ins.event, 'insert');
    assert.deepEqual(ins.data, { id: 3, name: 'Z300', qty: 1, price: null });

    db.exec('update items set qty = 6 where id = 1');
    await unitA.until((c) => c.messages.length === 3, 10_000, 'result after update');
    assert.equal(unitA.messages[2][0].qty, 6);
    await rows.until((c) => deltas(c, R).length === base + 2, 10_000, 'update delta');
    assert.equal(deltas(rows, R)[base + 1].event, 'update');
    assert.deepEqual(deltas(rows, R)[base + 1].data, { id: 1, name: 'X100', qty: 6, price: 12.5 });

    db.exec('delete from items where id = 3');
    await unitA.until((c) => c.messages.length === 4, 10_000, 'result after delete');
    assert.deepEqual(unitA.messages[3], [{ id: 1, name: 'X100', qty: 6, price: 12.5 }]);
    await rows.until((c) => deltas(c, R).length === base + 3, 10_000, 'delete delta');
    assert.equal(deltas(rows, R)[base + 2].event, 'delete');
    assert.equal(deltas(rows, R)[base + 2].data.id, 3);
    assert.deepEqual(rowsView(rows.events(R)), [{ id: 1, name: 'X100', qty: 6, price: 12.5 }]);

    // Nothing changed for unit A (and unit B never changed): several polls later, nothing more was pushed.
    db.exec("update items set qty = qty where unit = 'Final 1A'");
    await pollsPass(h, 'items', 'Final 1A');
    await pollsPass(h, 'item-rows', 'rows:Final 1A');
    await rows.barrier();
    assert.equal(unitA.messages.length, 4, `unit A got: ${JSON.stringify(unitA.messages.slice(4))}`);
    assert.equal(unitB.messages.length, 1, `unit B got: ${JSON.stringify(unitB.messages.slice(1))}`);
    assert.equal(deltas(rows, R).length, base + 3);

    // A new subscriber's snapshot is the current state: the whole result, or the rows in one bulk event.
    const late = await openWs(t, `${wsBase(h)}${directPath('/ws', 'Final 1A')}`);
    await late.until((c) => c.messages.length === 1, 10_000, 'late snapshot');
    assert.deepEqual(late.messages[0], unitA.messages[3]);
    const lateRows = await openWs(t, `${wsBase(h)}/ws`);
    await lateRows.subscribeOk('rows:Final 1A');
    await lateRows.until((c) => c.events('rows:Final 1A').length === 1, 10_000, 'late rows snapshot');
    assert.deepEqual(lateRows.events('rows:Final 1A')[0].data, [{ id: 1, name: 'X100', qty: 6, price: 12.5 }]);
    h.assertNoPanic();
  });
}

/** Serves row `a` of table `typed` at `url` over a direct WebSocket; resolves once the result arrived (raw and parsed). */
async function typedRow(t, url) {
  const h = await startHerald(t, { config: `
[[websocket.direct]]
pattern = "*"
payload = "data"
[[sources.sql]]
id = "typed"
url = "${url}"
sql = "select * from typed where k = {k}"
channel = "typed:{k}"
interval = "200ms"
` });
  const ws = await openWs(t, `${wsBase(h)}${directPath('/ws', 'typed:a')}`);
  await ws.until((c) => c.raw.length === 1, 10_000, 'typed row');
  return ws;
}

test('postgres: column types become faithful JSON (timestamptz, numeric, uuid, jsonb, arrays, NULL)', async (t) => {
  const pg = await startPostgres(t);
  pg.exec(`create table typed (k text primary key, at timestamptz, d date, n numeric(20,6), big bigint, f float8,
    u uuid, j jsonb, arr int[], b boolean, bin bytea, note text)`);
  pg.exec(`insert into typed values ('a', '2026-11-23 08:00:00.123+00', '2026-11-23', 12345678901234.000001,
    9007199254740993, 1.5, '6f1c2a3e-8a8b-4c47-9a51-0a7d6c9e2b11', '{"x": [1, "two"]}', '{1,2}', true, '\\x0102', null)`);
  const ws = await typedRow(t, pg.url);
  // The raw text keeps exact digits that JSON.parse would round.
  assert.match(ws.raw[0], /"n":12345678901234\.000001/);
  assert.match(ws.raw[0], /"big":9007199254740993/);
  const [row] = ws.messages[0];
  assert.deepEqual(Object.keys(row), ['k', 'at', 'd', 'n', 'big', 'f', 'u', 'j', 'arr', 'b', 'bin', 'note'], 'column order kept');
  assert.equal(new Date(row.at).toISOString(), '2026-11-23T08:00:00.123Z');
  assert.equal(row.d, '2026-11-23');
  assert.equal(row.f, 1.5);
  assert.equal(row.u, '6f1c2a3e-8a8b-4c47-9a51-0a7d6c9e2b11');
  assert.deepEqual(row.j, { x: [1, 'two'] });
  assert.deepEqual(row.arr, [1, 2]);
  assert.equal(row.b, true);
  assert.equal(row.bin, '\\x0102');
  assert.equal(row.note, null);
});

test('mariadb: column types become faithful JSON (datetime, timestamp, decimal, json, bigint unsigned, NULL)', async (t) => {
  const my = await startMariaDb(t);
  my.exec(`create table typed (k varchar(10) primary key, at datetime(3), ts timestamp null, d date, tm time,
    n decimal(20,6), big bigint unsigned, f double, j json, b tinyint(1), bin varbinary(4), note text)`);
  my.exec(`insert into typed values ('a', '2026-11-23 08:00:00.123', '2026-11-23 08:00:00', '2026-11-23', '12:34:56',
    12345678901234.000001, 18446744073709551615, 1.5, '{"x": [1, "two"]}', 1, x'0102', null)`);
  const ws = await typedRow(t, my.url);
  assert.match(ws.raw[0], /"n":12345678901234\.000001/);
  assert.match(ws.raw[0], /"big":18446744073709551615/);
  const [row] = ws.messages[0];
  assert.deepEqual(Object.keys(row), ['k', 'at', 'ts', 'd', 'tm', 'n', 'big', 'f', 'j', 'b', 'bin', 'note']);
  assert.equal(row.at, '2026-11-23T08:00:00.123000');
  assert.equal(row.ts, '2026-11-23T08:00:00Z');
  assert.equal(row.d, '2026-11-23');
  assert.equal(row.tm, '12:34:56');
  assert.equal(row.f, 1.5);
  // MariaDB's JSON is LONGTEXT: it arrives as the document's text.
  assert.deepEqual(typeof row.j === 'string' ? JSON.parse(row.j) : row.j, { x: [1, 'two'] });
  assert.equal(row.b, 1);
  assert.equal(row.bin, Buffer.from([1, 2]).toString('base64'));
  assert.equal(row.note, null);
});

test('postgres LISTEN: a notification re-runs the query at once, long before the interval', async (t) => {
  const pg = await startPostgres(t);
  pg.exec("create table board (id int primary key, v text); insert into board values (1, 'a')");
  const h = await startHerald(t, { config: `
[[websocket.direct]]
pattern = "*"
payload = "data"
[[sources.sql]]
id = "board"
url = "${pg.url}"
sql = "select id, v from board where {b} = 'main' order by id"
channel = "board:{b}"
interval = "1h"
listen = "board_changed"
` });
  const ws = await openWs(t, `${wsBase(h)}${directPath('/ws', 'board:main')}`);
  await ws.until((c) => c.messages.length === 1, 10_000, 'snapshot');
  // The listener may connect after the first poll: notify until the change shows (each NOTIFY is a real trigger).
  pg.exec("insert into board values (2, 'b')");
  await withTimeout((async () => {
    while (ws.messages.length < 2) {
      pg.exec('notify board_changed');
      await ws.until((c) => c.messages.length >= 2 || c.closeInfo, 1000, 'change').catch(() => {});
    }
  })(), 10_000, 'change pushed after NOTIFY (the interval is an hour)');
  assert.deepEqual(ws.messages[1], [{ id: 1, v: 'a' }, { id: 2, v: 'b' }]);
});

test('REST: list, inspect, and the one-shot history query with bound parameters', async (t) => {
  const pg = await startPostgres(t);
  pg.exec(`create table produced (unit text, at timestamptz, n int);
    insert into produced values ('Final 1A', '2026-11-20 10:00+00', 3), ('Final 1A', '2026-11-21 10:00+00', 4),
      ('Final 1A', '2026-11-22 10:00+00', 5), ('Final 1B', '2026-11-21 10:00+00', 9)`);
  const h = await startHerald(t, { config: `
api_keys = ["k1"]
[[sources.sql]]
id = "produced"
url = "${pg.url}"
sql = "select sum(n) as total from produced where unit = {unit}"
channel = "produced:{unit}"
history_sql = "select at, n from produced where unit = {unit} and at >= {from}::timestamptz and at < {to}::timestamptz order by at"
max_rows = 2
` });
  const auth = { authorization: 'Bearer k1' };
  const noKey = await request(h.url, '/api/sources');
  assert.equal(noKey.status, 401);
  const list = await request(h.url, '/api/sources', { headers: auth });
  assert.equal(list.status, 200, list.text);
  assert.equal(list.json.sources.length, 1);
  assert.equal(list.json.sources[0].id, 'produced');
  assert.equal(list.json.sources[0].database, 'postgres');
  assert.deepEqual(list.json.sources[0].history_params, ['unit', 'from', 'to']);

  const q = new URLSearchParams({ unit: 'Final 1A', from: '2026-11-21T00:00:00Z', to: '2026-11-23T00:00:00Z' });
  const r = await request(h.url, `/api/sources/produced/query?${q}`, { headers: auth });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.rows.map((x) => x.n), [4, 5]);
  // An injection attempt is just a value that matches nothing.
  const evil = new URLSearchParams({ unit: "x' or '1'='1", from: '2000-01-01', to: '2100-01-01' });
  const r2 = await request(h.url, `/api/sources/produced/query?${evil}`, { headers: auth });
  assert.equal(r2.status, 200, r2.text);
  assert.deepEqual(r2.json.rows, []);

  const missing = await request(h.url, '/api/sources/produced/query?unit=x', { headers: auth });
  assert.equal(missing.status, 400);
  assert.match(missing.json.error.message, /from/);
  const tooMany = await request(h.url, `/api/sources/produced/query?${new URLSearchParams({ unit: 'Final 1A', from: '2000-01-01', to: '2100-01-01' })}`, { headers: auth });
  assert.equal(tooMany.status, 422);
  assert.equal(tooMany.json.error.code, 'too_many_rows');
  const badValue = await request(h.url, `/api/sources/produced/query?${new URLSearchParams({ unit: 'x', from: 'not a date', to: 'x' })}`, { headers: auth });
  assert.equal(badValue.status, 400);
  assert.equal(badValue.json.error.code, 'query_failed');
  const unknown = await request(h.url, '/api/sources/nope', { headers: auth });
  assert.equal(unknown.status, 404);
  assert.equal(unknown.json.error.code, 'source_not_found');
});
