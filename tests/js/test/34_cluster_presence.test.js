// 34. Presence across nodes (docs/presence.md, "Several nodes"): two Herald nodes on one Redis. A /ws client on node
// A sees a client of node B in `GET /api/channels/{ch}/presence` and `/api/presence` on A, and hears its join and
// leave as `[[presence.channels]]` events; `kill -9` of B removes B's connections from A's presence within the
// documented 5 s and their leave is announced within 6 s.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request, withTimeout } from '../lib/herald.js';
import { openWs, wsBase } from '../lib/plain.js';
import { startRedis, startNodes } from '../lib/cluster.js';

const NODE_TTL_MS = 5_000;
const ANNOUNCED_MS = 6_000;
/** What the test's own polling may add to a bound. */
const SLACK_MS = 1_500;

async function presence(h, path) {
  const r = await request(h.url, path);
  assert.equal(r.status, 200, `${path}: ${r.text}`);
  return r.json;
}

/** Awaits `pred()` (async), re-read as fast as the API answers: awaiting a condition, not sleeping. */
async function until(pred, ms, label) {
  await withTimeout((async () => {
    while (!(await pred())) await new Promise((r) => setTimeout(r, 50));
  })(), ms, label);
}

test('a client on node A sees presence of a client on node B; kill -9 of B removes it within 5 s', async (t) => {
  const redis = await startRedis(t);
  const config = `
[[presence.channels]]
pattern = "room:*"
payload = "member"
`;
  // A starts first, so it holds the announcement lease (B's death must not move it).
  const [a, b] = await startNodes(t, redis, 2, { config });
  const room = 'room:1';
  const onA = await openWs(t, `${wsBase(a)}/ws`);
  await onA.subscribeOk(room);
  const joins = () => onA.events(room).filter((e) => e.event === 'presence:join').map((e) => e.data.id);
  const leaves = () => onA.events(room).filter((e) => e.event === 'presence:leave').map((e) => e.data.id);
  const idA = (await presence(a, `/api/channels/${encodeURIComponent(room)}/presence`)).connections[0]?.id;
  assert.ok(idA, 'A lists its own connection');

  const onB = await openWs(t, `${wsBase(b)}/ws`);
  await onB.subscribeOk(room);
  const local = await presence(b, `/api/channels/${encodeURIComponent(room)}/presence`);
  const idB = local.connections.map((c) => c.id).find((id) => id !== idA);
  assert.ok(idB, `B lists its own connection: ${JSON.stringify(local)}`);
  assert.notEqual(idA, idB, 'connection ids differ across nodes');

  // A's view: B's client is on the channel and connected, and its join was announced.
  await onA.until(() => joins().includes(idB), 10_000, "A hears B's client join");
  const seen = await presence(a, `/api/channels/${encodeURIComponent(room)}/presence`);
  assert.deepEqual(seen.connections.map((c) => c.id).sort(), [idA, idB].sort(), JSON.stringify(seen));
  assert.equal(seen.counts.connections, 2);
  const member = seen.connections.find((c) => c.id === idB);
  assert.equal(member.transport, 'websocket');
  assert.ok(Number.isInteger(member.connected_at), JSON.stringify(member));
  const online = await presence(a, '/api/presence');
  assert.ok(online.connections.some((c) => c.id === idB), `B's client is online on A: ${JSON.stringify(online)}`);

  // A leave on B is heard on A.
  const onB2 = await openWs(t, `${wsBase(b)}/ws`);
  await onB2.subscribeOk('room:2');
  const idB2 = (await presence(b, '/api/channels/room%3A2/presence')).connections[0]?.id;
  assert.ok(idB2, "B lists its other client");
  const watch2 = await openWs(t, `${wsBase(a)}/ws`);
  await watch2.subscribeOk('room:2');
  await until(async () => (await presence(a, '/api/channels/room%3A2/presence')).counts.connections === 2, 5_000,
    "A's watcher and B's other client on room:2");
  await onB2.close();
  await watch2.until(() => watch2.events('room:2').some((e) => e.event === 'presence:leave' && e.data.id === idB2),
    10_000, "A hears B's other client leave");

  // B dies: A stops listing its client within the node ttl, and announces the leave.
  const died = Date.now();
  await b.kill9();
  await until(async () => {
    const p = await presence(a, `/api/channels/${encodeURIComponent(room)}/presence`);
    return p.connections.length === 1 && p.connections[0].id === idA;
  }, NODE_TTL_MS + SLACK_MS, "B's client gone from A's presence");
  const gone = Date.now() - died;
  await onA.until(() => leaves().includes(idB), ANNOUNCED_MS + SLACK_MS - gone, "B's client's leave announced on A");
  const announced = Date.now() - died;
  assert.ok(announced <= ANNOUNCED_MS + SLACK_MS, `announced after ${announced} ms`);
  assert.ok(!(await presence(a, '/api/presence')).connections.some((c) => c.id === idB), 'no longer online');
  t.diagnostic(`B's client left A's presence after ${gone} ms, announced after ${announced} ms`);
  a.assertNoPanic();
});

test('the announcing node dies with its connections: the node taking over still announces their leave', async (t) => {
  const redis = await startRedis(t);
  const config = `
[[presence.channels]]
pattern = "room:*"
payload = "member"
`;
  // B starts first and announces; A takes the announcing lease over (within 15 s) when B dies.
  const [b, a] = await startNodes(t, redis, 2, { config });
  const room = 'room:9';
  const path = `/api/channels/${encodeURIComponent(room)}/presence`;
  const onA = await openWs(t, `${wsBase(a)}/ws`);
  await onA.subscribeOk(room);
  const idA = (await presence(a, path)).connections[0]?.id;
  assert.ok(idA, 'A lists its client');
  const onB = await openWs(t, `${wsBase(b)}/ws`);
  await onB.subscribeOk(room);
  // B's announcer tells A's client about B's client.
  const heard = () => onA.events(room).filter((e) => e.event === 'presence:join' && e.data.id !== idA);
  await onA.until(() => heard().length === 1, 10_000, "B's client's join heard on A");
  const bId = heard()[0].data.id;

  const died = Date.now();
  await b.kill9();
  await onA.until(() => onA.events(room).some((e) => e.event === 'presence:leave' && e.data.id === bId),
    15_000 + 2_000 + SLACK_MS, "B's client's leave, announced by A after taking over");
  const took = Date.now() - died;
  assert.deepEqual((await presence(a, path)).connections.map((c) => c.id).filter((id) => id === bId), []);
  t.diagnostic(`leave announced by the new announcer after ${took} ms`);
  a.assertNoPanic();
});
