// Mass catch-up (issue 12): N stock socket.io-client WebSocket clients subscribed to one channel stop reading
// (their TCP sockets paused); events are published at RATE/s for SECONDS (batches of BATCH, PUBLISHERS concurrent
// publishers); then every client reads again and catches up. Reports Herald's peak RSS (VmHWM) and RSS while paused,
// the time until every client has every event, reconnects, and — per client — duplicates and missing events.
//
// Usage (from the repo root; the stock client comes from tests/js/node_modules):
//   node bench/catchup.mjs [--bin target/release/herald] [--clients 500] [--rate 1000] [--seconds 20]
//                          [--batch 50] [--publishers 4] [--bytes 470] [--max-queue-bytes 4194304] [--pin-server 0]
// Herald runs on a fresh data dir, pinned to core `--pin-server` with taskset (this script: pin it yourself, e.g.
// `taskset -c 1 node bench/catchup.mjs`). Prints one JSON line at the end.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

const require = createRequire(resolve('tests/js/package.json'));
const { io } = require('socket.io-client');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const BIN = resolve(arg('bin', 'target/release/herald'));
const CLIENTS = Number(arg('clients', 500));
const RATE = Number(arg('rate', 1000));
const SECONDS = Number(arg('seconds', 20));
const BATCH = Number(arg('batch', 50));
const PUBLISHERS = Number(arg('publishers', 4));
const BYTES = Number(arg('bytes', 470));
const MAX_QUEUE = Number(arg('max-queue-bytes', 4 << 20));
const PIN = arg('pin-server', '0');
const TOTAL = RATE * SECONDS;
const CHANNEL = 'catchup';
const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);

const dir = mkdtempSync(join(tmpdir(), 'herald-catchup-'));
writeFileSync(join(dir, 'herald.toml'), `
[history]
max_events = ${TOTAL + 1000}
[limits]
connections_per_ip = 0
connections_per_second_per_ip = 0
[socketio]
max_queue_bytes = ${MAX_QUEUE}
`);
const server = spawn('taskset', ['-c', PIN, BIN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', join(dir, 'data'),
  '--config', join(dir, 'herald.toml')], { stdio: ['ignore', 'pipe', 'pipe'] });
let stderr = '';
server.stderr.on('data', (d) => { stderr += d; if (stderr.length > 1e6) stderr = stderr.slice(-5e5); });
const url = await new Promise((res, rej) => {
  createInterface({ input: server.stdout }).on('line', (l) => {
    const m = /listening on (http:\/\/\S+)/.exec(l);
    if (m) res(m[1]);
  });
  server.on('exit', (c) => rej(new Error(`herald exited ${c}: ${stderr.slice(-2000)}`)));
});
const status = () => readFileSync(`/proc/${server.pid}/status`, 'utf8');
const kb = (field) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(status())[1]);

const pad = 'x'.repeat(Math.max(0, BYTES - 30));
const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const socket = io(url, { transports: ['websocket'], forceNew: true });
  const c = { socket, seen: new Uint8Array(TOTAL + 1), have: 0, dups: 0, connects: 0, reasons: {}, done: null };
  c.caughtUp = new Promise((r) => { c.done = r; });
  socket.on('connect', () => { c.connects++; });
  socket.on('disconnect', (reason) => { c.reasons[reason] = (c.reasons[reason] ?? 0) + 1; });
  socket.on('tick', (d) => {
    if (c.seen[d.n]) c.dups++;
    else { c.seen[d.n] = 1; if (++c.have === TOTAL) c.done(); }
  });
  await new Promise((r) => socket.once('connect', r));
  const ack = await socket.emitWithAck('subscribe', { channel: CHANNEL });
  if (!ack.ok) throw new Error(JSON.stringify(ack));
  clients.push(c);
}
const rssIdle = kb('VmRSS');
log(`${CLIENTS} clients subscribed; RSS ${rssIdle} kB`);

for (const c of clients) c.socket.io.engine.transport.ws._socket.pause();
let rssPaused = 0;
const sampler = setInterval(() => { rssPaused = Math.max(rssPaused, kb('VmRSS')); }, 200);
const started = Date.now();
let next = 1;
const publisher = async (p) => {
  const perPublisher = RATE / BATCH / PUBLISHERS; // batches per second each
  for (let k = 0; ; k++) {
    const due = started + (k * 1000) / perPublisher + (p * 1000) / perPublisher / PUBLISHERS;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (next > TOTAL) return;
    const from = next;
    next += BATCH;
    const events = [];
    for (let n = from; n < from + BATCH && n <= TOTAL; n++) events.push({ channel: CHANNEL, event: 'tick', data: { n, pad } });
    const r = await fetch(`${url}/api/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ events }) });
    if (r.status !== 200) throw new Error(`publish ${r.status} ${await r.text()}`);
  }
};
await Promise.all(Array.from({ length: PUBLISHERS }, (_, p) => publisher(p)));
const publishS = (Date.now() - started) / 1000;
clearInterval(sampler);
log(`published ${TOTAL} events in ${publishS.toFixed(1)} s; RSS peak while paused ${rssPaused} kB`);

let rssCatchup = 0;
const sampler2 = setInterval(() => { rssCatchup = Math.max(rssCatchup, kb('VmRSS')); }, 200);
const resumed = Date.now();
for (const c of clients) c.socket.io.engine.transport.ws._socket.resume();
const progress = setInterval(() => {
  const done = clients.filter((c) => c.have === TOTAL).length;
  log(`catching up: ${done}/${CLIENTS} clients complete, RSS ${kb('VmRSS')} kB`);
}, 10_000);
const LIMIT_S = Number(arg('limit', 600));
const timedOut = await Promise.race([
  Promise.all(clients.map((c) => c.caughtUp)).then(() => false),
  new Promise((r) => setTimeout(() => r(true), LIMIT_S * 1000)),
]);
const caughtUpS = (Date.now() - resumed) / 1000;
clearInterval(sampler2);
clearInterval(progress);

const reasons = {};
for (const c of clients) for (const [k, v] of Object.entries(c.reasons)) reasons[k] = (reasons[k] ?? 0) + v;
const result = {
  clients: CLIENTS, events: TOTAL, bytes: BYTES, max_queue_bytes: MAX_QUEUE,
  rss_idle_kb: rssIdle, rss_paused_peak_kb: rssPaused, rss_catchup_peak_kb: rssCatchup, vm_hwm_kb: kb('VmHWM'),
  caught_up_s: timedOut ? null : Number(caughtUpS.toFixed(1)), timed_out: timedOut,
  missing: clients.reduce((n, c) => n + (TOTAL - c.have), 0),
  duplicates: clients.reduce((n, c) => n + c.dups, 0),
  clients_with_duplicates: clients.filter((c) => c.dups > 0).length,
  reconnects: clients.reduce((n, c) => n + c.connects - 1, 0),
  disconnect_reasons: reasons,
};
console.log(JSON.stringify(result));
for (const c of clients) c.socket.disconnect();
server.kill('SIGKILL');
rmSync(dir, { recursive: true, force: true });
process.exit(0);
