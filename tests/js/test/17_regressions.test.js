// 17. Regression tests for the review fixes of 7d4b342. Each test fails on the binary before that commit (e5d90f2)
// and passes now:
//   H1  /ws: a replay larger than the send queue plus a burst of requests deadlocked the connection.
//   H2  Socket.IO recovery: registration numbers restarted at 0 on every resume, so an old `R…` cursor compared
//       as "newer" than a later registration and the client was told `recovered` while events were missing.
//   H3  A replay whose whole range had been trimmed by age reported no gap (SSE, /ws and Socket.IO).
//   H4  Long-poll history waits aborted by the client stayed registered in the hub (and idle hub entries for
//       names that never had events were never removed).
//   M5  With cookie authentication and no allow-list, a cross-site page could open /ws carrying the cookie.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import {
  startHerald, publish, request, history, chan, withTimeout, pause, connected, subscribeOk, Recorder, Waitable,
} from '../lib/herald.js';
import { wsBase, openWs, openSse, directPath } from '../lib/plain.js';
import { KEY_BLOCKS, wsRefused, wsOpen, assertRefusal } from '../lib/auth.js';
import { sign } from '../lib/jwt.js';

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** POST /api/publish with a batch `{events:[…]}`; asserts 200 and returns the results. */
async function publishBatch(url, events) {
  const r = await request(url, '/api/publish', { method: 'POST', body: { events } });
  assert.equal(r.status, 200, `batch publish → ${r.status} ${r.text.slice(0, 300)}`);
  assert.equal(r.json.results.length, events.length);
  return r.json.results;
}

// ---------------------------------------------------------------------------------------------------------------
// H1

test('H1 /ws: since:0 replay of 80 × 60 KB events plus 100 pipelined pings → every event in order and a reply to every ping', async (t) => {
  const h = await startHerald(t);
  const ch = chan('big');
  // 80 × ~60 KB ≈ 4.8 MB: more than the connection's 4 MiB send queue, so the replay needs the pump to drain it.
  const payloads = range(1, 80).map(() => randomBytes(45_000).toString('base64')); // 60,000 characters each
  for (let i = 0; i < payloads.length; i += 10) {
    await publishBatch(h.url, payloads.slice(i, i + 10).map((data) => ({ channel: ch, event: 'blob', data })));
  }

  const c = await openWs(t, `${wsBase(h)}/ws`, { perMessageDeflate: false });
  // The subscribe and 100 pings at once: more requests than the server queues while the replay is in progress.
  c.send({ op: 'subscribe', id: 'sub', channel: ch, since: 0 });
  const pings = range(1, 100);
  for (const id of pings) c.send({ op: 'ping', id });

  const replyTo = (id) => c.messages.filter((m) => m?.type !== 'event' && m?.id === id);
  await c.until((x) => {
    if (x.closeInfo) throw new Error(`connection closed: ${JSON.stringify(x.closeInfo)}`);
    return x.events(ch).length >= 80 && pings.every((id) => replyTo(id).length > 0);
  }, 10_000, 'all 80 events and a reply to each of the 100 pings (the old binary deadlocked: 0 events, 0 pongs)');

  const sub = replyTo('sub');
  assert.equal(sub.length, 1, `one reply to the subscribe: ${JSON.stringify(sub)}`);
  assert.equal(sub[0].type, 'subscribed', `subscribe reply: ${JSON.stringify(sub[0])}`);
  assert.equal(sub[0].offset, 80);
  const events = c.events(ch);
  assert.deepEqual(events.map((e) => e.offset), range(1, 80), 'every event exactly once, in order');
  events.forEach((e, i) => assert.ok(e.data === payloads[i], `event ${i + 1}: payload intact (${String(e.data).length} chars)`));
  const counts = { pong: 0, busy: 0, rate_limited: 0 };
  for (const id of pings) {
    const replies = replyTo(id);
    assert.equal(replies.length, 1, `ping ${id}: exactly one reply, got ${JSON.stringify(replies)}`);
    const [r] = replies;
    if (r.type === 'pong') {
      assert.deepEqual(r, { type: 'pong', id });
      counts.pong++;
    } else {
      assert.equal(r.type, 'error', `ping ${id}: pong or error, got ${JSON.stringify(r)}`);
      assert.ok(['busy', 'rate_limited'].includes(r.code), `ping ${id}: error code busy|rate_limited: ${JSON.stringify(r)}`);
      assert.equal(typeof r.message, 'string');
      counts[r.code]++;
    }
  }
  t.diagnostic(`ping replies: ${JSON.stringify(counts)}`);
  assert.ok(c.isOpen, `the connection stays open: ${JSON.stringify(c.closeInfo)}`);
  // Still usable once the burst is over.
  await c.barrier();
  await h.assertHealthy();
});

// ---------------------------------------------------------------------------------------------------------------
// H2: a raw Engine.IO v4 / Socket.IO v5 client over WebSocket (what the stock client does, without its logic, so the
// test controls exactly which cursor is sent back).

class RawSio extends Waitable {
  constructor(t, h) {
    super();
    this.frames = [];
    this.ackId = 0;
    this.closeCode = null;
    this.ws = new WebSocket(`${wsBase(h)}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false });
    this.ws.on('error', (e) => { this.error = e.message; this._check(); });
    this.ws.on('message', (data, isBinary) => {
      const text = isBinary ? `<binary ${data.length}>` : data.toString('utf8');
      if (text === '2') { this.ws.send('3'); return; } // Engine.IO ping → pong
      this.frames.push(text);
      this._check();
    });
    this.closed = new Promise((resolve) => this.ws.on('close', (code) => { this.closeCode = code; this._check(); resolve(code); }));
    t.after(() => this.ws.terminate());
  }
  summary() {
    const short = this.frames.map((f) => (f.length > 70 ? `${f.slice(0, 70)}…` : f));
    return `${this.frames.length} frames ${JSON.stringify(short.slice(0, 4))}…${JSON.stringify(short.slice(-3))} close=${this.closeCode}`
      + `${this.error ? ` error=${this.error}` : ''}`;
  }
  async next(pred, label, ms = 10_000) {
    let found;
    await this.until((s) => (found = s.frames.find(pred)) !== undefined, ms, label);
    return found;
  }
  /** EVENT packets of namespace `/` named `name`: their argument arrays. */
  events(name) {
    return this.frames.filter((f) => f.startsWith('42[')).map((f) => JSON.parse(f.slice(2))).filter((a) => a[0] === name)
      .map((a) => a.slice(1));
  }
  async opened() {
    const open = await this.next((f) => f.startsWith('0{'), 'Engine.IO open packet');
    return JSON.parse(open.slice(1));
  }
  /** Sends CONNECT (with `auth`, if any) and resolves with the CONNECT reply's payload ({sid, pid}). */
  async connect(auth) {
    this.ws.send(`40${auth === undefined ? '' : JSON.stringify(auth)}`);
    const reply = await this.next((f) => f.startsWith('40') || f.startsWith('44'), 'CONNECT reply');
    assert.ok(reply.startsWith('40{'), `CONNECT accepted: ${reply}`);
    return JSON.parse(reply.slice(2));
  }
  /** EVENT with an ack id; resolves with the ack's first argument. */
  async emitAck(name, arg) {
    const id = ++this.ackId;
    this.ws.send(`42${id}${JSON.stringify([name, arg])}`);
    const ack = await this.next((f) => f.startsWith(`43${id}[`), `ack ${id} for ${name} ${JSON.stringify(arg)}`);
    return JSON.parse(ack.slice(2 + String(id).length))[0];
  }
}

test('H2 Socket.IO: resuming twice with the same old R… cursor never claims recovery while events are missing', async (t) => {
  const h = await startHerald(t);
  const x = chan('x');
  const c = chan('c');
  await publishBatch(h.url, range(1, 100).map((n) => ({ channel: c, event: 'e', data: n })));

  // Session 1: subscribe x (registration 0), unsubscribe it, subscribe c since 0 (registration 1): the replay's
  // cursors are R<seq>.1.<offset>.
  const s1 = new RawSio(t, h);
  await s1.opened();
  const { pid } = await s1.connect();
  assert.equal(typeof pid, 'string', 'CONNECT reply carries a pid');
  assert.equal((await s1.emitAck('subscribe', { channel: x })).ok, true);
  assert.equal((await s1.emitAck('unsubscribe', { channel: x })).ok, true);
  const ack = await s1.emitAck('subscribe', { channel: c, since: 0 });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  await s1.until((s) => s.events('e').length >= 100, 10_000, 'session 1: 100 replayed events');
  const evs = s1.events('e');
  assert.deepEqual(evs.map((a) => a[0]), range(1, 100));
  const cursor = evs[49][1];
  assert.match(cursor, /^R\d+\.\d+\.50$/, `a replayed event carries an R… cursor: ${cursor}`);
  s1.ws.close();
  await withTimeout(s1.closed, 5000, 'session 1 closed');

  // Session 2: resume with that cursor, then vanish without using anything the server sent (the client's cursor
  // stays at event 50). The CONNECT reply reaching the socket tells us the server has stored the session record.
  const s2 = new RawSio(t, h);
  await s2.opened();
  s2.ws.send(`40${JSON.stringify({ pid, offset: cursor })}`);
  await s2.until((s) => s.frames.some((f) => f.startsWith('40') || f.startsWith('44')), 10_000, 'session 2 CONNECT reply');
  s2.ws.terminate();
  await withTimeout(s2.closed, 5000, 'session 2 closed');

  // Session 3: resume again with the same old cursor.
  const s3 = new RawSio(t, h);
  await s3.opened();
  const reply = await s3.connect({ pid, offset: cursor });
  if (reply.pid !== pid) {
    // Not recovered: the client knows it may have lost events (the stock client sets recovered = false).
    t.diagnostic(`session 3 was not recovered (new pid); gaps: ${JSON.stringify(s3.events('herald:gap'))}`);
  } else {
    // Claimed recovered: then every event after the cursor must arrive, exactly once and in order. The old binary
    // sent none of them (a silent loss of events 51..100).
    t.diagnostic('session 3 resumed with the same pid (recovered)');
    await s3.until((s) => s.events('e').length >= 50, 8000,
      'session 3 claims recovery (same pid): events 51..100 must be replayed');
    // A subscribe round trip: anything queued for the resume has been sent before its ack.
    assert.equal((await s3.emitAck('subscribe', { channel: chan('barrier') })).ok, true);
    assert.deepEqual(s3.events('e').map((a) => a[0]), range(51, 100), 'events after the cursor, exactly once, in order');
    assert.deepEqual(s3.events('herald:gap'), [], 'no gap when recovered');
  }
  // Either way the session goes on: a live event arrives.
  await publish(h.url, c, 'e', 101);
  await s3.until((s) => s.events('e').some((a) => a[0] === 101), 10_000, 'live event after the resume');
  h.assertNoPanic();
});

// ---------------------------------------------------------------------------------------------------------------
// H3

test('H3 max_age retention: a since whose whole range aged out → herald:gap (SSE), gap (/ws), herald:gap (Socket.IO)', async (t) => {
  const h = await startHerald(t, { config: '[history]\nmax_events = 1000\nmax_age = "1s"\n' });
  const ch = chan('aged');
  let epoch;
  for (let n = 1; n <= 5; n++) epoch = (await publish(h.url, ch, 'tick', { n })).epoch;

  // The retention sweep runs on a server-side timer: poll until it has removed all five events.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await history(h.url, ch);
    assert.equal(r.status, 200, `history → ${r.status} ${r.text}`);
    if (r.json.events.length === 0) {
      assert.equal(r.json.last_offset, 5, `history after the sweep: ${r.text}`);
      assert.equal(r.json.first_offset, 6, `history after the sweep: ${r.text}`);
      break;
    }
    if (Date.now() > deadline) throw new Error(`history still holds events after 10 s: ${r.text}`);
    await pause(100); // waiting on the server's retention timer
  }
  const gap = { channel: ch, reason: 'history_trimmed', epoch, from: 3, to: 5 };

  // /ws: subscribe since 2 → subscribed, gap. A ping round trip afterwards is a barrier: the subscribe's replay
  // (gap included) is queued before the pong.
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  const sub = await ws.subscribeOk(ch, { since: 2 });
  assert.equal(sub.offset, 5);
  await ws.barrier();
  assert.deepEqual(ws.ofType('gap'), [{ type: 'gap', ...gap }], `/ws gap: ${ws.summary()}`);
  assert.deepEqual(ws.events(ch), [], 'nothing else to replay');

  // Socket.IO (stock client): subscribe since 2 → ack, herald:gap; a second subscribe's ack is the barrier.
  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(socket);
  const ack = await subscribeOk(socket, ch, { since: 2 });
  assert.equal(ack.offset, 5);
  await subscribeOk(socket, chan('barrier'));
  assert.deepEqual(rec.named('herald:gap').map((e) => e.args[0]), [gap], `Socket.IO herald:gap: ${rec.summary()}`);
  assert.deepEqual(rec.named('tick'), []);

  // SSE ?since=<epoch>:2. A live event published once the stream is open is the barrier: the gap comes before it.
  // (Last: the live event changes what history holds.)
  const sse = await openSse(t, `${h.url}${directPath('/sse', ch)}?since=${encodeURIComponent(`${epoch}:2`)}`);
  assert.equal(sse.status, 200, `SSE: ${sse.text}`);
  await publish(h.url, ch, 'tick', { n: 6 });
  await sse.until((s) => s.named('tick').length >= 1, 10_000, 'SSE: the live event after the replay');
  const names = sse.events.map((e) => e.event);
  assert.deepEqual(names, ['herald:gap', 'tick'], `SSE: gap then the live event: ${sse.summary()}`);
  assert.deepEqual(JSON.parse(sse.events[0].data), gap);
  assert.deepEqual(JSON.parse(sse.events[1].data), { n: 6 });
  assert.equal(sse.events[1].id, `${epoch}:6`);
  h.assertNoPanic();
});

// ---------------------------------------------------------------------------------------------------------------
// H4

/** Resident set size of a process in kB (Linux). */
const rssKb = (pid) => Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

test('H4 long-poll: 2,000 aborted waits on one channel → the server stays fast and a long-poll still wakes on publish', async (t) => {
  const h = await startHerald(t);
  const ch = chan('lp');
  const first = await publish(h.url, ch, 'tick', { n: 1 });
  const waitPath = `/api/channels/${encodeURIComponent(ch)}/history?since=${first.offset}&wait=30`;

  const BATCH = 200;
  let aborted = 0;
  for (let b = 0; b < 10; b++) {
    const controllers = [];
    const pending = [];
    for (let i = 0; i < BATCH; i++) {
      const ac = new AbortController();
      controllers.push(ac);
      pending.push(fetch(`${h.url}${waitPath}`, { signal: ac.signal }).then(
        (r) => { throw new Error(`a waiting history request answered ${r.status} before any publish`); },
        (e) => { if (e.name !== 'AbortError') throw e; }));
    }
    // A request answered after the batch was sent: the server has taken the batch's connections.
    assert.equal((await request(h.url, '/healthz')).status, 200);
    for (const ac of controllers) ac.abort();
    await Promise.all(pending);
    aborted += BATCH;
  }
  assert.equal(aborted, 2000);

  const t0 = performance.now();
  assert.equal((await request(h.url, '/healthz')).status, 200);
  const healthMs = performance.now() - t0;
  assert.ok(healthMs < 500, `/healthz after the aborts took ${healthMs.toFixed(1)} ms`);

  // A normal long-poll still wakes on publish (long before its 30 s wait ends).
  const started = performance.now();
  const poll = history(h.url, ch, { since: first.offset, wait: 30 });
  const second = await publish(h.url, ch, 'tick', { n: 2 });
  const woke = await withTimeout(poll, 5000, 'long-poll woken by a publish');
  assert.equal(woke.status, 200, woke.text);
  assert.deepEqual(woke.json.events.map((e) => e.offset), [second.offset]);
  t.diagnostic(`long-poll answered ${(performance.now() - started).toFixed(1)} ms after it started`);

  // Publishing to the channel the aborted waits were on stays fast.
  const times = [];
  for (let n = 3; n < 53; n++) {
    const s = performance.now();
    await publish(h.url, ch, 'tick', { n });
    times.push(performance.now() - s);
  }
  times.sort((a, b) => a - b);
  const p99 = times[Math.ceil(times.length * 0.99) - 1];
  t.diagnostic(`50 publishes: median ${times[25].toFixed(1)} ms, p99 ${p99.toFixed(1)} ms`);
  assert.ok(p99 < 200, `p99 publish latency after 2,000 aborted waits: ${p99.toFixed(1)} ms`);
  await h.assertHealthy();
});

test('H4 long-poll: waits cancelled mid-flight are unregistered (server memory stays flat over 30,000 cancelled waits)',
  { skip: !existsSync('/proc/self/status') && 'needs /proc (Linux) to read the server\'s RSS' }, async (t) => {
    // The observable: the server's resident memory. Each wait registers with the hub under its channel; before the
    // fix a cancelled wait was never unregistered (and a hub entry for a name without events was never removed),
    // which grows the server by roughly 640 bytes per cancelled wait on a distinct name (~19 MB here); now it stays
    // flat. HTTP/2 (h2c) lets one connection cancel thousands of requests quickly (RST_STREAM), with no port churn.
    // (Publish latency after aborted waits on one channel, above, cannot tell the two binaries apart.)
    const h = await startHerald(t);
    const session = http2.connect(h.url);
    session.on('error', () => {});
    t.after(() => session.destroy());
    const get = (path) => withTimeout(new Promise((resolve, reject) => {
      const req = session.request({ ':path': path });
      let body = '';
      req.setEncoding('utf8');
      req.on('response', (headers) => { req.status = headers[':status']; });
      req.on('data', (d) => { body += d; });
      req.on('end', () => resolve({ status: req.status, body }));
      req.on('error', reject);
      req.end();
    }), 10_000, `h2 GET ${path}`);
    assert.equal((await get('/healthz')).status, 200, 'h2c prior knowledge is served');

    const name = `${'n'.repeat(180)}-${process.pid}`;
    let serial = 0;
    const BATCH = 100; // below the server's concurrent-stream limit, with room for the probe
    const cancelWaits = async (count) => {
      for (let done = 0; done < count; done += BATCH) {
        const reqs = [];
        for (let i = 0; i < BATCH; i++) {
          const req = session.request({ ':path': `/api/channels/${name}-${++serial}/history?wait=30` });
          req.on('error', () => {});
          req.on('response', (headers) => { req.answered = headers[':status']; });
          req.end();
          reqs.push(req);
        }
        // A request sent after the batch and answered: the server has taken the batch's streams.
        assert.equal((await get('/healthz')).status, 200);
        const answered = reqs.filter((r) => r.answered !== undefined);
        assert.deepEqual(answered.map((r) => r.answered), [], 'no wait answered before it was cancelled');
        for (const req of reqs) req.close(http2.constants.NGHTTP2_CANCEL);
        // The resets are read before this request: the waits have been cancelled server-side.
        assert.equal((await get('/healthz')).status, 200);
      }
    };

    await cancelWaits(10_000); // warm-up: allocator arenas, blocking-pool threads, hub map capacity
    const rss = [rssKb(h.proc.pid)];
    for (let round = 0; round < 3; round++) {
      await cancelWaits(10_000);
      rss.push(rssKb(h.proc.pid));
    }
    const growth = rss[3] - rss[0];
    t.diagnostic(`server RSS ${rss.join(' → ')} kB (+${growth} kB) over 30,000 cancelled waits`);
    // Before the fix: ≈ +19 MB (every round +6 MB). Now: flat, up to a few MB of allocator/thread noise under load.
    assert.ok(growth < 8192, `server memory grew by ${growth} kB over 30,000 cancelled long-poll waits `
      + `(per 10,000: ${rss.slice(1).map((v, i) => v - rss[i]).join(', ')} kB); a leak of ≈640 B per wait grows it ≈19 MB`);

    // The server still serves a long-poll normally on one of those names.
    const ch = `${name}-live`;
    const poll = history(h.url, ch, { wait: 30 });
    await publish(h.url, ch, 'tick', { n: 1 });
    const r = await withTimeout(poll, 5000, 'long-poll on a fresh channel woken by a publish');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.events.length, 1);
    await h.assertHealthy();
  });

// ---------------------------------------------------------------------------------------------------------------
// M5

test('M5 cookie auth: a cross-site /ws upgrade carrying the cookie → 403 origin_not_allowed; same origin accepted', async (t) => {
  const h = await startHerald(t, { config: `[auth]\ncookie = "herald_token"\n${KEY_BLOCKS.HS256}` });
  const token = sign({ sub: 'alice' }, { alg: 'HS256' });
  const cookie = `herald_token=${token}`;

  const refused = await wsRefused(t, h, '/ws', { headers: { cookie, origin: 'http://evil.example' } });
  assertRefusal(refused, 403, 'origin_not_allowed', 'cross-site Origin with a valid cookie');

  const ok = await wsOpen(t, h, '/ws', { headers: { cookie, origin: `http://127.0.0.1:${h.port}` } });
  await ok.subscribeOk(chan('m5'));
  await ok.barrier();
  h.assertNoPanic();
});
