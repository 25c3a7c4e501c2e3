// 23. Refusals are heard, and are cheap (src/policy/rate.rs `MessageLimit`, src/binding/socketio.rs, src/binding/websocket.rs,
// src/binding/template.rs): every refused client message gets an ack error or, when the client asked for none, an
// `error` event `{code, message, event}` (Socket.IO) or an error message (/ws); rate-limited messages without an ack/id
// get one notice per 10 s, not one each; the log gets one line per flooding connection per 10 s plus one at close,
// carrying the count (also on /metrics). Mapped client events fill `{arg}` / `{arg.FIELD}` from the first argument;
// seed 004's `joinRoom`/`leaveRoom` run unchanged on `subscribe = "{arg.room}"`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publish, request, connected, Recorder, withTimeout, pause,
} from '../lib/herald.js';
import { io } from 'socket.io-client';
import { wsBase, openWs } from '../lib/plain.js';

const range = (n) => Array.from({ length: n }, (_, i) => i);
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

/** Herald's stderr lines about rate-limited messages of connection `who`. */
const limitLines = (h, who) => stripAnsi(h.stderr()).split('\n')
  .filter((l) => /rate limit/.test(l) && l.includes(`connection=${who}`));

/** Resolves once `pred(herald's stderr)` holds (re-checked on every chunk written). */
function stderrUntil(h, pred, ms, label) {
  return withTimeout(new Promise((resolve) => {
    const check = () => {
      if (!pred(h.stderr())) return;
      h.proc.stderr.off('data', check);
      resolve();
    };
    h.proc.stderr.on('data', check);
    check();
  }), ms, `${label}; stderr tail:\n${stripAnsi(h.stderr()).split('\n').slice(-8).join('\n')}`);
}

/** The last `total=N` of a connection's rate-limit log lines (the count so far). */
const loggedTotal = (lines) => {
  const m = /total=(\d+)/.exec(lines.at(-1) ?? '');
  return m ? Number(m[1]) : (lines.length > 0 ? 1 : 0);
};

/** Retry `attempt` (resolving {done, refused}) with a short backoff while the rate limit refills. */
async function untilAccepted(attempt, ms, label) {
  const deadline = Date.now() + ms;
  let refused = 0;
  for (;;) {
    const r = await attempt();
    if (r.done) return refused;
    refused++;
    if (Date.now() > deadline) throw new Error(`${label}: still refused after ${ms} ms`);
    await pause(100); // backoff while the token bucket refills
  }
}

async function metric(h, name) {
  const r = await request(h.url, '/metrics');
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(r.text);
  assert.ok(m, `${name} in /metrics:\n${r.text.slice(-400)}`);
  return Number(m[1]);
}

test('a Socket.IO client flooding past messages_per_second: every acked message answered, one error event per interval without acks, a bounded number of log lines carrying the count, counted on /metrics', async (t) => {
  const RATE = 5;
  const h = await startHerald(t, { config: `[limits]\nmessages_per_second = ${RATE}\n` });
  const t0 = Date.now();
  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const who = socket.id;
  const rec = new Recorder(socket);
  const N = 500;

  // 500 acked messages in one go: each gets its answer (an unknown event's, or rate_limited).
  const acks = await withTimeout(Promise.all(range(N).map(() => socket.emitWithAck('no-such-event'))), 20_000, `${N} acks`);
  const limitedAcked = acks.filter((a) => a?.error?.code === 'rate_limited').length;
  const unknown = acks.filter((a) => a?.error?.code === 'unknown_event').length;
  assert.equal(limitedAcked + unknown, N, `every ack is unknown_event or rate_limited: ${JSON.stringify(acks.slice(0, 3))}`);
  assert.ok(limitedAcked >= N - 4 * RATE, `most are refused: ${limitedAcked}`);
  assert.equal(rec.named('error').length, 0, 'acked refusals arrive as acks, not error events');

  // 500 without acks: the accepted ones get an `error` event each (unknown event), the refused ones one notice.
  for (let i = 0; i < N; i++) socket.emit('no-such-event', i);
  // Packets of a connection are handled in order: an accepted acked message afterwards means all 500 were handled.
  const limitedBarrier = await untilAccepted(async () => {
    const a = await withTimeout(socket.emitWithAck('no-such-event'), 10_000, 'barrier ack');
    return { done: a?.error?.code === 'unknown_event' };
  }, 10_000, 'a message after the flood');
  const errors = rec.named('error').map((e) => e.args[0]);
  const unknownEvents = errors.filter((e) => e.code === 'unknown_event');
  const notices = errors.filter((e) => e.code === 'rate_limited');
  assert.equal(unknownEvents.length + notices.length, errors.length, `only unknown_event and rate_limited: ${JSON.stringify(errors.slice(0, 3))}`);
  for (const e of errors) {
    assert.equal(typeof e.message, 'string', JSON.stringify(e));
    assert.equal(e.event, 'no-such-event', `the notice names the refused event: ${JSON.stringify(e)}`);
  }
  const limitedUnacked = N - unknownEvents.length;
  assert.ok(limitedUnacked > 0, 'the unacked flood is rate limited too');
  const intervals = Math.floor((Date.now() - t0) / 10_000);
  assert.ok(notices.length >= 1, 'a refusal without an ack is not silent');
  assert.ok(notices.length <= 1 + intervals, `${notices.length} rate_limited notices for ${limitedUnacked} refused messages: at most one per 10 s`);
  assert.match(notices[0].message, /10 s/, 'the notice says later refusals are reported at most every 10 s');

  // The log: the first refusal at once, then nothing per message; the close adds one line with the count.
  const refused = limitedAcked + limitedUnacked + limitedBarrier;
  assert.ok(limitLines(h, who).length >= 1, 'the first refusal is logged at once');
  socket.disconnect();
  await stderrUntil(h, () => loggedTotal(limitLines(h, who)) === refused, 10_000, `a log line with total=${refused}`);
  const lines = limitLines(h, who);
  assert.ok(lines.length <= 2 + intervals, `${lines.length} log lines for ${refused} refused messages:\n${lines.join('\n')}`);
  assert.match(lines.at(-1), /connection closed/);
  const allRateLines = stripAnsi(h.stderr()).split('\n').filter((l) => /rate limit/.test(l));
  assert.equal(allRateLines.length, lines.length, 'no other rate-limit lines');
  assert.equal(await metric(h, 'herald_client_messages_refused_total'), refused, 'refusals counted on /metrics');
  await h.assertHealthy();
});

test('a /ws client flooding past messages_per_second: requests with an id each answered, id-less ones get one error per interval, a bounded number of log lines', async (t) => {
  const RATE = 5;
  const h = await startHerald(t, { config: `[limits]\nmessages_per_second = ${RATE}\n` });
  const t0 = Date.now();
  const c = await openWs(t, `${wsBase(h)}/ws`);
  const who = 'websocket from 127.0.0.1';
  const N = 500;
  for (let i = 0; i < N; i++) c.send({ op: 'ping', id: i });
  await c.until((x) => x.messages.filter((m) => typeof m?.id === 'number').length >= N, 20_000, `a reply to each of ${N} pings`);
  const limitedWithId = c.messages.filter((m) => m.type === 'error' && m.code === 'rate_limited' && typeof m.id === 'number').length;
  assert.ok(limitedWithId >= N - 4 * RATE, `most are refused: ${limitedWithId}`);

  const from = c.messages.length;
  for (let i = 0; i < N; i++) c.send({ op: 'ping' });
  // Requests are answered in order: a pong to a later request means all 500 were handled.
  const limitedBarrier = await untilAccepted(async () => {
    const r = await c.request('ping');
    return { done: r.type === 'pong' };
  }, 10_000, 'a ping after the flood');
  const idless = c.messages.slice(from).filter((m) => m?.id === undefined || m?.id === null);
  const pongs = idless.filter((m) => m.type === 'pong');
  const notices = idless.filter((m) => m.type === 'error' && m.code === 'rate_limited');
  assert.equal(pongs.length + notices.length, idless.filter((m) => m.type !== 'heartbeat').length, JSON.stringify(idless.slice(0, 3)));
  const limitedIdless = N - pongs.length;
  assert.ok(limitedIdless > 0, 'the id-less flood is rate limited');
  const intervals = Math.floor((Date.now() - t0) / 10_000);
  assert.ok(notices.length >= 1 && notices.length <= 1 + intervals,
    `${notices.length} rate_limited errors for ${limitedIdless} refused id-less messages: one per 10 s`);

  const refused = limitedWithId + limitedIdless + limitedBarrier;
  await c.close();
  await stderrUntil(h, () => loggedTotal(limitLines(h, who)) === refused, 10_000, `a log line with total=${refused}`);
  const lines = limitLines(h, who);
  assert.ok(lines.length <= 2 + intervals, `${lines.length} log lines for ${refused} refused messages:\n${lines.join('\n')}`);
  assert.equal(await metric(h, 'herald_client_messages_refused_total'), refused);
  await h.assertHealthy();
});

test('refusals without an ack arrive as error events: malformed built-in subscribe/unsubscribe, unknown events, mapped events with a missing field; with an ack, as the ack', async (t) => {
  const h = await startHerald(t, {
    config: `[socketio.client_events]
"join_room" = { subscribe = "{arg.room}" }
"leave_room" = { unsubscribe = "{arg.room}" }
"watch" = { subscribe = "scan_{arg}" }
`,
  });
  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(socket);
  const cases = [
    ['subscribe', ['scan_42'], 'invalid_request'],
    ['subscribe', [{ room: 'scan_42' }], 'invalid_request'],
    ['subscribe', [{ channel: 'a/b' }], 'invalid_channel'],
    ['subscribe', [], 'invalid_request'],
    ['unsubscribe', ['scan_42'], 'invalid_request'],
    ['unsubscribe', [{ channel: '' }], 'invalid_channel'],
    ['startScan', [{ scan_id: 1 }], 'unknown_event', /startScan/],
    ['join_room', ['scan_42'], 'invalid_request', /field `room`.*got a string/],
    ['join_room', [{ name: 'scan_42' }], 'invalid_request', /`room` is missing/],
    ['join_room', [{ room: true }], 'invalid_request', /`room` is a boolean/],
    ['join_room', [{ room: 'a/b' }], 'invalid_channel', /join_room/],
    ['leave_room', [{}], 'invalid_request', /`room` is missing/],
    ['watch', [], 'invalid_request', /first argument/],
  ];
  for (const [event, args, code, message] of cases) {
    const before = rec.named('error').length;
    socket.emit(event, ...args);
    await rec.until((r) => r.named('error').length > before, 10_000, `an error event for ${event}(${JSON.stringify(args)})`);
    const e = rec.named('error')[before].args[0];
    assert.equal(e.code, code, `${event}(${JSON.stringify(args)}): ${JSON.stringify(e)}`);
    assert.equal(e.event, event, JSON.stringify(e));
    assert.equal(typeof e.message, 'string');
    if (message) assert.match(e.message, message, JSON.stringify(e));
  }
  const noticed = rec.named('error').length;
  for (const [event, args, code] of cases) {
    const ack = await withTimeout(socket.emitWithAck(event, ...args), 10_000, `ack for ${event}`);
    assert.equal(ack?.ok, false, JSON.stringify(ack));
    assert.equal(ack.error?.code, code, `${event}(${JSON.stringify(args)}) with an ack: ${JSON.stringify(ack)}`);
  }
  assert.equal(rec.named('error').length, noticed, 'with an ack, no error event besides');
  // Numbers fill templates too, and the mapped subscription is real.
  const ack = await withTimeout(socket.emitWithAck('join_room', { room: 42 }), 10_000, 'join_room 42');
  assert.deepEqual([ack.ok, ack.channel], [true, '42']);
  const watched = await withTimeout(socket.emitWithAck('watch', 7), 10_000, 'watch 7');
  assert.deepEqual([watched.ok, watched.channel], [true, 'scan_7']);
  assert.ok(socket.connected);

  // /ws: malformed requests without an id are answered with an error message too.
  const c = await openWs(t, `${wsBase(h)}/ws`);
  for (const [frame, code] of [
    [{ type: 'subscribe', channel: 'x' }, 'invalid_request'],
    [{ op: 'join' }, 'unknown_op'],
    [[1, 2], 'invalid_request'],
    [{ op: 'subscribe' }, 'invalid_request'],
    [{ op: 'subscribe', channel: 'a/b' }, 'invalid_channel'],
    ['{"op":', 'invalid_json'],
  ]) {
    const from = c.messages.length;
    c.send(frame);
    const err = await c.next((m) => m?.type === 'error', 10_000, `error for ${JSON.stringify(frame)}`, from);
    assert.equal(err.code, code, `${JSON.stringify(frame)}: ${JSON.stringify(err)}`);
    assert.equal(typeof err.message, 'string');
  }
  await h.assertHealthy();
});

test('client event channel templates are checked at start-up: an unknown placeholder refuses to start, naming the event', async (t) => {
  for (const [template, expected] of [
    ['{room}', /"join_room".*unknown placeholder \{room\}/],
    ['{arg.}', /"join_room".*unknown placeholder/],
    ['scan/{arg}', /"join_room"/],
  ]) {
    const config = `[socketio.client_events]\n"join_room" = { subscribe = "${template}" }\n`;
    await assert.rejects(startHerald(t, { config, env: { RUST_BACKTRACE: '0', RUST_LIB_BACKTRACE: '0' } }), (e) => {
      assert.match(e.message, expected);
      return true;
    }, template);
  }
});

test('seed 004 (Bug Hunt Framework): joinRoom/leaveRoom as join_room({room}) / leave_room({room}) mapped by `{arg.room}`; the progress indicator follows its scan only while it is in the room', async (t) => {
  const h = await startHerald(t, {
    config: `[socketio.client_events]
"join_room" = { subscribe = "{arg.room}" }
"leave_room" = { unsubscribe = "{arg.room}" }
`,
  });

  // src/lib/websocket.js of the seed. Its guide elides the method bodies (`/* ... */`); these are the obvious ones
  // for its documented behaviour (rooms by name, `on` returning an unsubscribe function, connection_status events).
  class WebSocketService {
    constructor() {
      this.socket = null;
      this.listeners = new Map();
      this.reconnectAttempts = 0;
      this.maxReconnectAttempts = 5;
      this.isConnecting = false;
    }

    connect(url) {
      if (this.socket || this.isConnecting) return;
      this.isConnecting = true;
      this.socket = io(url, {
        reconnection: true,
        reconnectionDelay: 1000,
        reconnectionDelayMax: 5000,
        reconnectionAttempts: 5,
        forceNew: true,
      });
      this.socket.on('connect', () => {
        this.isConnecting = false;
        this.reconnectAttempts = 0;
        this.emitLocal('connection_status', { connected: true });
      });
      this.socket.on('disconnect', () => this.emitLocal('connection_status', { connected: false }));
      this.socket.on('connect_error', (error) => {
        this.reconnectAttempts++;
        this.emitLocal('connection_error', { error, attempts: this.reconnectAttempts });
      });
      for (const [event, callbacks] of this.listeners) for (const cb of callbacks) this.socket.on(event, cb);
    }

    disconnect() {
      this.socket?.disconnect();
      this.socket = null;
      this.isConnecting = false;
    }

    emitLocal(event, data) {
      for (const cb of this.listeners.get(event) ?? []) cb(data);
    }

    on(event, callback) {
      if (!this.listeners.has(event)) this.listeners.set(event, new Set());
      this.listeners.get(event).add(callback);
      this.socket?.on(event, callback);
      return () => {
        this.listeners.get(event)?.delete(callback);
        this.socket?.off(event, callback);
      };
    }

    send(event, data) {
      this.socket?.emit(event, data);
    }

    joinRoom(room) {
      this.send('join_room', { room });
    }

    leaveRoom(room) {
      this.send('leave_room', { room });
    }
  }
  const websocketService = new WebSocketService();

  // src/hooks/useWebSocket.js and ScanProgressIndicator, with React's effects run by hand (mount → effects,
  // unmount → their cleanups) and its state in plain variables.
  const effects = [];
  const useEffect = (fn) => effects.push(fn);
  function useWebSocket(events) {
    useEffect(() => {
      const unsubscribers = events.map(({ event, handler }) =>
        websocketService.on(event, handler),
      );
      return () => {
        unsubscribers.forEach((unsub) => unsub());
      };
    });
  }
  const ui = { progress: 0, phase: '', renders: [] };
  const setProgress = (p) => { ui.progress = p; ui.renders.push(p); };
  const setPhase = (p) => { ui.phase = p; };
  function ScanProgressIndicator({ scanId }) {
    useEffect(() => {
      websocketService.joinRoom(`scan_${scanId}`);

      return () => {
        websocketService.leaveRoom(`scan_${scanId}`);
      };
    }, [scanId]);

    useWebSocket([
      {
        event: 'scan_progress',
        handler: (data) => {
          if (data.scan_id === scanId) {
            setProgress(data.progress);
            setPhase(data.phase);
          }
        },
      },
    ]);
  }
  const errors = [];
  const up = new Promise((resolve) => websocketService.on('connection_status', ({ connected }) => connected && resolve()));
  websocketService.on('error', (e) => errors.push(e));

  // RealtimeProvider: connect on mount.
  websocketService.connect(h.url);
  t.after(() => websocketService.disconnect());
  const socket = websocketService.socket;
  const rec = new Recorder(socket);
  await withTimeout(up, 10_000, 'connection_status {connected: true}');
  // A socket's packets are handled in order: an acked round trip after the joins means they are done.
  const barrier = () => withTimeout(socket.emitWithAck('barrier'), 10_000, 'barrier');

  // Mount the indicator for scan 42 (and, to see that rooms are separate, another room for user 7).
  ScanProgressIndicator({ scanId: 42 });
  const cleanups = effects.splice(0).map((fn) => fn());
  websocketService.joinRoom('user_7');
  await barrier();

  await publish(h.url, 'scan_42', 'scan_progress', { scan_id: 42, progress: 30, phase: 'recon' });
  await publish(h.url, 'scan_43', 'scan_progress', { scan_id: 43, progress: 99, phase: 'other room' });
  await publish(h.url, 'scan_42', 'scan_progress', { scan_id: 42, progress: 60, phase: 'scanning' });
  await publish(h.url, 'user_7', 'notification', { type: 'info', message: 'marker 1' });
  await rec.until((r) => r.named('notification').length === 1, 10_000, 'the user_7 marker');
  // Live events arrive in commit order: everything before the marker is here.
  assert.deepEqual(ui.renders, [30, 60], 'the indicator saw its scan only');
  assert.deepEqual([ui.progress, ui.phase], [60, 'scanning']);
  assert.equal(rec.named('scan_progress').length, 2, 'scan_43 is not joined: nothing of it arrives');

  // Unmount: leaveRoom; later progress of scan 42 no longer arrives.
  cleanups.forEach((c) => c?.());
  await barrier();
  await publish(h.url, 'scan_42', 'scan_progress', { scan_id: 42, progress: 90, phase: 'after leave' });
  await publish(h.url, 'user_7', 'notification', { type: 'info', message: 'marker 2' });
  await rec.until((r) => r.named('notification').length === 2, 10_000, 'the second marker');
  assert.equal(rec.named('scan_progress').length, 2, 'nothing of scan_42 after leave_room');
  assert.deepEqual([ui.progress, ui.phase], [60, 'scanning']);

  // The seed's other emits are refused out loud, as `error` events its `on('error')` listeners see.
  websocketService.send('start_scan', { scan_id: 123, options: {} });
  socket.emit('join_room', `scan_${42}`); // a room name without the object around it
  // (The recorder sees an event before the seed's listeners do: wait on it, then read what the seed got.)
  await rec.until((r) => r.named('error').length === 2, 10_000, 'two error events');
  assert.deepEqual(errors.map((e) => [e.code, e.event]), [['unknown_event', 'start_scan'], ['invalid_request', 'join_room']]);
  assert.match(errors[1].message, /`room`/);
  await h.assertHealthy();
});
