// 10. Slow consumer: with a small per-connection outbound bound (`[socketio] max_queue_bytes`), a raw WebSocket
// client that stops reading is disconnected instead of making Herald buffer without limit, Herald's memory
// stays bounded, and the client resumes (pid + last complete cursor) without loss: the CONNECT reply first (as the
// reference server sends it), then every later event exactly once, in order, with the same pid. A stock client on the same channel that keeps
// up is not affected.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import {
  startHerald, connected, subscribeOk, request, Recorder,
} from '../lib/herald.js';

const MAX_QUEUE_BYTES = 65_536;
const CONFIG = `
[socketio]
max_queue_bytes = ${MAX_QUEUE_BYTES}
`;
const CHANNEL = 'slow';
// Events published in total, ~10 KB each. ~10 MB: more than the kernel can absorb between Herald and a client
// that stopped reading (on loopback Herald's send buffer autotunes up to tcp_wmem's max — 4 MiB here — plus the
// client's receive buffer; with ~4 MB everything fitted there and Herald's own queue never filled), so Herald's
// queue is what overflows.
const N = 1000;
const PAD = 'x'.repeat(10_000);
// Events per publish request: 5 × ~10 KB stays under the 64 KiB bound, and each batch waits until the stock
// client has it, so a consumer that keeps up never has more than one batch queued.
const BATCH = 5;
const RSS_GROWTH_LIMIT_KB = 64 * 1024;

/** VmRSS of a process in kB (Linux). */
function rssKb(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

/**
 * A raw Engine.IO v4 / Socket.IO v5 client over a WebSocket. Records every text frame, answers pings
 * (while it is reading), and lets the test await conditions on what it has received.
 */
class RawSio {
  constructor(t, url, label) {
    this.label = label;
    this.ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`);
    this.frames = [];
    this.waiters = [];
    this.errors = [];
    this.closeInfo = undefined;
    this.ws.on('error', (e) => this.errors.push(e.code ?? e.message));
    this.ws.on('message', (data, isBinary) => {
      const s = isBinary ? `<binary ${data.length} bytes>` : data.toString();
      if (s === '2') this.ws.send('3');
      this.frames.push(s);
      this._check();
    });
    this.ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
      this._check();
    });
    t.after(() => this.ws.terminate());
  }
  send(s) { this.ws.send(s); }
  _check() {
    this.waiters = this.waiters.filter((w) => {
      let ok = false;
      try { ok = w.pred(this); } catch (e) { w.fail(e.message); return false; }
      if (ok) { w.resolve(); return false; }
      if (this.closeInfo && !w.allowClose) { w.fail('the connection closed first'); return false; }
      return true;
    });
  }
  /** Resolves when pred(this) holds; rejects on timeout or (unless allowClose) when the connection closes first. */
  until(pred, ms, label, { allowClose = false } = {}) {
    return new Promise((resolve, reject) => {
      const w = { pred, allowClose };
      const timer = setTimeout(() => w.fail(`timed out after ${ms} ms`), ms);
      w.resolve = () => { clearTimeout(timer); resolve(); };
      w.fail = (why) => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`${this.label}: waiting for ${label}: ${why}; ${this.summary()}`));
      };
      this.waiters.push(w);
      this._check();
    });
  }
  /** Socket.IO EVENT packets received: [{name, data, cursor, len, index}] (index = position among all frames). */
  events() {
    const out = [];
    this.frames.forEach((f, index) => {
      if (!f.startsWith('42')) return;
      const arr = JSON.parse(f.slice(2));
      out.push({ name: arr[0], data: arr[1], cursor: arr.at(-1), len: arr.length, index });
    });
    return out;
  }
  /** Index of the first frame starting with `prefix`, or -1. */
  indexOf(prefix) { return this.frames.findIndex((f) => f.startsWith(prefix)); }
  summary() {
    const evs = this.events();
    return `frames=${this.frames.length}, events=${evs.length} (n ${evs[0]?.data?.n}..${evs.at(-1)?.data?.n}), `
      + `close=${JSON.stringify(this.closeInfo)}, errors=${JSON.stringify(this.errors)}, `
      + `other frames=${JSON.stringify(this.frames.filter((f) => !f.startsWith('42')).map((f) => f.slice(0, 120)))}`;
  }
  /** Waits for the open packet, sends CONNECT (with `auth` if given), returns the CONNECT reply payload. */
  async connect(auth) {
    await this.until((c) => c.indexOf('0') >= 0, 10_000, 'the Engine.IO open packet');
    const open = JSON.parse(this.frames[this.indexOf('0')].slice(1));
    assert.equal(typeof open.sid, 'string', `open packet: ${JSON.stringify(open)}`);
    this.send(auth === undefined ? '40' : `40${JSON.stringify(auth)}`);
    await this.until((c) => c.indexOf('40') >= 0 || c.indexOf('44') >= 0, 10_000, 'the Socket.IO CONNECT reply');
    assert.equal(this.indexOf('44'), -1, `CONNECT_ERROR: ${this.frames[this.indexOf('44')]}`);
    this.connectIndex = this.indexOf('40');
    return JSON.parse(this.frames[this.connectIndex].slice(2));
  }
}

/** Publishes events n = from..to on CHANNEL in one batch request; asserts 200 and offsets (offset = n). */
async function publishBatch(url, from, to) {
  const events = range(from, to).map((n) => ({ channel: CHANNEL, event: 'tick', data: { n, pad: PAD } }));
  const r = await request(url, '/api/publish', { method: 'POST', body: { events } });
  assert.equal(r.status, 200, `publish batch ${from}..${to} → ${r.status} ${r.text.slice(0, 300)}`);
  assert.deepEqual(r.json.results.map((x) => x.offset), range(from, to), `offsets of batch ${from}..${to}`);
}

test('slow consumer: bounded outbound queue, disconnected, resumes without loss; a fast client is unaffected', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const pid = h.proc.pid;

  // The raw client subscribes first: Herald feeds a channel's subscribers in subscription order, so once the
  // stock client has an event, delivery of it to the raw client has been attempted too.
  const slow = new RawSio(t, h.url, 'slow raw client');
  const first = await slow.connect();
  assert.equal(typeof first.sid, 'string', `CONNECT reply ${JSON.stringify(first)}`);
  assert.equal(typeof first.pid, 'string', `CONNECT reply carries a pid: ${JSON.stringify(first)}`);
  slow.send(`420${JSON.stringify(['subscribe', { channel: CHANNEL }])}`);
  await slow.until((c) => c.indexOf('430') >= 0, 10_000, 'the subscribe ack');
  const ack = JSON.parse(slow.frames[slow.indexOf('430')].slice(3));
  assert.equal(ack[0]?.ok, true, `subscribe ack ${JSON.stringify(ack)}`);

  const fast = await connected(t, h.url);
  const fastDisconnects = [];
  fast.on('disconnect', (reason) => fastDisconnects.push(reason));
  const rec = new Recorder(fast);
  await subscribeOk(fast, CHANNEL);
  const fastHas = (n) => rec.until((r) => r.named('tick').some((e) => e.args[0]?.n === n), 10_000,
    `stock client receives event ${n} (disconnects: ${JSON.stringify(fastDisconnects)})`);

  // A first batch both clients read, so the raw client holds a cursor before it stops reading.
  await publishBatch(h.url, 1, BATCH);
  await slow.until((c) => c.events().length >= BATCH, 10_000, `the first ${BATCH} events`);
  await fastHas(BATCH);
  assert.deepEqual(slow.events().map((e) => e.data.n), range(1, BATCH));

  // Stop reading: the kernel buffers fill up, then Herald's outbound queue for this connection.
  const rssBefore = rssKb(pid);
  slow.ws._socket.pause();
  let rssPeak = rssBefore;
  const started = Date.now();
  for (let from = BATCH + 1; from <= N; from += BATCH) {
    const to = Math.min(from + BATCH - 1, N);
    await publishBatch(h.url, from, to);
    await fastHas(to); // the stock client keeps up
    rssPeak = Math.max(rssPeak, rssKb(pid));
  }
  const publishMs = Date.now() - started;
  const rssAfterPublish = rssKb(pid);
  t.diagnostic(`herald VmRSS: before ${rssBefore} kB, peak while publishing ${rssPeak} kB (+${rssPeak - rssBefore} kB), `
    + `after publishing ${rssAfterPublish} kB; published ${N - BATCH} events (~${Math.round((N - BATCH) * PAD.length / 1e6)} MB) `
    + `in ${publishMs} ms while the raw client was paused`);

  // The stock client was not affected: every event exactly once, in order, no disconnect.
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), range(1, N), 'the stock client received every event in order');
  assert.deepEqual(fastDisconnects, [], 'the stock client was never disconnected');
  assert.ok(rssPeak - rssBefore < RSS_GROWTH_LIMIT_KB,
    `herald RSS stays bounded: grew ${rssPeak - rssBefore} kB (limit ${RSS_GROWTH_LIMIT_KB} kB)`);
  assert.equal(slow.closeInfo, undefined, 'the paused client cannot have seen a close yet');

  // Read again: what the kernel buffered arrives, then the connection must end.
  slow.ws._socket.resume();
  await slow.until((c) => c.closeInfo !== undefined, 10_000,
    `the server to close the paused connection (max_queue_bytes = ${MAX_QUEUE_BYTES}, ~${Math.round(N * PAD.length / 1e6)} MB published)`,
    { allowClose: true });
  const close = slow.closeInfo;
  const received = slow.events();
  const ns = received.map((e) => e.data.n);
  const lastN = ns.at(-1);
  const lastCursor = received.at(-1).cursor;
  t.diagnostic(`slow client: close code=${close.code} reason=${JSON.stringify(close.reason)} errors=${JSON.stringify(slow.errors)}; `
    + `received ${ns.length} of ${N} events (~${Math.round(ns.length * PAD.length / 1000)} KB) before the close; last cursor ${lastCursor}`);
  if (close.code !== 1008) {
    t.diagnostic(`note: interface.md/the implementation use WS close 1008 "slow consumer"; observed ${close.code} ${JSON.stringify(close.reason)} `
      + '(a close frame cannot overtake the data already buffered for a peer that stopped reading)');
  }
  assert.deepEqual(ns, range(1, ns.length), 'the slow client received a prefix of the events, in order, exactly once');
  assert.equal(received.at(-1).len, 3, 'EVENT packet = [name, data, cursor]');
  assert.equal(typeof lastCursor, 'string', 'the last array element of an EVENT is the string cursor');
  assert.ok(lastN < N, `the slow client was cut off by the bound, so it cannot have everything: got ${lastN} of ${N}`);
  t.diagnostic(`herald VmRSS after the close: ${rssKb(pid)} kB`);

  // Resume on a new raw connection with pid + the last complete cursor: the CONNECT reply comes first, then the
  // missed events (a client that reconnects again before the reply would otherwise hold a previous connection's
  // replay in its receive buffer).
  const again = new RawSio(t, h.url, 'resuming raw client');
  const reply = await again.connect({ pid: first.pid, offset: lastCursor });
  // Events may already follow the reply in the same read; none may precede it.
  const firstEvent = again.indexOf('42');
  assert.ok(firstEvent === -1 || firstEvent > again.connectIndex,
    `no EVENT before the CONNECT reply (reply at frame ${again.connectIndex}, first EVENT at ${firstEvent})`);
  await again.until((c) => c.events().some((e) => e.data?.n === N), 20_000, `the replay through event ${N}`);
  const replayed = again.events();
  const others = replayed.filter((e) => e.name !== 'tick');
  assert.deepEqual(others.map((e) => [e.name, e.data]), [], 'only tick events replayed (no herald:gap)');
  const rns = replayed.map((e) => e.data.n);
  const dups = rns.filter((n, i) => rns.indexOf(n) !== i);
  const missing = range(lastN + 1, N).filter((n) => !rns.includes(n));
  assert.deepEqual(rns, range(lastN + 1, N),
    `events ${lastN + 1}..${N} replayed after the CONNECT reply, in order, exactly once `
    + `(got ${rns.length}: ${rns[0]}..${rns.at(-1)}; duplicates ${JSON.stringify(dups.slice(0, 20))}; `
    + `missing ${JSON.stringify(missing.slice(0, 20))}${missing.length > 20 ? ` … (${missing.length})` : ''})`);
  for (const e of replayed) assert.equal(typeof e.cursor, 'string', `replayed event ${e.data.n} carries a string cursor`);
  assert.equal(reply.pid, first.pid, `recovered: the CONNECT reply has the same pid (${JSON.stringify(reply)})`);
  t.diagnostic(`resume: ${rns.length} events replayed after the CONNECT reply; sid ${reply.sid === first.sid ? 'kept' : `changed ${first.sid} → ${reply.sid}`}`);

  // The restored subscription carries live events, and nothing else trails the replay.
  await publishBatch(h.url, N + 1, N + 1);
  await again.until((c) => c.events().some((e) => e.data?.n === N + 1), 10_000, `live event ${N + 1} after the resume`);
  assert.deepEqual(again.events().slice(replayed.length).map((e) => e.data?.n), [N + 1],
    'after the replay: only the new live event');
  await fastHas(N + 1);
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), range(1, N + 1), 'the stock client has every event in order');
  assert.deepEqual(fastDisconnects, []);
  // /metrics (docs/operations.md) counts the slow consumer, its disconnect by reason, and the resume that recovered.
  const metrics = (await request(h.url, '/metrics')).text;
  const sample = (key) => Number(metrics.split('\n').find((l) => l.startsWith(`${key} `))?.slice(key.length + 1) ?? 0);
  assert.equal(sample('herald_slow_consumers_total{transport="socketio"}'), 1, 'one slow consumer counted');
  assert.equal(sample('herald_disconnects_total{transport="socketio",reason="slow_consumer"}'), 1, 'its disconnect, by reason');
  assert.equal(sample('herald_resumes_total{outcome="recovered"}'), 1, 'its resume recovered');
  assert.equal(sample('herald_replayed_events_total'), replayed.length, 'the events replayed to it');
  await h.assertHealthy();
});
