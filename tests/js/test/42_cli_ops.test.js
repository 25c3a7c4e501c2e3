// 42. The day-to-day CLI (issue 17): `herald channels`, `herald history [--since] [--follow]`, `herald connections
// [--disconnect]`, `herald config check`, `herald bench`, each against a running server through its HTTP API.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  startHerald, publish, request, HERALD_BIN, cleanEnv, withTimeout, connected, subscribeOk, waitFor,
} from '../lib/herald.js';

/** Run the binary to completion; returns {code, stdout, stderr}. */
function run(args, { env = {}, ms = 20_000 } = {}) {
  const proc = spawn(HERALD_BIN, args, { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise((resolve, reject) => {
    proc.on('error', reject);
    proc.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return withTimeout(done, ms, `herald ${args.join(' ')}`).catch((e) => { proc.kill('SIGKILL'); throw e; });
}

/** The rows of a printed table as objects keyed by its header. */
function table(text) {
  const [header, ...rows] = text.trimEnd().split('\n');
  const names = header.trim().split(/\s+/);
  return rows.map((r) => Object.fromEntries(r.trim().split(/\s{2,}/).map((v, i) => [names[i], v])));
}

const jsonLines = (text) => text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));

/** Publish `n` events to `channel` in batches of 1000. */
async function publishMany(url, channel, n) {
  for (let from = 0; from < n; from += 1000) {
    const events = [];
    for (let i = from; i < Math.min(n, from + 1000); i++) events.push({ channel, event: 'n', data: { i: i + 1 } });
    const r = await request(url, '/api/publish', { method: 'POST', body: { events } });
    assert.equal(r.status, 200, r.text);
  }
}

test('herald channels: name, position, epoch and subscribers, as a table or JSON lines', async (t) => {
  const h = await startHerald(t);
  const a = await publish(h.url, 'ops-a', 'x', 1);
  await publish(h.url, 'ops-a', 'x', 2);
  const b = await publish(h.url, 'ops b', 'x', 1);
  const socket = await connected(t, h.url);
  await subscribeOk(socket, 'ops-a');

  const r = await run(['channels', '--url', h.url]);
  assert.equal(r.code, 0, r.stderr);
  const rows = table(r.stdout);
  assert.deepEqual(Object.keys(rows[0]), ['CHANNEL', 'POSITION', 'EPOCH', 'SUBSCRIBERS'], r.stdout);
  const row = (name) => rows.find((x) => x.CHANNEL === name);
  assert.deepEqual(row('ops-a'), { CHANNEL: 'ops-a', POSITION: '2', EPOCH: a.epoch, SUBSCRIBERS: '1' }, r.stdout);
  assert.deepEqual(row('ops b'), { CHANNEL: 'ops b', POSITION: '1', EPOCH: b.epoch, SUBSCRIBERS: '0' }, r.stdout);

  const j = await run(['channels', '--json', '--url', h.url]);
  assert.equal(j.code, 0, j.stderr);
  const a2 = jsonLines(j.stdout).find((c) => c.channel === 'ops-a');
  assert.deepEqual(a2, { channel: 'ops-a', epoch: a.epoch, first_offset: 1, last_offset: 2, subscribers: 1 });
});

test('herald channels with a key: --api-key or HERALD_API_KEY, refused without', async (t) => {
  const h = await startHerald(t, { config: 'api_keys = ["sekret"]\n' });
  await publish(h.url, 'keyed', 'x', 1, { headers: { authorization: 'Bearer sekret' } });
  const denied = await run(['channels', '--url', h.url]);
  assert.equal(denied.code, 1);
  assert.match(denied.stderr, /401.*unauthorized/);
  const flag = await run(['channels', '--url', h.url, '--api-key', 'sekret']);
  assert.equal(flag.code, 0, flag.stderr);
  assert.equal(table(flag.stdout)[0].CHANNEL, 'keyed');
  const env = await run(['channels', '--url', h.url], { env: { HERALD_API_KEY: 'sekret' } });
  assert.equal(env.code, 0, env.stderr);
  assert.equal(table(env.stdout)[0].POSITION, '1');
});

test('herald history pages through every event with progress on stderr; --since skips; unknown → exit 1', async (t) => {
  const h = await startHerald(t, { config: '[history]\nmax_events = 10000\n' });
  await publishMany(h.url, 'long', 2500);
  const r = await run(['history', 'long', '--url', h.url]);
  assert.equal(r.code, 0, r.stderr);
  const events = jsonLines(r.stdout);
  assert.equal(events.length, 2500);
  assert.deepEqual(events.map((e) => e.offset), Array.from({ length: 2500 }, (_, i) => i + 1), 'in order, once each');
  assert.deepEqual(events[2499].data, { i: 2500 });
  assert.match(r.stderr, /history: 1000 events, offset 1000 of 2500/);
  assert.match(r.stderr, /history: 2500 events, offset 2500 of 2500, done/);

  const since = await run(['history', 'long', '--since', '2490', '--url', h.url]);
  assert.equal(since.code, 0, since.stderr);
  assert.deepEqual(jsonLines(since.stdout).map((e) => e.offset), [2491, 2492, 2493, 2494, 2495, 2496, 2497, 2498, 2499, 2500]);
  assert.equal(since.stderr, '', 'one page: no progress lines');

  const none = await run(['history', 'nothing-here', '--url', h.url]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /404.*channel_not_found/);
});

test('herald history --follow prints the history, then new events as they are published', async (t) => {
  const h = await startHerald(t);
  await publish(h.url, 'followed', 'ev', { n: 1 });
  await publish(h.url, 'followed', 'ev', { n: 2 });
  const proc = spawn(HERALD_BIN, ['history', 'followed', '--since', '1', '--follow', '--url', h.url],
    { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => proc.kill('SIGKILL'));
  const lines = [];
  const waiters = [];
  createInterface({ input: proc.stdout }).on('line', (l) => {
    const w = waiters.shift();
    if (w) w(JSON.parse(l)); else lines.push(JSON.parse(l));
  });
  const next = () => withTimeout(lines.length ? Promise.resolve(lines.shift()) : new Promise((r) => waiters.push(r)),
    10_000, 'a line from herald history --follow');
  assert.deepEqual((await next()).data, { n: 2 });
  await publish(h.url, 'followed', 'ev', { n: 3 });
  const e3 = await next();
  assert.deepEqual([e3.offset, e3.data], [3, { n: 3 }]);
});

test('herald connections lists this node\'s connections; --disconnect closes one, which reconnects', async (t) => {
  const h = await startHerald(t);
  const socket = await connected(t, h.url);
  await subscribeOk(socket, 'watched');
  const r = await run(['connections', '--url', h.url]);
  assert.equal(r.code, 0, r.stderr);
  const rows = table(r.stdout);
  assert.deepEqual(Object.keys(rows[0]), ['ID', 'TRANSPORT', 'USER', 'ADDRESS', 'AGE', 'SUBSCRIPTIONS'], r.stdout);
  const mine = rows.find((x) => x.ID === socket.id);
  assert.ok(mine, `${socket.id} listed: ${r.stdout}`);
  assert.match(mine.TRANSPORT, /^socketio/);
  assert.equal(mine.SUBSCRIPTIONS, 'watched');
  assert.match(mine.ADDRESS, /^127\.0\.0\.1:\d+$/);

  const j = await run(['connections', '--json', '--transport', 'socketio', '--url', h.url]);
  assert.equal(j.code, 0, j.stderr);
  assert.deepEqual(jsonLines(j.stdout).map((c) => c.id), [socket.id]);

  const id = socket.id;
  const gone = waitFor(socket, 'disconnect');
  const d = await run(['connections', '--disconnect', id, '--url', h.url]);
  assert.equal(d.code, 0, d.stderr);
  assert.equal(d.stdout.trim(), `disconnected ${id}`);
  await gone;
  await waitFor(socket, 'connect');

  const unknown = await run(['connections', '--disconnect', 'nobody', '--url', h.url]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /404.*connection_not_found/);
});

test('herald config check prints the effective configuration with secrets redacted; exit 1 on a bad file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'herald-config-check-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const good = join(dir, 'good.toml');
  writeFileSync(good, `
api_keys = ["key-that-is-secret", { key = "scoped-secret", publish = ["metrics:*"] }]
[[auth.keys]]
kind = "hmac"
algorithm = "HS256"
secret = "hmac-secret-hmac-secret-hmac-secret-1234"
[[sources.sql]]
id = "units"
url = "postgres://app:db-password@db.internal:5432/app"
sql = "select * from units where k = {k}"
channel = "unit:{k}"
`);
  const r = await run(['config', 'check', good], { env: { HERALD_LISTEN: '127.0.0.1:7801' } });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /is valid/);
  for (const secret of ['key-that-is-secret', 'scoped-secret', 'hmac-secret', 'db-password']) {
    assert.ok(!r.stdout.includes(secret), `${secret} is redacted`);
  }
  assert.match(r.stdout, /postgres:\/\/app:<redacted>@db\.internal:5432\/app/);
  assert.match(r.stdout, /metrics:\*/, 'what is not secret is shown');
  assert.match(r.stdout, /127\.0\.0\.1:7801/, 'the environment\'s overrides are applied');

  const unknownKey = join(dir, 'unknown.toml');
  writeFileSync(unknownKey, 'listen = "127.0.0.1:1"\nbogus_key = 1\n');
  const bad = await run(['config', 'check', unknownKey]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /bogus_key/);
  assert.equal(bad.stdout, '');

  const invalid = join(dir, 'invalid.toml');
  writeFileSync(invalid, '[[sources.sql]]\nid = "s"\nurl = "sqlite:x.db"\nsql = "select 1 where a = {unti}"\nchannel = "u:{unit}"\n');
  const inv = await run(['config', 'check', invalid]);
  assert.equal(inv.code, 1);
  assert.match(inv.stderr, /unknown parameter \{unti\}/);

  // What serve reads besides the file: a secret from the environment, the TLS files.
  const secretEnv = join(dir, 'secret-env.toml');
  writeFileSync(secretEnv, '[[auth.keys]]\nkind = "hmac"\nalgorithm = "HS256"\nsecret_env = "HERALD_TEST_CHECK_SECRET"\n');
  const unset = await run(['config', 'check', secretEnv]);
  assert.equal(unset.code, 1);
  assert.match(unset.stderr, /HERALD_TEST_CHECK_SECRET is unset/);
  const set = await run(['config', 'check', secretEnv], { env: { HERALD_TEST_CHECK_SECRET: 'x'.repeat(40) } });
  assert.equal(set.code, 0, set.stderr);
  const tls = join(dir, 'tls.toml');
  writeFileSync(tls, `[tls]\ncert = "${join(dir, 'no-cert.pem')}"\nkey = "${join(dir, 'no-key.pem')}"\n`);
  const noCert = await run(['config', 'check', tls]);
  assert.equal(noCert.code, 1);
  assert.match(noCert.stderr, /no-cert\.pem/);

  const missing = await run(['config', 'check', join(dir, 'absent.toml')]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /absent\.toml/);
});

test('herald bench runs herald-bench, or says how to build it', async () => {
  const none = await run(['bench', 'fanout'], { env: { HERALD_BENCH_BIN: '/nonexistent/herald-bench' } });
  assert.equal(none.code, 1);
  assert.match(none.stderr, /cargo build --release -p herald-bench/);
  const beside = join(dirname(HERALD_BIN), 'herald-bench');
  if (!existsSync(beside)) return; // built by `cargo build --workspace` (scripts/test)
  const help = await run(['bench', '--help']);
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /Usage: herald-bench/);
  const bad = await run(['bench', '--no-such-flag']);
  assert.notEqual(bad.code, 0, 'its exit code is herald\'s');
});
