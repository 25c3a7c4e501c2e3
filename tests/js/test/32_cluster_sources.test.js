// 32. Sources run once per cluster: three Herald nodes on one Redis and a real PostgreSQL. A monitor created through
// one node's API is known to every node and checked by exactly one of them (the lease holder; "check now" on another
// node is forwarded to it and answered with its result); a SQL source channel with subscribers on all three nodes is polled by one node,
// so PostgreSQL (pg_stat_statements) sees one query per interval; `kill -9` of the runners hands both over to a
// survivor within the documented LEASE_TTL + LEASE_TTL / 2 (15 s), and subscribers on the survivors keep getting
// the results.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { request, withTimeout } from '../lib/herald.js';
import { openWs, wsBase } from '../lib/plain.js';
import { startRedis, startNodes } from '../lib/cluster.js';
import { startPostgres } from '../lib/sqldb.js';

/** The documented hand-over bound (docs/cluster.md), plus a little for the test's own polling. */
const HANDOVER_MS = 15_000 + 2_000;
const INTERVAL_MS = 500;

/** Awaits `pred()` (async), re-evaluated as fast as the API answers: awaiting a condition, not sleeping. */
async function until(pred, ms, label) {
  await withTimeout((async () => {
    while (!(await pred())) await new Promise((r) => setTimeout(r, 50));
  })(), ms, label);
}

/** `herald_monitor_checks_total` of a node. */
async function checksOf(h) {
  const r = await request(h.url, '/metrics');
  assert.equal(r.status, 200, r.text);
  const m = /^herald_monitor_checks_total (\d+)/m.exec(r.text);
  return m ? Number(m[1]) : 0;
}

/** Queries a node's source `items` ran for channel `u1`. */
async function queriesOf(h) {
  const r = await request(h.url, '/api/sources/items');
  assert.equal(r.status, 200, r.text);
  assert.ok(!r.json.channels.some((c) => c.channel.startsWith('herald:')),
    `herald: channels are no demand: ${JSON.stringify(r.json.channels)}`);
  return r.json.channels.find((c) => c.channel === 'u1')?.queries ?? 0;
}

/** Counts per node, and which nodes' counts grew while `grow` more were counted over all of them. */
async function runners(nodes, count, grow, label) {
  const before = await Promise.all(nodes.map(count));
  let after = before;
  await until(async () => {
    after = await Promise.all(nodes.map(count));
    return after.reduce((a, b) => a + b) >= before.reduce((a, b) => a + b) + grow;
  }, HANDOVER_MS, `${label}: ${grow} more runs`);
  return nodes.filter((_, i) => after[i] > before[i]);
}

const calls = (pg) => Number(pg.exec("select coalesce(sum(calls), 0) from pg_stat_statements where query like '%from items%'").trim());

test('a monitor and a SQL source run on one node of three; kill -9 of it hands them over within 15 s', async (t) => {
  const [pg, redis] = await Promise.all([startPostgres(t), startRedis(t)]);
  pg.exec('create table items (id int primary key, unit text not null, name text not null)');
  pg.exec("insert into items values (1, 'u1', 'first')");
  const target = net.createServer((s) => s.destroy());
  await new Promise((r) => target.listen(0, '127.0.0.1', r));
  t.after(() => target.close());

  const config = `
[monitor]
throttle = "0s"

[[sources.sql]]
id = "items"
url = "${pg.url}"
sql = "select id, name from items where unit = {unit} order by id"
channel = "{unit}"
key = "id"
interval = "${INTERVAL_MS}ms"
`;
  const nodes = await startNodes(t, redis, 3, { config });

  // Created on node 0, known to all three.
  const created = await request(nodes[0].url, '/api/monitors', {
    method: 'POST',
    body: { id: 'shared', name: 'Shared', interval: 1, check: { kind: 'tcp', host: '127.0.0.1', port: target.address().port } },
  });
  assert.equal(created.status, 201, created.text);
  for (const h of nodes) {
    await until(async () => (await request(h.url, '/api/monitors/shared')).status === 200, 5_000, `monitor on ${h.url}`);
  }

  // Subscribers of u1 on every node.
  const subs = [];
  for (const h of nodes) {
    const ws = await openWs(t, `${wsBase(h)}/ws`);
    await ws.subscribeOk('u1');
    subs.push(ws);
  }

  // One checker. "Check now" on any node is answered with a check's result; only the checker runs checks.
  const checkers = await runners(nodes, checksOf, 3, 'monitor checks');
  assert.equal(checkers.length, 1, `monitor checked on ${checkers.map((h) => h.url)}`);
  const before = await Promise.all(nodes.map(checksOf));
  for (const h of nodes) {
    const r = await request(h.url, '/api/monitors/shared/check', { method: 'POST' });
    assert.equal(r.status, 200, `${h === checkers[0] ? 'checker' : 'forwarded'}: ${r.text}`);
    assert.equal(r.json.outcome.ok, true, r.text);
    assert.equal(r.json.monitor.id, 'shared', r.text);
  }
  const after = await Promise.all(nodes.map(checksOf));
  nodes.forEach((h, i) => {
    if (h !== checkers[0]) assert.equal(after[i], before[i], `a forwarded check ran on ${h.url}`);
  });
  assert.ok(after[nodes.indexOf(checkers[0])] >= before[nodes.indexOf(checkers[0])] + 3, 'the checker ran the three checks');

  // One poller, one query per interval for the cluster (three would be three per interval).
  const pollers = await runners(nodes, queriesOf, 3, 'polls of u1');
  assert.equal(pollers.length, 1, `u1 polled on ${pollers.map((h) => h.url)}`);
  pg.exec('select pg_stat_statements_reset()');
  const windowStart = Date.now();
  await until(async () => Date.now() - windowStart >= 3_000, 5_000, 'the measurement window');
  const seen = calls(pg);
  const intervals = (Date.now() - windowStart) / INTERVAL_MS;
  assert.ok(seen <= intervals + 2, `${seen} queries in ${intervals} intervals`);
  assert.ok(seen >= intervals / 2, `${seen} queries in ${intervals} intervals`);

  // The runners die; a survivor takes both over.
  const dead = [...new Set([checkers[0], pollers[0]])];
  const died = Date.now();
  await Promise.all(dead.map((h) => h.kill9()));
  const alive = nodes.filter((h) => !dead.includes(h));
  const [newCheckers, newPollers] = await Promise.all([
    runners(alive, checksOf, 2, 'monitor checks after the kill'),
    runners(alive, queriesOf, 2, 'polls of u1 after the kill'),
  ]);
  const handover = Date.now() - died;
  assert.ok(handover <= HANDOVER_MS, `handed over after ${handover} ms`);
  assert.equal(newCheckers.length, 1, `checked on ${newCheckers.map((h) => h.url)}`);
  assert.equal(newPollers.length, 1, `polled on ${newPollers.map((h) => h.url)}`);

  // Subscribers on the survivors get the new poller's results.
  pg.exec("insert into items values (2, 'u1', 'second')");
  for (const [i, h] of nodes.entries()) {
    if (dead.includes(h)) continue;
    await subs[i].until((c) => c.events('u1').some((e) => JSON.stringify(e.data).includes('second')), 5_000,
      `the new row on ${h.url}`);
  }
  for (const h of alive) h.assertNoPanic();
  t.diagnostic(`hand-over took ${handover} ms`);
});
