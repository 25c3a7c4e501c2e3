// 8. CLI: `herald publish` and `herald tail` against a running server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import {
  startHerald, publish, fullHistory, HERALD_BIN, cleanEnv, withTimeout, spyProxy,
} from '../lib/herald.js';

/** Run the binary to completion; returns {code, stdout, stderr}. */
function run(args, ms = 15_000) {
  const proc = spawn(HERALD_BIN, args, { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
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

/** Spawn a long-running `herald tail`, yielding parsed JSON lines through next(). */
function tail(t, args) {
  const proc = spawn(HERALD_BIN, ['tail', ...args], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  t.after(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); });
  const lines = [];
  const waiters = [];
  createInterface({ input: proc.stdout }).on('line', (line) => {
    if (!line.trim()) return;
    const w = waiters.shift();
    if (w) w(line); else lines.push(line);
  });
  let exited = false;
  proc.on('exit', () => { exited = true; });
  return {
    proc,
    stderr: () => stderr,
    async next(ms = 10_000) {
      const line = await withTimeout(
        lines.length ? Promise.resolve(lines.shift()) : new Promise((r) => waiters.push(r)),
        ms, `a line from herald tail (exited: ${exited}; stderr: ${stderr.slice(-2000)})`);
      try {
        return JSON.parse(line);
      } catch {
        throw new Error(`herald tail printed a non-JSON line: ${line}`);
      }
    },
  };
}

/** Find `offset` in the printed result: {"results":[{offset}]} as the HTTP API returns it, or a flat result. */
function resultOf(json) {
  if (Array.isArray(json?.results)) return json.results[0];
  return json;
}

test('herald publish prints the JSON result with the offset', async (t) => {
  const h = await startHerald(t);
  const r1 = await run(['publish', 'cli', 'greet', '{"a":1}', '--url', h.url]);
  assert.equal(r1.code, 0, `exit code; stderr: ${r1.stderr}`);
  let out;
  try { out = JSON.parse(r1.stdout); } catch { assert.fail(`stdout is not JSON: ${r1.stdout}`); }
  const res = resultOf(out);
  assert.equal(res.offset, 1, `result: ${r1.stdout}`);
  assert.equal(res.channel, 'cli');
  assert.equal(typeof res.epoch, 'string');

  const r2 = await run(['publish', 'cli', 'greet', '{"a":2}', '--url', h.url, '--id', 'cli-id']);
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(resultOf(JSON.parse(r2.stdout)).offset, 2);
  const r3 = await run(['publish', 'cli', 'greet', '{"a":3}', '--url', h.url, '--id', 'cli-id']);
  assert.equal(r3.code, 0, r3.stderr);
  const dup = resultOf(JSON.parse(r3.stdout));
  assert.equal(dup.offset, 2);
  assert.equal(dup.duplicate, true);

  const hist = await fullHistory(h.url, 'cli');
  assert.deepEqual(hist.events.map((e) => [e.offset, e.event, e.data]), [[1, 'greet', { a: 1 }], [2, 'greet', { a: 2 }]]);
  assert.equal(hist.events[1].id, 'cli-id');

  // bad input: a non-zero exit, nothing written
  const bad = await run(['publish', 'a/b', 'greet', '{"a":1}', '--url', h.url]);
  assert.notEqual(bad.code, 0, 'invalid channel → non-zero exit');
  const badJson = await run(['publish', 'cli', 'greet', '{not json', '--url', h.url]);
  assert.notEqual(badJson.code, 0, 'invalid JSON → non-zero exit');
  assert.equal((await fullHistory(h.url, 'cli')).last_offset, 2);
});

test('herald publish with --api-key against a server with keys', async (t) => {
  const h = await startHerald(t, { config: 'api_keys = ["sekret"]\n' });
  const denied = await run(['publish', 'k', 'x', '{}', '--url', h.url]);
  assert.notEqual(denied.code, 0, 'no key → non-zero exit');
  const ok = await run(['publish', 'k', 'x', '{}', '--url', h.url, '--api-key', 'sekret']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(resultOf(JSON.parse(ok.stdout)).offset, 1);
});

test('herald tail prints published events as JSON lines', async (t) => {
  const h = await startHerald(t);
  const first = await publish(h.url, 'tailed', 'ev', { n: 1 });
  const tl = tail(t, ['tailed', '--since', '1', '--url', h.url]);
  const p2 = await publish(h.url, 'tailed', 'ev', { n: 2 }, { id: 'two' });
  await publish(h.url, 'tailed', 'other', { n: 3 });
  const e2 = await tl.next();
  const e3 = await tl.next();
  assert.deepEqual(
    { channel: e2.channel, offset: e2.offset, epoch: e2.epoch, id: e2.id, event: e2.event, data: e2.data },
    { channel: 'tailed', offset: 2, epoch: first.epoch, id: 'two', event: 'ev', data: { n: 2 } },
  );
  assert.equal(p2.offset, 2);
  assert.ok(!Number.isNaN(Date.parse(e2.time)), `time: ${e2.time}`);
  assert.deepEqual([e3.offset, e3.event, e3.data], [3, 'other', { n: 3 }]);
  tl.proc.kill('SIGTERM');
});

test('herald tail without --since prints the history, then follows', async (t) => {
  const h = await startHerald(t);
  await publish(h.url, 'from-start', 'ev', { n: 1 });
  await publish(h.url, 'from-start', 'ev', { n: 2 });
  const tl = tail(t, ['from-start', '--url', h.url]);
  assert.deepEqual((await tl.next()).data, { n: 1 });
  assert.deepEqual((await tl.next()).data, { n: 2 });
  await publish(h.url, 'from-start', 'ev', { n: 3 });
  assert.deepEqual((await tl.next()).data, { n: 3 });
});

test('herald tail on a channel that does not exist yet waits for its first event', async (t) => {
  const h = await startHerald(t);
  // tail talks through a recording proxy so we can publish only after its first history request
  // has been answered (404 channel_not_found at that point) — tail must keep polling, not give up.
  const spy = await spyProxy(t, h.url);
  const tl = tail(t, ['not-yet', '--url', spy.url]);
  // If tail long-polls (wait=…), the server may hold even an unknown channel's request: publish once it has
  // started. Otherwise publish once the first answer (404) has been relayed to tail.
  const firstReq = await spy.next((r) => r.path.includes('/history') && (r.status !== null || /[?&]wait=/.test(r.path)));
  t.diagnostic(`tail's first request: ${JSON.stringify(firstReq)}`);
  await publish(h.url, 'not-yet', 'ev', { first: true });
  const e = await tl.next();
  assert.deepEqual([e.channel, e.offset, e.data], ['not-yet', 1, { first: true }]);
  assert.equal(tl.proc.exitCode, null, `tail must keep running: ${tl.stderr()}`);
});
