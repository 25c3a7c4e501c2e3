// 38. Collections (docs/collections.md): seed 001's backend replaced by configuration only —
// `examples/seed001/herald.toml`, read as shipped — with seed 001's frontend code copied as written in two tabs
// (a reader and an owner): its socket setup `io(url, { query: { userId, role } })` and its four handlers, over
// React-like state. The seed's REST calls (`POST /books` with `{title, author, returnDateTime}`, `PUT`/`DELETE
// /books/:id`) answer with the bodies and status codes it expects; the events carry the seed's payloads; the
// derived `dashboardStats {totalBooks, totalFavorites, connectedOwners}` and `favoriteUpdated {bookId,
// favoritesCount}` need no code. Also: resume of an offline tab, a restart, 400s naming the field, 412 on a stale
// If-Match, 413 on a 10 MB body, and a 10,000-document import within a stated memory bound.
//
// Seed 001 shows no frontend code for its initial load, its REST calls or the favourite toggle; the helpers marked
// "seed style" are the smallest ones in the seed's own style (its troubleshooting section reloads with
// `fetch('/books').then(res => res.json()).then(setBooks)`; the favourite route is the config's `[[collections.arrays]]`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, readFileSync as read } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import {
  startHerald, client, waitFor, Recorder, Waitable, request, history, assertApiError,
  HERALD_BIN, REPO_ROOT, cleanEnv, withTimeout, DURABLE_ONLY,
} from '../lib/herald.js';

const CONFIG = readFileSync(join(REPO_ROOT, 'examples/seed001/herald.toml'), 'utf8');

/** Runs the binary to completion: {code, stdout, stderr}. */
function run(args, ms = 20_000) {
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

/** One browser tab of seed 001's frontend. */
function seedTab(t, API, { userId, role, reconnect = false }) {
  const ui = new Waitable();
  ui.books = [];
  ui.favorites = {};
  ui.snacks = [];
  ui.stats = [];
  ui.summary = () => JSON.stringify({ books: ui.books.map((b) => b.title), favorites: ui.favorites, stats: ui.stats.at(-1) });
  const setter = (key) => (v) => { ui[key] = typeof v === 'function' ? v(ui[key]) : v; ui._check(); };
  const setBooks = setter('books');
  const setFavorites = setter('favorites');
  const enqueueSnackbar = (message, opts) => ui.snacks.push({ message, ...opts });

  // --- seed 001, "Socket Connection Setup" (userId and role given by the test instead of Math.random) ---
  const socket = client(t, API, {
    query: { userId, role },
    reconnection: reconnect,
    reconnectionDelay: 50,
    reconnectionDelayMax: 100,
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

  // --- seed 001, "Troubleshooting: Data Synchronization" (the reload, as the seed writes it) ---
  socket.on('reconnect', () => {
    fetch(`${API}/books`).then(res => res.json()).then(setBooks);
  });

  // --- seed style: the documented dashboardStats payload rendered; the owner's dashboard room ---
  socket.on('dashboardStats', (stats) => { ui.stats.push(stats); ui._check(); });
  const joinDashboard = () => socket.emit('ownerJoinDashboard');

  // --- seed style: the initial load and the REST calls of the book list ---
  const load = () => fetch(`${API}/books`).then(res => res.json()).then(setBooks);
  const json = (method, path, body, headers = {}) => fetch(`${API}${path}`, {
    method,
    headers: { 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  }).then(async (res) => ({ status: res.status, etag: res.headers.get('etag'), body: await res.json() }));
  const api = {
    addBook: (title, author, returnDateTime) => json('POST', '/books', { title, author, returnDateTime }),
    editBook: (id, fields, headers) => json('PUT', `/books/${id}`, fields, headers),
    deleteBook: (id) => json('DELETE', `/books/${id}`),
    favorite: (id) => json('POST', `/books/${id}/favorite?userId=${encodeURIComponent(userId)}`),
    unfavorite: (id) => json('DELETE', `/books/${id}/favorite?userId=${encodeURIComponent(userId)}`),
  };
  return { socket, ui, rec: new Recorder(socket), load, api, joinDashboard };
}

const SEED_BOOKS = [
  { id: 1703123456789, title: 'New Book Title', author: 'Author Name', returnDateTime: '2024-12-25T14:30:00.000Z', favorites: [] },
  { id: 1703123456790, title: 'Dune', author: 'Frank Herbert', returnDateTime: null, favorites: ['demoUser1', 'demoUser2'] },
];

async function importBooks(h, books) {
  const file = join(h.dir, 'books.json');
  writeFileSync(file, JSON.stringify(books, null, 2));
  const r = await run(['collections', 'import', 'books', file, '--url', h.url]);
  assert.equal(r.code, 0, `import: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const titles = (ui) => ui.books.map((b) => b.title).join('|');

test('seed 001 against the config file: add/edit/favourite/delete reach both tabs with the seed payloads; dashboardStats only on change; 400/412/413', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  // The seed's books.json moves in with one command.
  assert.deepEqual(await importBooks(h, SEED_BOOKS), { collection: 'books', documents: 2, created: 2, replaced: 0, batches: 1 });
  const list = await run(['collections', 'list', '--url', h.url]);
  assert.match(list.stdout, /^books\tchannel=books\tpath=\/books\tdocuments=2$/m);

  const reader = seedTab(t, h.url, { userId: 'demoUser7', role: 'reader' });
  const owner = seedTab(t, h.url, { userId: 'boss', role: 'owner' });
  await Promise.all([waitFor(reader.socket, 'connect'), waitFor(owner.socket, 'connect')]);
  await Promise.all([reader.load(), owner.load()]);
  assert.deepEqual(reader.ui.books, SEED_BOOKS, 'GET /books answers the stored array, in id order');
  // Presence is counted as it changes: wait until the owner's connection is (the history long-polled).
  for (let since = 0; ;) {
    const r = await history(h.url, 'dashboard', { since, wait: 10 });
    assert.ok(r.json.events.length > 0, `connectedOwners never reached 1: ${r.text}`);
    if (r.json.events.at(-1).data.connectedOwners === 1) break;
    since = r.json.last_offset;
  }
  owner.joinDashboard();
  await owner.ui.until((ui) => ui.stats.length === 1, 10_000, 'the current dashboardStats on joining');
  assert.deepEqual(owner.ui.stats[0], { totalBooks: 2, totalFavorites: 2, connectedOwners: 1 });

  // Add: 201 and the new book, as the seed's backend built it.
  const added = await reader.api.addBook('  Emma ', 'Jane Austen', undefined);
  assert.equal(added.status, 201);
  const emma = added.body;
  assert.equal(typeof emma.id, 'number');
  assert.ok(Math.abs(emma.id - Date.now()) < 60_000, 'id: Date.now()');
  assert.deepEqual(emma, { id: emma.id, title: 'Emma', author: 'Jane Austen', returnDateTime: null, favorites: [] });
  for (const tab of [reader, owner]) {
    await tab.ui.until((ui) => ui.books.length === 3, 10_000, 'bookAdded in both tabs');
    assert.deepEqual(tab.rec.named('bookAdded')[0].args[0], emma, 'bookAdded carries the whole book');
    assert.deepEqual(tab.ui.snacks.at(-1), { message: 'New book added!', variant: 'success' });
  }
  // Edit: the seed's update keeps what it is not sent (put = "merge").
  const edited = await owner.api.editBook(emma.id, { title: 'Emma (1815)' });
  assert.equal(edited.status, 200);
  assert.deepEqual(edited.body, { ...emma, title: 'Emma (1815)' });
  for (const tab of [reader, owner]) {
    await tab.ui.until((ui) => titles(ui) === 'New Book Title|Dune|Emma (1815)', 10_000, 'bookUpdated in both tabs');
  }
  // Favourite: the caller's id joins `favorites` once, however often it is sent.
  const fav = await reader.api.favorite(emma.id);
  assert.equal(fav.status, 200);
  assert.deepEqual(fav.body.favorites, ['demoUser7']);
  const again = await reader.api.favorite(emma.id);
  assert.deepEqual(again.body, fav.body, 'a second favourite changes nothing');
  for (const tab of [reader, owner]) {
    await tab.ui.until((ui) => ui.favorites[emma.id] === 1, 10_000, 'favoriteUpdated in both tabs');
    assert.deepEqual(tab.ui.books.find((b) => b.id === emma.id).favorites, ['demoUser7']);
  }
  // Delete: the deleted book, as it was.
  const deleted = await owner.api.deleteBook(SEED_BOOKS[0].id);
  assert.equal(deleted.status, 200);
  assert.deepEqual(deleted.body, SEED_BOOKS[0]);
  for (const tab of [reader, owner]) {
    await tab.ui.until((ui) => titles(ui) === 'Dune|Emma (1815)', 10_000, 'bookDeleted in both tabs');
    assert.deepEqual(tab.rec.named('bookDeleted')[0].args[0], SEED_BOOKS[0]);
  }
  await owner.ui.until((ui) => ui.stats.at(-1).totalBooks === 2, 10_000, 'dashboardStats after the delete');
  // Unfavourite.
  await reader.api.unfavorite(emma.id);
  for (const tab of [reader, owner]) await tab.ui.until((ui) => ui.favorites[emma.id] === 0, 10_000, 'favoriteUpdated 0');
  // dashboardStats changed exactly when a number did: add, favourite, delete, unfavourite — not on the edit,
  // not on the repeated favourite.
  await owner.ui.until((ui) => ui.stats.length === 5, 10_000, 'five dashboardStats');
  assert.deepEqual(owner.ui.stats, [
    { totalBooks: 2, totalFavorites: 2, connectedOwners: 1 },
    { totalBooks: 3, totalFavorites: 2, connectedOwners: 1 },
    { totalBooks: 3, totalFavorites: 3, connectedOwners: 1 },
    { totalBooks: 2, totalFavorites: 3, connectedOwners: 1 },
    { totalBooks: 2, totalFavorites: 2, connectedOwners: 1 },
  ]);
  assert.equal(reader.rec.named('dashboardStats').length, 0, 'dashboardStats reaches owners only');
  assert.equal(reader.rec.named('favoriteUpdated').length, 2);
  // The same list through the backend's API, with paging.
  const page = await request(h.url, '/api/collections/books?limit=1');
  assert.equal(page.status, 200);
  assert.deepEqual(page.json.documents.map((b) => b.title), ['Dune']);
  const rest = await request(h.url, `/api/collections/books?limit=1&after=${page.json.next}`);
  assert.deepEqual(rest.json.documents.map((b) => b.title), ['Emma (1815)']);
  assert.equal(rest.json.next, null);
  const filtered = await request(h.url, '/api/collections/books?author=Frank%20Herbert');
  assert.deepEqual(filtered.json.documents.map((b) => b.id), [SEED_BOOKS[1].id]);

  // Bad bodies: 400 naming the field; nothing is stored or announced.
  const before = (await request(h.url, '/books')).json;
  const bad = async (method, path, body, field, what) => {
    const r = await request(h.url, path, { method, body });
    assertApiError(r, 400, 'invalid_request', what);
    assert.equal(r.json.error.field, field, `${what}: ${r.text}`);
  };
  await bad('POST', '/books', { author: 'x' }, 'title', 'no title');
  await bad('POST', '/books', { title: '   ', author: 'x' }, 'title', 'a blank title (trimmed first)');
  await bad('POST', '/books', { title: 't'.repeat(256), author: 'x' }, 'title', 'a title over 255 characters');
  await bad('POST', '/books', { title: 'T', author: 42 }, 'author', 'a number for author');
  await bad('PUT', `/books/${emma.id}`, { returnDateTime: 5 }, 'returnDateTime', 'a number for returnDateTime');
  await bad('POST', '/books', { title: 'T', author: 'A', id: 5 }, 'id', 'an id chosen by the client');
  const notJson = await request(h.url, '/books', { method: 'POST', rawBody: '{"title":', headers: { 'content-type': 'application/json' } });
  assertApiError(notJson, 400, 'invalid_json', 'truncated JSON');
  assertApiError(await request(h.url, '/books/12345', { method: 'DELETE' }), 404, 'document_not_found', 'unknown id');

  // A stale If-Match gets 412 and changes nothing.
  const current = await request(h.url, `/books/${emma.id}`);
  const etag = current.headers.get('etag');
  assert.match(etag, /^"[0-9a-f]{16}"$/);
  const ok = await reader.api.editBook(emma.id, { author: 'J. Austen' }, { 'If-Match': etag });
  assert.equal(ok.status, 200);
  assert.notEqual(ok.etag, etag, 'a write changes the version');
  const stale = await request(h.url, `/books/${emma.id}`, { method: 'PUT', body: { author: 'Someone' }, headers: { 'if-match': etag } });
  assertApiError(stale, 412, 'precondition_failed', 'stale If-Match');
  assert.equal((await request(h.url, `/books/${emma.id}`)).json.author, 'J. Austen', 'the stale write changed nothing');

  // The favourite adds the caller: nobody identified → 401, and nothing changes.
  assertApiError(await request(h.url, `/books/${emma.id}/favorite`, { method: 'POST' }), 401, 'unauthorized', 'anonymous favourite');
  // The React dev server's origin may call PUT and DELETE (its preflight is answered); another origin may not.
  const preflight = await request(h.url, `/books/${emma.id}`, {
    method: 'OPTIONS',
    headers: { origin: 'http://localhost:3000', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'content-type' },
  });
  assert.equal(preflight.status, 204, preflight.text);
  assert.match(preflight.headers.get('access-control-allow-methods'), /PUT/);
  assert.equal(preflight.headers.get('access-control-allow-origin'), 'http://localhost:3000');
  const foreign = await request(h.url, `/books/${emma.id}`, { method: 'DELETE', headers: { origin: 'http://evil.example' } });
  assertApiError(foreign, 403, 'origin_not_allowed', 'another origin');

  // A 10 MB body is refused before it is stored.
  const huge = await request(h.url, '/books', { method: 'POST', rawBody: JSON.stringify({ title: 'x'.repeat(10 << 20), author: 'a' }), headers: { 'content-type': 'application/json' }, timeout: 30_000 });
  assertApiError(huge, 413, 'payload_too_large', '10 MB body');
  const after = (await request(h.url, '/books')).json;
  assert.equal(after.length, before.length, 'no refused body was stored');
  assert.deepEqual(after.map((b) => b.id), before.map((b) => b.id));
  const metrics = (await request(h.url, '/metrics')).text;
  assert.match(metrics, /^herald_collection_documents\{collection="books"\} 2$/m);
  const refused = Number(/^herald_collection_refused_total\{collection="books"\} (\d+)$/m.exec(metrics)?.[1]);
  assert.ok(refused >= 8, `refused writes are counted: ${refused}`);
});

test('a tab offline during three changes gets them on reconnect, in order, once; a restart loses nothing', DURABLE_ONLY, async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  await importBooks(h, SEED_BOOKS);
  const tab = seedTab(t, h.url, { userId: 'demoUser7', role: 'reader', reconnect: true });
  await waitFor(tab.socket, 'connect');
  await tab.load();
  const connects = [];
  tab.socket.on('connect', () => connects.push(tab.socket.recovered));

  tab.socket.io.reconnection(false);
  const down = waitFor(tab.socket, 'disconnect');
  tab.socket.io.engine.close();
  await down;
  const seen = tab.rec.events.length;
  const writer = seedTab(t, h.url, { userId: 'boss', role: 'owner' });
  const added = (await writer.api.addBook('Emma', 'Jane Austen', null)).body;
  await writer.api.editBook(SEED_BOOKS[1].id, { title: 'Dune Messiah' });
  await writer.api.deleteBook(SEED_BOOKS[0].id);

  tab.socket.io.reconnection(true);
  tab.socket.connect();
  await tab.ui.until((ui) => titles(ui) === 'Dune Messiah|Emma', 20_000, 'the three changes after reconnecting');
  assert.deepEqual(connects, [true], 'the session was recovered');
  const missed = tab.rec.events.slice(seen).filter((e) => e.name.startsWith('book'));
  assert.deepEqual(missed.map((e) => e.name), ['bookAdded', 'bookUpdated', 'bookDeleted'], 'in order, once');
  assert.deepEqual(missed[0].args[0], added);
  assert.equal(tab.rec.named('books:snapshot').length, 1, 'the snapshot only on the first connect');

  // A restart: the documents, their versions and the derived values are all still there, and the tab resumes.
  const docs = (await request(h.url, '/books')).json;
  const etag = (await request(h.url, `/books/${added.id}`)).headers.get('etag');
  const stats = (await history(h.url, 'dashboard')).json.events.at(-1).data;
  const back = waitFor(tab.socket, 'connect', 30_000, 'the tab reconnects after the restart');
  await h.stop();
  await h.restart();
  assert.deepEqual((await request(h.url, '/books')).json, docs);
  assert.equal((await request(h.url, `/books/${added.id}`)).headers.get('etag'), etag, 'the version survives');
  // Presence is now, not stored: only the owner tab that is still away changes connectedOwners.
  const { totalBooks, totalFavorites } = (await history(h.url, 'dashboard')).json.events.at(-1).data;
  assert.deepEqual({ totalBooks, totalFavorites }, { totalBooks: stats.totalBooks, totalFavorites: stats.totalFavorites });
  await back;
  const fresh = seedTab(t, h.url, { userId: 'late', role: 'reader' });
  await fresh.rec.until((r) => r.named('books:snapshot').length === 1, 10_000, 'a new tab gets the documents at once');
  assert.deepEqual(fresh.rec.named('books:snapshot')[0].args[0], docs);
  await writer.api.addBook('Persuasion', 'Jane Austen', null);
  await tab.ui.until((ui) => titles(ui) === 'Dune Messiah|Emma|Persuasion', 10_000, 'live again after the restart');
  assert.equal(tab.rec.named('bookAdded').length, 2, 'each change once');
  assert.ok(connects.every((r) => r === true), `recovered across the restart: ${JSON.stringify(connects)}`);
});

/** Resident memory of a process, in KiB. */
const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(read(`/proc/${pid}/status`, 'utf8'))[1]);

test('a 10,000-document import stays within 64 MiB of server memory; a new subscriber gets them in one snapshot', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const books = Array.from({ length: 10_000 }, (_, i) => ({
    id: 1703123456789 + i, title: `Book ${i}`, author: `Author ${i % 97}`, returnDateTime: null, favorites: i % 2 ? [`u${i % 5}`] : [],
  }));
  const base = rssKiB(h.proc.pid);
  const r = await importBooks(h, books);
  assert.equal(r.documents, 10_000);
  assert.ok(r.batches > 1, `the import is sent in bounded batches: ${JSON.stringify(r)}`);
  const grown = rssKiB(h.proc.pid) - base;
  t.diagnostic(`server RSS grew ${grown} KiB for 10,000 documents (${(grown * 1024 / 10_000).toFixed(0)} bytes each)`);
  assert.ok(grown < 64 * 1024, `server memory grew ${grown} KiB importing 10,000 documents (bound: 64 MiB)`);
  const tab = seedTab(t, h.url, { userId: 'demoUser7', role: 'reader' });
  const started = Date.now();
  await tab.rec.until((x) => x.named('books:snapshot').length === 1, 20_000, 'the snapshot');
  t.diagnostic(`10,000-document snapshot reached a new subscriber in ${Date.now() - started} ms`);
  const snap = tab.rec.named('books:snapshot')[0].args[0];
  assert.equal(snap.length, 10_000);
  assert.deepEqual(snap[9_999], books[9_999]);
  const stats = (await history(h.url, 'dashboard')).json.events.at(-1).data;
  assert.deepEqual(stats, { totalBooks: 10_000, totalFavorites: 5_000, connectedOwners: 0 });
});

test('access rules on the frontend path with JWTs: users create, owners edit their own, admins any; API keys pass', async (t) => {
  const { sign, HMAC_SECRET } = await import('../lib/jwt.js');
  const { KEY_BLOCKS } = await import('../lib/auth.js');
  const config = `
api_keys = ["backend-key"]
[auth]
${KEY_BLOCKS.HS256}
[[collections]]
name = "notes"
path = "/notes"
id = "ulid"
owner_field = "ownerId"
created_field = "createdAt"
access = { list = "owner | role:admin", read = "owner | role:admin", create = "user", update = "owner | role:admin", delete = "role:admin | api_key" }
`;
  const h = await startHerald(t, { config });
  const bearer = (sub, roles = []) => ({ authorization: `Bearer ${sign({ sub, roles, exp: Math.floor(Date.now() / 1000) + 600 }, { alg: 'HS256', secret: HMAC_SECRET })}` });
  const call = (method, path, headers, body) => request(h.url, path, { method, headers, body });
  assertApiError(await call('POST', '/notes', {}, { text: 'x' }), 401, 'unauthorized', 'no token');
  const a = await call('POST', '/notes', bearer('ann'), { text: 'mine', ownerId: 'zed' });
  assert.equal(a.status, 201, a.text);
  assert.equal(a.json.ownerId, 'ann', 'the owner is the caller, whatever the body says');
  assert.match(a.json.id, /^[0-9A-HJKMNP-TV-Z]{26}$/, 'a ULID');
  assert.ok(Date.parse(a.json.createdAt) > 0);
  const b = await call('POST', '/notes', bearer('bob'), { text: 'his' });
  const own = await call('GET', '/notes', bearer('ann'));
  assert.equal(own.status, 200, own.text);
  assert.deepEqual(own.json.map((n) => n.text), ['mine'], 'an owner lists only their own');
  assert.equal((await call('GET', '/notes', bearer('root', ['admin']))).json.length, 2);
  assertApiError(await call('PUT', `/notes/${b.json.id}`, bearer('ann'), { text: 'hijack' }), 403, 'forbidden', "another's note");
  const edited = await call('PATCH', `/notes/${a.json.id}`, bearer('ann'), { text: 'edited', ownerId: 'zed', createdAt: 'never' });
  assert.equal(edited.status, 200, edited.text);
  assert.deepEqual([edited.json.ownerId, edited.json.createdAt], ['ann', a.json.createdAt], 'owner and creation time are kept');
  assertApiError(await call('DELETE', `/notes/${a.json.id}`, bearer('ann')), 403, 'forbidden', 'delete is for admins');
  assert.equal((await call('DELETE', `/notes/${a.json.id}`, { authorization: 'Bearer backend-key' })).status, 200, 'an API key passes api_key');
  assertApiError(await call('GET', '/notes', { authorization: 'Bearer not-a-token' }), 401, 'unauthorized', 'a bad token');
  // The backend's API needs its key and passes every rule.
  assertApiError(await request(h.url, '/api/collections/notes'), 401, 'unauthorized', 'API without a key');
  const all = await request(h.url, '/api/collections/notes', { headers: { authorization: 'Bearer backend-key' } });
  assert.deepEqual(all.json.documents.map((n) => n.text), ['his']);
});
