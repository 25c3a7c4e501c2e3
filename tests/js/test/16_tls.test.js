// 16. Native TLS: HTTPS API, a stock socket.io-client over WSS, and a certificate reload on SIGHUP that new
// connections see without a restart (existing ones keep working).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import tls from 'node:tls';
import { io } from 'socket.io-client';
import { startHerald, Recorder, withTimeout } from '../lib/herald.js';

/** A fresh self-signed P-256 certificate for localhost; returns the paths. */
function makeCert(dir, name) {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-subj', `/CN=${name}`, '-days', '1'], { stdio: 'ignore' });
  return { cert, key };
}

/** The subject CN of the certificate the server presents now. */
function presentedCn(port) {
  return withTimeout(new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => {
      resolve(s.getPeerCertificate().subject.CN);
      s.end();
    });
    s.on('error', reject);
  }), 10_000, 'TLS handshake');
}

test('TLS: HTTPS API and Socket.IO over WSS; SIGHUP reloads the certificate for new connections', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'herald-tls-'));
  const first = makeCert(dir, 'first');
  const cfg = `[tls]\ncert = ${JSON.stringify(first.cert)}\nkey = ${JSON.stringify(first.key)}\n`;
  const h = await startHerald(t, { config: cfg });
  assert.match(h.url, /^https:\/\//, 'the listening line says https');
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
  t.after(() => { delete process.env.NODE_TLS_REJECT_UNAUTHORIZED; });

  const socket = io(h.url, { transports: ['websocket'], rejectUnauthorized: false });
  t.after(() => socket.disconnect());
  const rec = new Recorder(socket);
  await withTimeout(new Promise((r) => socket.on('connect', r)), 10_000, 'WSS connect');
  const ack = await withTimeout(socket.emitWithAck('subscribe', { channel: 'tls' }), 10_000, 'subscribe ack');
  assert.equal(ack.ok, true);

  const publish = async (n) => {
    const r = await fetch(`${h.url}/api/publish`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ channel: 'tls', event: 'tick', data: { n } }),
    });
    assert.equal(r.status, 200, await r.text());
  };
  await publish(1);
  assert.equal(await presentedCn(h.port), 'first');

  // Renew: overwrite the files in place, then SIGHUP.
  const second = makeCert(dir, 'second');
  execFileSync('cp', [second.cert, first.cert]);
  execFileSync('cp', [second.key, first.key]);
  h.proc.kill('SIGHUP');
  const deadline = Date.now() + 10_000;
  let cn = await presentedCn(h.port);
  while (cn !== 'second' && Date.now() < deadline) cn = await presentedCn(h.port); // each probe is a new handshake
  assert.equal(cn, 'second', 'new connections get the reloaded certificate');

  await publish(2);
  await rec.until((r) => r.named('tick').length >= 2, 10_000, 'events over WSS before and after the reload');
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [1, 2], 'the existing connection kept working');
  assert.ok(!h.stderrText.includes('panicked'));
});

test('TLS: a bad certificate path fails start-up with a clear error', async () => {
  const { spawnSync } = await import('node:child_process');
  const bin = process.env.HERALD_BIN ?? new URL('../../../target/debug/herald', import.meta.url).pathname;
  const dir = mkdtempSync(join(tmpdir(), 'herald-tls-bad-'));
  const cfgPath = join(dir, 'h.toml');
  (await import('node:fs')).writeFileSync(cfgPath, '[tls]\ncert = "/nonexistent.crt"\nkey = "/nonexistent.key"\n');
  const r = spawnSync(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(dir, 'd'), '--config', cfgPath],
    { encoding: 'utf8', timeout: 20_000 });
  assert.notEqual(r.status, 0, 'start-up fails');
  assert.match(r.stderr, /nonexistent\.crt/, `the error names the file: ${r.stderr}`);
});
