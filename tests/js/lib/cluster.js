// A Herald cluster for the JS suite: a throw-away `redis-server`, Herald nodes that share it (the Redis engine) and a
// TCP balancer in front whose upstream the test switches. The server listens on a free loopback port with persistence
// off (or an append-only file, for restarts that keep the data), in a temp dir; everything is killed in t.after.
// Each test gives its nodes a key prefix of its own, so tests never see each other's channels.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHerald, withTimeout, pause } from './herald.js';
import { splice } from './plain.js';

const START_TIMEOUT_MS = 10_000;

/** A free loopback TCP port (bound and released; the caller binds it right away). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Whether a Redis server answers PING on `port` (one attempt, bounded). */
function pings(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let reply = '';
    const done = (ok) => { s.destroy(); resolve(ok); };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => { reply += d; if (reply.includes('\r\n')) done(reply.startsWith('+PONG')); });
  });
}

/**
 * Start `redis-server` on a free loopback port. Returns {url, port, proc, stop(), start(), alive()}:
 * `stop()` kills it (SIGKILL) and waits for the exit; `start()` starts it again on the same port — empty, or with
 * `aof: true` (`appendonly yes`, `appendfsync always`: every acknowledged write is on disk) with what its
 * append-only file holds, unless `start({ fresh: true })` deletes that first (a Redis that lost its data).
 */
export async function startRedis(t, { aof = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), `herald-redis-${process.pid}-`));
  const port = await freePort();
  const r = { port, url: `redis://127.0.0.1:${port}`, proc: null, stderrText: '' };
  const persistence = aof ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];

  r.start = async ({ fresh = false } = {}) => {
    if (fresh) {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir);
    }
    const proc = spawn('redis-server',
      ['--bind', '127.0.0.1', '--port', String(port), '--save', '', ...persistence, '--dir', dir],
      { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    r.proc = proc;
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => { r.stderrText += d; });
    proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    const failed = new Promise((_, reject) => {
      proc.on('error', (e) => reject(new Error(`redis-server could not start (./scripts/setup installs it): ${e.message}`)));
      proc.exited.then(({ code }) => reject(new Error(`redis-server exited (code ${code}): ${r.stderrText}`)));
    });
    failed.catch(() => {});
    // Ready when it answers PING; the pause is the retry backoff of a connection attempt, not a synchronisation.
    const ready = (async () => { while (!(await pings(port))) await pause(20); })();
    await withTimeout(Promise.race([ready, failed]), START_TIMEOUT_MS, `redis-server to answer PING on ${port}`);
    return r;
  };
  r.alive = () => r.proc && r.proc.exitCode === null && r.proc.signalCode === null;
  r.stop = async () => {
    if (!r.alive()) return;
    r.proc.kill('SIGKILL');
    await r.proc.exited;
  };

  t.after(async () => {
    await r.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return r.start();
}

let prefixCounter = 0;
/** A key prefix no other test of this run uses. */
export function uniquePrefix() { return `t${process.pid}x${++prefixCounter}`; }

/** `startHerald` arguments for a node of the cluster on `redis` under `prefix`. */
export const redisArgs = (redis, prefix) => ['--engine', 'redis', '--engine-url', redis.url, '--engine-prefix', prefix];

/** Start `n` Herald nodes on `redis`, sharing one fresh prefix (or `opts.prefix`). Returns the startHerald handles. */
export async function startNodes(t, redis, n, { prefix = uniquePrefix(), config = '', args = [] } = {}) {
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await startHerald(t, { config, args: [...redisArgs(redis, prefix), ...args] }));
  return nodes;
}

/**
 * A TCP balancer in front of the nodes: new connections go to the node last `route()`d to; a connection whose node
 * goes away is closed on the client's side too (what a client sees when its node dies behind a balancer).
 * Returns {url, route(port)}.
 */
export async function balancer(t, port) {
  let upstreamPort = port;
  const sockets = new Set();
  const server = net.createServer((client) => {
    splice(client, upstreamPort, sockets);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Send new connections to the node on `port`. */
    route(p) { upstreamPort = p; },
  };
}
