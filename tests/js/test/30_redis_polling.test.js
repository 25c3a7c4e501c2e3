// 30. Engine.IO long-polling across Redis nodes without sticky sessions (issue 14's test 3): a round-robin HTTP
// balancer sends each request to the next node in turn, so consecutive requests of one session land on different
// nodes; the node that does not hold the session forwards the request to the one that does. A WebSocket upgrade that
// lands on a node without the session is refused ("Session ID unknown") and the client keeps polling.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import {
  connected, subscribeOk, publish, Recorder, chan, withTimeout, request, startHerald, assertApiError,
} from '../lib/herald.js';
import { startRedis, startNodes, redisArgs, uniquePrefix } from '../lib/cluster.js';

/**
 * An HTTP balancer sending each request to the next of `ports` in turn (no affinity; fresh upstream connection each
 * time; a WebSocket upgrade is piped to its node as is). Returns {url, log: [{port, method, path, upgrade}]}.
 */
async function roundRobin(t, ports) {
  let next = 0;
  const log = [];
  const server = http.createServer((req, res) => {
    const port = ports[next++ % ports.length];
    log.push({ port, method: req.method, path: req.url });
    const up = http.request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers, agent: false },
      (upRes) => { res.writeHead(upRes.statusCode, upRes.headers); upRes.pipe(res); });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  const tunnels = new Set();
  server.on('upgrade', (req, socket, head) => {
    const port = ports[next++ % ports.length];
    log.push({ port, method: req.method, path: req.url, upgrade: true });
    const up = net.connect(port, '127.0.0.1', () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${lines.join('\r\n')}\r\n\r\n`);
      up.write(head);
      up.pipe(socket); socket.pipe(up);
    });
    tunnels.add(socket); tunnels.add(up);
    const done = () => { socket.destroy(); up.destroy(); tunnels.delete(socket); tunnels.delete(up); };
    socket.on('error', done); up.on('error', done); socket.on('close', done); up.on('close', done);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => {
    for (const s of tunnels) s.destroy();
    server.closeAllConnections(); server.close(r);
  }));
  return { url: `http://127.0.0.1:${server.address().port}`, log };
}

test('polling through a round-robin balancer over two nodes: connect, subscribe, events from either node, acks',
  { timeout: 30_000 }, async (t) => {
    const redis = await startRedis(t);
    const [a, b] = await startNodes(t, redis, 2);
    const lb = await roundRobin(t, [a.port, b.port]);

    const socket = await connected(t, lb.url, { transports: ['polling'] });
    const rec = new Recorder(socket);
    const ch = chan('poll');
    await subscribeOk(socket, ch);

    await publish(a.url, ch, 'tick', { n: 1, from: 'A' });
    await publish(b.url, ch, 'tick', { n: 2, from: 'B' });
    await publish(a.url, ch, 'tick', { n: 3, from: 'A' });
    await rec.until((r) => r.named('tick').length === 3, 10_000, 'three ticks through the balancer');
    assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [1, 2, 3]);

    const ack = await withTimeout(socket.emitWithAck('unsubscribe', { channel: ch }), 10_000, 'unsubscribe ack');
    assert.equal(ack?.ok, true, `unsubscribe: ${JSON.stringify(ack)}`);
    assert.equal(socket.connected, true);
    assert.equal(socket.io.engine.transport.name, 'polling');

    // The session's requests (those naming its sid) really went to both nodes, alternating.
    const sid = socket.io.engine.id;
    const mine = lb.log.filter((r) => r.path.includes(`sid=${sid}`));
    assert.ok(mine.some((r) => r.port === a.port) && mine.some((r) => r.port === b.port),
      `requests of the session reached both nodes: ${JSON.stringify(mine)}`);
    assert.ok(mine.length >= 4, `several polling requests: ${JSON.stringify(mine)}`);
  });

test('polling with WebSocket upgrades through the round-robin balancer: events and acks work whichever node the upgrade hits',
  { timeout: 30_000 }, async (t) => {
    const redis = await startRedis(t);
    const [a, b] = await startNodes(t, redis, 2);
    const lb = await roundRobin(t, [a.port, b.port]);

    const socket = await connected(t, lb.url);
    const rec = new Recorder(socket);
    const ch = chan('upg');
    await subscribeOk(socket, ch);
    // An upgrade was tried (refused on the node without the session, accepted on its owner).
    await withTimeout((async () => {
      while (!lb.log.some((r) => r.upgrade)) await new Promise((r) => socket.io.engine.once('packet', r));
    })(), 10_000, `an upgrade attempt; seen: ${JSON.stringify(lb.log)}`);

    for (let n = 1; n <= 4; n++) await publish((n % 2 ? a : b).url, ch, 'tick', { n });
    await rec.until((r) => r.named('tick').length === 4, 10_000, 'four ticks');
    assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [1, 2, 3, 4]);
    const ack = await withTimeout(socket.emitWithAck('unsubscribe', { channel: ch }), 10_000, 'unsubscribe ack');
    assert.equal(ack?.ok, true, `unsubscribe: ${JSON.stringify(ack)}`);
    assert.equal(socket.connected, true);
  });

test('a sid no node holds is still "Session ID unknown" on every node', { timeout: 20_000 }, async (t) => {
  const redis = await startRedis(t);
  const [a, b] = await startNodes(t, redis, 2);
  for (const node of [a, b]) {
    const r = await request(node.url, '/socket.io/?EIO=4&transport=polling&sid=nosuchsession0000000');
    assert.equal(r.status, 400);
    assert.deepEqual(r.json, { code: 1, message: 'Session ID unknown' });
  }
});

test('forwards in flight are bounded by [cluster] max_forwards: one more is answered 503 forward_limit',
  { timeout: 20_000 }, async (t) => {
    // Node A advertises a listener that accepts and never answers, so a request forwarded to it stays in flight.
    const accepted = [];
    let onAccept = () => {};
    const hole = net.createServer((s) => { accepted.push(s); onAccept(); });
    await new Promise((r) => hole.listen(0, '127.0.0.1', r));
    t.after(() => new Promise((r) => { for (const s of accepted) s.destroy(); hole.close(r); }));

    const redis = await startRedis(t);
    const prefix = uniquePrefix();
    const a = await startHerald(t, {
      config: `[cluster]\nadvertise = "http://127.0.0.1:${hole.address().port}"\n`, args: redisArgs(redis, prefix),
    });
    const b = await startHerald(t, { config: '[cluster]\nmax_forwards = 1\n', args: redisArgs(redis, prefix) });

    const open = await request(a.url, '/socket.io/?EIO=4&transport=polling');
    assert.equal(open.status, 200, open.text);
    const { sid } = JSON.parse(open.text.slice(1));
    const path = `/socket.io/?EIO=4&transport=polling&sid=${sid}`;

    const held = new AbortController();
    t.after(() => held.abort());
    const reachedHole = new Promise((r) => { onAccept = r; });
    fetch(b.url + path, { signal: held.signal }).catch(() => {});
    await withTimeout(reachedHole, 10_000, 'the first forward to reach node A\'s advertised address');

    const r = await request(b.url, path, { method: 'POST', rawBody: '6', headers: { 'content-type': 'text/plain' } });
    assertApiError(r, 503, 'forward_limit', 'the forward over the limit');
  });
