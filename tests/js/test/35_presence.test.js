// 35. Presence (docs/presence.md), replayed with seed 001's frontend (the book list): its connection setup
// `io(url, { query: { userId, role } })` and its socket handlers, copied as written, in a reader tab and an owner tab.
// Herald computes what seed 001's backend kept by hand (`onlineUsers`, `connectedOwners`) from presence, declared
// in `[[presence.values]]`; `dashboardStats` reaches owners only (a channel rule by role, joined through the seed's
// `ownerJoinDashboard`). Also: the presence routes' JSON and per-pattern join/leave events collapsing a user's tabs.
//
// Seed 001 shows no frontend handler for `dashboardStats` or an online list (its backend only documents the payload
// `{totalBooks, totalFavorites, connectedOwners}` and keeps `onlineUsers`); the two handlers marked "seed style"
// below are the smallest ones in the seed's own style (React state setters) rendering those documented values.
// `totalBooks`/`totalFavorites` come from document counts (the collections work), not presence: not asserted here.
//
// Identities: seed 001 passes `userId`/`role` in the handshake query. Herald takes identities from the handshake
// only with `[auth] identity_from_handshake`: the last replay runs the frontend exactly so; the first ones give each
// tab a JWT for the same user and role besides the seed's query (the production setup).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, pause, client, publish, request, history, subscribeOk, waitFor, Recorder, Waitable } from '../lib/herald.js';
import { sign, HMAC_SECRET } from '../lib/jwt.js';
import { KEY_BLOCKS, rule } from '../lib/auth.js';
import { openWs, openSse, wsBase } from '../lib/plain.js';

const SEED_EVENTS = `
[socketio]
server_side_channels = ["books", "online"]

[socketio.client_events]
"ownerJoinDashboard" = { subscribe = "dashboard" }
"ownerLeaveDashboard" = { unsubscribe = "dashboard" }

[[presence.values]]
channel = "dashboard"
event = "dashboardStats"
value = { connectedOwners = "count(role = owner)", onlineUsers = "users" }

[[presence.values]]
channel = "online"
event = "onlineUsers"
value = { users = "users" }
`;

const RULES = [
  rule({ pattern: 'books', subscribe: true }),
  rule({ pattern: 'online', subscribe: true }),
  rule({ pattern: 'dashboard', subscribe: true, roles: ['owner'] }),
].join('');

const JWT_CONFIG = `${SEED_EVENTS}\n[auth]\n${KEY_BLOCKS.HS256}${RULES}`;
const token = (userId, role) => sign({ sub: userId, roles: [role] }, { alg: 'HS256', secret: HMAC_SECRET });

/**
 * One browser tab of seed 001's frontend: its socket setup and handlers as written, over React-like state.
 * `extra` adds connect options (the JWT while handshake identities are not configured).
 */
function seedTab(t, url, { userId, role, extra = {} }) {
  const ui = new Waitable();
  ui.books = [];
  ui.favorites = {};
  ui.snacks = [];
  ui.stats = null;
  ui.onlineUsers = [];
  ui.summary = () => JSON.stringify({ books: ui.books.length, stats: ui.stats, onlineUsers: ui.onlineUsers });
  const setter = (key) => (v) => { ui[key] = typeof v === 'function' ? v(ui[key]) : v; ui._check(); };
  const setBooks = setter('books');
  const setFavorites = setter('favorites');
  const setStats = setter('stats');
  const setOnlineUsers = setter('onlineUsers');
  const enqueueSnackbar = (message, opts) => ui.snacks.push({ message, ...opts });

  // --- seed 001, "Socket Connection Setup" (userId and role given by the test instead of Math.random) ---
  const socket = client(t, url, {
    query: { userId, role },
    reconnection: false,
    ...extra,
  });

  // --- seed 001, "Event Listeners", verbatim ---
  socket.on('bookAdded', (newBook) => {
    setBooks(prev => [...prev, newBook]);
    enqueueSnackbar('New book added!', { variant: 'success' });
  });

  socket.on('bookUpdated', (updatedBook) => {
    setBooks(prev => prev.map(book =>
      book.id === updatedBook.id ? updatedBook : book
    ));
    enqueueSnackbar('Book updated!', { variant: 'info' });
  });

  socket.on('bookDeleted', (deletedBook) => {
    setBooks(prev => prev.filter(book => book.id !== deletedBook.id));
    enqueueSnackbar('Book deleted!', { variant: 'warning' });
  });

  socket.on('favoriteUpdated', ({ bookId, favoritesCount }) => {
    setFavorites(prev => ({
      ...prev,
      [bookId]: favoritesCount
    }));
  });

  // --- seed style: the documented dashboardStats payload and the backend's onlineUsers, rendered ---
  socket.on('dashboardStats', (stats) => setStats(stats));
  socket.on('onlineUsers', ({ users }) => setOnlineUsers(users));

  // --- seed 001, "Event Filtering": an owner viewing the dashboard ---
  const joinDashboard = () => socket.emit('ownerJoinDashboard');
  const leaveDashboard = () => socket.emit('ownerLeaveDashboard');

  return { socket, ui, rec: new Recorder(socket), joinDashboard, leaveDashboard };
}

/** The dashboard channel's `connectedOwners` values in history, consecutive repeats collapsed, and its last offset. */
async function ownerCounts(url, { since = 0, wait } = {}) {
  const r = await history(url, 'dashboard', { limit: 1000, since, wait });
  assert.equal(r.status, 200, `dashboard history: ${r.text}`);
  const counts = r.json.events.map((e) => e.data.connectedOwners).filter((n, i, all) => i === 0 || all[i - 1] !== n);
  return { counts, last: r.json.last_offset };
}

async function presence(url, path) {
  const r = await request(url, path);
  assert.equal(r.status, 200, `${path}: ${r.text}`);
  return r.json;
}

async function seed001(t, h, identity) {
  // Nobody is connected yet: the declared value is published at start-up (by a task the listening line does not
  // wait for: await its first event, re-reading as fast as the API answers).
  const started = Date.now();
  while ((await history(h.url, 'dashboard', { limit: 1 })).status === 404) {
    assert.ok(Date.now() - started < 5_000, 'the start-up value is published within 5 s');
    await pause(10);
  }
  assert.deepEqual((await ownerCounts(h.url)).counts, [0], 'connectedOwners starts at 0');

  const reader = seedTab(t, h.url, { userId: 'demoUser7', role: 'reader', extra: identity('demoUser7', 'reader') });
  await waitFor(reader.socket, 'connect');
  await reader.ui.until((ui) => ui.onlineUsers.join() === 'demoUser7', 10_000, 'reader sees itself online');

  // A reader asking for the dashboard is refused, with a reason.
  const refused = waitFor(reader.socket, 'error', 10_000, 'reader ownerJoinDashboard refused');
  reader.joinDashboard();
  const [err] = [await refused].flat();
  assert.equal(err.code, 'forbidden', JSON.stringify(err));
  assert.equal(err.event, 'ownerJoinDashboard');

  const owner = seedTab(t, h.url, { userId: 'boss', role: 'owner', extra: identity('boss', 'owner') });
  await waitFor(owner.socket, 'connect');
  owner.joinDashboard();
  await owner.ui.until((ui) => ui.stats?.connectedOwners === 1, 10_000, 'owner dashboardStats');
  assert.deepEqual(owner.ui.stats, { connectedOwners: 1, onlineUsers: ['boss', 'demoUser7'] });
  await reader.ui.until((ui) => ui.onlineUsers.join() === 'boss,demoUser7', 10_000, 'reader sees the owner online');

  // Seed 001's book events still reach both tabs.
  await publish(h.url, 'books', 'bookAdded', { id: 1, title: 'Dune', author: 'Herbert', returnDateTime: null, favorites: [] });
  await reader.ui.until((ui) => ui.books.length === 1, 10_000, 'reader book list');
  await owner.ui.until((ui) => ui.books.length === 1, 10_000, 'owner book list');
  assert.deepEqual(reader.ui.snacks, [{ message: 'New book added!', variant: 'success' }]);

  // The presence routes: everyone connected, one channel, counts by role.
  const online = await presence(h.url, '/api/presence');
  assert.equal(online.channel, 'herald:online');
  assert.deepEqual(online.users, ['boss', 'demoUser7']);
  assert.deepEqual(online.counts, { connections: 2, users: 2, anonymous: 0, roles: { owner: 1, reader: 1 } });
  assert.deepEqual(online.connections.map((c) => c.id).sort(), [owner.socket.id, reader.socket.id].sort());
  for (const c of online.connections) {
    assert.equal(c.transport, 'socketio');
    assert.equal(typeof c.connected_at, 'number');
    assert.deepEqual(c.roles, [c.user === 'boss' ? 'owner' : 'reader']);
  }
  assert.equal(online.next, null);
  const dash = await presence(h.url, '/api/channels/dashboard/presence');
  assert.deepEqual(dash.connections.map((c) => [c.id, c.user]), [[owner.socket.id, 'boss']], 'only the owner is on the dashboard');
  const page = await presence(h.url, '/api/channels/books/presence?limit=1');
  assert.equal(page.connections.length, 1);
  assert.equal(page.counts.connections, 2, 'counts cover the whole channel, not the page');
  const rest = await presence(h.url, `/api/channels/books/presence?limit=1&after=${encodeURIComponent(page.next)}`);
  assert.equal(rest.connections.length, 1);
  assert.equal(rest.next, null);
  assert.notEqual(rest.connections[0].id, page.connections[0].id);

  // The seed's ownerLeaveDashboard leaves the dashboard channel (the owner is still online, so still counted).
  owner.leaveDashboard();
  const left = Date.now() + 10_000;
  while ((await presence(h.url, '/api/channels/dashboard/presence')).counts.connections !== 0) {
    assert.ok(Date.now() < left, 'ownerLeaveDashboard left the dashboard channel');
    await pause(10);
  }

  // The owner tab closes: connectedOwners back to 0, the reader's list back to itself.
  owner.socket.disconnect();
  await reader.ui.until((ui) => ui.onlineUsers.join() === 'demoUser7', 10_000, 'the owner left the online list');
  // Long-poll the dashboard's history until the value after the owner left is there.
  let seen = await ownerCounts(h.url);
  while (seen.counts.join() !== '0,1,0') {
    const next = await ownerCounts(h.url, { since: seen.last, wait: 10 });
    assert.ok(next.last > seen.last, `connectedOwners went ${seen.counts.join('→')} and stopped, not 0→1→0`);
    seen = await ownerCounts(h.url);
  }
  assert.equal(reader.rec.named('dashboardStats').length, 0, 'dashboardStats reaches owners only');
  h.assertNoPanic();
}

test('seed 001 with JWT identities: online users, connectedOwners 0→1→0, dashboardStats to owners only, presence routes', async (t) => {
  const h = await startHerald(t, { config: JWT_CONFIG });
  await seed001(t, h, (userId, role) => ({ auth: { token: token(userId, role) } }));
});

// The frontend exactly as written (no token): identities from the handshake query.
test('seed 001 with handshake identities, frontend unchanged', async (t) => {
  const config = `${SEED_EVENTS}\n[auth]\nidentity_from_handshake = { user = "userId", roles = "role" }\n${RULES}`;
  const h = await startHerald(t, { config });
  await seed001(t, h, () => ({}));
});

test('join/leave events per pattern: a user joins with the first tab and leaves with the last', async (t) => {
  const config = `
[[presence.channels]]
pattern = "room:*"
join_event = "userJoined"
leave_event = "userLeft"

[[presence.channels]]
pattern = "lobby"
payload = "member"

[auth]
${KEY_BLOCKS.HS256}`;
  const h = await startHerald(t, { config });
  const tab = async (user) => {
    const s = client(t, h.url, { auth: { token: token(user, 'reader') }, reconnection: false });
    await waitFor(s, 'connect');
    return s;
  };
  const watcher = await tab('wendy');
  const rec = new Recorder(watcher);
  await subscribeOk(watcher, 'room:1');
  await subscribeOk(watcher, 'lobby');
  const seen = () => rec.events
    .filter((e) => ['userJoined', 'userLeft'].includes(e.name))
    .map((e) => `${e.name} ${e.args[0].user}`);
  await rec.until(() => seen().length === 1, 10_000, 'the watcher hears itself join');
  const a1 = await tab('alice');
  const a2 = await tab('alice');
  await subscribeOk(a1, 'room:1');
  await subscribeOk(a2, 'room:1');
  await subscribeOk(a1, 'lobby');
  await subscribeOk(a2, 'lobby');
  const [w, t1, t2] = [watcher.id, a1.id, a2.id];
  a1.disconnect();
  await rec.until(() => rec.named('presence:leave').length === 1, 10_000, 'lobby: a connection left');
  a2.disconnect();
  await rec.until(() => seen().length === 3, 10_000, 'alice left room:1');
  assert.deepEqual(seen(), ['userJoined wendy', 'userJoined alice', 'userLeft alice'], 'two tabs are one join and one leave');
  assert.deepEqual(rec.named('userJoined')[1].args[0], { user: 'alice', roles: ['reader'] });
  // `payload = "member"`: every connection joins and leaves, described in full.
  await rec.until(() => rec.named('presence:leave').length === 2, 10_000, 'lobby: both tabs left');
  const lobby = rec.events.filter((e) => e.name.startsWith('presence:')).map((e) => `${e.name} ${e.args[0].id}`);
  assert.deepEqual(lobby, [
    `presence:join ${w}`, `presence:join ${t1}`, `presence:join ${t2}`,
    `presence:leave ${t1}`, `presence:leave ${t2}`,
  ]);
  const member = rec.named('presence:join')[1].args[0];
  assert.deepEqual(Object.keys(member).sort(), ['connected_at', 'id', 'roles', 'transport', 'user']);
  assert.equal(member.transport, 'socketio');
  h.assertNoPanic();
});

test('connection-wide presence covers every transport, subscribed or not', async (t) => {
  const config = '[[presence.values]]\nchannel = "stats"\nevent = "stats"\nvalue = { n = "connections" }\n';
  const h = await startHerald(t, { config });
  // Awaits the `stats` value reaching `n` by long-polling its history.
  const until = async (n) => {
    let since = 0;
    for (;;) {
      const r = await history(h.url, 'stats', { since, wait: 10 });
      assert.equal(r.status, 200, r.text);
      assert.ok(r.json.events.length > 0, `connections never reached ${n}`);
      if (r.json.events.at(-1).data.n === n) return;
      since = r.json.events.at(-1).offset;
    }
  };
  const sio = client(t, h.url, { reconnection: false });
  await waitFor(sio, 'connect');
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  const sse = await openSse(t, `${h.url}/sse?channel=news`);
  await until(3);
  const online = await presence(h.url, '/api/presence');
  assert.deepEqual(online.connections.map((c) => c.transport).sort(), ['socketio', 'sse', 'websocket']);
  assert.deepEqual(online.counts, { connections: 3, users: 0, anonymous: 3, roles: {} });
  assert.deepEqual(online.users, []);
  const news = await presence(h.url, '/api/channels/news/presence');
  assert.deepEqual(news.connections.map((c) => c.transport), ['sse'], 'only the SSE stream is on news');
  ws.close();
  await until(2);
  sse.close();
  await until(1);
  sio.disconnect();
  await until(0);
  h.assertNoPanic();
});

test('presence routes refuse bad input with codes', async (t) => {
  const h = await startHerald(t, { config: '[presence]\nonline_channel = "everyone"\n', args: ['--api-key', 'k'] });
  const key = { authorization: 'Bearer k' };
  const r0 = await request(h.url, '/api/presence');
  assert.equal(r0.status, 401);
  const empty = await request(h.url, '/api/presence', { headers: key });
  assert.equal(empty.json.channel, 'everyone', 'online_channel is configurable');
  assert.deepEqual(empty.json.counts, { connections: 0, users: 0, anonymous: 0, roles: {} });
  for (const [path, status, code] of [
    ['/api/presence?limit=0', 400, 'invalid_request'],
    ['/api/channels/x/presence?limit=abc', 400, 'invalid_request'],
    ['/api/channels/herald:online/presence', 400, 'reserved_channel'],
  ]) {
    const r = await request(h.url, path, { headers: key });
    assert.equal(r.status, status, `${path}: ${r.text}`);
    assert.equal(r.json?.error?.code, code, `${path}: ${r.text}`);
  }
});
