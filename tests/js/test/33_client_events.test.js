// 33. Client events (docs/client-events.md; src/binding/client_events, src/binding/template.rs) and identities from
// the handshake (docs/auth.md; src/auth/handshake.rs). Seed 002's SocketManager runs as written: its
// `connection:status` is answered by a `reply` mapping (the "Connecting…" banner clears) and `subscribe:status`
// subscribes each user to its team's channel through `{claims.team}` from the JWT. Seed 004's joinRoom/leaveRoom
// work with a string and with an object argument (`{arg.room|arg}`), and `user_{sub}` rooms are held to the
// channel rules. Clients publish through `publish` mappings (durable, in history, rate and size limited). Every
// refusal arrives as an `error` event (or the ack), and `/ws` speaks the same mapping through its `emit` op.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import {
  startHerald, publish, fullHistory, request, connected, Recorder, withTimeout, waitFor,
} from '../lib/herald.js';
import { wsBase, openWs } from '../lib/plain.js';
import { sign, nowSecs } from '../lib/jwt.js';
import { KEY_BLOCKS, rule, sseRefused, eventSource } from '../lib/auth.js';

const token = (claims) => sign({ exp: nowSecs() + 3600, ...claims }, { alg: 'HS256' });
/** An acked round trip: the socket's earlier packets have been handled. */
const barrier = (socket) => withTimeout(socket.emitWithAck('barrier'), 10_000, 'barrier');

test('seed 002 (service status): the SocketManager\'s connection:status is answered, its banner clears, and subscribe:status follows the team of the JWT', async (t) => {
  const h = await startHerald(t, {
    config: `[auth]
${KEY_BLOCKS.HS256}${rule({ pattern: 'status:{team}', subscribe: true })}
[socketio.client_events]
"connection:status" = { reply = "connection:status", data = { connected = true } }
"subscribe:status" = { subscribe = "status:{claims.team}" }
"unsubscribe:status" = { unsubscribe = "status:{claims.team}" }
`,
  });

  /** One browser tab of the seed: its modules, with React's state and effects run by hand. */
  function tab(authToken) {
    const getAuthToken = () => authToken;
    const process = { env: { NEXT_PUBLIC_SOCKET_URL: h.url } };

    // frontend/src/lib/socket.ts, as written (TypeScript types removed).
    class SocketManager {
      socket = null;
      listeners = new Map();

      connect() {
        if (this.socket?.connected) {
          return this.socket;
        }

        const token = getAuthToken();

        this.socket = io(process.env.NEXT_PUBLIC_SOCKET_URL, {
          auth: { token },
          transports: ['websocket'],
          reconnection: true,
          reconnectionDelay: 1000,
          reconnectionDelayMax: 5000,
          reconnectionAttempts: 5,
          timeout: 10000,
        });

        this.setupEventHandlers();
        return this.socket;
      }

      setupEventHandlers() {
        this.socket.on('connect', () => {
          console.log('WebSocket connected');
          this.emit('connection:status', { connected: true });
        });

        this.socket.on('disconnect', (reason) => {
          console.log('WebSocket disconnected:', reason);
          this.emit('connection:status', { connected: false });
        });

        this.socket.on('connect_error', (error) => {
          console.error('WebSocket connection error:', error);
        });
      }

      on(event, callback) {
        if (!this.listeners.has(event)) {
          this.listeners.set(event, new Set());
        }
        this.listeners.get(event).add(callback);
        this.socket?.on(event, callback);
      }

      off(event, callback) {
        this.listeners.get(event)?.delete(callback);
        this.socket?.off(event, callback);
      }

      emit(event, data) {
        this.socket?.emit(event, data);
      }

      disconnect() {
        this.socket?.disconnect();
        this.socket = null;
      }
    }
    const socketManager = new SocketManager();

    // React, reduced to what the hooks use.
    const state = { isConnected: false, connectionError: null, services: [], updates: 0 };
    const useState = (key) => [state[key], (v) => { state[key] = v; }];
    const cleanups = [];
    const useEffect = (fn) => { cleanups.push(fn()); };
    const useCallback = (fn) => fn;
    const queryClient = {
      setQueryData(key, updater) {
        if (key[0] === 'services') state.services = typeof updater === 'function' ? updater(state.services) : updater;
        else state.updates++;
      },
    };

    // frontend/src/hooks/useWebSocket.ts, as written.
    function useWebSocket() {
      const [isConnected, setIsConnected] = useState('isConnected');
      const [connectionError, setConnectionError] = useState('connectionError');

      useEffect(() => {
        const socket = socketManager.connect();

        const handleConnectionStatus = (status) => {
          setIsConnected(status.connected);
          if (status.connected) {
            setConnectionError(null);
          }
        };

        const handleError = (error) => {
          setConnectionError(error.message);
        };

        socketManager.on('connection:status', handleConnectionStatus);
        socketManager.on('error', handleError);

        // Subscribe to status updates
        socket.emit('subscribe:status');

        return () => {
          socket.emit('unsubscribe:status');
          socketManager.off('connection:status', handleConnectionStatus);
          socketManager.off('error', handleError);
        };
      }, []);

      const refreshService = useCallback((serviceId) => {
        socketManager.emit('request:refresh', serviceId);
      }, []);

      return { isConnected, connectionError, refreshService };
    }

    // frontend/src/hooks/useRealtimeStatus.ts, as written.
    function useRealtimeStatus() {
      useEffect(() => {
        const handleStatusUpdate = (update) => {
          // Update single service
          queryClient.setQueryData(['services', 'status'], (old) => {
            if (!old) return old;

            return old.map((service) =>
              service.id === update.serviceId
                ? {
                    ...service,
                    status: update.status,
                    responseTime: update.responseTime,
                    lastCheckAt: new Date(update.timestamp),
                    details: update.details
                      ? { ...service.details, ...update.details }
                      : service.details,
                  }
                : service,
            );
          });

          // Trigger update animation
          queryClient.setQueryData(['service-update', update.serviceId], update);
        };

        const handleBulkUpdate = (services) => {
          // Update all services at once
          queryClient.setQueryData(['services', 'status'], services);
        };

        socketManager.on('service:status', handleStatusUpdate);
        socketManager.on('service:bulk-update', handleBulkUpdate);

        return () => {
          socketManager.off('service:status', handleStatusUpdate);
          socketManager.off('service:bulk-update', handleBulkUpdate);
        };
      }, [queryClient]);
    }

    // ConnectionStatus.tsx's text: null when the banner is hidden.
    const banner = () => {
      const { isConnected, connectionError } = state;
      if (isConnected && !connectionError) return null;
      return !isConnected ? 'Connecting to real-time updates...' : connectionError || 'Connection issue';
    };

    // DashboardPage renders ConnectionStatus; React runs the child's effects first: useWebSocket connects, then
    // the page's useRealtimeStatus adds its handlers to the socket.
    useWebSocket();
    useRealtimeStatus();
    const rec = new Recorder(socketManager.socket);
    t.after(() => { cleanups.forEach((c) => c?.()); socketManager.disconnect(); });
    return { state, banner, rec, socket: socketManager.socket };
  }

  const services = [{ id: 'api', status: 'up' }, { id: 'db', status: 'up' }];
  const eu = tab(token({ sub: 'ann', team: 'eu' }));
  const us = tab(token({ sub: 'bob', team: 'us' }));
  assert.equal(eu.banner(), 'Connecting to real-time updates...', 'before the server answers');
  for (const tabState of [eu, us]) tabState.state.services = structuredClone(services);
  for (const [who, name] of [[eu, 'eu'], [us, 'us']]) {
    await who.rec.until((r) => r.named('connection:status').length === 1, 10_000, `${name}: connection:status`);
    assert.deepEqual(who.rec.named('connection:status')[0].args, [{ connected: true }]);
    assert.equal(who.banner(), null, `${name}: the banner is hidden once the server answered`);
    await barrier(who.socket);
  }

  await publish(h.url, 'status:eu', 'service:status', { serviceId: 'api', status: 'down', responseTime: 900, timestamp: '2025-01-01T00:00:00Z' });
  await publish(h.url, 'status:us', 'service:status', { serviceId: 'db', status: 'degraded', timestamp: '2025-01-01T00:00:01Z' });
  await publish(h.url, 'status:eu', 'service:bulk-update', [{ id: 'api', status: 'up' }]);
  await eu.rec.until((r) => r.named('service:bulk-update').length === 1, 10_000, 'eu bulk update');
  await us.rec.until((r) => r.named('service:status').length === 1, 10_000, 'us update');
  assert.deepEqual(eu.rec.named('service:status').map((e) => e.args[0].serviceId), ['api'], 'eu sees only its team');
  assert.deepEqual(eu.state.services, [{ id: 'api', status: 'up' }], 'the bulk update replaced the list');
  assert.deepEqual(us.state.services.map((s) => [s.id, s.status]), [['api', 'up'], ['db', 'degraded']]);
  assert.equal(us.rec.named('service:bulk-update').length, 0, 'us is not subscribed to status:eu');

  // A token without the `team` claim: subscribe:status is refused as missing_claim, out loud (the seed's error
  // handler sees it; its connection:status handler, answered right after, then clears the banner again).
  const lone = tab(token({ sub: 'cy' }));
  await lone.rec.until((r) => r.named('error').length === 1, 10_000, 'missing claim error');
  const e = lone.rec.named('error')[0].args[0];
  assert.equal(e.code, 'missing_claim', JSON.stringify(e));
  assert.equal(e.event, 'subscribe:status');
  assert.match(e.message, /team/);
  await barrier(lone.socket);
  await publish(h.url, 'status:eu', 'service:status', { serviceId: 'db', status: 'down', timestamp: '2025-01-01T00:00:02Z' });
  await eu.rec.until((r) => r.named('service:status').length === 2, 10_000, 'eu second update');
  assert.equal(lone.rec.named('service:status').length, 0, 'no team, no status channel');
  await h.assertHealthy();
});

test('seed 004 (scan progress): joinRoom/leaveRoom with a room name or a {room} object; user_{sub} rooms only for their user', async (t) => {
  const h = await startHerald(t, {
    config: `[auth]
${KEY_BLOCKS.HS256}${rule({ pattern: 'scan_*', subscribe: true })}${rule({ pattern: 'user_{sub}', subscribe: true })}
[socketio.client_events]
"join_room" = { subscribe = "{arg.room|arg}" }
"leave_room" = { unsubscribe = "{arg.room|arg}" }
`,
  });

  // src/lib/websocket.js of the seed; the guide elides the bodies. `argument` builds what joinRoom sends: the
  // guide shows `joinRoom(room)` only, so both plausible bodies are run. The token is the deployment's.
  function service(argument, authToken) {
    class WebSocketService {
      constructor() {
        this.socket = null;
        this.listeners = new Map();
      }

      connect(url) {
        this.socket = io(url, { reconnection: true, forceNew: true, auth: { token: authToken } });
        for (const [event, callbacks] of this.listeners) for (const cb of callbacks) this.socket.on(event, cb);
      }

      disconnect() { this.socket?.disconnect(); this.socket = null; }

      on(event, callback) {
        if (!this.listeners.has(event)) this.listeners.set(event, new Set());
        this.listeners.get(event).add(callback);
        this.socket?.on(event, callback);
        return () => { this.listeners.get(event)?.delete(callback); this.socket?.off(event, callback); };
      }

      send(event, data) { this.socket?.emit(event, data); }

      joinRoom(room) { this.send('join_room', argument(room)); }

      leaveRoom(room) { this.send('leave_room', argument(room)); }
    }
    const s = new WebSocketService();
    s.errors = [];
    s.on('error', (e) => s.errors.push(e));
    s.connect(h.url);
    t.after(() => s.disconnect());
    return s;
  }

  for (const [label, argument] of [['a string', (room) => room], ['an object', (room) => ({ room })]]) {
    const ws = service(argument, token({ sub: '7' }));
    await waitFor(ws.socket, 'connect', 10_000, `${label}: connect`);
    const rec = new Recorder(ws.socket);
    const progress = [];
    ws.on('scan_progress', (data) => { if (data.scan_id === 42) progress.push(data.progress); });
    ws.joinRoom(`scan_${42}`);
    ws.joinRoom(`user_${7}`);
    ws.joinRoom(`user_${8}`); // another user's room
    await barrier(ws.socket);
    assert.deepEqual(ws.errors.map((e) => [e.code, e.event]), [['forbidden', 'join_room']], `${label}: ${JSON.stringify(ws.errors)}`);
    assert.match(ws.errors[0].message, /user_8/);

    await publish(h.url, 'scan_42', 'scan_progress', { scan_id: 42, progress: 50 });
    await publish(h.url, 'user_8', 'notification', { message: 'not for 7' });
    await publish(h.url, 'user_7', 'notification', { message: 'for 7' });
    await rec.until((r) => r.named('notification').length === 1, 10_000, `${label}: user_7 notification`);
    assert.deepEqual(rec.named('notification').map((n) => n.args[0].message), ['for 7']);
    assert.deepEqual(progress, [50]);

    ws.leaveRoom(`scan_${42}`);
    await barrier(ws.socket);
    await publish(h.url, 'scan_42', 'scan_progress', { scan_id: 42, progress: 90 });
    await publish(h.url, 'user_7', 'notification', { message: 'marker' });
    await rec.until((r) => r.named('notification').length === 2, 10_000, `${label}: marker`);
    assert.deepEqual(progress, [50], `${label}: nothing of scan_42 after leaveRoom`);
    ws.disconnect();
  }
  await h.assertHealthy();
});

test('identities from the handshake query (seed 001\'s io(url, {query: {userId, role}})): rules and templates read them; a token, bad or good, still decides', async (t) => {
  const h = await startHerald(t, {
    config: `[auth]
identity_from_handshake = { user = "userId", roles = "role" }
${KEY_BLOCKS.HS256}${rule({ pattern: 'user_{sub}', subscribe: true })}${rule({ pattern: 'owners', subscribe: true, roles: ['owner'] })}
[socketio.client_events]
"join_room" = { subscribe = "{arg}" }
"whoami" = { reply = "whoami", data = { user = "{sub}", roles = "{claims.roles}" } }
"echo" = { reply = "echoed" }
`,
  });
  assert.match(h.stderr(), /identity_from_handshake.*UNTRUSTED/, 'a start-up warning says it is unverified');

  const join = (socket, room) => withTimeout(socket.emitWithAck('join_room', room), 10_000, `join ${room}`);
  const owner = await connected(t, h.url, { query: { userId: 'u1', role: 'owner' } });
  assert.equal((await join(owner, 'user_u1')).ok, true);
  assert.equal((await join(owner, 'owners')).ok, true);
  const refused = await join(owner, 'user_u2');
  assert.deepEqual([refused.ok, refused.error.code], [false, 'forbidden']);
  const whoami = waitFor(owner, 'whoami');
  assert.deepEqual(await withTimeout(owner.emitWithAck('whoami'), 10_000, 'whoami ack'), { ok: true });
  assert.deepEqual(await whoami, [{ user: 'u1', roles: ['owner'] }]);
  const echoed = waitFor(owner, 'echoed');
  owner.emit('echo', { any: ['thing', 1] });
  assert.deepEqual(await echoed, [{ any: ['thing', 1] }], 'a reply without data echoes the argument');

  // Through the auth object too, and with no role: not an owner.
  const reader = await connected(t, h.url, { auth: { userId: 'u3' } });
  assert.equal((await join(reader, 'user_u3')).ok, true);
  assert.equal((await join(reader, 'owners')).error.code, 'forbidden');

  // A valid token wins over the query; a bad token is refused whatever the query says.
  const jwt = await connected(t, h.url, { auth: { token: token({ sub: 'j1' }) }, query: { userId: 'u1', role: 'owner' } });
  assert.equal((await join(jwt, 'user_j1')).ok, true);
  assert.equal((await join(jwt, 'user_u1')).error.code, 'forbidden');
  assert.equal((await join(jwt, 'owners')).error.code, 'forbidden');
  const bad = io(h.url, { forceNew: true, reconnection: false, auth: { token: 'not.a.token' }, query: { userId: 'u1' } });
  t.after(() => bad.disconnect());
  const [err] = await waitFor(bad, 'connect_error');
  assert.equal(err.data?.code, 'unauthorized', JSON.stringify(err.data));
  // No user named and no token: keys are configured, so anonymous clients are refused as before.
  const none = io(h.url, { forceNew: true, reconnection: false, query: { role: 'owner' } });
  t.after(() => none.disconnect());
  assert.equal((await waitFor(none, 'connect_error'))[0].data?.code, 'unauthorized');

  // /ws reads the query string, and its emit op maps the same names.
  const ws = await openWs(t, `${wsBase(h)}/ws?userId=u1&role=owner`);
  const ok = await ws.request('emit', { event: 'join_room', args: ['owners'] });
  assert.equal(ok.type, 'ack', JSON.stringify(ok));
  assert.deepEqual([ok.event, ok.data.ok, ok.data.channel], ['join_room', true, 'owners']);
  const no = await ws.request('emit', { event: 'join_room', args: ['user_u2'] });
  assert.deepEqual([no.type, no.code, no.event], ['error', 'forbidden', 'join_room'], JSON.stringify(no));
  const from = ws.messages.length;
  const me = await ws.request('emit', { event: 'whoami' });
  assert.deepEqual(me.data, { ok: true });
  const sent = await ws.next((m) => m.type === 'event' && m.event === 'whoami', 10_000, 'whoami event', from);
  assert.deepEqual(sent.data, { user: 'u1', roles: ['owner'] });
  // SSE reads the query string too: its user's room streams, another user's is refused.
  const sse = eventSource(t, `${h.url}/sse/user_u1?userId=u1`, ['stats']);
  await sse.until((l) => l.opens > 0, 10_000, 'SSE open');
  const other = await sseRefused(t, h, '/sse/user_u2?userId=u1');
  assert.deepEqual([other.status, other.json?.error?.code], [403, 'forbidden'], other.text);

  await publish(h.url, 'owners', 'stats', { connectedOwners: 1 });
  await publish(h.url, 'user_u1', 'stats', { mine: true });
  const ev = await ws.next((m) => m.type === 'event' && m.channel === 'owners', 10_000, 'owners event');
  assert.deepEqual(ev.data, { connectedOwners: 1 });
  await sse.until((l) => l.items.length === 1, 10_000, 'SSE event');
  assert.deepEqual(sse.items[0].data, { mine: true });
  sse.es.close();
  await h.assertHealthy();
});

test('client publish: through the engine into history, only where the rules allow, rate and size limited; every refusal kind heard', async (t) => {
  const h = await startHerald(t, {
    config: `[auth]
identity_from_handshake = { user = "userId" }
${rule({ pattern: 'chat:*', subscribe: true, publish: true })}${rule({ pattern: 'news', subscribe: true, publish: false })}
[limits]
client_publishes_per_second = 1
client_publishes_burst = 3
client_publish_max_bytes = 200
[socketio.client_events]
"chat:send" = { publish = "chat:{arg.room}", event = "chat:message", data = { from = "{sub}", text = "{arg.text}" } }
"announce" = { publish = "news" }
"join_room" = { subscribe = "{arg.room}" }
"my_room" = { subscribe = "user_{claims.team}" }
`,
  });
  const a = await connected(t, h.url, { query: { userId: 'ann' } });
  const b = await connected(t, h.url, { query: { userId: 'bob' } });
  const recB = new Recorder(b);
  assert.equal((await b.emitWithAck('join_room', { room: 'chat:lobby' })).ok, true);

  const ack = await withTimeout(a.emitWithAck('chat:send', { room: 'lobby', text: 'hi' }), 10_000, 'publish ack');
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.channel, 'chat:lobby');
  assert.equal(typeof ack.offset, 'number');
  await recB.until((r) => r.named('chat:message').length === 1, 10_000, 'bob hears ann');
  assert.deepEqual(recB.named('chat:message')[0].args[0], { from: 'ann', text: 'hi' });
  const stored = await fullHistory(h.url, 'chat:lobby');
  assert.deepEqual(stored.events.map((e) => [e.event, e.data, e.offset]), [['chat:message', { from: 'ann', text: 'hi' }, ack.offset]]);

  // Each refusal kind, with an ack and without one.
  const c = await connected(t, h.url, { query: { userId: 'cy' } });
  const rec = new Recorder(c);
  const cases = [
    ['announce', [{ text: 'x' }], 'forbidden', /publish to news/],
    ['chat:send', [{ room: 'lobby', text: 'x'.repeat(300) }], 'payload_too_large', /at most 200/],
    ['chat:send', [{ text: 'no room' }], 'invalid_request', /`room` is missing/],
    ['my_room', [], 'missing_claim', /team/],
    ['nope', [1], 'unknown_event', /nope/],
  ];
  for (const [event, args, code, message] of cases) {
    const acked = await withTimeout(c.emitWithAck(event, ...args), 10_000, `${event} ack`);
    assert.deepEqual([acked.ok, acked.error?.code], [false, code], `${event}: ${JSON.stringify(acked)}`);
    assert.match(acked.error.message, message);
    const before = rec.named('error').length;
    c.emit(event, ...args);
    await rec.until((r) => r.named('error').length > before, 10_000, `error event for ${event}`);
    const e = rec.named('error')[before].args[0];
    assert.deepEqual([e.code, e.event], [code, event], JSON.stringify(e));
  }
  // A fresh connection has its burst of 3 client publishes, then is refused until the rate refills them.
  const d = await connected(t, h.url, { query: { userId: 'dee' } });
  const results = [];
  for (let i = 0; i < 5; i++) results.push(d.emitWithAck('chat:send', { room: 'lobby', text: `n${i}` }));
  const codes = (await withTimeout(Promise.all(results), 10_000, 'burst')).map((r) => (r.ok ? 'ok' : r.error.code));
  assert.deepEqual(codes, ['ok', 'ok', 'ok', 'rate_limited', 'rate_limited']);
  const recD = new Recorder(d);
  d.emit('chat:send', { room: 'lobby', text: 'no ack' });
  await recD.until((r) => r.named('error').length === 1, 10_000, 'rate_limited error event');
  assert.deepEqual([recD.named('error')[0].args[0].code, recD.named('error')[0].args[0].event], ['rate_limited', 'chat:send']);
  await recB.until((r) => r.named('chat:message').length === 4, 10_000, 'bob hears the three');
  assert.deepEqual(recB.named('chat:message').slice(1).map((m) => m.args[0].text), ['n0', 'n1', 'n2'], 'in order');

  // The same on /ws: publish, then a refusal naming the event.
  const ws = await openWs(t, `${wsBase(h)}/ws?userId=wes`);
  const p = await ws.request('emit', { event: 'chat:send', args: [{ room: 'lobby', text: 'from ws' }] });
  assert.deepEqual([p.type, p.data.ok, p.data.channel], ['ack', true, 'chat:lobby'], JSON.stringify(p));
  await recB.until((r) => r.named('chat:message').length === 5, 10_000, 'bob hears /ws');
  assert.deepEqual(recB.named('chat:message')[4].args[0], { from: 'wes', text: 'from ws' });
  const r = await ws.request('emit', { event: 'announce', args: [{}] });
  assert.deepEqual([r.type, r.code, r.event], ['error', 'forbidden', 'announce']);
  const missing = await ws.request('emit', {});
  assert.deepEqual([missing.type, missing.code], ['error', 'invalid_request']);

  // Counted on /metrics, by code (the emit without an event never reached the mapping).
  const metrics = (await request(h.url, '/metrics')).text;
  const count = (code) => Number(new RegExp(`herald_client_event_refusals_total\\{code="${code}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0);
  assert.deepEqual(
    Object.fromEntries(['forbidden', 'payload_too_large', 'invalid_request', 'missing_claim', 'unknown_event', 'rate_limited'].map((c) => [c, count(c)])),
    { forbidden: 3, payload_too_large: 2, invalid_request: 2, missing_claim: 2, unknown_event: 2, rate_limited: 3 },
    metrics,
  );
  assert.match(metrics, /herald_client_events_total (\d+)/);
  await h.assertHealthy();
});

test('client event mappings are checked at start-up: unknown placeholders, ambiguous tables, reserved names', async (t) => {
  for (const [mapping, expected] of [
    ['"subscribe:status" = { subscribe = "status:{team}" }', /"subscribe:status".*unknown placeholder \{team\}/],
    ['"x" = { subscribe = "a", publish = "b" }', /exactly one of/],
    ['"x" = { reply = "connect" }', /"x".*reserved/],
    ['"x" = { publish = "c", data = { a = "{claims.}" } }', /"x".*unknown placeholder/],
  ]) {
    const config = `[socketio.client_events]\n${mapping}\n`;
    await assert.rejects(startHerald(t, { config, env: { RUST_BACKTRACE: '0', RUST_LIB_BACKTRACE: '0' } }), (e) => {
      assert.match(e.message, expected);
      return true;
    }, mapping);
  }
});
