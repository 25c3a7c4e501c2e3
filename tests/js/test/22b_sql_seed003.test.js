// 22b. Seed 003's frontend (tests/js/lib/seed003.js: its useDashboardData flow and its historical fetch calls)
// against Herald with [[sources.sql]] as the backend, asserting what that code computes:
// - live views get one object per unit and message (`result = "object"`: `{models, summary}`,
//   `{hourly_data, totals}`), heartbeats ignored;
// - across a database outage and a failing query, the data it holds stays the unit's result: a source error
//   arrives typed (`{"type":"error","code":"source_error"}`, which it ignores), the recovery never arrives as data
//   it would store (the unchanged result is sent again; a changed one is the only message);
// - a one-row result mode that refuses more rows (error, last good result kept) and sends `null` for none;
// - its historical views' fetch calls at `/historical-data/`, `/historical-hourly-data/` and `/report-data`, read as
//   bare rows, with the parameter binding, errors and API-key check of /api/sources/{id}/query;
// - history paths colliding with Herald's own routes refused at start-up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, request, withTimeout } from '../lib/herald.js';
import { openWs, wsBase, directPath } from '../lib/plain.js';
import { startPostgres, sqliteDb } from '../lib/sqldb.js';
import { useDashboardData, fetchHistoricalData, fetchHistoricalHourlyData, fetchReportData } from '../lib/seed003.js';

const UNITS = ['Final 1A', 'Final 1B'];

async function sourceInfo(h, id) {
  const r = await request(h.url, `/api/sources/${id}`);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

/** Resolves once `pred(info)` holds for source `id` (the API read again and again: awaiting a condition). */
async function sourceUntil(h, id, pred, label, ms = 60_000) {
  let info;
  await withTimeout((async () => {
    while (!pred(info = await sourceInfo(h, id))) await new Promise((r) => setImmediate(r));
  })(), ms, `${label}; last: ${JSON.stringify(info)}`);
  return info;
}

/** Every channel of source `id` is `ok` and was queried twice more since: its recovery notice was published. */
async function recovered(h, id) {
  const ok = await sourceUntil(h, id, (i) => i.channels.length > 0 && i.channels.every((c) => c.status === 'ok'), `${id} ok`);
  const start = Object.fromEntries(ok.channels.map((c) => [c.channel, c.queries]));
  await sourceUntil(h, id, (i) => i.channels.every((c) => c.queries >= start[c.channel] + 2), `${id} polls after ok`);
}

/** A source error notice, typed or (as before the fix) bare. */
const failing = (m) => m?.type === 'error' || m?.status === 'error';
const isData = (m) => m !== null && typeof m === 'object' && m.type === undefined;
const heartbeats = (msgs) => msgs.filter((m) => m?.type === 'heartbeat').length;

/** Waits for a heartbeat on every socket after what has arrived now: everything queued before it has arrived. */
async function barrier(view) {
  const seen = Object.fromEntries(Object.entries(view.raw).map(([u, m]) => [u, heartbeats(m)]));
  await view.until((v) => Object.entries(v.raw).every(([u, m]) => heartbeats(m) > seen[u]), 10_000, 'a heartbeat on every socket');
}

const expectedModels = (rows) => ({
  models: rows.map(([model, qty]) => ({ model, qty })),
  summary: { total: rows.reduce((s, [, q]) => s + q, 0), count: rows.length },
});

test('seed 003 live views: one object per unit; a database outage and a failing query leave its data right', async (t) => {
  const pg = await startPostgres(t);
  pg.exec(`create table production (unit text, model text, qty int, primary key (unit, model));
    insert into production values ('Final 1A', 'X100', 5), ('Final 1A', 'X200', 2), ('Final 1B', 'Y300', 9);
    create table hourly (unit text, hour int, qty int);
    insert into hourly values ('Final 1A', 8, 3), ('Final 1A', 9, 4), ('Final 1B', 8, 1)`);
  const h = await startHerald(t, { config: `
[websocket]
heartbeat_interval = "150ms"

[[websocket.direct]]
pattern = "*"
payload = "data"

[[sources.sql]]
id = "models"
url = "${pg.url}"
sql = """
  select json_agg(json_build_object('model', model, 'qty', qty) order by model) as models,
         json_build_object('total', coalesce(sum(qty), 0), 'count', count(*)) as summary
  from production where unit = {unit}
"""
channel = "{unit}"
result = "object"
interval = "100ms"

[[sources.sql]]
id = "hourly"
url = "${pg.url}"
sql = """
  select json_agg(json_build_object('hour', hour, 'qty', qty) order by hour) as hourly_data,
         json_build_object('total', coalesce(sum(qty), 0)) as totals
  from hourly where unit = {unit}
"""
channel = "hourly:{unit}"
result = "object"
interval = "100ms"
` });
  const host = `127.0.0.1:${h.port}`;
  const standard = useDashboardData(t, host, UNITS);
  const signage = useDashboardData(t, host, UNITS, { path: '/ws/hourly/' });

  const A = [['X100', 5], ['X200', 2]];
  const B = [['Y300', 9]];
  await standard.until((v) => v.state.dataVersion >= 1, 15_000, 'first render');
  assert.deepEqual(standard.state.data, [expectedModels(A), expectedModels(B)]);
  await signage.until((v) => v.state.dataVersion >= 1, 15_000, 'first signage render');
  assert.deepEqual(signage.state.data, [
    { hourly_data: [{ hour: 8, qty: 3 }, { hour: 9, qty: 4 }], totals: { total: 7 } },
    { hourly_data: [{ hour: 8, qty: 1 }], totals: { total: 1 } },
  ]);
  const good = standard.state.data;
  const goodSignage = signage.state.data;

  // 1. The database goes away. Each socket gets a typed error, which the seed ignores: its data stays.
  const mark = Object.fromEntries(UNITS.map((u) => [u, standard.raw[u].length]));
  await pg.stop();
  await standard.until((v) => UNITS.every((u) => v.raw[u].slice(mark[u]).some(failing)), 20_000, 'error notices');
  assert.deepEqual(standard.state.data, good, 'the seed still holds the last good data');
  for (const u of UNITS) {
    const notice = standard.raw[u].slice(mark[u]).find(failing);
    assert.equal(notice.type, 'error');
    assert.equal(notice.code, 'source_error');
    assert.equal(notice.source, 'models');
    assert.equal(notice.channel, u);
    assert.equal(typeof notice.message, 'string');
  }
  await signage.until((v) => UNITS.every((u) => v.raw[u].some(failing)), 20_000, 'signage error notices');
  assert.deepEqual(signage.state.data, goodSignage);

  // It comes back with the same data: the recovery re-sends that data (never a status the seed would store).
  await pg.start();
  await recovered(h, 'models');
  await recovered(h, 'hourly');
  await barrier(standard);
  await barrier(signage);
  for (const view of [standard, signage]) {
    for (const u of UNITS) {
      const since = view.raw[u].slice(view.raw[u].findIndex(failing));
      const untyped = since.filter((m) => m?.type === undefined);
      assert.equal(untyped.length, 1, `${u}: one data message after the outage: ${JSON.stringify(since)}`);
      assert.ok(isData(untyped[0]) && (untyped[0].models ?? untyped[0].hourly_data), JSON.stringify(untyped[0]));
    }
  }
  assert.deepEqual(standard.state.data, good, 'the seed holds the same data after the recovery');
  assert.deepEqual(signage.state.data, goodSignage);

  // 2. The query fails (its table is gone), then works again with a changed result for unit A: A gets the fresh
  // result as its only message, B the unchanged one again; the seed ends with the fresh data.
  const mark2 = Object.fromEntries(UNITS.map((u) => [u, standard.raw[u].length]));
  pg.exec('alter table production rename to production_moved');
  await standard.until((v) => UNITS.every((u) => v.raw[u].slice(mark2[u]).some(failing)), 20_000, 'query error notices');
  assert.deepEqual(standard.state.data, good);
  assert.match(standard.raw['Final 1A'].slice(mark2['Final 1A']).find(failing).message, /production/);
  pg.exec("alter table production_moved rename to production; update production set qty = 7 where model = 'X100'");
  await recovered(h, 'models');
  await barrier(standard);
  const A2 = [['X100', 7], ['X200', 2]];
  assert.deepEqual(standard.state.data, [expectedModels(A2), expectedModels(B)]);
  for (const u of UNITS) {
    const untyped = standard.raw[u].slice(mark2[u]).filter((m) => m?.type === undefined);
    assert.deepEqual(untyped, [u === 'Final 1A' ? expectedModels(A2) : expectedModels(B)], u);
  }

  // Nothing changes: no message but heartbeats, no render.
  const version = standard.state.dataVersion;
  const counts = UNITS.map((u) => standard.raw[u].filter((m) => m?.type !== 'heartbeat').length);
  await barrier(standard);
  await barrier(standard);
  assert.equal(standard.state.dataVersion, version);
  assert.deepEqual(UNITS.map((u) => standard.raw[u].filter((m) => m?.type !== 'heartbeat').length), counts);
  h.assertNoPanic();
});

test('result = "object": one row is the object, more rows are a source error keeping the last good result, none is null', async (t) => {
  const db = sqliteDb(t);
  db.exec("create table items (unit text, name text, qty integer); insert into items values ('A', 'X100', 5)");
  const h = await startHerald(t, { config: `
[[websocket.direct]]
pattern = "*"
payload = "data"

[[sources.sql]]
id = "one"
url = "${db.url}"
sql = "select name, qty from items where unit = {unit} order by name"
channel = "one:{unit}"
result = "object"
interval = "100ms"
` });
  const ws = await openWs(t, `${wsBase(h)}${directPath('/ws', 'one:A')}`);
  await ws.until((c) => c.messages.length === 1, 10_000, 'the object');
  assert.deepEqual(ws.messages[0], { name: 'X100', qty: 5 });
  const env = await openWs(t, `${wsBase(h)}/ws`);
  await env.subscribeOk('one:A');
  await env.until((c) => c.events('one:A').length === 1, 10_000, 'snapshot envelope');
  assert.equal(env.events('one:A')[0].event, 'result');
  assert.deepEqual(env.events('one:A')[0].data, { name: 'X100', qty: 5 });

  db.exec("insert into items values ('A', 'X200', 1)");
  const err = await ws.next((m) => m?.type === 'error', 10_000, 'two rows refused');
  assert.equal(err.code, 'source_error');
  assert.match(err.message, /result = "object" needs at most one row, and the query returned 2/);
  const status = await env.next((m) => m?.event === 'source:status', 10_000, 'envelope status');
  assert.equal(status.data.status, 'error');
  assert.equal((await sourceInfo(h, 'one')).channels[0].status, 'error');
  // A new subscriber still gets the last good result.
  const late = await openWs(t, `${wsBase(h)}${directPath('/ws', 'one:A')}`);
  await late.until((c) => c.messages.length >= 1, 10_000, 'last good result');
  assert.deepEqual(late.messages[0], { name: 'X100', qty: 5 });

  db.exec("delete from items where unit = 'A'");
  await ws.until((c) => c.messages.some((m) => m === null), 10_000, 'null for no row');
  await env.next((m) => m?.event === 'source:status' && m.data.status === 'ok', 10_000, 'ok status (envelope)');
  const none = await openWs(t, `${wsBase(h)}${directPath('/ws', 'one:A')}`);
  await none.until((c) => c.messages.length >= 1, 10_000, 'null snapshot');
  assert.equal(none.messages[0], null);
  h.assertNoPanic();
});

const HISTORY_ROWS = `
  create table production (unit text, model text, qty integer, finished_at text);
  insert into production values
    ('Final 1A', 'X100', 2, '2026-11-20T08:10:00'), ('Final 1A', 'X100', 3, '2026-11-20T09:20:00'),
    ('Final 1A', 'X200', 4, '2026-11-21T08:30:00'), ('Final 1A', 'X300', 1, '2026-11-22T10:00:00'),
    ('Final 1A', 'X400', 1, '2026-11-22T11:00:00'), ('Final 1B', 'Y300', 9, '2026-11-20T08:45:00')`;

function historyConfig(url, extra = '') {
  return `${extra}
[[sources.sql]]
id = "units"
url = "${url}"
sql = "select model, sum(qty) as qty from production where unit = {unit} group by model order by model"
channel = "{unit}"
history_sql = """
  select model, sum(qty) as qty from production
  where unit = {unit_name} and finished_at >= {start_date} and finished_at < {end_date}
  group by model order by model
"""
history_path = "/historical-data/"
history_body = "rows"
max_rows = 3

[[sources.sql]]
id = "hourly"
url = "${url}"
sql = "select cast(strftime('%H', finished_at) as integer) as hour, sum(qty) as qty from production where unit = {unit} group by hour order by hour"
channel = "hourly:{unit}"
history_sql = """
  select cast(strftime('%H', finished_at) as integer) as hour, sum(qty) as qty from production
  where unit = {unit_name} and date(finished_at) = {date} group by hour order by hour
"""
history_path = "/historical-hourly-data/"
history_body = "rows"

[[sources.sql]]
id = "report"
url = "${url}"
sql = "select unit, sum(qty) as qty from production where {period} = 'today' group by unit order by unit"
channel = "report:{period}"
history_sql = """
  select unit, sum(qty) as qty from production
  where finished_at >= {start_date} and finished_at < {end_date} group by unit order by unit
"""
history_path = "/report-data"
history_body = "rows"

[[sources.sql]]
id = "unit-total"
url = "${url}"
sql = "select sum(qty) as qty from production where unit = {unit}"
channel = "total:{unit}"
history_sql = "select unit, sum(qty) as qty from production where unit like {unit} group by unit order by unit"
history_path = "/unit-total"
history_body = "object"
`;
}

test('seed 003 historical views: its fetch calls at /historical-data/, /historical-hourly-data/ and /report-data read bare rows', async (t) => {
  const db = sqliteDb(t);
  db.exec(HISTORY_ROWS);
  const h = await startHerald(t, { config: historyConfig(db.url) });

  assert.deepEqual(await fetchHistoricalData(h.url, 'Final 1A', '2026-11-20', '2026-11-22'), [
    { model: 'X100', qty: 5 }, { model: 'X200', qty: 4 },
  ]);
  assert.deepEqual(await fetchHistoricalHourlyData(h.url, 'Final 1A', '2026-11-20'), [
    { hour: 8, qty: 2 }, { hour: 9, qty: 3 },
  ]);
  assert.deepEqual(await fetchReportData(h.url, '2026-11-20', '2026-11-21'), [
    { unit: 'Final 1A', qty: 5 }, { unit: 'Final 1B', qty: 9 },
  ]);
  // Parameters are bound: an injection attempt is a value that matches nothing.
  assert.deepEqual(await fetchHistoricalData(h.url, "x' or '1'='1", '2000-01-01', '2100-01-01'), []);

  // The same query, the same errors as /api/sources/{id}/query, which still answers wrapped.
  const wrapped = await request(h.url, `/api/sources/units/query?${new URLSearchParams({ unit_name: 'Final 1A', start_date: '2026-11-20', end_date: '2026-11-22' })}`);
  assert.equal(wrapped.status, 200, wrapped.text);
  assert.deepEqual(wrapped.json, { source: 'units', rows: [{ model: 'X100', qty: 5 }, { model: 'X200', qty: 4 }] });
  const missing = await request(h.url, '/historical-data/?unit_name=Final%201A&start_date=2026-11-20');
  assert.equal(missing.status, 400, missing.text);
  assert.equal(missing.json.error.code, 'invalid_request');
  assert.match(missing.json.error.message, /end_date/);
  const tooMany = await request(h.url, '/historical-data/?unit_name=Final%201A&start_date=2000-01-01&end_date=2100-01-01');
  assert.equal(tooMany.status, 422, tooMany.text);
  assert.equal(tooMany.json.error.code, 'too_many_rows');
  await assert.rejects(fetchHistoricalData(h.url, 'Final 1A', '2000-01-01', '2100-01-01'), (e) => e.status === 422);

  // history_body = "object": the one row, null for none, more than one refused like too many rows.
  const one = await request(h.url, '/unit-total?unit=Final%201B');
  assert.equal(one.status, 200, one.text);
  assert.deepEqual(one.json, { unit: 'Final 1B', qty: 9 });
  assert.equal(one.headers.get('content-type'), 'application/json');
  const none = await request(h.url, '/unit-total?unit=nobody');
  assert.equal(none.status, 200);
  assert.equal(none.text, 'null');
  const two = await request(h.url, '/unit-total?unit=Final%25');
  assert.equal(two.status, 422, two.text);
  assert.equal(two.json.error.code, 'too_many_rows');
  assert.match(two.json.error.message, /at most one row/);

  const info = await sourceInfo(h, 'units');
  assert.equal(info.history_path, '/historical-data/');
  assert.deepEqual(info.history_params, ['unit_name', 'start_date', 'end_date']);
  h.assertNoPanic();
});

test('history paths: the API key check applies; a path taking one of Herald\'s routes is refused at start-up', async (t) => {
  const db = sqliteDb(t);
  db.exec(HISTORY_ROWS);
  const h = await startHerald(t, { config: historyConfig(db.url, 'api_keys = ["k1"]') });
  const q = '/report-data?start_date=2026-11-20&end_date=2026-11-21';
  const noKey = await request(h.url, q);
  assert.equal(noKey.status, 401, noKey.text);
  assert.equal(noKey.json.error.code, 'unauthorized');
  const withKey = await request(h.url, q, { headers: { authorization: 'Bearer k1' } });
  assert.equal(withKey.status, 200, withKey.text);
  assert.deepEqual(withKey.json, [{ unit: 'Final 1A', qty: 5 }, { unit: 'Final 1B', qty: 9 }]);

  const source = (id, path) => `
[[sources.sql]]
id = "${id}"
url = "${db.url}"
sql = "select 1 as one where {u} = 'x'"
channel = "${id}:{u}"
history_sql = "select 1 as one"
history_path = "${path}"
`;
  const cases = [
    [source('s', '/api/sources/s/query'), /sources\.sql\[0\] \(id "s"\) field `history_path`: collides with Herald's own route \/api/],
    [source('s', '/ws/x'), /field `history_path`: collides with Herald's own route \/ws/],
    [source('s', '/sse'), /field `history_path`: collides with Herald's own route \/sse/],
    [source('s', '/healthz'), /collides with Herald's own route \/healthz/],
    [`[socketio]\npath = "/rt"\n${source('s', '/rt/')}`, /collides with Herald's own route \/rt/],
    [source('s', '/a/{b}'), /field `history_path`: may contain only/],
    [source('s', 'report-data'), /field `history_path`: must start with '\/'/],
    [source('s', '/report-data') + source('t', '/report-data'), /\(id "t"\) field `history_path`: source "s" already serves "\/report-data"/],
  ];
  for (const [config, expected] of cases) {
    await assert.rejects(startHerald(t, { config, env: { RUST_BACKTRACE: '0' } }), (e) => {
      assert.match(e.message, expected);
      assert.doesNotMatch(e.message, /panicked/);
      return true;
    }, config);
  }
});
