// 39. Core metrics (docs/operations.md, "Metrics"): the table of series in docs/operations.md and a live `/metrics`
// list the same families (every documented one present, no undocumented `herald_` one); every series the Grafana
// dashboard (docs/grafana/herald.json) queries exists; and the counters move by exactly what the test drives:
// connections by transport, subscriptions, publishes by result and source, deliveries by transport, bytes written,
// delivery lag, queued bytes, refusals by code, disconnects by reason, resumes by outcome and replayed events, and a
// SQL source's polls, durations and rows. (Slow consumers are counted in 10_slow_consumer.test.js.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  REPO_ROOT, ENGINE, startHerald, request, publish, chan, connected, subscribeOk, Recorder, withTimeout,
} from '../lib/herald.js';
import { wsBase, openWs, openSse, directPath } from '../lib/plain.js';
import { sqliteDb } from '../lib/sqldb.js';

/** `/metrics` parsed: families by name (`# TYPE`) and samples as `name{labels}` → value. */
async function scrape(h) {
  const r = await request(h.url, '/metrics');
  assert.equal(r.status, 200, `/metrics → ${r.status} ${r.text}`);
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const families = new Map();
  const samples = new Map();
  for (const line of r.text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) { families.set(type[1], type[2]); continue; }
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    assert.ok(m, `unparsable /metrics line: ${JSON.stringify(line)}`);
    samples.set(m[1] + (m[2] ?? ''), Number(m[3]));
  }
  return { families, samples, text: r.text };
}

/** The value of one sample (`name` with labels in the order Herald writes them), 0 when absent. */
const value = (s, key) => s.samples.get(key) ?? 0;

/** The rows of the metrics table in docs/operations.md: name → type. */
function documented() {
  const md = readFileSync(join(REPO_ROOT, 'docs/operations.md'), 'utf8');
  const rows = new Map();
  for (const line of md.split('\n')) {
    const m = /^\| `([a-z_:][a-z0-9_:]*)` \| (counter|gauge|histogram) \|/.exec(line);
    if (m) rows.set(m[1], m[2]);
  }
  assert.ok(rows.size >= 20, `the metrics table should list the series; found ${rows.size}`);
  return rows;
}

/** The family a series name belongs to (`x_bucket` → `x` for a histogram). */
function familyOf(name, families) {
  if (families.has(name)) return name;
  const base = name.replace(/_(bucket|sum|count)$/, '');
  return families.get(base) === 'histogram' ? base : null;
}

test('the table in docs/operations.md lists exactly the families of /metrics, with their types', async (t) => {
  const h = await startHerald(t);
  const live = await scrape(h);
  const rows = documented();
  for (const [name, type] of rows) {
    assert.equal(live.families.get(name), type, `documented ${name} (${type}) is ${live.families.get(name) ?? 'missing'} on /metrics`);
  }
  for (const [name] of live.families) {
    if (name.startsWith('herald_')) assert.ok(rows.has(name), `${name} is on /metrics but not in docs/operations.md`);
  }
  for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_open_fds']) {
    assert.ok(live.families.has(name), `${name} on /metrics`);
  }
  assert.ok(value(live, 'process_resident_memory_bytes') > 1 << 20, 'RSS is read from /proc');
  h.assertNoPanic?.();
});

test('every series the Grafana dashboard queries exists on /metrics', async (t) => {
  const h = await startHerald(t);
  const live = await scrape(h);
  const dash = JSON.parse(readFileSync(join(REPO_ROOT, 'docs/grafana/herald.json'), 'utf8'));
  assert.equal(dash.title, 'Herald');
  assert.ok(Array.isArray(dash.__inputs) && dash.__inputs[0]?.type === 'datasource', 'importable with a data source input');
  const exprs = [];
  for (const p of dash.panels) for (const target of p.targets ?? []) exprs.push(target.expr);
  for (const v of dash.templating?.list ?? []) if (v.query?.query) exprs.push(v.query.query);
  assert.ok(exprs.length >= 20, `dashboard queries: ${exprs.length}`);
  const used = new Set();
  for (const e of exprs) for (const [name] of e.matchAll(/\b(?:herald|process)_[a-z0-9_]+\b/g)) used.add(name);
  for (const name of used) {
    assert.ok(familyOf(name, live.families), `the dashboard queries ${name}, which /metrics does not have`);
  }
  for (const need of ['herald_connections', 'herald_deliveries_total', 'herald_publishes_total',
    'herald_publish_duration_seconds_bucket', 'herald_refusals_total', 'herald_engine_errors_total']) {
    assert.ok(used.has(need), `the dashboard shows ${need}`);
  }
});

test('counters move by what clients and publishers do', async (t) => {
  const h = await startHerald(t, { config: '[sse]\nretry = "100ms"\n' });
  const ch = chan('m');
  const before = await scrape(h);

  // One client per transport on one channel.
  const sio = await connected(t, h.url);
  const rec = new Recorder(sio);
  await subscribeOk(sio, ch);
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk(ch);
  const sse = await openSse(t, `${h.url}/sse/${encodeURIComponent(ch)}`);
  assert.equal(sse.status, 200);

  const mid = await scrape(h);
  for (const tr of ['socketio', 'websocket', 'sse']) {
    assert.equal(value(mid, `herald_connections{transport="${tr}"}`), value(before, `herald_connections{transport="${tr}"}`) + 1, `one ${tr} connection open`);
    assert.equal(value(mid, `herald_connects_total{transport="${tr}"}`) - value(before, `herald_connects_total{transport="${tr}"}`), 1, `one ${tr} connect`);
  }
  assert.equal(value(mid, 'herald_subscriptions') - value(before, 'herald_subscriptions'), 3, 'three subscriptions');

  // Five events to three subscribers: fifteen deliveries, five each; a refused publish counts as rejected.
  const N = 5;
  for (let i = 1; i <= N; i++) await publish(h.url, ch, 'tick', { i });
  const refused = await request(h.url, '/api/publish', { method: 'POST', body: { channel: 'herald:nope', event: 'x', data: 1 } });
  assert.equal(refused.status, 400);
  await rec.until((r) => r.named('tick').length === N, 10_000, 'socket.io ticks');
  await ws.until((c) => c.events(ch).length === N, 10_000, '/ws ticks');
  await sse.until((s) => s.named('tick').length === N || s.events.length >= N, 10_000, 'SSE ticks');

  const after = await scrape(h);
  const delta = (key) => value(after, key) - value(before, key);
  for (const tr of ['socketio', 'websocket', 'sse']) {
    assert.equal(delta(`herald_deliveries_total{transport="${tr}"}`), N, `${N} deliveries on ${tr}`);
    assert.ok(delta(`herald_written_bytes_total{transport="${tr}"}`) > N * 10, `bytes written on ${tr}`);
  }
  assert.equal(delta('herald_publishes_total{result="ok",source="api"}'), N, 'api publishes ok');
  assert.equal(delta('herald_publishes_total{result="rejected",source="api"}'), 1, 'api publish rejected');
  assert.equal(delta('herald_publish_duration_seconds_count'), N, 'one latency per committed publish');
  assert.ok(value(after, 'herald_publish_duration_seconds_sum') > value(before, 'herald_publish_duration_seconds_sum'));
  assert.equal(delta('herald_refusals_total{code="reserved_channel"}'), 1, 'the refusal is counted by its code');
  assert.ok(value(after, 'herald_channels') >= 1, 'the channel is counted');
  if (ENGINE === 'sqlite') {
    assert.ok(delta('herald_commit_batch_size_count') >= N, 'group commits counted');
    assert.ok(delta('herald_commit_fsync_seconds_count') >= N, 'their COMMITs timed');
  }
  // One lag sample per write batch holding live events: at least one per transport.
  assert.ok(delta('herald_delivery_lag_seconds_count') >= 3, `writes record their lag: ${delta('herald_delivery_lag_seconds_count')}`);
  assert.ok(delta('herald_delivery_lag_seconds_count') <= 3 * N, 'at most one sample per delivery');

  // A Socket.IO refusal counts by its code too.
  const ack = await withTimeout(sio.emitWithAck('subscribe', { channel: '' }), 10_000, 'refused subscribe');
  assert.equal(ack.ok, false);
  const code = ack.error.code;

  // A /ws resume from offset 2 replays 3 events and recovers; the client closing counts as a client disconnect.
  const ws2 = await openWs(t, `${wsBase(h)}/ws`);
  const sub = await ws2.subscribeOk(ch, { since: 2, epoch: ws.events(ch)[0].epoch });
  assert.equal(sub.type, 'subscribed');
  await ws2.until((c) => c.events(ch).length === N - 2, 10_000, 'replayed events');
  await ws2.barrier();
  // A cursor of another epoch resumes with a gap notice and the whole history.
  const ws3 = await openWs(t, `${wsBase(h)}/ws`);
  await ws3.subscribeOk(ch, { since: 4, epoch: 'bogus' });
  await ws3.until((c) => c.ofType('gap').length === 1 && c.events(ch).length === N, 10_000, 'gap, then every event');
  await ws3.close(1000);
  await ws2.close(1000);
  sio.disconnect();

  const end = await scrape(h);
  const d2 = (key) => value(end, key) - value(after, key);
  assert.equal(d2(`herald_refusals_total{code="${code}"}`), 1, `socket.io refusal ${code} counted`);
  assert.equal(d2('herald_resumes_total{outcome="recovered"}'), 1, 'one recovered resume');
  assert.equal(d2('herald_resumes_total{outcome="gap"}'), 1, 'one resume with a gap');
  assert.equal(d2('herald_replayed_events_total'), (N - 2) + N, 'replayed events');
  assert.equal(d2('herald_deliveries_total{transport="websocket"}'), (N - 2) + N, 'replays are deliveries');
  const closedSoon = async (tr, before) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const s = await scrape(h);
      const v = value(s, `herald_disconnects_total{transport="${tr}",reason="client"}`);
      if (v - before >= 1) return s;
      if (Date.now() > deadline) throw new Error(`${tr} disconnect not counted: ${v} (before ${before})`);
      await new Promise((r) => setTimeout(r, 25)); // backoff between scrapes while the server finishes the close
    }
  };
  await closedSoon('websocket', value(after, 'herald_disconnects_total{transport="websocket",reason="client"}') + 1);
  const last = await closedSoon('socketio', value(after, 'herald_disconnects_total{transport="socketio",reason="client"}'));
  assert.equal(value(last, 'herald_connections{transport="socketio"}'), value(before, 'herald_connections{transport="socketio"}'));
  assert.equal(value(last, 'herald_engine_errors_total'), 0, 'no engine errors');
  for (const tr of ['socketio', 'websocket', 'sse']) {
    assert.equal(value(last, `herald_queued_bytes{transport="${tr}"}`), 0, `nothing left queued on ${tr}`);
  }
});

test('SQL source polls, durations and rows are counted, and its publishes under source="sql"', async (t) => {
  const db = sqliteDb(t);
  db.exec("create table items (id integer primary key, unit text not null, qty integer not null)");
  db.exec("insert into items values (1, 'a', 5), (2, 'a', 7)");
  const h = await startHerald(t, {
    config: `[[websocket.direct]]\npattern = "*"\npayload = "data"\n\n[[sources.sql]]\nid = "items"\nurl = "${db.url}"\n`
      + 'sql = "select id, qty from items where unit = {unit} order by id"\nchannel = "{unit}"\nkey = "id"\ninterval = "50ms"\n',
  });
  const before = await scrape(h);
  const c = await openWs(t, `${wsBase(h)}${directPath('/ws', 'a')}`);
  await c.until((w) => w.messages.length === 1, 10_000, 'the first result');
  db.exec('update items set qty = 6 where id = 1');
  await c.until((w) => w.messages.length === 2, 10_000, 'the changed result');
  const queries = async () => (await request(h.url, '/api/sources/items')).json.channels.find((x) => x.channel === 'a').queries;
  const ran = await queries();
  const s = await scrape(h);
  const delta = (key) => value(s, key) - value(before, key);
  const polls = delta('herald_sql_polls_total{result="ok"}') + delta('herald_sql_polls_total{result="error"}');
  assert.equal(delta('herald_sql_polls_total{result="error"}'), 0, 'no failed poll');
  // Polls go on meanwhile: a poll counts its query before it runs and its result after.
  assert.ok(polls >= ran - 1 && polls <= (await queries()), `polls ${polls} against ${ran} queries`);
  const timed = delta('herald_sql_poll_duration_seconds_count');
  assert.ok(timed >= polls && timed <= polls + 1, `one duration per poll: ${timed} for ${polls}`);
  const rows = delta('herald_sql_rows_total');
  // Read in that order, each a moment after the other: a poll may finish in between.
  assert.ok(rows % 2 === 0 && rows >= 2 * (timed - 1) && rows <= 2 * (timed + 1), `two rows per poll: ${rows} for ${timed}`);
  assert.ok(delta('herald_publishes_total{result="ok",source="sql"}') >= 2, 'the results were published as sql');
});
