// Client-side helpers for the auth tests: configs with the fixture keys, and "is this refused, with which code, as
// the client sees it" for every transport (stock socket.io-client, `ws`, fetch and the `eventsource` package).
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import { client, connected, withTimeout, waitFor } from './herald.js';
import { WsClient, openSse, wsBase } from './plain.js';
import { keyPath, HMAC_SECRET } from './jwt.js';

/** `[[auth.keys]]` blocks for the fixture keys, by name. */
export const KEY_BLOCKS = {
  RS256: `[[auth.keys]]\nkind = "pem"\nalgorithm = "RS256"\npath = ${JSON.stringify(keyPath('rsa_public.pem'))}\n`,
  ES256: `[[auth.keys]]\nkind = "pem"\nalgorithm = "ES256"\npath = ${JSON.stringify(keyPath('ec_public.pem'))}\n`,
  EdDSA: `[[auth.keys]]\nkind = "pem"\nalgorithm = "EdDSA"\npath = ${JSON.stringify(keyPath('ed_public.pem'))}\n`,
  HS256: `[[auth.keys]]\nkind = "hmac"\nalgorithm = "HS256"\nsecret = ${JSON.stringify(HMAC_SECRET)}\n`,
  JWKS: `[[auth.keys]]\nkind = "jwks"\npath = ${JSON.stringify(keyPath('jwks.json'))}\n`,
};

/** `[[auth.rules]]` block; `rule({pattern:'owners', subscribe:true, roles:['owner']})`. */
export function rule(fields) {
  return `[[auth.rules]]\n${Object.entries(fields).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join('\n')}\n`;
}

export const bearer = (token) => ({ authorization: `Bearer ${token}` });
export const q = (token) => (token === undefined ? '' : `token=${encodeURIComponent(token)}`);
/** Append `token=` to a path that may already have a query. */
export const withToken = (path, token) => (token === undefined ? path : `${path}${path.includes('?') ? '&' : '?'}${q(token)}`);

// ---------------------------------------------------------------------------------------------
// Socket.IO

/** Stock client that must be refused on CONNECT: resolves with the `connect_error` Error ({message, data}). */
export async function sioRefused(t, url, opts = {}, label = 'Socket.IO connect') {
  const socket = client(t, url, { reconnection: false, ...opts });
  const outcome = await withTimeout(new Promise((resolve) => {
    socket.once('connect', () => resolve({ connected: true }));
    socket.once('connect_error', (err) => resolve({ err }));
  }), 10_000, `${label}: connect or connect_error`);
  assert.ok(!outcome.connected, `${label}: expected connect_error, but the client connected (id ${socket.id})`);
  socket.disconnect();
  return outcome.err;
}

/** Assert a connect_error carries `code` in err.data.code and a message. */
export function assertConnectError(err, code, label) {
  assert.equal(err?.data?.code, code, `${label}: err.data.code (message ${JSON.stringify(err?.message)}, data ${JSON.stringify(err?.data)})`);
  assert.equal(typeof err.message, 'string', `${label}: err.message`);
  assert.ok(err.message.length > 0, `${label}: err.message not empty`);
}

/** Connected stock client presenting `token` as auth.token (or no auth at all when token is undefined). */
export function sioConnected(t, url, token, opts = {}) {
  return connected(t, url, { reconnection: false, ...(token === undefined ? {} : { auth: { token } }), ...opts });
}

// ---------------------------------------------------------------------------------------------
// Plain WebSocket

/** Attempt a `ws` upgrade that must be refused; resolves with {status, json, text}. */
export async function wsRefused(t, h, path, { headers = {} } = {}) {
  const c = new WsClient(t, `${wsBase(h)}${path}`, { headers });
  try {
    await withTimeout(c.opened, 10_000, `WebSocket upgrade ${path}`);
  } catch (e) {
    if (e.status !== undefined) return { status: e.status, json: e.json, text: e.text };
    throw e;
  }
  c.ws.terminate();
  throw new Error(`WebSocket upgrade of ${path} was accepted; expected an HTTP error`);
}

/** Open a `ws` client (Bearer header and/or token in the path). */
export async function wsOpen(t, h, path, { headers = {} } = {}) {
  const c = new WsClient(t, `${wsBase(h)}${path}`, { headers });
  await withTimeout(c.opened, 10_000, `WebSocket open ${path}`);
  return c;
}

// ---------------------------------------------------------------------------------------------
// SSE

/** fetch an SSE URL that must be refused; resolves with {status, json, text}. */
export async function sseRefused(t, h, path, { headers = {} } = {}) {
  const s = await openSse(t, `${h.url}${path}`, { headers });
  if (s.status === 200) s.close();
  return { status: s.status, json: s.json, text: s.text };
}

/**
 * An `eventsource` EventSource recording the given event names; `until(pred)` awaits a condition.
 * log: {items: [{name, data, lastEventId}], opens, errors: [{code, message, readyState}], es}.
 */
export function eventSource(t, url, names, { headers = {} } = {}) {
  const log = { items: [], opens: 0, errors: [], waiters: [] };
  const check = () => { log.waiters = log.waiters.filter((w) => { const ok = w.pred(log); if (ok) w.resolve(); return !ok; }); };
  const es = new EventSource(url, {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } }),
  });
  for (const name of names) {
    es.addEventListener(name, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { data = { unparsable: e.data }; }
      log.items.push({ name, data, lastEventId: e.lastEventId });
      check();
    });
  }
  es.addEventListener('open', () => { log.opens++; check(); });
  es.addEventListener('error', (e) => { log.errors.push({ code: e.code, message: e.message, readyState: es.readyState }); check(); });
  log.until = (pred, ms = 10_000, label = 'condition') => {
    if (pred(log)) return Promise.resolve();
    let w;
    const p = new Promise((resolve) => { w = { pred, resolve }; log.waiters.push(w); });
    return withTimeout(p, ms, `${label}; so far items ${JSON.stringify(log.items.slice(-3))}, opens ${log.opens}, `
      + `errors ${JSON.stringify(log.errors)}, readyState ${es.readyState}`)
      .finally(() => { log.waiters = log.waiters.filter((x) => x !== w); });
  };
  log.es = es;
  t.after(() => es.close());
  return log;
}

/** An EventSource that must fail: resolves with its error event's {code, message, readyState} (and closes it). */
export async function eventSourceRefused(t, url, opts = {}) {
  const log = eventSource(t, url, [], opts);
  await log.until((l) => l.errors.length > 0 || l.opens > 0, 10_000, `EventSource ${url} error`);
  assert.equal(log.opens, 0, `EventSource ${url} opened; expected a refusal`);
  log.es.close();
  return log.errors[0];
}

/** Assert an HTTP refusal {status, json}. */
export function assertRefusal(r, status, code, label) {
  assert.equal(r.status, status, `${label}: HTTP status (body ${r.text})`);
  assert.equal(r.json?.error?.code, code, `${label}: error.code (body ${r.text})`);
  assert.equal(typeof r.json.error.message, 'string', `${label}: error.message (body ${r.text})`);
}

export { waitFor };
