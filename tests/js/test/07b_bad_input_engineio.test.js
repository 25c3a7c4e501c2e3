// 7b. Bad input at the Engine.IO / Socket.IO level, over raw HTTP long-polling (fetch) and raw WebSocket (ws).
// After each case the server must still serve a normal client and must not have panicked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  startHerald, publish, connected, subscribeOk, Recorder, chan, withTimeout,
} from '../lib/herald.js';

const MAX_PAYLOAD = 10_000;
const CONFIG = `
[socketio]
max_payload = ${MAX_PAYLOAD}
`;
const RS = '\x1e';

async function assertServes(t, h) {
  await h.assertHealthy();
  const channel = chan('health');
  const socket = await connected(t, h.url);
  const rec = new Recorder(socket);
  await subscribeOk(socket, channel);
  await publish(h.url, channel, 'ping', { ok: true });
  await rec.until((r) => r.named('ping').length === 1, 10_000, 'event after bad input');
  socket.disconnect();
  h.assertNoPanic();
}

async function eio(h, query, { method = 'GET', body, timeout = 5000, headers } = {}) {
  const res = await fetch(`${h.url}/socket.io/?${query}`, {
    method, body, headers, signal: AbortSignal.timeout(timeout),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, text, json, headers: res.headers };
}

function assertEioError(r, code, message, what) {
  assert.equal(r.status, 400, `${what}: status ${r.status} ${r.text}`);
  assert.deepEqual(r.json, { code, message }, `${what}: body ${r.text}`);
  assert.match(r.headers.get('content-type') ?? '', /application\/json/, `${what}: content-type`);
}

/** A raw long-polling session. */
async function pollingSession(h) {
  const r = await eio(h, 'EIO=4&transport=polling');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.text[0], '0', `open packet: ${r.text}`);
  const open = JSON.parse(r.text.slice(1));
  const s = {
    open,
    sid: open.sid,
    get: (timeout = 5000) => eio(h, `EIO=4&transport=polling&sid=${encodeURIComponent(open.sid)}`, { timeout }),
    post: (body) => eio(h, `EIO=4&transport=polling&sid=${encodeURIComponent(open.sid)}`, {
      method: 'POST', body, headers: { 'content-type': 'text/plain;charset=UTF-8' },
    }),
  };
  return s;
}

/** Polling session that has joined namespace `/`; returns it with the CONNECT reply payload. */
async function connectedPolling(h) {
  const s = await pollingSession(h);
  const p = await s.post('40');
  assert.equal(p.status, 200, `POST 40: ${p.status} ${p.text}`);
  const g = await s.get();
  const packets = g.text.split(RS);
  const reply = packets.find((x) => x.startsWith('40'));
  assert.ok(reply, `CONNECT reply: ${g.text}`);
  s.connectReply = JSON.parse(reply.slice(2));
  return s;
}

/** After a protocol violation the session must be closed: GET → 400 code 1, or a close packet `1`. */
async function assertSessionClosed(s, what) {
  for (let i = 0; i < 3; i++) {
    let r;
    try {
      r = await s.get(5000);
    } catch (e) {
      throw new Error(`${what}: the session was not closed (GET still pending after 5 s: ${e.message})`);
    }
    if (r.status === 400) {
      assert.deepEqual(r.json, { code: 1, message: 'Session ID unknown' }, `${what}: ${r.text}`);
      return;
    }
    assert.equal(r.status, 200, `${what}: GET ${r.status} ${r.text}`);
    if (r.text.split(RS).includes('1')) return;
    // e.g. a noop: poll again
  }
  throw new Error(`${what}: the session was not closed`);
}

test('Engine.IO handshake errors over HTTP', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  assertEioError(await eio(h, 'EIO=4&transport=polling&sid=nope'), 1, 'Session ID unknown', 'unknown sid');
  assertEioError(await eio(h, 'EIO=4&transport=polling&sid=nope', { method: 'POST', body: '4hi' }), 1, 'Session ID unknown', 'POST unknown sid');
  assertEioError(await eio(h, 'EIO=3&transport=polling'), 5, 'Unsupported protocol version', 'EIO=3');
  assertEioError(await eio(h, 'transport=polling'), 5, 'Unsupported protocol version', 'EIO missing');
  assertEioError(await eio(h, 'EIO=4&transport=abc'), 0, 'Transport unknown', 'transport=abc');
  assertEioError(await eio(h, 'EIO=4'), 0, 'Transport unknown', 'transport missing');
  assertEioError(await eio(h, 'EIO=4&transport=polling', { method: 'POST', body: '40' }), 2, 'Bad handshake method', 'handshake POST');
  await assertServes(t, h);
});

test('Engine.IO open packet reflects the config', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const s = await pollingSession(h);
  assert.deepEqual(Object.keys(s.open).sort(), ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades']);
  assert.equal(typeof s.open.sid, 'string');
  assert.deepEqual(s.open.upgrades, ['websocket']);
  assert.equal(s.open.pingInterval, 25_000);
  assert.equal(s.open.pingTimeout, 20_000);
  assert.equal(s.open.maxPayload, MAX_PAYLOAD);
  const c = await connectedPolling(h);
  assert.equal(typeof c.connectReply.sid, 'string');
  assert.notEqual(c.connectReply.sid, c.sid, 'the Socket.IO socket id is not the Engine.IO sid');
  assert.equal(typeof c.connectReply.pid, 'string', 'CONNECT reply carries a pid (connection state recovery)');
});

test('malformed Socket.IO packets on a polling session close that session', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  for (const bad of ['4abc', '42{}', '42abc["x"]', '42["connect"]', '4' + '2[', '49']) {
    const s = await connectedPolling(h);
    await s.post(bad);
    await assertSessionClosed(s, `after ${JSON.stringify(bad)}`);
  }
  // An invalid Engine.IO packet closes the session (engine.io 6.6 answers that POST 200 "ok", older
  // versions 400 — either is accepted; what matters is that the session is gone).
  const s = await connectedPolling(h);
  const r = await s.post('zzz');
  assert.ok([200, 400].includes(r.status), `invalid EIO packet: ${r.status} ${r.text}`);
  await assertSessionClosed(s, 'after an invalid Engine.IO packet');
  await assertServes(t, h);
});

test('CONNECT to an unknown namespace → 44 Invalid namespace; `/` still works on that session', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const s = await pollingSession(h);
  await s.post('40/nope,');
  const r = await s.get();
  const pkt = r.text.split(RS).find((x) => x.startsWith('44'));
  assert.ok(pkt, `CONNECT_ERROR packet: ${r.text}`);
  assert.ok(pkt.startsWith('44/nope,'), pkt);
  assert.deepEqual(JSON.parse(pkt.slice('44/nope,'.length)), { message: 'Invalid namespace' });
  await s.post('40');
  const ok = await s.get();
  assert.ok(ok.text.split(RS).some((x) => x.startsWith('40{')), `CONNECT to / after a refused namespace: ${ok.text}`);
  await assertServes(t, h);
});

test('polling POST over maxPayload → 413', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const s = await connectedPolling(h);
  const r = await s.post('4' + 'x'.repeat(MAX_PAYLOAD * 2));
  assert.equal(r.status, 413, `oversize POST: ${r.status} ${r.text.slice(0, 200)}`);
  await assertServes(t, h);
});

test('two concurrent GETs on one polling session → 400 and the session closes', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const s = await connectedPolling(h);
  const first = s.get(10_000); // held open (nothing to send)
  const second = await s.get(5000);
  assert.equal(second.status, 400, `overlapping GET: ${second.status} ${second.text}`);
  const firstR = await first;
  assert.equal(firstR.status, 200);
  assert.ok(firstR.text.split(RS).includes('1'), `pending GET answered with a close packet: ${firstR.text}`);
  await assertServes(t, h);
});

// ---- raw WebSocket --------------------------------------------------------------------------------

function rawWs(h) {
  const ws = new WebSocket(`${h.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const queue = [];
  const waiters = [];
  ws.closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
  ws.on('error', () => {}); // reported through 'close'
  ws.on('message', (data, isBinary) => {
    const m = isBinary ? data : data.toString();
    const w = waiters.shift();
    if (w) w(m); else queue.push(m);
  });
  ws.next = (ms = 5000) => withTimeout(
    queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)), ms, 'next WebSocket frame');
  return ws;
}

async function wsConnected(h) {
  const ws = rawWs(h);
  const open = await ws.next();
  assert.ok(typeof open === 'string' && open.startsWith('0{'), `open packet: ${open}`);
  assert.deepEqual(JSON.parse(open.slice(1)).upgrades, [], 'a websocket-only session offers no upgrades');
  ws.send('40');
  const reply = await ws.next();
  assert.ok(reply.startsWith('40{'), `CONNECT reply: ${reply}`);
  return ws;
}

test('raw WebSocket: malformed packets, stray binary frames and oversize frames close the connection', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const cases = [
    ['4abc', (ws) => ws.send('4abc')],
    ['42{}', (ws) => ws.send('42{}')],
    ['a binary frame with no pending BINARY_EVENT', (ws) => ws.send(Buffer.from([1, 2, 3]))],
    ['an invalid Engine.IO packet', (ws) => ws.send('zzz')],
    ['a frame over maxPayload', (ws) => ws.send('42["subscribe",{"channel":"' + 'x'.repeat(MAX_PAYLOAD * 2) + '"}]')],
  ];
  for (const [what, send] of cases) {
    const ws = await wsConnected(h);
    send(ws);
    await withTimeout(ws.closed, 5000, `server closes the WebSocket after ${what}`);
  }
  await assertServes(t, h);
});

test('raw WebSocket: a subscribe with a BINARY_EVENT split across frames gets an error ack', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const ws = await wsConnected(h);
  ws.send('451-7["subscribe",{"_placeholder":true,"num":0}]');
  ws.send(Buffer.from([1, 2, 3]));
  const ack = await ws.next();
  assert.ok(typeof ack === 'string' && ack.startsWith('437['), `ACK for id 7: ${ack}`);
  const [payload] = JSON.parse(ack.slice(3));
  assert.equal(payload.ok, false);
  assert.equal(payload.error.code, 'invalid_request');
  ws.send('428["subscribe",{"channel":"fine"}]');
  const ack2 = await ws.next();
  assert.ok(ack2.startsWith('438['), `ACK for id 8: ${ack2}`);
  assert.equal(JSON.parse(ack2.slice(3))[0].ok, true);
  ws.close();
  await assertServes(t, h);
});
