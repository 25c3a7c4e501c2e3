// 37. Logs (README, "Operations"): `--log-format json` writes one JSON object per line; `--log-level` /
// `HERALD_LOG` take tracing's EnvFilter syntax (RUST_LOG still works without them); connection open/close and
// refusals are at `debug` with the connection's id, transport and address; and a flood of bad input — garbage on a
// `/ws` connection past its rate limit, requests to a proxied backend that is down — writes a bounded number of
// warnings, the rest counted into one line per kind (flushed every 10 s, and at shutdown).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { startHerald, connected, request, withTimeout } from '../lib/herald.js';
import { wsBase, openWs } from '../lib/plain.js';

const JSON_DEBUG = ['--log-format', 'json', '--log-level', 'debug'];

/** Every stderr line parsed as JSON (a line that is not JSON fails the test). */
function jsonLines(h) {
  return h.stderr().split('\n').filter((l) => l.trim() !== '').map((l) => {
    try { return JSON.parse(l); } catch { assert.fail(`a log line is not JSON: ${l}`); }
  });
}

/** Resolves with the first parsed line matching `pred`, re-checking as stderr grows. */
function logLine(h, pred, label, ms = 10_000) {
  return withTimeout(new Promise((resolve) => {
    const check = () => {
      const found = jsonLines(h).find(pred);
      if (!found) return;
      h.proc.stderr.off('data', check);
      resolve(found);
    };
    h.proc.stderr.on('data', check);
    check();
  }), ms, `${label}; stderr tail:\n${h.stderr().split('\n').slice(-6).join('\n')}`);
}

test('--log-format json --log-level debug: connection open/close of Socket.IO and /ws clients and their refusals are parseable JSON lines with id, transport and address', async (t) => {
  const h = await startHerald(t, { args: JSON_DEBUG });
  const started = await logLine(h, (l) => l.message === 'herald started', 'the start line');
  assert.equal(started.level, 'INFO');
  assert.equal(started.target, 'herald');
  assert.equal(typeof started.timestamp, 'string');

  const socket = await connected(t, h.url, { query: { userId: 'demoUser7', role: 'reader' } });
  const id = socket.id;
  const opened = await logLine(h, (l) => l.message === 'connection opened' && l.conn === id, 'Socket.IO open');
  assert.equal(opened.level, 'DEBUG');
  assert.equal(opened.transport, 'socketio');
  assert.match(opened.address, /^127\.0\.0\.1:\d+$/);
  const ack = await socket.emitWithAck('subscribe', { channel: 'herald:secret' });
  assert.equal(ack.error.code, 'reserved_channel');
  const refused = await logLine(h, (l) => l.message === 'refused' && l.code === 'reserved_channel', 'the refusal');
  assert.equal(refused.level, 'DEBUG');
  assert.equal(refused.wire, 'socketio ack');
  assert.equal(refused.reason, ack.error.message);
  socket.disconnect();
  const closed = await logLine(h, (l) => l.message === 'connection closed' && l.conn === id, 'Socket.IO close');
  assert.equal(closed.transport, 'socketio');
  assert.equal(closed.address, opened.address);

  const ws = await openWs(t, `${wsBase(h)}/ws`);
  const wsOpened = await logLine(h, (l) => l.message === 'connection opened' && l.transport === 'websocket', '/ws open');
  assert.match(wsOpened.conn, /^websocket-\d+$/);
  await ws.close();
  await logLine(h, (l) => l.message === 'connection closed' && l.conn === wsOpened.conn, '/ws close');
  jsonLines(h); // every line so far parses
});

test('a flood of bad input writes a bounded number of warnings; the rest are counted, and the count is logged at shutdown', async (t) => {
  // A backend that is down, behind a proxy prefix.
  const s = http.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  const config = `[limits]\nmessages_per_second = 5\n[[proxy]]\npath = "/books"\nupstream = "http://127.0.0.1:${port}"\n`;
  const h = await startHerald(t, { config, args: ['--log-format', 'json'] });
  await logLine(h, (l) => l.message === 'herald started', 'the start line');
  const warnings = () => jsonLines(h).filter((l) => l.level === 'WARN');
  const before = warnings().length;

  // 500 unparsable messages on one /ws connection: each is refused, almost all by the rate limit.
  const N = 500;
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  for (let i = 0; i < N; i++) ws.send('{not json');
  await ws.until(() => ws.messages.some((m) => m.type === 'error'), 10_000, 'a refusal');
  // Messages are handled in order: the answer to a later ping (a pong, or its rate_limited error) means all were.
  await ws.request('ping', {}, { ms: 20_000 });
  // 200 requests to the proxy whose backend is down.
  const M = 200;
  for (let i = 0; i < M; i += 20) {
    const rs = await Promise.all(Array.from({ length: 20 }, () => request(h.url, '/books')));
    for (const r of rs) assert.equal(r.json?.error?.code, 'upstream_unavailable');
  }
  await ws.close();
  const flood = warnings().slice(before);
  // One line at the first rate-limited message, one at the connection's close (with its count), one at the
  // first failed proxy request; more only if a 10 s interval passed meanwhile.
  assert.ok(flood.length >= 2 && flood.length <= 6, `${flood.length} warnings for ${N + M} bad inputs:\n${flood.map((l) => JSON.stringify(l)).join('\n')}`);
  assert.ok(flood.some((l) => /upstream cannot be reached/.test(l.message)), 'the proxy failure is warned once');

  // At shutdown the counted proxy failures are flushed as one line carrying how many.
  await h.stop();
  const summary = jsonLines(h).filter((l) => l.level === 'WARN' && /upstream cannot be reached/.test(l.message));
  const counted = summary.reduce((n, l) => n + (l.refused ?? 1), 0);
  assert.equal(counted, M, `the log counts every failed request: ${JSON.stringify(summary)}`);
  assert.ok(summary.length <= 3, `${summary.length} lines about ${M} failures`);
});

test('HERALD_LOG is --log-level; RUST_LOG still works without it; an invalid --log-level refuses to start', async (t) => {
  const viaEnv = await startHerald(t, { args: ['--log-format', 'json'], env: { HERALD_LOG: 'herald=debug' } });
  const socket = await connected(t, viaEnv.url);
  await logLine(viaEnv, (l) => l.message === 'connection opened' && l.conn === socket.id, 'HERALD_LOG=herald=debug');
  socket.disconnect();

  const rust = await startHerald(t, { env: { RUST_LOG: 'herald=debug' } });
  const s2 = await connected(t, rust.url);
  await withTimeout(new Promise((resolve) => {
    const check = () => { if (rust.stderr().includes('connection opened')) resolve(); };
    rust.proc.stderr.on('data', check);
    check();
  }), 10_000, 'RUST_LOG=herald=debug shows connection opened (text format)');
  s2.disconnect();

  const quiet = await startHerald(t, { args: ['--log-level', 'error'], env: { RUST_LOG: 'debug' } });
  const s3 = await connected(t, quiet.url);
  s3.disconnect();
  await request(quiet.url, '/healthz');
  assert.doesNotMatch(quiet.stderr(), /INFO|WARN|DEBUG/, '--log-level wins over RUST_LOG');

  await assert.rejects(startHerald(t, { args: ['--log-level', 'herald=loud'], env: { RUST_BACKTRACE: '0', RUST_LIB_BACKTRACE: '0' } }), (e) => {
    assert.match(e.message, /invalid --log-level \/ HERALD_LOG "herald=loud"/);
    return true;
  });
});
