// Helpers for Herald's plain WebSocket (`/ws`, `/ws/{channel}`) and Server-Sent Events (`/sse`) transports.
// Everything here records what arrives and lets a test await a condition on it; timeouts are failure guards only.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { withTimeout, Waitable } from './herald.js';

/** ws://127.0.0.1:PORT for a started herald. */
export const wsBase = (h) => h.url.replace(/^http/, 'ws');

/** `/ws/…` or `/sse/…` path for a channel: one percent-encoded segment (a `:` inside is encoded as %3A). */
export const directPath = (prefix, channel) => `${prefix}/${encodeURIComponent(channel)}`;

export class WsClient extends Waitable {
  constructor(t, url, opts = {}) {
    super();
    this.url = url;
    this.messages = [];
    this.raw = [];
    this.binary = [];
    this.pings = [];
    this.closeInfo = null;
    this.seq = 0;
    this.ws = new WebSocket(url, opts);
    this.ws.on('error', (e) => { this.error = e; this._check(); });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('unexpected-response', (req, res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => { text += d; });
        res.on('end', () => {
          let json;
          try { json = JSON.parse(text); } catch { json = undefined; }
          const err = new Error(`WebSocket upgrade of ${url} answered HTTP ${res.statusCode}: ${text}`);
          Object.assign(err, { status: res.statusCode, headers: res.headers, text, json });
          reject(err);
          this.ws.terminate();
        });
      });
      this.ws.once('error', reject);
      this.ws.once('close', () => reject(new Error(`closed before open: ${url}`)));
    });
    this.opened.catch(() => {});
    this.ws.on('message', (data, isBinary) => {
      if (isBinary) { this.binary.push(data); this._check(); return; }
      const text = data.toString('utf8');
      this.raw.push(text);
      let msg;
      try { msg = JSON.parse(text); } catch { msg = { unparsable: text }; }
      this.messages.push(msg);
      this._check();
    });
    this.ws.on('ping', () => { this.pings.push(Date.now()); this._check(); });
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8') };
        this._check();
        resolve(this.closeInfo);
      });
    });
    t.after(() => this.ws.terminate());
  }

  get isOpen() { return this.ws.readyState === WebSocket.OPEN; }
  /** Envelopes (`type: "event"`), optionally of one channel. */
  events(channel) { return this.messages.filter((m) => m?.type === 'event' && (channel === undefined || m.channel === channel)); }
  ofType(type) { return this.messages.filter((m) => m?.type === type); }
  summary() {
    const counts = {};
    for (const m of this.messages) counts[m?.type ?? 'untyped'] = (counts[m?.type ?? 'untyped'] ?? 0) + 1;
    const last = JSON.stringify(this.messages.slice(-3));
    return `${JSON.stringify(counts)} close=${JSON.stringify(this.closeInfo)} last=${last.length > 600 ? `${last.slice(0, 600)}…` : last}`;
  }

  send(msg) { this.ws.send(typeof msg === 'string' || Buffer.isBuffer(msg) ? msg : JSON.stringify(msg)); }

  /** The first message (past or future, from index `from`) matching pred. */
  async next(pred, ms = 10_000, label = 'a matching message', from = 0) {
    let found;
    await this.until((c) => (found = c.messages.slice(from).find(pred)) !== undefined, ms, label);
    return found;
  }

  /** Send `{op, id, ...fields}` and resolve with the reply carrying that id (any type but "event"). */
  async request(op, fields = {}, { id = `${op}-${++this.seq}`, ms = 10_000 } = {}) {
    const from = this.messages.length;
    this.send({ op, id, ...fields });
    return this.next((m) => m?.type !== 'event' && m?.id === id, ms, `reply to ${op} id=${JSON.stringify(id)}`, from);
  }

  /** subscribe + assert `{type:"subscribed", id, channel}`. */
  async subscribeOk(channel, extra = {}) {
    const r = await this.request('subscribe', { channel, ...extra });
    assert.equal(r.type, 'subscribed', `subscribe ${channel}: ${JSON.stringify(r)}`);
    assert.equal(r.channel, channel);
    assert.equal(typeof r.epoch, 'string', `subscribed.epoch: ${JSON.stringify(r)}`);
    assert.equal(typeof r.offset, 'number', `subscribed.offset: ${JSON.stringify(r)}`);
    return r;
  }

  /** A ping/pong round trip: everything the server queued before the pong has arrived. */
  async barrier() {
    const r = await this.request('ping');
    assert.equal(r.type, 'pong', `ping → ${JSON.stringify(r)}`);
    return r;
  }

  close(code = 1000) { this.ws.close(code); return this.closed; }
}

/** Open a WsClient and wait for the upgrade to complete. */
export async function openWs(t, url, opts = {}) {
  const c = new WsClient(t, url, opts);
  await withTimeout(c.opened, 10_000, `WebSocket open ${url}`);
  return c;
}

/** Attempt a WebSocket upgrade that must be refused; resolve with {status, headers, text, json}. */
export async function refusedUpgrade(t, url) {
  const c = new WsClient(t, url);
  try {
    await withTimeout(c.opened, 10_000, `WebSocket upgrade ${url}`);
  } catch (e) {
    if (e.status !== undefined) return { status: e.status, headers: e.headers, text: e.text, json: e.json };
    throw e;
  }
  c.ws.terminate();
  throw new Error(`WebSocket upgrade of ${url} was accepted; expected an HTTP error`);
}

// ---------------------------------------------------------------------------------------------
// SSE: a raw `fetch` reader that parses the stream itself, so tests see comments, retry and id lines.

/**
 * GET an SSE URL with fetch and parse the stream as it arrives.
 * Returns an SseStream: {status, headers, text/json (non-200), events: [{id, event, data, retry}], comments, retries, lines, ended}.
 */
export async function openSse(t, url, { headers = {}, pump = true } = {}) {
  const ac = new AbortController();
  t.after(() => ac.abort());
  const res = await withTimeout(fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: ac.signal }),
    10_000, `SSE response headers for ${url}`);
  const s = new SseStream(url, res, ac);
  if (res.status !== 200) {
    s.text = await withTimeout(res.text(), 10_000, `error body of ${url}`);
    try { s.json = JSON.parse(s.text); } catch { s.json = undefined; }
    s.ended = true;
  } else if (pump) {
    s._pump();
  } // else: the body is left unread (a client that stopped reading)
  return s;
}

export class SseStream extends Waitable {
  constructor(url, res, ac) {
    super();
    this.url = url;
    this.status = res.status;
    this.headers = res.headers;
    this.res = res;
    this.ac = ac;
    this.events = [];     // dispatched blocks: {id, event, data, retry, at}
    this.comments = [];   // {text, at}
    this.retries = [];    // values of retry: fields
    this.bare = [];       // field blocks without data (e.g. a lone retry:)
    this.lines = [];
    this.ended = false;
    this._block = null;
    this._buf = '';
  }
  summary() {
    return `${this.events.length} events (last ${JSON.stringify(this.events.slice(-2))}), ${this.comments.length} comments, `
      + `retries ${JSON.stringify(this.retries)}, ended=${this.ended}${this.error ? ` error=${this.error}` : ''}`;
  }
  named(name) { return this.events.filter((e) => e.event === name); }
  async _pump() {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of this.res.body) {
        this._feed(decoder.decode(chunk, { stream: true }));
      }
    } catch (e) {
      if (e.name !== 'AbortError') this.error = e.message;
    }
    this.ended = true;
    this._check();
  }
  _feed(text) {
    this._buf += text;
    let i;
    while ((i = this._buf.search(/\r\n|\n|\r(?!$)/)) >= 0) {
      const nl = this._buf.startsWith('\r\n', i) ? 2 : 1;
      const line = this._buf.slice(0, i);
      this._buf = this._buf.slice(i + nl);
      this._line(line);
    }
    this._check();
  }
  _line(line) {
    this.lines.push(line);
    if (line === '') {
      // Per the spec a block without data dispatches nothing (its id/retry still count); keep those apart.
      if (this._block) (this._block.data !== undefined ? this.events : this.bare).push({ ...this._block, at: Date.now() });
      this._block = null;
      return;
    }
    if (line.startsWith(':')) { this.comments.push({ text: line, at: Date.now() }); return; }
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? '' : line.slice(c + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'retry') { this.retries.push(value); }
    this._block ??= {};
    if (field === 'data') this._block.data = this._block.data === undefined ? value : `${this._block.data}\n${value}`;
    else this._block[field] = value;
  }
  close() { this.ac.abort(); }
}

/** Parse an SSE cursor `<epoch>:<offset>[,<epoch>:<offset>…]` into [{epoch, offset}]; asserts the format. */
export function parseCursor(cursor) {
  assert.equal(typeof cursor, 'string', `cursor should be a string: ${JSON.stringify(cursor)}`);
  return cursor.split(',').map((part) => {
    const m = /^([^:,\s]*):(\d+)$/.exec(part); // an empty epoch: a channel with no events yet
    assert.ok(m, `cursor part ${JSON.stringify(part)} of ${JSON.stringify(cursor)} is <epoch>:<offset>`);
    return { epoch: m[1], offset: Number(m[2]) };
  });
}

// ---------------------------------------------------------------------------------------------
// curl (for HTTP/2 prior knowledge)

export function curlHasHttp2() {
  return new Promise((resolve) => {
    const p = spawn('curl', ['-V'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.on('error', () => resolve(false));
    p.on('close', () => resolve(/^Features:.*\bHTTP2\b/m.test(out)));
  });
}

/**
 * Spawn curl; `output` accumulates stdout; `until(pred)` waits on it; `stop()` kills it.
 */
export function spawnCurl(t, args) {
  const p = spawn('curl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const c = new (class extends Waitable {
    summary() { return `stdout=${JSON.stringify(this.output.slice(-400))} stderr=${JSON.stringify(this.stderr)} exit=${this.exit}`; }
  })();
  c.output = '';
  c.stderr = '';
  c.exit = null;
  p.stdout.setEncoding('utf8');
  p.stderr.setEncoding('utf8');
  p.stdout.on('data', (d) => { c.output += d; c._check(); });
  p.stderr.on('data', (d) => { c.stderr += d; });
  c.exited = new Promise((resolve) => p.on('close', (code) => { c.exit = code; c._check(); resolve(code); }));
  c.stop = () => { if (c.exit === null) p.kill('SIGTERM'); return c.exited; };
  t.after(() => c.stop());
  return c;
}

// ---------------------------------------------------------------------------------------------
// A raw RFC 6455 client over a TCP socket, for frames the `ws` package will not send (unmasked, reserved bits,
// bad opcodes, hand-made fragmentation). Incoming server frames are parsed into `frames`: {fin, rsv1, opcode, payload}.
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export class RawWs extends Waitable {
  constructor(t, h, path, { extraHeaders = {} } = {}) {
    super();
    this.frames = [];
    this.buf = Buffer.alloc(0);
    this.ended = false;
    this.key = randomBytes(16).toString('base64');
    this.socket = net.connect(h.port, '127.0.0.1');
    this.socket.on('error', (e) => { this.error = e.message; this._check(); });
    this.socket.on('close', () => { this.ended = true; this._check(); });
    const headerLines = {
      Host: `127.0.0.1:${h.port}`, Upgrade: 'websocket', Connection: 'Upgrade',
      'Sec-WebSocket-Key': this.key, 'Sec-WebSocket-Version': '13', ...extraHeaders,
    };
    this.response = new Promise((resolve, reject) => {
      let head = Buffer.alloc(0);
      const onData = (d) => {
        if (this.status !== undefined) { this._feed(d); return; }
        head = Buffer.concat([head, d]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = head.subarray(0, end).toString('latin1').split('\r\n');
        this.status = Number(lines[0].split(' ')[1]);
        this.headers = Object.fromEntries(lines.slice(1).map((l) => {
          const i = l.indexOf(':');
          return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
        }));
        resolve({ status: this.status, headers: this.headers });
        this._feed(head.subarray(end + 4));
      };
      this.socket.on('data', onData);
      this.socket.on('close', () => reject(new Error(`raw socket closed before a response to ${path}`)));
    });
    this.response.catch(() => {});
    this.socket.write(`GET ${path} HTTP/1.1\r\n${Object.entries(headerLines).filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`);
    t.after(() => this.socket.destroy());
  }

  expectedAccept() { return createHash('sha1').update(this.key + WS_GUID).digest('base64'); }

  _feed(d) {
    if (d.length) this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) break;
      const b0 = this.buf[0];
      const b1 = this.buf[1];
      let len = b1 & 0x7f;
      let off = 2;
      if (len === 126) { if (this.buf.length < 4) break; len = this.buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (this.buf.length < 10) break; len = Number(this.buf.readBigUInt64BE(2)); off = 10; }
      const masked = (b1 & 0x80) !== 0;
      if (masked) off += 4;
      if (this.buf.length < off + len) break;
      const payload = Buffer.from(this.buf.subarray(off, off + len));
      this.frames.push({ fin: (b0 & 0x80) !== 0, rsv1: (b0 & 0x40) !== 0, rsv23: (b0 & 0x30) !== 0, opcode: b0 & 0x0f, masked, payload });
      this.buf = this.buf.subarray(off + len);
    }
    this._check();
  }

  /** Write one frame. */
  frame(opcode, payload = Buffer.alloc(0), { fin = true, rsv = 0, mask = true } = {}) {
    payload = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
    const len = payload.length;
    const head = [((fin ? 0x80 : 0) | (rsv << 4) | opcode)];
    const m = mask ? 0x80 : 0;
    if (len < 126) head.push(m | len);
    else if (len < 65536) head.push(m | 126, len >> 8, len & 0xff);
    else { head.push(m | 127); const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); head.push(...b); }
    let body = payload;
    const parts = [Buffer.from(head)];
    if (mask) {
      const key = randomBytes(4);
      body = Buffer.from(payload.map((x, i) => x ^ key[i & 3]));
      parts.push(key);
    }
    parts.push(body);
    this.socket.write(Buffer.concat(parts));
  }

  texts() { return this.frames.filter((f) => f.opcode === 1).map((f) => f.payload.toString('utf8')); }
  closeFrame() { return this.frames.find((f) => f.opcode === 8); }
  closeCode() { const f = this.closeFrame(); return f && f.payload.length >= 2 ? f.payload.readUInt16BE(0) : undefined; }
  summary() {
    return `status=${this.status} frames=${JSON.stringify(this.frames.map((f) => [f.opcode, f.payload.length > 80 ? `${f.payload.length}B` : f.payload.toString()]))} ended=${this.ended}`;
  }
}

/** Open a raw WebSocket and assert the 101 handshake. */
export async function openRawWs(t, h, path, opts) {
  const r = new RawWs(t, h, path, opts);
  const res = await withTimeout(r.response, 10_000, `raw upgrade of ${path}`);
  assert.equal(res.status, 101, `raw upgrade ${path} → ${res.status}`);
  return r;
}

/** Pipes `client` both ways to 127.0.0.1:`port`; both sockets are kept in `sockets` until either side ends. */
export function splice(client, port, sockets) {
  const upstream = net.connect(port, '127.0.0.1');
  sockets.add(client); sockets.add(upstream);
  const done = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
  client.on('error', done); upstream.on('error', done);
  client.on('close', done); upstream.on('close', done);
  client.pipe(upstream); upstream.pipe(client);
}

// ---------------------------------------------------------------------------------------------
// A TCP pass-through in front of Herald whose gate the test opens and closes: while closed, new connections are
// reset at once (a browser sees a failed connection and backs off). Used to hold a client off for a known stretch
// while Herald is back up and events are published, so a resume is certain to need a replay.

export async function gateProxy(t, port) {
  let open = true;
  const sockets = new Set();
  const rejectWaiters = [];
  const server = net.createServer((client) => {
    if (!open) { gate.rejected++; client.resetAndDestroy(); for (const w of rejectWaiters.splice(0)) w(); return; }
    splice(client, port, sockets);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }));
  const gate = {
    port: server.address().port,
    url: `http://127.0.0.1:${server.address().port}`,
    accepted: 0,
    rejected: 0,
    get isOpen() { return open; },
    close() { open = false; },
    open() { open = true; },
    /** Resolves once at least `n` connection attempts have been refused in total. */
    refused(n = 1, ms = 10_000) {
      const p = new Promise((resolve) => {
        const check = () => (gate.rejected >= n ? resolve() : rejectWaiters.push(check));
        check();
      });
      return withTimeout(p, ms, `${n} refused connection attempt(s) at the gate (so far ${gate.rejected})`);
    },
  };
  server.on('connection', () => { if (open) gate.accepted++; });
  return gate;
}
