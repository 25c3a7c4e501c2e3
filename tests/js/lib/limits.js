// Helpers for admission-policy tests (origins, rate and concurrency limits): connection attempts that report how
// the server answered instead of throwing, bounded concurrent floods, and the server's resident memory.
import { readFileSync } from 'node:fs';
import { io } from 'socket.io-client';
import { withTimeout } from './herald.js';
import { WsClient } from './plain.js';

/**
 * Attempt a WebSocket upgrade with the `ws` package. Never rejects: resolves with
 * {status: 101, c: WsClient} when upgraded, {status, json, text, headers} for an HTTP answer, or
 * {status: 0, error} when the connection failed without one. The client is terminated in t.after.
 */
export async function attemptWs(t, url, opts = {}, ms = 10_000) {
  const c = new WsClient(t, url, opts);
  try {
    await withTimeout(c.opened, ms, `WebSocket upgrade ${url}`);
    return { status: 101, c };
  } catch (e) {
    if (e.status !== undefined) return { status: e.status, json: e.json, text: e.text, headers: e.headers };
    c.ws.terminate();
    return { status: 0, error: e.message };
  }
}

/**
 * Run `fn(i)` for i in [0, n) with at most `concurrency` calls in flight; resolves with the results in index order.
 */
export async function pool(n, concurrency, fn) {
  const results = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      results[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
  return results;
}

/** Resident set size of a process in KiB (Linux /proc). */
export function vmRssKb(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

/**
 * A Socket.IO client (no reconnection) and the outcome of its first connection attempt:
 * {socket, connected: true} or {socket, connected: false, err} (the connect_error).
 */
export async function sioAttempt(t, url, opts = {}, ms = 10_000) {
  const socket = io(url, { forceNew: true, reconnection: false, ...opts });
  t.after(() => socket.disconnect());
  const outcome = new Promise((resolve) => {
    socket.once('connect', () => resolve({ socket, connected: true }));
    socket.once('connect_error', (err) => resolve({ socket, connected: false, err }));
  });
  return withTimeout(outcome, ms, `Socket.IO connect or connect_error for ${url}`);
}

/** Counts of each value of `key(x)` over `xs`, as a plain object (for assertion messages). */
export function tally(xs, key) {
  const out = {};
  for (const x of xs) {
    const k = key(x);
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}
