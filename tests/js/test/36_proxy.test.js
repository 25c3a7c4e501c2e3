// 36. `[[proxy]]` (docs/proxy.md): path prefixes forwarded to the user's backend, so seed 001's frontend — REST
// calls with `fetch('/books')` on the same origin as its socket — works with its backend behind Herald. The
// backend here is a small node http server with seed 001's routes; `io.emit(...)` becomes a publish to Herald.
// Also: streaming both ways (the upstream sees an upload's first bytes before the client sent the rest, Herald's
// peak RSS does not grow by the upload's size; a chunked answer's first chunk arrives before the upstream
// finishes), forwarding headers and hop-by-hop stripping, the origin policy on proxied routes, `502
// upstream_unavailable`, `504 upstream_timeout` within the timeout, `503 proxy_limit`, WebSocket tunnels, and
// start-up refusals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { EventEmitter, once } from 'node:events';
import { readFileSync } from 'node:fs';
import { io } from 'socket.io-client';
import WebSocket, { WebSocketServer } from 'ws';
import { startHerald, request, waitFor, withTimeout, assertApiError, pause } from '../lib/herald.js';

/** The backend: seed 001's book routes plus test routes under /lab and /held; every request is recorded. */
async function startBackend(t) {
  const events = new EventEmitter();
  const seen = [];
  const held = [];
  let books = [];
  let herald = null;
  // `io.emit(event, data)` in the seed's backend: a publish to the server-side channel `books`.
  const emit = async (event, data) => {
    const r = await fetch(`${herald}/api/publish`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ channel: 'books', event, data }),
    });
    assert.equal(r.status, 200, `backend publish ${event}`);
  };
  const json = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json', 'x-backend': 'seed001' });
    res.end(JSON.stringify(body));
  };
  const readBody = async (req) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    return Buffer.concat(chunks).toString('utf8');
  };
  const server = http.createServer((req, res) => route(req, res).catch((e) => {
    // Herald cancelling a request it gave up on (a timeout) aborts its body here: that is expected.
    if (e.code !== 'ECONNRESET') throw e;
  }));
  const route = async (req, res) => {
    const url = new URL(req.url, 'http://backend');
    const entry = { method: req.method, url: req.url, headers: req.headers, body: null };
    seen.push(entry);
    const id = url.pathname.match(/^\/books\/(\d+)$/)?.[1];
    if (url.pathname === '/books' && req.method === 'GET') return json(res, 200, books);
    if (url.pathname === '/books' && req.method === 'POST') {
      entry.body = await readBody(req);
      const { title, author, returnDateTime } = JSON.parse(entry.body);
      if (!title || !author) return json(res, 400, { error: 'Title and author are required' });
      const newBook = { id: Date.now(), title, author, returnDateTime: returnDateTime || null, favorites: [] };
      books.push(newBook);
      await emit('bookAdded', newBook);
      return json(res, 201, newBook);
    }
    if (id && req.method === 'PUT') {
      entry.body = await readBody(req);
      const book = books.find((b) => b.id === Number(id));
      if (!book) return json(res, 404, { error: 'Book not found' });
      Object.assign(book, JSON.parse(entry.body));
      await emit('bookUpdated', book);
      return json(res, 200, book);
    }
    if (id && req.method === 'DELETE') {
      const book = books.find((b) => b.id === Number(id));
      if (!book) return json(res, 404, { error: 'Book not found' });
      books = books.filter((b) => b !== book);
      await emit('bookDeleted', book);
      res.writeHead(204);
      return res.end();
    }
    if (url.pathname === '/files/upload' || url.pathname === '/lab/upload') {
      // Counts the bytes as they stream in; the first chunk is announced so the client can send the rest.
      let bytes = 0;
      for await (const c of req) {
        if (bytes === 0) events.emit('upload-started');
        bytes += c.length;
      }
      return json(res, 200, { bytes });
    }
    if (url.pathname === '/files/stream') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk\n');
      await once(events, 'finish-stream');
      return res.end('last chunk\n');
    }
    if (url.pathname === '/lab/slow') return; // never answers: Herald's timeout must
    if (url.pathname === '/lab/stall') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      return res.write('and then nothing');
    }
    if (url.pathname.startsWith('/held')) {
      held.push(() => json(res, 200, { released: url.pathname }));
      return events.emit('held', held.length);
    }
    json(res, 404, { error: 'no such backend route' });
  };
  // A WebSocket endpoint of the backend's: echoes each message with the path and forwarding header it saw.
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (m) => ws.send(JSON.stringify({ echo: m.toString(), path: req.url, xff: req.headers['x-forwarded-for'] })));
  }));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => { wss.clients.forEach((c) => c.terminate()); server.closeAllConnections(); server.close(); });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    events, seen, held,
    setHerald: (url) => { herald = url; },
  };
}

/** A port nothing listens on: bound, then closed. */
async function deadPort() {
  const s = http.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

const FRONTEND_ORIGIN = 'http://localhost:3000';

async function start(t) {
  const backend = await startBackend(t);
  const gone = await deadPort();
  const config = `
allowed_origins = ["${FRONTEND_ORIGIN}"]
[socketio]
server_side_channels = ["books"]
[[proxy]]
path = "/books"
upstream = "${backend.url}"
[[proxy]]
path = "/files"
upstream = "${backend.url}"
[[proxy]]
path = "/lab"
upstream = "${backend.url}"
timeout = "1s"
idle_timeout = "1s"
[[proxy]]
path = "/held"
upstream = "${backend.url}"
max_in_flight = 2
[[proxy]]
path = "/gone"
upstream = "http://127.0.0.1:${gone}"
`;
  const h = await startHerald(t, { config });
  backend.setHerald(h.url);
  return { h, backend };
}

/** A request with full control of its headers (fetch forbids `Connection`); resolves at the response head. */
function raw(base, path, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(path, base), { method, headers, agent: false }, (res) => resolve(res));
    req.on('error', reject);
    req.end(body);
  });
}

async function text(res) {
  let s = '';
  res.setEncoding('utf8');
  for await (const c of res) s += c;
  return s;
}

test('seed 001: the frontend\'s fetch calls on the socket\'s origin reach the backend through Herald, and the backend\'s events reach the socket', async (t) => {
  const { h, backend } = await start(t);
  // The page is served from Herald's origin: its relative `fetch('/books')` resolves there.
  const fetch = (path, init) => globalThis.fetch(new URL(path, h.url), init);

  // Dashboard state, as the seed's React component keeps it.
  let books = [];
  const setBooks = (next) => { books = typeof next === 'function' ? next(books) : next; };
  const snackbars = [];
  const enqueueSnackbar = (message, opts) => snackbars.push([message, opts.variant]);

  // Socket Connection Setup (seed 001), the URL being Herald's.
  const userId = 'demoUser' + Math.floor(Math.random() * 1000);
  const role = 'reader'; // or 'owner'
  const socket = io(h.url, {
    query: { userId, role }
  });
  t.after(() => socket.disconnect());
  // Event Listeners (seed 001), verbatim.
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
  await waitFor(socket, 'connect');

  // "Fetch fresh data from server" (seed 001's reconnect handler), verbatim.
  await fetch('/books').then(res => res.json()).then(setBooks);
  assert.deepEqual(books, []);

  // Add: the backend validates (400 with its own body), creates (201) and emits bookAdded.
  const refused = await fetch('/books', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ title: 'Dune' }),
  });
  assert.equal(refused.status, 400);
  assert.deepEqual(await refused.json(), { error: 'Title and author are required' });
  const added = waitFor(socket, 'bookAdded');
  const created = await fetch('/books', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ title: 'Dune', author: 'Frank Herbert', returnDateTime: '2024-12-25T14:30:00.000Z' }),
  });
  assert.equal(created.status, 201);
  assert.equal(created.headers.get('x-backend'), 'seed001', 'the backend\'s response headers come back');
  const book = await created.json();
  await added;
  assert.deepEqual(books, [book]);

  // Edit and delete, on /books/:id.
  const updated = waitFor(socket, 'bookUpdated');
  const put = await fetch(`/books/${book.id}`, {
    method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ title: 'Dune Messiah' }),
  });
  assert.equal(put.status, 200);
  await updated;
  assert.equal(books[0].title, 'Dune Messiah');
  const missing = await fetch('/books/1', { method: 'DELETE' });
  assert.equal(missing.status, 404);
  assert.deepEqual(await missing.json(), { error: 'Book not found' });
  const deleted = waitFor(socket, 'bookDeleted');
  const del = await fetch(`/books/${book.id}`, { method: 'DELETE' });
  assert.equal(del.status, 204);
  await deleted;
  assert.deepEqual(books, []);
  assert.deepEqual(snackbars, [
    ['New book added!', 'success'], ['Book updated!', 'info'], ['Book deleted!', 'warning'],
  ]);

  // The backend saw each call's method, path and body as sent.
  const calls = backend.seen.map((r) => `${r.method} ${r.url}`);
  assert.deepEqual(calls, [
    'GET /books', 'POST /books', 'POST /books', `PUT /books/${book.id}`, 'DELETE /books/1', `DELETE /books/${book.id}`,
  ]);
  assert.equal(backend.seen[3].body, JSON.stringify({ title: 'Dune Messiah' }));
  assert.equal(backend.seen[3].headers['content-type'], 'application/json');

  // Prefixes match on segment boundaries: /bookshelf is not /books.
  const shelf = await request(h.url, '/bookshelf');
  assert.equal(shelf.status, 404);
  assert.equal(backend.seen.length, 6, '/bookshelf never reached the backend');
  await h.assertHealthy();
});

test('forwarding headers are Herald\'s (forged ones dropped), hop-by-hop headers are stripped, the query and other headers pass', async (t) => {
  const { h, backend } = await start(t);
  const res = await raw(h.url, '/books?sort=title', {
    headers: {
      'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https',
      forwarded: 'for=6.6.6.6', connection: 'keep-alive, x-hop', 'x-hop': 'secret', 'keep-alive': 'timeout=5',
      'x-request-id': 'r-1', authorization: 'Bearer user-token',
    },
  });
  assert.equal(res.statusCode, 200);
  await text(res);
  const got = backend.seen.at(-1);
  assert.equal(got.url, '/books?sort=title');
  assert.equal(got.headers['x-forwarded-for'], '127.0.0.1');
  assert.equal(got.headers['x-forwarded-host'], `127.0.0.1:${h.port}`);
  assert.equal(got.headers['x-forwarded-proto'], 'http');
  assert.equal(got.headers.forwarded, `for=127.0.0.1;host="127.0.0.1:${h.port}";proto=http`);
  assert.equal(got.headers.host, new URL(backend.url).host, 'Host is the upstream\'s');
  assert.equal(got.headers['x-hop'], undefined, 'a header named by Connection is hop-by-hop');
  assert.equal(got.headers['keep-alive'], undefined);
  assert.equal(got.headers['x-request-id'], 'r-1');
  assert.equal(got.headers.authorization, 'Bearer user-token');
});

test('Herald\'s origin policy covers proxied routes: preflights for PUT/DELETE answered by Herald, other origins refused before the backend', async (t) => {
  const { h, backend } = await start(t);
  const pre = await request(h.url, '/books/1', {
    method: 'OPTIONS',
    headers: { origin: FRONTEND_ORIGIN, 'access-control-request-method': 'PUT', 'access-control-request-headers': 'content-type' },
  });
  assert.equal(pre.status, 204);
  assert.match(pre.headers.get('access-control-allow-methods'), /\bPUT\b.*\bDELETE\b/);
  assert.equal(pre.headers.get('access-control-allow-origin'), FRONTEND_ORIGIN);
  assert.equal(pre.headers.get('access-control-allow-headers'), 'content-type');
  const get = await request(h.url, '/books', { headers: { origin: FRONTEND_ORIGIN } });
  assert.equal(get.status, 200);
  assert.equal(get.headers.get('access-control-allow-origin'), FRONTEND_ORIGIN);
  const evil = await request(h.url, '/books', { method: 'DELETE', headers: { origin: 'https://evil.example' } });
  assertApiError(evil, 403, 'origin_not_allowed');
  assert.deepEqual(backend.seen.map((r) => r.method), ['GET'], 'neither the preflight nor the refused call reached the backend');
});

test('bodies stream: an upload reaches the backend while it is still being sent, without Herald holding it; a chunked answer arrives chunk by chunk', async (t) => {
  const { h, backend } = await start(t);
  const peak = () => Number(readFileSync(`/proc/${h.proc.pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/)[1]) * 1024;
  const before = peak();

  const SIZE = 64 << 20;
  const CHUNK = Buffer.alloc(1 << 20, 'x');
  const answered = new Promise((resolve, reject) => {
    const req = http.request(new URL('/files/upload', h.url), {
      method: 'POST', headers: { 'content-type': 'application/octet-stream', 'content-length': SIZE },
    }, (res) => text(res).then((body) => resolve({ status: res.statusCode, body }), reject));
    req.on('error', reject);
    const started = once(backend.events, 'upload-started');
    req.write(CHUNK);
    // The rest is sent only once the backend has the first megabyte: a buffering proxy never gets here.
    started.then(async () => {
      for (let sent = CHUNK.length; sent < SIZE; sent += CHUNK.length) {
        if (!req.write(CHUNK)) await once(req, 'drain');
      }
      req.end();
    }, reject);
  });
  const { status, body } = await withTimeout(answered, 20_000, 'the streamed upload to be answered');
  assert.equal(status, 200);
  assert.deepEqual(JSON.parse(body), { bytes: SIZE });
  const grown = peak() - before;
  assert.ok(grown < SIZE / 4, `Herald's peak RSS grew by ${grown} bytes for a ${SIZE}-byte upload`);

  const res = await raw(h.url, '/files/stream');
  assert.equal(res.statusCode, 200);
  res.setEncoding('utf8');
  const [first] = await withTimeout(once(res, 'data'), 5000, 'the first chunk while the backend still holds the rest');
  assert.equal(first, 'first chunk\n');
  const rest = text(res);
  backend.events.emit('finish-stream');
  assert.equal(await rest, 'last chunk\n');
});

test('upstream down → 502 upstream_unavailable; no answer → 504 upstream_timeout within the timeout, counted from the end of the upload; a stalled body is cut off after idle_timeout', async (t) => {
  const { h } = await start(t);
  const down = await request(h.url, '/gone/anything', { method: 'POST', body: { a: 1 } });
  assertApiError(down, 502, 'upstream_unavailable');
  assert.match(down.json.error.message, /\/gone/);
  assert.doesNotMatch(down.text, /127\.0\.0\.1/, 'the upstream\'s address is not shown to clients');

  const t0 = Date.now();
  const slow = await request(h.url, '/lab/slow');
  const took = Date.now() - t0;
  assertApiError(slow, 504, 'upstream_timeout');
  assert.ok(took >= 900 && took < 5000, `504 after ${took} ms for a 1s timeout`);

  // `timeout` counts once the request is sent: an upload taking longer, never still for idle_timeout, is answered.
  const slowUpload = new Promise((resolve, reject) => {
    const req = http.request(new URL('/lab/upload', h.url), { method: 'POST', headers: { 'content-length': 3 } },
      (res) => text(res).then((body) => resolve({ status: res.statusCode, body }), reject));
    req.on('error', reject);
    (async () => {
      for (const part of ['a', 'b', 'c']) {
        req.write(part);
        await new Promise((r) => setTimeout(r, 600)); // the client's own pace: 1.8 s in all, 0.6 s gaps
      }
      req.end();
    })();
  });
  const uploaded = await slowUpload;
  assert.equal(uploaded.status, 200, uploaded.body);
  assert.deepEqual(JSON.parse(uploaded.body), { bytes: 3 });
  // An upload that stops moving is over after idle_timeout.
  const halted = await new Promise((resolve, reject) => {
    const req = http.request(new URL('/lab/upload', h.url), { method: 'POST', headers: { 'content-length': 100 } },
      (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        // Herald closes the connection after answering (the upload never ended): the answer is what counts.
        res.on('end', () => resolve({ status: res.statusCode, body }));
        res.on('error', () => {});
      });
    req.on('error', (e) => { if (e.code !== 'ECONNRESET') reject(e); });
    req.write('only the first bytes');
  });
  assert.equal(halted.status, 504);
  assert.equal(JSON.parse(halted.body).error.code, 'upstream_timeout');

  const stalled = await raw(h.url, '/lab/stall');
  assert.equal(stalled.statusCode, 200);
  await assert.rejects(withTimeout(text(stalled), 5000, 'the stalled body to be cut off'), (e) => {
    assert.doesNotMatch(e.message, /timed out after/, 'Herald cut the body off, not the test guard');
    return true;
  });
  await h.assertHealthy();
});

test('requests in flight are bounded per prefix: over max_in_flight → 503 proxy_limit, and permits come back when answers end', async (t) => {
  const { h, backend } = await start(t);
  const both = new Promise((resolve) => backend.events.on('held', (n) => { if (n === 2) resolve(); }));
  const first = request(h.url, '/held/1');
  const second = request(h.url, '/held/2');
  await withTimeout(both, 5000, 'two held requests at the backend');
  const third = await request(h.url, '/held/3');
  assertApiError(third, 503, 'proxy_limit');
  assert.equal(backend.held.length, 2, 'the refused request never reached the backend');
  const other = await request(h.url, '/books');
  assert.equal(other.status, 200, 'another prefix has its own bound');
  for (const release of backend.held.splice(0)) release();
  assert.deepEqual((await first).json, { released: '/held/1' });
  assert.deepEqual((await second).json, { released: '/held/2' });
  const again = request(h.url, '/held/4');
  await withTimeout(once(backend.events, 'held'), 5000, 'a new request admitted');
  backend.held.splice(0).forEach((release) => release());
  assert.equal((await again).status, 200);
});

test('a WebSocket upgrade under a prefix is tunnelled to the backend, and holds an in-flight permit while open', async (t) => {
  const { h, backend } = await start(t);
  const base = h.url.replace(/^http/, 'ws');
  const open = async (path) => {
    const ws = new WebSocket(base + path);
    t.after(() => ws.terminate());
    await withTimeout(once(ws, 'open'), 5000, `open ${path}`);
    return ws;
  };
  const ws = await open('/files/socket?room=1');
  ws.send('hello');
  const [reply] = await withTimeout(once(ws, 'message'), 5000, 'the echo');
  assert.deepEqual(JSON.parse(reply.toString()), { echo: 'hello', path: '/files/socket?room=1', xff: '127.0.0.1' });
  // /held allows 2 at once: two open tunnels take both, a third request is refused until one closes.
  const a = await open('/held/socket');
  await open('/held/socket');
  assertApiError(await request(h.url, '/held/x'), 503, 'proxy_limit');
  a.close();
  await once(a, 'close');
  // The permit returns once both sides of the tunnel have closed: retry (with a backoff) until a request is let in.
  const reached = once(backend.events, 'held');
  let admitted = false;
  for (const deadline = Date.now() + 5000; !admitted && Date.now() < deadline;) {
    const r = request(h.url, '/held/after-close');
    const first = await Promise.race([reached.then(() => 'admitted'), r.then((x) => x.status)]);
    if (first === 'admitted') admitted = true;
    else { assert.equal(first, 503); await pause(50); }
  }
  assert.ok(admitted, 'the closed tunnel gave its permit back');
  backend.held.splice(0).forEach((release) => release());
});

test('a proxy path that would shadow Herald\'s own routes, or another proxy, refuses to start', async (t) => {
  for (const [paths, expected] of [
    [['/socket.io'], /proxy\[0\] \(path "\/socket.io"\) field `path`: collides with Herald's own route \/socket.io/],
    [['/api/books'], /collides with Herald's own route \/api/],
    [['/sse'], /collides with Herald's own route \/sse/],
    [['/'], /must not end with '\/'/],
    [['/books', '/books/covers'], /proxy\[1\].*overlaps the proxy at "\/books"/],
  ]) {
    const config = paths.map((p) => `[[proxy]]\npath = "${p}"\nupstream = "http://127.0.0.1:9"\n`).join('');
    await assert.rejects(startHerald(t, { config, env: { RUST_BACKTRACE: '0', RUST_LIB_BACKTRACE: '0' } }), (e) => {
      assert.match(e.message, expected);
      return true;
    }, paths.join(' '));
  }
});
