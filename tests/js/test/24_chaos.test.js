// 24. Chaos: every acknowledged event reaches every client of its channel exactly once and in order, whatever
// happens to the transports and the server in between.
//
// Two producers publish steadily to 4 channels (single events and atomic batches, each event with an idempotency
// id, retried with the same body on connection errors and 5xx — as publishRetry does). Socket.IO clients (the stock
// socket.io-client over WebSocket, polling, and polling upgraded to WebSocket; connection state recovery), plain
// `/ws` clients (Herald's JSON protocol, resuming with their own (channel, epoch, offset) cursors) and SSE clients
// (the `eventsource` package, resuming with Last-Event-ID) subscribe to a few channels each. Meanwhile transports are
// dropped at random — client-side closes, the server-side `POST /api/connections/{id}/disconnect`, and TCP resets
// (every client talks through its own pass-through proxy, which can reset its connections) — and Herald is killed
// with SIGKILL and restarted on the same data dir and port several times.
//
// At the end, against the history API: the history holds every acknowledged event exactly once at its acknowledged
// offset (gapless, nothing unacknowledged), no batch was partly committed, and per client per channel the missing,
// duplicated, reordered and unknown counts are 0 (the failure message lists the first offending offsets).
//
// The schedule (clients' channels and transports, drops, kill times, producers' choices) comes from a seeded PRNG:
// the seed is printed; HERALD_CHAOS_SEED=<n> replays a run's schedule (timing still varies). HERALD_CHAOS_MS sets the
// length of the chaos phase (default 12000). A failure shows the offending client's timeline (connects, engine
// handshakes and CONNECT packets, drops, kills, every event with its cursor) around the first bad event.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomInt } from 'node:crypto';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';
import {
  startHerald, request, publishRetry, fullHistory, withTimeout, pause, Waitable, chan,
} from '../lib/herald.js';

const SEED = (() => {
  const env = process.env.HERALD_CHAOS_SEED;
  if (env === undefined || env === '') return randomInt(2 ** 31);
  const n = Number(env);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`HERALD_CHAOS_SEED must be a non-negative integer, got ${env}`);
  return n;
})();
const CHAOS_MS = Number(process.env.HERALD_CHAOS_MS || 12_000);
const KILLS = 3;
const CHANNELS = 4;
const PRODUCERS = 2;
const EPOCH = Date.now(); // timeline origin
const SETTLE_MS = 30_000; // failure guard for the catch-up after the chaos phase

// ---------------------------------------------------------------------------------------------
// Seeded randomness: one independent stream per user (schedule, each producer, each client), so one part's timing
// does not shift another's choices.

function mulberry32(seed) {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}
const stream = (k) => mulberry32(SEED ^ Math.imul(k + 1, 0x9e3779b1));
const int = (rng, n) => Math.floor(rng() * n);
const pick = (rng, arr) => arr[int(rng, arr.length)];
/** arr's element for a number r in [0, 1) drawn beforehand. */
const pickBy = (r, arr) => arr[Math.floor(r * arr.length)];
/** k distinct elements of arr, in arr's order. */
function subset(rng, arr, k) {
  const idx = arr.map((_, i) => i);
  for (let i = idx.length - 1; i > 0; i--) { const j = int(rng, i + 1); [idx[i], idx[j]] = [idx[j], idx[i]]; }
  return idx.slice(0, k).sort((x, y) => x - y).map((i) => arr[i]);
}

// ---------------------------------------------------------------------------------------------
// A TCP pass-through per client: `reset()` resets every connection it carries (both ends see ECONNRESET), as a
// network failure would. A clean close on either side is passed on as one.

async function resetProxy(t, port) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream, done: false };
    pairs.add(pair);
    const reset = () => {
      if (pair.done) return;
      pair.done = true;
      pairs.delete(pair);
      for (const s of [client, upstream]) {
        // resetAndDestroy() on a socket already end()ed (a pending shutdown) leaves node 20 spinning at exit.
        if (s.destroyed) continue;
        if (s.writableEnded || s.connecting) s.destroy();
        else s.resetAndDestroy();
      }
    };
    pair.reset = reset;
    client.on('error', reset);
    upstream.on('error', reset); // includes ECONNREFUSED while Herald is down
    // The pair stays listed until the client side has closed, so close() can end what is still half-open.
    client.on('close', () => { pairs.delete(pair); upstream.destroy(); });
    upstream.on('close', () => client.end());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const proxy = {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Reset every carried connection; returns how many. */
    reset() {
      const open = [...pairs].filter((p) => !p.upstream.connecting && !p.upstream.destroyed);
      for (const p of open) p.reset();
      return open.length;
    },
    close: () => new Promise((r) => { server.close(() => r()); for (const p of [...pairs]) p.reset(); }),
  };
  t.after(proxy.close);
  return proxy;
}

// ---------------------------------------------------------------------------------------------
// Clients. Each records, per channel, the ids of the events it received in arrival order (`got`), with no
// de-duplication, plus anything unexpected (`anomalies`). Payloads are `{ch, id, …}` with id = the idempotency id.

class ChaosClient extends Waitable {
  constructor(name, channels, proxy) {
    super();
    this.name = name;
    this.channels = channels;
    this.proxy = proxy;
    this.got = Object.fromEntries(channels.map((ch) => [ch, []]));
    this.uniq = Object.fromEntries(channels.map((ch) => [ch, new Set()]));
    this.offsets = Object.fromEntries(channels.map((ch) => [ch, []])); // offsets as sent, where the wire carries them
    this.anomalies = [];
    this.drops = {};
    this.stopped = false;
    this.timeline = [];
  }
  /** A timeline entry, shown around the first offending event when the run fails. */
  trace(text) {
    if (this.timeline.length < 20_000) this.timeline.push(`${String(Date.now() - EPOCH).padStart(6)} ms ${text}`);
  }
  record(ch, id, offset, note = '') {
    if (!(ch in this.got)) { this.anomaly(`event of a channel not subscribed: ${JSON.stringify({ ch, id })}`); return; }
    this.trace(`event ${ch} ${id}${note}`);
    this.got[ch].push(id);
    this.uniq[ch].add(id);
    if (offset !== undefined) this.offsets[ch].push({ id, offset });
    this._check();
  }
  anomaly(text) { if (this.anomalies.length < 50) this.anomalies.push(text); this._check(); }
  has(ch, id) { return this.uniq[ch].has(id); }
  summary() {
    return `${this.name}: ${this.channels.map((ch) => `${ch}=${this.got[ch].length}`).join(' ')} live=${this.live} `
      + `anomalies=${JSON.stringify(this.anomalies.slice(0, 3))}`;
  }
  countDrop(how) { this.drops[how] = (this.drops[how] ?? 0) + 1; this.trace(`drop: ${how}`); }
  /** Timeline lines around the arrivals of one event id on one channel. */
  around(ch, id, context = 6, after = context) {
    const needle = `event ${ch} ${id}`;
    const hits = this.timeline.map((l, i) => (l.endsWith(needle) || l.includes(`${needle} `) ? i : -1)).filter((i) => i >= 0);
    if (hits.length === 0) return [];
    const from = Math.max(0, hits[0] - context);
    const to = Math.min(this.timeline.length, hits.at(-1) + after + 1);
    const lines = this.timeline.slice(from, to);
    return lines.length > 2 * (context + after) + 20 ? [...lines.slice(0, context + 12), '…', ...lines.slice(-after - 12)] : lines;
  }
}

/** The stock socket.io-client, connection state recovery as in 05_resume. */
class SioClient extends ChaosClient {
  constructor(name, channels, proxy, transports) {
    super(name, channels, proxy);
    this.family = 'socket.io';
    this.kind = `socket.io(${transports ? transports.join('+') : 'polling→websocket'})`;
    this.connects = 0;
    this.notRecovered = 0;
    this.disconnectReasons = {};
    this.socket = io(proxy.url, {
      forceNew: true,
      reconnectionDelay: 50,
      reconnectionDelayMax: 250,
      ...(transports ? { transports } : {}),
    });
    this.socket.onAny((event, data, cursor) => {
      if (event !== 'tick') { this.anomaly(`${event} ${JSON.stringify(data)}`); return; }
      if (typeof cursor !== 'string') this.anomaly(`tick without a cursor argument: ${JSON.stringify(data)}`);
      this.record(data?.ch, data?.id, undefined, ` cursor=${cursor}`);
    });
    // Engine-level timeline: attached as soon as the Manager has created an engine, before its handshake completes,
    // so the CONNECT it sends is seen too.
    const watched = new WeakSet();
    const watch = () => {
      const engine = this.socket.io.engine;
      if (!engine || watched.has(engine)) return;
      watched.add(engine);
      // engine.id is set by the handshake and cleared before 'close': remember it.
      let id = null;
      engine.on('handshake', (hs) => { id = hs.sid; });
      const name = () => engine.id ?? id ?? '(handshaking)';
      engine.on('open', () => this.trace(`engine open ${name()} (${engine.transport?.name}), resuming from ${this.socket._lastOffset}`));
      engine.on('upgrading', (tr) => this.trace(`engine ${name()} upgrading to ${tr.name}`));
      engine.on('upgrade', (tr) => this.trace(`engine ${name()} upgraded to ${tr.name}`));
      engine.on('upgradeError', (e) => this.trace(`engine ${name()} upgrade error ${e.message}`));
      engine.on('close', (reason) => this.trace(`engine ${name()} close: ${reason}`));
      // Socket.IO CONNECT / DISCONNECT / CONNECT_ERROR packets, both ways.
      const control = (dir) => (p) => {
        if (p.type === 'message' && typeof p.data === 'string' && /^[014]/.test(p.data)) {
          this.trace(`engine ${name()} ${dir} ${p.data.slice(0, 120)}`);
        }
      };
      engine.on('packetCreate', control('sent'));
      engine.on('packet', control('received'));
    };
    watch();
    this.socket.io.on('reconnect_attempt', () => setImmediate(watch));
    this.socket.on('connect', () => {
      this.connects++;
      this.trace(`connect recovered=${this.socket.recovered} id=${this.socket.id}`);
      if (this.connects > 1 && this.socket.recovered !== true) {
        this.notRecovered++;
        this.anomaly(`reconnect #${this.connects - 1}: socket.recovered = ${this.socket.recovered}`);
      }
      this._check();
    });
    this.socket.on('disconnect', (reason) => {
      this.trace(`disconnect: ${reason}`);
      this.disconnectReasons[reason] = (this.disconnectReasons[reason] ?? 0) + 1;
      // After a namespace DISCONNECT the stock client does not reconnect: the server must only close transports.
      if (reason === 'io server disconnect') this.anomaly('namespace DISCONNECT from the server');
    });
    this.socket.on('connect_error', (e) => {
      // A CONNECT_ERROR packet (e.data set) ends the socket for good; transport errors are retried by the Manager.
      if (e.data !== undefined) this.anomaly(`connect_error from the server: ${e.message} ${JSON.stringify(e.data)}`);
    });
  }
  get live() { return this.socket.connected; }
  summary() {
    const e = this.socket.io.engine;
    return `${super.summary()} engine=${e?.id} ${e?.readyState} ${e?.transport?.name} upgrading=${e?.upgrading} `
      + `writeBuffer=${e?.writeBuffer?.length}`;
  }
  async start() {
    await this.until((c) => c.live, 10_000, `${this.name} connected`);
    for (const channel of this.channels) {
      const ack = await withTimeout(this.socket.emitWithAck('subscribe', { channel }), 10_000, `${this.name} subscribe ${channel}`);
      assert.equal(ack?.ok, true, `${this.name} subscribe ${channel}: ${JSON.stringify(ack)}`);
    }
  }
  /** Drop the transport one of three ways (chosen by r in [0, 1)); resolves true if something was dropped. */
  async drop(r, h) {
    if (!this.live) return false;
    const how = pickBy(r, ['engine.close', 'server disconnect', 'tcp reset']);
    if (how === 'engine.close') {
      this.socket.io.engine.close();
    } else if (how === 'server disconnect') {
      try {
        const res = await request(h.url, `/api/connections/${encodeURIComponent(this.socket.id)}/disconnect`,
          { method: 'POST', timeout: 3000 });
        if (res.status !== 200) return false; // e.g. 404: the client was reconnecting meanwhile
      } catch { return false; } // Herald is being restarted
    } else if (this.proxy.reset() === 0) {
      return false;
    }
    this.countDrop(how);
    return true;
  }
  stop() { this.stopped = true; this.socket.disconnect(); }
}

/** Herald's JSON protocol on `/ws`, resuming each channel with the (epoch, offset) of the last event it processed. */
class PlainWsClient extends ChaosClient {
  constructor(name, channels, proxy, rng, perMessageDeflate) {
    super(name, channels, proxy);
    this.family = '/ws';
    this.kind = `/ws${perMessageDeflate ? ' (deflate)' : ''}`;
    this.rng = rng;
    this.perMessageDeflate = perMessageDeflate;
    this.cursor = {}; // channel → {epoch, offset}
    this.gen = 0;
    this.opens = 0;
    this.subscribed = 0;
    this.url = `${proxy.url.replace(/^http/, 'ws')}/ws`;
  }
  get live() { return this.ws?.readyState === WebSocket.OPEN; }
  async start() {
    this.connect();
    await this.until((c) => c.subscribed >= c.channels.length, 10_000, `${this.name} subscribed`);
  }
  connect() {
    if (this.stopped) return;
    const gen = ++this.gen;
    const ws = new WebSocket(this.url, { perMessageDeflate: this.perMessageDeflate });
    this.ws = ws;
    ws.on('open', () => {
      this.opens++;
      this.trace(`open #${gen}, resuming from ${JSON.stringify(this.cursor)}`);
      for (const channel of this.channels) {
        const cur = this.cursor[channel];
        // since 0 before any event: nothing published between subscribing and the first event can be missed.
        ws.send(JSON.stringify({ op: 'subscribe', id: `${channel}#${gen}`, channel, since: cur?.offset ?? 0, ...(cur ? { epoch: cur.epoch } : {}) }));
      }
    });
    ws.on('message', (raw) => {
      if (gen !== this.gen) return; // a replaced connection: its cursor position is re-requested by the new one
      let m;
      try { m = JSON.parse(raw.toString('utf8')); } catch { this.anomaly(`unparsable message ${raw}`); return; }
      if (m.type === 'event') {
        if (m.data?.ch !== m.channel || m.data?.id !== m.id) this.anomaly(`envelope/payload mismatch ${JSON.stringify(m)}`);
        this.cursor[m.channel] = { epoch: m.epoch, offset: m.offset };
        this.record(m.channel, m.id, m.offset, ` @${m.offset} #${gen}`);
      } else if (m.type === 'subscribed') {
        this.subscribed++;
        this._check();
      } else if (m.type !== 'heartbeat' && m.type !== 'pong') {
        this.anomaly(`${m.type} ${JSON.stringify(m)}`);
      }
    });
    ws.on('error', () => {}); // followed by 'close'
    ws.on('close', (code) => {
      this.trace(`close #${gen} ${code}`);
      if (gen !== this.gen || this.stopped) return;
      setTimeout(() => this.connect(), 20 + int(this.rng, 80)); // reconnect backoff
    });
  }
  async drop(r) {
    if (!this.live) return false;
    const how = pickBy(r, ['close', 'terminate', 'tcp reset']);
    if (how === 'close') this.ws.close(1000);
    else if (how === 'terminate') this.ws.terminate();
    else if (this.proxy.reset() === 0) return false;
    this.countDrop(how);
    return true;
  }
  stop() { this.stopped = true; this.ws?.terminate(); }
}

/** `/sse?channel=…` with the `eventsource` package; reconnects send Last-Event-ID (its own, or ours after a reopen). */
class SseChaosClient extends ChaosClient {
  constructor(name, channels, proxy, rng) {
    super(name, channels, proxy);
    this.family = '/sse';
    this.kind = '/sse';
    this.rng = rng;
    this.lastEventId = '';
    this.gen = 0;
    this.opens = 0;
    this.requests = 0;
    this.gaveUp = [];
    this.url = `${proxy.url}/sse?${channels.map((c) => `channel=${encodeURIComponent(c)}`).join('&')}`;
  }
  get live() { return this.es?.readyState === EventSource.OPEN; }
  async start() {
    this.open();
    await this.until((c) => c.opens >= 1, 10_000, `${this.name} open`);
  }
  open() {
    if (this.stopped) return;
    const gen = ++this.gen;
    const es = new EventSource(this.url, {
      fetch: (input, init) => {
        this.requests++;
        const headers = { ...init.headers };
        // A new EventSource knows no id yet: resume it from the last one this client processed.
        if (!headers['Last-Event-ID'] && this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
        this.trace(`request #${gen} Last-Event-ID ${headers['Last-Event-ID']}`);
        return fetch(input, { ...init, headers });
      },
    });
    this.es = es;
    es.addEventListener('open', () => { this.trace(`open #${gen}`); if (gen === this.gen) { this.opens++; this._check(); } });
    es.addEventListener('tick', (e) => {
      if (gen !== this.gen) return;
      let data;
      try { data = JSON.parse(e.data); } catch { this.anomaly(`unparsable data ${e.data}`); return; }
      this.lastEventId = e.lastEventId;
      this.record(data.ch, data.id, undefined, ` id=${e.lastEventId} #${gen}`);
    });
    for (const name of ['herald:gap', 'herald:disconnect', 'message']) {
      es.addEventListener(name, (e) => { if (gen === this.gen) this.anomaly(`${name} ${e.data}`); });
    }
    es.addEventListener('error', (e) => {
      if (gen !== this.gen || this.stopped || es.readyState !== EventSource.CLOSED) return;
      // The package gives up on a non-200 answer; an application would open a new one, as we do.
      this.gaveUp.push(`${e.code ?? ''} ${e.message ?? ''}`.trim());
      setTimeout(() => this.open(), 50 + int(this.rng, 100));
    });
  }
  async drop(r) {
    if (!this.live) return false;
    const how = pickBy(r, ['close + reopen', 'tcp reset']);
    if (how === 'close + reopen') {
      this.es.close();
      setTimeout(() => this.open(), 20 + int(this.rng, 80));
    } else if (this.proxy.reset() === 0) {
      return false;
    }
    this.countDrop(how);
    return true;
  }
  stop() { this.stopped = true; this.es?.close(); }
}

// ---------------------------------------------------------------------------------------------
// Producers

/** POST /api/publish with `body`, retrying the same body on connection errors and 5xx (as publishRetry). */
async function publishBodyRetry(getUrl, body, { deadlineMs = 30_000 } = {}) {
  const deadline = Date.now() + deadlineMs;
  let last;
  for (let attempts = 1; ; attempts++) {
    let r;
    try {
      r = await request(getUrl(), '/api/publish', { method: 'POST', body, timeout: 5000 });
    } catch (e) {
      last = e.cause?.code ?? e.message;
    }
    if (r?.status === 200) return { results: r.json.results, attempts };
    if (r) {
      last = `${r.status} ${r.text}`;
      if (r.status < 500) throw new Error(`publish rejected: ${last} (body ${JSON.stringify(body).slice(0, 300)})`);
    }
    if (Date.now() > deadline) throw new Error(`publish not acknowledged within ${deadlineMs} ms (last: ${last})`);
    await pause(25); // retry backoff
  }
}

/** Publishes until `state.stop`: single events (60 %) and batches of 2–5 events over random channels. */
async function producer(p, rng, h, channels, log, state) {
  for (let n = 1; !state.stop; n++) {
    const events = [];
    const count = rng() < 0.6 ? 1 : 2 + int(rng, 4);
    for (let i = 0; i < count; i++) {
      const ch = pick(rng, channels);
      const id = `p${p}-${n}${count > 1 ? `.${i}` : ''}`;
      events.push({ channel: ch, event: 'tick', id, data: { ch, id, pad: 'x'.repeat(int(rng, 300)) } });
    }
    const body = count === 1 ? events[0] : { events };
    const { results, attempts } = await publishBodyRetry(() => h.url, body);
    log.publishes++;
    if (attempts > 1) log.retried++;
    if (!Array.isArray(results) || results.length !== events.length) {
      log.problems.push(`${JSON.stringify(events.map((e) => e.id))}: ${results?.length} results for ${events.length} events`);
      continue;
    }
    const dups = results.filter((r) => r.duplicate === true).length;
    // A retried batch is either wholly new (the failed attempt wrote nothing) or wholly a duplicate (it was
    // committed, the answer was lost); a mix means part of the batch had been committed: a partial batch.
    if (dups !== 0 && dups !== results.length) {
      log.partial.push(`${events.map((e) => e.id).join(',')}: ${dups} of ${results.length} duplicate after ${attempts} attempts`);
    }
    if (dups > 0 && attempts === 1) log.problems.push(`first attempt of ${events[0].id} reported duplicate: ${JSON.stringify(results)}`);
    if (dups === results.length && attempts > 1) log.committedBeforeFailure++;
    results.forEach((r, i) => {
      const e = events[i];
      if (r.channel !== e.channel || r.id !== e.id || !Number.isInteger(r.offset)) {
        log.problems.push(`result ${i} of ${e.id}: ${JSON.stringify(r)} for ${e.channel}`);
        return;
      }
      log.acked.set(`${e.channel}\u0000${e.id}`, r.offset);
      log.epochs[e.channel] ??= new Set();
      log.epochs[e.channel].add(r.epoch);
    });
    log.events += events.length;
    await pause(5 + int(rng, 20)); // pacing: a steady rate, not synchronisation
  }
}

// ---------------------------------------------------------------------------------------------
// Comparison

/** Missing/duplicated/reordered/unknown for one client's arrival list against the channel's history order. */
function compare(expected, offsetOf, got) {
  const seen = new Set();
  const duplicated = [];
  const reordered = [];
  const unknown = [];
  let highest = 0;
  for (const id of got) {
    const off = offsetOf.get(id);
    if (off === undefined) { unknown.push(id); continue; }
    if (seen.has(id)) { duplicated.push(off); continue; }
    seen.add(id);
    if (off < highest) reordered.push(off); else highest = off;
  }
  const missing = expected.filter((e) => !seen.has(e.id)).map((e) => e.offset);
  return { missing, duplicated, reordered, unknown };
}

const firstFew = (arr) => `${JSON.stringify(arr.slice(0, 8))}${arr.length > 8 ? '…' : ''}`;

test(`chaos: producers, Socket.IO/ws/SSE clients, random drops and ${KILLS} kill -9 restarts → every acknowledged event exactly once, in order`, async (t) => {
  const started = Date.now();
  const replay = `seed ${SEED} (replay the schedule with HERALD_CHAOS_SEED=${SEED})`;
  t.diagnostic(`chaos ${replay}, chaos phase ${CHAOS_MS} ms`);
  // Every client and producer shares 127.0.0.1 and all reconnect at once after a kill: the per-address connection
  // rate limit would refuse them (a refused stock Socket.IO client does not retry), which is not what this tests.
  // A short heartbeat: when the probe WebSocket of an upgrade dies after its pong, engine.io-client 6.6.8 leaves
  // its polling transport paused for good (`_probe`: the pause callback returns once the probe has failed, and
  // `upgrading` stays true) and only its ping timeout (ping_interval + ping_timeout) ends that deaf connection.
  const h = await startHerald(t, {
    config: `
[history]
max_events = 100000
[socketio]
ping_interval = "1s"
ping_timeout = "2s"
[sse]
retry = "100ms"
[limits]
connections_per_second_per_ip = 0
`,
  });

  const channels = Array.from({ length: CHANNELS }, (_, i) => chan(`chaos${i}`));
  const setup = stream(0);
  const clients = [];
  const channelsFor = () => subset(setup, channels, 1 + int(setup, CHANNELS));
  const specs = [
    ['sio-ws-1', (n, chs, px) => new SioClient(n, chs, px, ['websocket'])],
    ['sio-ws-2', (n, chs, px) => new SioClient(n, chs, px, ['websocket'])],
    ['sio-poll-1', (n, chs, px) => new SioClient(n, chs, px, ['polling'])],
    ['sio-poll-2', (n, chs, px) => new SioClient(n, chs, px, ['polling'])],
    ['sio-upgrade', (n, chs, px) => new SioClient(n, chs, px, undefined)],
    ['ws-1', (n, chs, px, k) => new PlainWsClient(n, chs, px, stream(100 + k), false)],
    ['ws-2', (n, chs, px, k) => new PlainWsClient(n, chs, px, stream(100 + k), true)],
    ['ws-3', (n, chs, px, k) => new PlainWsClient(n, chs, px, stream(100 + k), setup() < 0.5)],
    ['sse-1', (n, chs, px, k) => new SseChaosClient(n, chs, px, stream(100 + k))],
    ['sse-2', (n, chs, px, k) => new SseChaosClient(n, chs, px, stream(100 + k))],
    ['sse-3', (n, chs, px, k) => new SseChaosClient(n, chs, px, stream(100 + k))],
  ];
  for (const [k, [name, make]] of specs.entries()) {
    const proxy = await resetProxy(t, h.port);
    const c = make(name, channelsFor(), proxy, k);
    t.after(() => c.stop());
    clients.push(c);
  }
  await Promise.all(clients.map((c) => c.start()));

  // One event per channel that every client must hold before the chaos: the stock Socket.IO client can only resume
  // once it has a cursor, and an EventSource only once it has a last event id.
  for (const ch of channels) await publishRetry(() => h.url, ch, 'tick', { ch, id: `warm-${ch}` }, `warm-${ch}`);
  await Promise.all(clients.map((c) => c.until((x) => x.channels.every((ch) => x.has(ch, `warm-${ch}`)), 10_000,
    `${c.name}: the warm-up event of each of its channels`)));

  // The schedule, drawn up front so a seed replays it: drops every 20–70 ms on a random client (a drop is skipped if
  // that client is reconnecting), and KILLS kill -9 + restarts spread over the phase.
  const sched = stream(1);
  const schedule = [];
  for (let at = 0; (at += 20 + int(sched, 50)) < CHAOS_MS;) schedule.push({ at, client: int(sched, clients.length), how: sched() });
  for (let k = 0; k < KILLS; k++) schedule.push({ at: Math.round((CHAOS_MS * (k + 0.35 + 0.3 * sched())) / KILLS), kill: true });
  schedule.sort((a, b) => a.at - b.at);

  const log = {
    publishes: 0, events: 0, retried: 0, committedBeforeFailure: 0,
    acked: new Map(), epochs: {}, partial: [], problems: [],
  };
  const state = { stop: false };
  const producers = Array.from({ length: PRODUCERS }, (_, p) => producer(p + 1, stream(10 + p), h, channels, log, state));
  producers.forEach((pr) => pr.catch(() => {})); // awaited below; a failure there must not surface as unhandled

  let kills = 0;
  let restarting = null;
  let dropAttempts = 0;
  const dropped = [];
  const t0 = Date.now();
  for (const a of schedule) {
    const wait = t0 + a.at - Date.now();
    if (wait > 0) await pause(wait); // the schedule's clock, not synchronisation
    if (a.kill) {
      if (restarting) continue;
      restarting = (async () => {
        for (const c of clients) c.trace('── kill -9');
        await h.kill9();
        await h.restart();
        for (const c of clients) c.trace('── restarted');
        kills++;
      })().finally(() => { restarting = null; });
      continue;
    }
    dropAttempts++;
    dropped.push(clients[a.client].drop(a.how, h));
  }
  await restarting;
  const drops = (await Promise.all(dropped)).filter(Boolean).length;
  state.stop = true;
  await Promise.all(producers).catch((e) => { throw new Error(`producer failed, ${replay}: ${e.message}`); });
  const chaosEnded = Date.now();

  // A last event per channel: once a client holds it, everything sent to it before has arrived.
  for (const ch of channels) await publishRetry(() => h.url, ch, 'tick', { ch, id: `fin-${ch}` }, `fin-${ch}`);
  let settled = true;
  const stuck = [];
  let slowest = '';
  await Promise.all(clients.map((c) => c.until((x) => x.channels.every((ch) => x.has(ch, `fin-${ch}`)), SETTLE_MS,
    `${c.name}: the last event of each of its channels`)
    .then(() => { slowest = c.name; }, () => { settled = false; stuck.push(c.summary()); })));
  const settledAt = Date.now();
  await h.assertHealthy();

  // History: gapless, every id once, every acknowledged event at its acknowledged offset, nothing unacknowledged.
  const failures = [];
  const hist = {};
  for (const ch of channels) {
    const hh = await fullHistory(h.url, ch);
    const events = hh.events.map((e) => ({ id: e.id, offset: e.offset }));
    hist[ch] = { events, offsetOf: new Map(events.map((e) => [e.id, e.offset])) };
    const ids = new Set();
    events.forEach((e, i) => {
      if (e.offset !== i + 1) failures.push(`history ${ch}: offset ${e.offset} at position ${i + 1} (not gapless from 1)`);
      if (ids.has(e.id)) failures.push(`history ${ch}: id ${e.id} stored twice (offset ${e.offset})`);
      ids.add(e.id);
      const acked = log.acked.get(`${ch}\u0000${e.id}`);
      const special = e.id === `warm-${ch}` || e.id === `fin-${ch}`;
      if (acked === undefined && !special) failures.push(`history ${ch}: offset ${e.offset} (${e.id}) was never acknowledged`);
      else if (acked !== undefined && acked !== e.offset) failures.push(`history ${ch}: ${e.id} at offset ${e.offset}, acknowledged as ${acked}`);
    });
    const epochs = [...(log.epochs[ch] ?? [])];
    if (epochs.length > 1 || (epochs.length === 1 && epochs[0] !== hh.epoch)) {
      failures.push(`${ch}: epochs acknowledged ${JSON.stringify(epochs)}, history epoch ${hh.epoch} (kill -9 must not change it)`);
    }
  }
  for (const [key, offset] of log.acked) {
    const [ch, id] = key.split('\u0000');
    if (!hist[ch].offsetOf.has(id)) failures.push(`acknowledged ${ch} ${id} (offset ${offset}) is not in the history`);
  }
  for (const p of log.partial) failures.push(`partial batch: ${p}`);
  for (const p of log.problems) failures.push(`publish: ${p}`);

  // Per client per channel.
  const table = [];
  const timelines = [];
  for (const c of clients) {
    for (const ch of c.channels) {
      const r = compare(hist[ch].events, hist[ch].offsetOf, c.got[ch]);
      const wrongOffset = c.offsets[ch].filter((x) => hist[ch].offsetOf.has(x.id) && hist[ch].offsetOf.get(x.id) !== x.offset);
      table.push(`${c.name} ${ch}: ${c.got[ch].length} received / ${hist[ch].events.length}`);
      const bad = Object.entries(r).filter(([, v]) => v.length > 0);
      if (wrongOffset.length) bad.push(['wrong offset', wrongOffset.map((x) => `${x.id}@${x.offset}`)]);
      if (bad.length) {
        failures.push(`${c.name} (${c.kind}) ${ch}: ${bad.map(([k, v]) => `${k} ${v.length} (first ${firstFew(v)})`).join('; ')}`);
        // The client's timeline around the first duplicated/reordered event, or the last event before the first missing one.
        let first = r.duplicated[0] ?? r.reordered[0];
        let what = 'around offset';
        let after = 6;
        const before = 20;
        if (first === undefined && r.missing.length) {
          what = `first missing offset ${r.missing[0]}; after the event before it, offset`;
          after = 30;
          first = hist[ch].events.slice(0, r.missing[0] - 1).reverse().find((e) => c.has(ch, e.id))?.offset;
        }
        if (first !== undefined && timelines.length < 3) {
          timelines.push(`${c.name} ${ch}, ${what} ${first}:\n  ${c.around(ch, hist[ch].events[first - 1].id, before, after).join('\n  ')}`);
        }
      }
    }
    for (const a of c.anomalies) failures.push(`${c.name} (${c.kind}): ${a}`);
  }

  const perKind = {};
  for (const c of clients) {
    for (const [how, n] of Object.entries(c.drops)) perKind[`${c.family} ${how}`] = (perKind[`${c.family} ${how}`] ?? 0) + n;
  }
  const sio = clients.filter((c) => c instanceof SioClient);
  t.diagnostic(`${replay}: ${log.events} events in ${log.publishes} publishes (${log.retried} retried, `
    + `${log.committedBeforeFailure} of them committed before the failure), ${drops} drops of ${dropAttempts} attempts `
    + `${JSON.stringify(perKind)}, ${kills} kill -9 restarts; set-up ${t0 - started} ms, chaos ${chaosEnded - t0} ms, caught up ${settledAt - chaosEnded} ms later (last: ${slowest}), `
    + `total ${Date.now() - started} ms`);
  t.diagnostic(`reconnects: ${clients.map((c) => `${c.name}=${c instanceof SioClient ? c.connects - 1 : c.opens - 1}`).join(' ')}; `
    + `socket.io disconnect reasons ${JSON.stringify(sio.map((c) => c.disconnectReasons))}; `
    + `SSE gave up ${JSON.stringify(clients.filter((c) => c.gaveUp?.length).map((c) => [c.name, c.gaveUp.slice(0, 3)]))}`);

  assert.deepEqual(failures, [], `chaos run, ${replay}: ${failures.length} problem(s)${settled ? '' : ` (never caught up: ${stuck.join('; ')})`}:\n`
    + `${failures.slice(0, 40).join('\n')}\nper client: ${table.join(', ')}\n${timelines.join('\n')}`
    + `\nherald warnings (last 20):\n${h.stderr().split('\n').filter((l) => /WARN|ERROR/.test(l)).slice(-20).join('\n')}`);
  // Preconditions: the chaos really happened.
  assert.equal(kills, KILLS, `${KILLS} kill -9 restarts happened (${replay})`);
  assert.ok(drops >= dropAttempts / 4, `at least a quarter of the ${dropAttempts} scheduled drops hit a live transport: ${drops} (${replay})`);
  assert.ok(log.retried > 0, `some publishes had to be retried across a kill (${replay})`);
});
