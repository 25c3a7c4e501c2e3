// Helpers for driving the real `herald` binary from node:test.
//
// Nothing here builds anything: the binary is `target/debug/herald` relative to the repo
// root, or whatever `HERALD_BIN` points at.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const HERALD_BIN = process.env.HERALD_BIN
  ? resolve(process.env.HERALD_BIN)
  : join(REPO_ROOT, 'target/debug/herald');

/** The engine the suite runs against (`HERALD_TEST_ENGINE=memory` reruns it in memory; default SQLite). */
export const ENGINE = process.env.HERALD_TEST_ENGINE || 'sqlite';
/** `test()` options for a test that restarts Herald and expects its data back: skipped on the memory engine. */
export const DURABLE_ONLY = ENGINE === 'memory' ? { skip: 'restarts: the memory engine keeps nothing across them' } : {};

const LISTEN_RE = /^herald listening on (https?:\/\/127\.0\.0\.1:(\d+))\s*$/;
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;

/** Environment for child processes: no HERALD_* leaking in from the developer's shell. */
export function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HERALD_')) env[k] = v;
  return { ...env, ...extra };
}

/** Reject `promise` if it hasn't settled after `ms` (a failure guard, never a synchronisation sleep). */
export function withTimeout(promise, ms, label) {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

/** Resolve with the listener's arguments array the next time `emitter` emits `name`. */
export function waitFor(emitter, name, ms = 10_000, label = name) {
  let listener;
  const p = new Promise((resolve) => {
    listener = (...args) => resolve(args);
    emitter.once(name, listener);
  });
  const guarded = withTimeout(p, ms, `waiting for '${label}'`).finally(() => emitter.off?.(name, listener));
  // Often created before the action that triggers the event and awaited later: if the test fails in between,
  // don't let the guard's rejection surface as an unhandled rejection (awaiting it still throws).
  guarded.catch(() => {});
  return guarded;
}

/** Backoff pause between *retries* of a failed operation (never used to wait for an event). */
export const pause = (ms) => new Promise((r) => setTimeout(r, ms));

let instanceCounter = 0;

/**
 * Start `herald serve` with a fresh data dir and the given TOML config text.
 * `t` is the node:test context; the process is killed (SIGKILL) and the temp dir removed in t.after.
 * Returns { url, port, proc, dataDir, stderr(), stop(signal), kill9(), restart(), alive(), assertNoPanic() }.
 */
export async function startHerald(t, { config = '', args = [], env = {} } = {}) {
  if (!existsSync(HERALD_BIN)) {
    throw new Error(`herald binary not found at ${HERALD_BIN} (build it with \`cargo build\` or set HERALD_BIN)`);
  }
  const dir = mkdtempSync(join(tmpdir(), `herald-test-${process.pid}-${++instanceCounter}-`));
  const dataDir = join(dir, 'data');
  const configPath = join(dir, 'herald.toml');
  writeFileSync(configPath, config);

  const h = {
    url: null,
    port: 0,
    proc: null,
    dataDir,
    configPath,
    dir,
    starts: 0,
    stderrText: '',   // accumulated stderr of every run
    stdoutText: '',
    exits: [],        // {code, signal} for every process that has exited
  };

  const launch = async (listen) => {
    const proc = spawn(
      HERALD_BIN,
      ['serve', '--listen', listen, '--data-dir', dataDir, '--config', configPath,
        // A test that names its engine (the Redis nodes) keeps it whatever the suite's engine.
        ...(ENGINE === 'sqlite' || args.includes('--engine') ? [] : ['--engine', ENGINE]), ...args],
      { cwd: dir, env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    h.proc = proc;
    h.starts++;
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => { h.stderrText += d; });
    proc.exited = new Promise((resolveExit) => {
      proc.on('exit', (code, signal) => {
        h.exits.push({ code, signal });
        resolveExit({ code, signal });
      });
    });
    const rl = createInterface({ input: proc.stdout });
    const ready = new Promise((resolveReady, rejectReady) => {
      rl.on('line', (line) => {
        h.stdoutText += line + '\n';
        const m = LISTEN_RE.exec(line);
        if (m) resolveReady({ url: m[1], port: Number(m[2]) });
      });
      proc.on('error', rejectReady);
      proc.exited.then(({ code, signal }) =>
        rejectReady(new Error(`herald exited before listening (code ${code}, signal ${signal}); stderr:\n${tail(h.stderrText)}`)));
    });
    try {
      return await withTimeout(ready, START_TIMEOUT_MS, `herald to print its listening line; stderr:\n${tail(h.stderrText)}`);
    } catch (e) {
      proc.kill('SIGKILL');
      throw e;
    }
  };

  const started = await launch('127.0.0.1:0');
  h.url = started.url;
  h.port = started.port;

  h.alive = () => h.proc && h.proc.exitCode === null && h.proc.signalCode === null;
  h.stderr = () => h.stderrText;

  /** Send `signal` and wait for the process to exit (SIGKILL after a guard period). */
  h.stop = async (signal = 'SIGTERM') => {
    const proc = h.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return proc?.exited;
    proc.kill(signal);
    try {
      return await withTimeout(proc.exited, STOP_TIMEOUT_MS, `herald to exit after ${signal}`);
    } catch (e) {
      proc.kill('SIGKILL');
      await proc.exited;
      throw e;
    }
  };
  h.kill9 = () => h.stop('SIGKILL');

  /** Start again on the same data dir and (if it can be bound) the same port. */
  h.restart = async () => {
    if (h.alive()) throw new Error('restart() while herald is still running; stop it first');
    let lastErr;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const r = await launch(`127.0.0.1:${h.port}`);
        assert.equal(r.port, h.port, 'restarted herald should listen on the requested port');
        return h;
      } catch (e) {
        lastErr = e;
        await pause(200); // the port may be briefly unavailable; retry
      }
    }
    throw lastErr;
  };

  h.assertNoPanic = () => {
    assert.ok(!/panicked/.test(h.stderrText), `herald stderr contains a panic:\n${tail(h.stderrText)}`);
  };

  /** The process is running, did not panic, and /healthz answers. */
  h.assertHealthy = async () => {
    h.assertNoPanic();
    assert.ok(h.alive(), `herald process is not running (exits: ${JSON.stringify(h.exits)}); stderr:\n${tail(h.stderrText)}`);
    const r = await fetch(`${h.url}/healthz`, { signal: AbortSignal.timeout(5000) });
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { ok: true });
  };

  t.after(async () => {
    const proc = h.proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await proc.exited;
    }
    if (!process.env.HERALD_KEEP_TMP) rmSync(dir, { recursive: true, force: true });
    // Every test that starts a server also checks that it never panicked (a throw here fails the test).
    h.assertNoPanic();
  });

  return h;
}

export function tail(text, n = 40) {
  return text.split('\n').slice(-n).join('\n');
}

// ---------------------------------------------------------------------------------------------
// HTTP API helpers

/** Raw request; returns {status, headers, text, json}. */
export async function request(url, path, { method = 'GET', body, headers = {}, rawBody, timeout = 10_000 } = {}) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(timeout) };
  if (rawBody !== undefined) {
    init.body = rawBody;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(url + path, init);
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

/** Publish one event; asserts 200 and returns the single result {channel, offset, epoch, id}. */
export async function publish(url, channel, event, data, { id, headers } = {}) {
  const body = { channel, event, data };
  if (id !== undefined) body.id = id;
  const r = await request(url, '/api/publish', { method: 'POST', body, headers });
  assert.equal(r.status, 200, `publish ${channel}/${event} → ${r.status} ${r.text}`);
  assert.ok(Array.isArray(r.json?.results) && r.json.results.length === 1, `publish result shape: ${r.text}`);
  return r.json.results[0];
}

/**
 * Publish with an idempotency id, retrying (same id) until the server acknowledges it.
 * Used while the server is being restarted: connection errors and 5xx are retried until `deadlineMs`.
 */
export async function publishRetry(getUrl, channel, event, data, id, { deadlineMs = 20_000 } = {}) {
  const deadline = Date.now() + deadlineMs;
  let last;
  for (;;) {
    try {
      const r = await request(getUrl(), '/api/publish', { method: 'POST', body: { channel, event, data, id }, timeout: 5000 });
      if (r.status === 200) return r.json.results[0];
      last = `${r.status} ${r.text}`;
      if (r.status < 500) throw new Error(`publish ${channel} ${id} rejected: ${last}`);
    } catch (e) {
      if (e.message?.includes('rejected')) throw e;
      last = e.cause?.code ?? e.message;
    }
    if (Date.now() > deadline) throw new Error(`publish ${channel} ${id} not acknowledged within ${deadlineMs} ms (last: ${last})`);
    await pause(25); // retry backoff
  }
}

export async function history(url, channel, { since, limit, wait } = {}) {
  const q = new URLSearchParams();
  if (since !== undefined) q.set('since', String(since));
  if (limit !== undefined) q.set('limit', String(limit));
  if (wait !== undefined) q.set('wait', String(wait));
  const qs = q.toString();
  return request(url, `/api/channels/${encodeURIComponent(channel)}/history${qs ? '?' + qs : ''}`,
    { timeout: 10_000 + (wait ?? 0) * 1000 });
}

/** Every event of a channel (follows `limit` pages). Asserts 200. */
export async function fullHistory(url, channel) {
  const events = [];
  let since = 0;
  let first;
  for (;;) {
    const r = await history(url, channel, { since, limit: 1000 });
    assert.equal(r.status, 200, `history ${channel} → ${r.status} ${r.text}`);
    first ??= r.json;
    if (r.json.events.length === 0) break;
    events.push(...r.json.events);
    since = r.json.events.at(-1).offset;
    if (since >= r.json.last_offset) break;
  }
  return { ...first, events };
}

export function assertApiError(r, status, code, what = '') {
  assert.equal(r.status, status, `${what}: expected HTTP ${status}, got ${r.status} ${r.text}`);
  assert.equal(r.json?.error?.code, code, `${what}: expected error code ${code}, got ${r.text}`);
  assert.equal(typeof r.json.error.message, 'string', `${what}: error.message should be a string: ${r.text}`);
}

// ---------------------------------------------------------------------------------------------
// Socket.IO helpers (stock socket.io-client)

/** Create a client and register its cleanup; does not wait for 'connect'. */
export function client(t, url, opts = {}) {
  const socket = io(url, { forceNew: true, ...opts });
  t.after(() => socket.disconnect());
  return socket;
}

/** Create a client and wait for its first 'connect'. */
export async function connected(t, url, opts = {}) {
  const socket = client(t, url, opts);
  if (!socket.connected) {
    const err = new Promise((_, reject) => socket.once('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`))));
    await Promise.race([waitFor(socket, 'connect', 10_000), err]);
  }
  return socket;
}

export async function subscribe(socket, channel, extra = {}) {
  return withTimeout(socket.emitWithAck('subscribe', { channel, ...extra }), 10_000, `subscribe ack for ${channel}`);
}

/** subscribe + assert ok. */
export async function subscribeOk(socket, channel, extra = {}) {
  const ack = await subscribe(socket, channel, extra);
  assert.equal(ack?.ok, true, `subscribe ${channel} failed: ${JSON.stringify(ack)}`);
  assert.equal(ack.channel, channel);
  return ack;
}

/**
 * Records every event a socket receives (via onAny) and lets tests await conditions on them.
 * events: [{name, args}]
 */
/** Something that collects what arrives and lets a test await a condition on it (`summary()` explains a timeout). */
export class Waitable {
  constructor() { this.waiters = []; }
  _check() {
    this.waiters = this.waiters.filter((w) => {
      let ok = false;
      try { ok = w.pred(this); } catch (e) { w.reject(e); return false; }
      if (ok) w.resolve();
      return !ok;
    });
  }
  /** Resolve when pred(this) is true (re-checked on everything that arrives); reject after `ms`. */
  until(pred, ms = 10_000, label = 'condition') {
    if (pred(this)) return Promise.resolve();
    let w;
    const p = new Promise((resolve, reject) => { w = { pred, resolve, reject }; this.waiters.push(w); });
    return withTimeout(p, ms, `${label}; received so far: ${this.summary()}`)
      .finally(() => { this.waiters = this.waiters.filter((x) => x !== w); });
  }
}

export class Recorder extends Waitable {
  constructor(socket) {
    super();
    this.events = [];
    socket.onAny((name, ...args) => {
      this.events.push({ name, args });
      this._check();
    });
  }
  named(name) { return this.events.filter((e) => e.name === name); }
  summary() {
    const counts = {};
    for (const e of this.events) counts[e.name] = (counts[e.name] ?? 0) + 1;
    return JSON.stringify(counts);
  }
}

let uniq = 0;
/** A channel name unique within this process (servers are fresh per test anyway). */
export function chan(prefix = 'c') { return `${prefix}-${process.pid}-${++uniq}`; }

// ---------------------------------------------------------------------------------------------
// A transparent HTTP proxy that records requests, so a test can await "the CLI has made a request"
// instead of sleeping. Returns {url, log: [{method, path, status}], next(pred, ms)}.
// next()'s predicate sees each request twice: when it starts ({status: null, started: true}) and when its
// response has been fully relayed ({status}).
import http from 'node:http';

export async function spyProxy(t, targetUrl) {
  const target = new URL(targetUrl);
  const log = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const started = { method: req.method, path: req.url, status: null, started: true };
    for (const w of [...waiters]) if (w.pred(started)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(started); }
    const up = http.request({
      host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers,
    }, (upRes) => {
      res.writeHead(upRes.statusCode, upRes.headers);
      upRes.pipe(res);
      upRes.on('end', () => {
        const entry = { method: req.method, path: req.url, status: upRes.statusCode };
        log.push(entry);
        for (const w of [...waiters]) if (w.pred(entry)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(entry); }
      });
    });
    up.on('error', () => { res.destroy(); });
    req.pipe(up);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    log,
    /** Resolve with the first completed request (past or future) matching pred. */
    next(pred = () => true, ms = 10_000) {
      const found = log.find(pred);
      if (found) return Promise.resolve(found);
      return withTimeout(new Promise((resolve) => waiters.push({ pred, resolve })), ms,
        `a proxied request; seen: ${JSON.stringify(log)}`);
    },
  };
}
