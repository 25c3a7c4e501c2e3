// 40. The admin dashboard (`/admin`, docs/operations.md "Admin dashboard") in headless Chromium: every view reached
// through the page's own navigation, with no console error; the channel inspector's live tail shows an event
// published after it opened, without a reload; the history browser pages by offset; the publish console publishes
// (read back through the API); Disconnect closes a `/ws` client with 4000; monitors and SQL sources show their
// status; the collections view counts each collection's documents and its inspector pages them (ids, versions,
// previews as text, a link to the channel); payloads and event names holding HTML stay text; the page's own
// Prometheus parsing and p99; with JWT client auth, identities show and the tail (refused by SSE) follows history;
// with API keys the page asks for one and refuses a key without admin scope; a 390×844 phone viewport renders without sideways scrolling. Screenshots
// go to tests/js/artifacts/ (gitignored).
//
// Needs /usr/bin/chromium (override with HERALD_CHROMIUM); HERALD_SKIP_BROWSER=1 skips explicitly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { startHerald, request, publish, history, withTimeout, REPO_ROOT } from '../lib/herald.js';
import { browserContext as newContext, waitPage } from '../lib/browser.js';
import { sqliteDb } from '../lib/sqldb.js';
import { KEY_BLOCKS, rule } from '../lib/auth.js';
import { sign } from '../lib/jwt.js';

const ARTIFACTS = join(REPO_ROOT, 'tests/js/artifacts');
// Would run script if the page ever put data into HTML.
const NASTY = '<img src=x onerror="window.pwned=1">';

const browserContext = (t, options = {}) => newContext(t, { colorScheme: 'light', ...options });

function config(db) {
  return `
[[monitor.monitors]]
id = "closed-port"
name = "Closed port"
interval = 60
check = { kind = "http", url = "http://127.0.0.1:1/" }

[[sources.sql]]
id = "items"
url = "${db.url}"
sql = "select id, name from items where unit = {unit} order by id"
channel = "items:{unit}"
interval = "500ms"
`;
}

async function shot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `40_admin_${name}.png`), fullPage: true });
}

/** Clicks the nav link of `view` and waits for its section. */
async function show(page, view) {
  await page.click(`#nav a[data-view="${view}"]`);
  await waitPage(page, (v) => document.body.dataset.view === v, view, 5_000, `view ${view} shown`);
}

/** A `/ws` direct client, resolving once open; `closed` resolves with the close code. */
async function wsClient(t, h, path) {
  const ws = new WebSocket(`${h.url.replace('http', 'ws')}${path}`);
  t.after(() => ws.terminate());
  ws.closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
  await withTimeout(new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); }),
    10_000, `open ${path}`);
  return ws;
}

const errorsOf = (context) => context.consoleLines.filter((l) => /^(error|pageerror)/.test(l));

test('every admin view works in Chromium, live, and keeps data as text', async (t) => {
  const context = await browserContext(t, { viewport: { width: 1280, height: 900 } });
  if (!context) return;
  const db = sqliteDb(t);
  db.exec("create table items (id integer primary key, unit text not null, name text not null); "
    + "insert into items (unit, name) values ('a', 'bolt');");
  const h = await startHerald(t, { config: config(db) });
  for (let i = 1; i <= 5; i++) await publish(h.url, 'news', 'headline', { n: i });
  await publish(h.url, 'news', NASTY, { html: NASTY });
  const subscriber = await wsClient(t, h, '/ws/news');
  const sqlWatcher = await wsClient(t, h, '/ws/items:a');
  const haveMetrics = (await request(h.url, '/metrics')).text.includes('herald_connections{');

  const page = await context.newPage();
  await page.goto(`${h.url}/admin`);

  // Overview: five charts, live when the server exports the series, "no data" when it does not.
  await waitPage(page, () => document.querySelectorAll('#charts figure').length === 5
    && [...document.querySelectorAll('#charts figure')].every((f) => f.dataset.state), null, 10_000,
  'overview charts', () => document.body.innerText.slice(0, 500));
  assert.equal(await page.textContent('#tile-engine'), `${process.env.HERALD_TEST_ENGINE || 'sqlite'} · ok`);
  assert.ok(haveMetrics, 'the core series are on /metrics');
  await waitPage(page, () => Number(document.getElementById('tile-connections').textContent) >= 2, null, 10_000,
    'connections tile counts the two /ws clients');
  await waitPage(page, () => ['Connections', 'Deliveries/s', 'Publishes/s', 'Errors/s']
    .every((c) => document.querySelector(`figure[data-chart="${c}"]`).dataset.state === 'data'),
  null, 10_000, 'the charts have data after two readings');
  await shot(page, 'overview');

  // Channels: the table, subscribers included, and the search.
  await show(page, 'channels');
  const newsRow = '#channels-table tr[data-channel="news"]';
  await page.waitForSelector(newsRow);
  const cells = await page.$$eval(`${newsRow} td`, (tds) => tds.map((td) => td.textContent));
  assert.equal(cells[1], '6', `last offset: ${cells}`);
  assert.equal(cells[4], '1', `one subscriber: ${cells}`);
  assert.equal(cells[5], '0', `no user (anonymous): ${cells}`);
  await page.fill('#channel-search', 'item');
  await waitPage(page, () => [...document.querySelectorAll('#channels-table tbody tr')]
    .every((tr) => tr.dataset.channel.includes('item')), null, 5_000, 'search narrows the table');
  await page.fill('#channel-search', 'ne');
  await page.waitForSelector(newsRow);
  await shot(page, 'channels');

  // Inspector: history, then a live event arrives without a reload.
  await page.click(`${newsRow} a`);
  await waitPage(page, () => document.body.dataset.view === 'channel'
    && document.getElementById('tail-status').dataset.status === 'live'
    && document.querySelectorAll('#history li').length === 6, null, 10_000, 'inspector with history and live tail',
  () => `${document.getElementById('tail-status').textContent} ${document.getElementById('history-note').textContent}`);
  assert.equal(await page.textContent('#inspect-name'), 'news');
  const loads = [];
  page.on('load', () => loads.push('reload'));
  const live = await publish(h.url, 'news', 'breaking', { text: NASTY });
  await page.waitForSelector(`#tail li[data-offset="${live.offset}"]`, { timeout: 5_000 });
  assert.match(await page.textContent(`#tail li[data-offset="${live.offset}"]`), /breaking/);
  // Inside JSON text the quotes are escaped.
  assert.ok((await page.textContent('#tail')).includes(JSON.stringify(NASTY)), 'the payload shows as text');
  assert.ok((await page.textContent('#history')).includes(NASTY), 'the event name shows as text');
  assert.deepEqual(loads, []);
  // History by offset.
  await page.fill('#history-since', '2');
  await page.click('#history-go');
  await waitPage(page, () => document.querySelector('#history li')?.dataset.offset === '3', null, 5_000,
    'history after offset 2');
  await page.click('#history-prev');
  await waitPage(page, () => document.querySelector('#history li')?.dataset.offset === '1', null, 5_000,
    'earlier page starts at offset 1');
  await shot(page, 'channel');

  // Publish console, prefilled from the inspector's link.
  await page.click('#inspect-publish');
  await waitPage(page, () => document.body.dataset.view === 'publish', null, 5_000, 'publish view');
  assert.equal(await page.inputValue('#publish-channel'), 'news');
  await page.fill('#publish-event', 'from-console');
  await page.fill('#publish-data', '{"hello": "admin"}');
  await page.click('#publish-form button[type="submit"]');
  await page.waitForSelector('#publish-results li[data-offset="8"]', { timeout: 5_000 });
  const stored = await history(h.url, 'news', { since: 7 });
  assert.deepEqual(stored.json.events.map((e) => [e.offset, e.event, e.data]), [[8, 'from-console', { hello: 'admin' }]]);
  await page.fill('#publish-data', '{not json');
  await page.click('#publish-form button[type="submit"]');
  await waitPage(page, () => document.getElementById('publish-status').textContent.startsWith('Data is not JSON'),
    null, 5_000, 'bad JSON is refused in the page');
  await shot(page, 'publish');

  // Connections: the /ws subscriber is listed with its subscription and queue; Disconnect closes it with 4000.
  await show(page, 'connections');
  const wsRow = '#connections-table tr[data-transport="websocket"]';
  await waitPage(page, (sel) => [...document.querySelectorAll(sel)].some((tr) => tr.textContent.includes('news')),
    wsRow, 10_000, 'the /ws client is listed');
  const id = await page.$$eval(wsRow, (trs) => trs.find((tr) => tr.textContent.includes('news')).dataset.id);
  const row = `#connections-table tr[data-id="${id}"]`;
  assert.match(await page.textContent(row), /127\.0\.0\.1/);
  assert.match(await page.textContent(row), / B/);
  await shot(page, 'connections');
  await page.click(`${row} button`);
  assert.equal(await page.textContent(`${row} button`), 'Confirm');
  await page.click(`${row} button`);
  assert.equal(await withTimeout(subscriber.closed, 5_000, 'disconnected client closes'), 4000);
  await page.waitForSelector(row, { state: 'detached', timeout: 5_000 });

  // Monitors and SQL sources with their status.
  await show(page, 'sources');
  await page.waitForSelector('#monitors-table tr[data-id="closed-port"]');
  await waitPage(page, () => document.querySelector('#monitors-table tr[data-id="closed-port"] .pill')
    ?.dataset.status === 'down', null, 10_000, 'the monitor is down');
  await waitPage(page, () => /items:a: ok/.test(document.querySelector('#sources-table tr[data-id="items"]')
    ?.textContent ?? ''), null, 10_000, 'the SQL source polls items:a');
  await shot(page, 'sources');
  sqlWatcher.close();

  assert.equal(await page.evaluate(() => window.pwned), undefined, 'no payload ran as HTML');
  assert.deepEqual(errorsOf(context), [], 'no console errors');
});

test('the collections view lists each collection with its count; the inspector pages its documents as text', async (t) => {
  const context = await browserContext(t, { viewport: { width: 1280, height: 900 } });
  if (!context) return;
  const h = await startHerald(t, { config: `
[[collections]]
name = "books"
path = "/books"
id = "timestamp"
access = { list = "anyone", read = "anyone", create = "anyone" }

[[collections]]
name = "notes"
id = "ulid"
` });
  const created = [];
  for (let i = 1; i <= 3; i++) {
    const r = await request(h.url, '/api/collections/books', { method: 'POST', body: { title: `Book ${i}`, note: NASTY } });
    assert.equal(r.status, 201, r.text);
    created.push({ id: String(r.json.id), etag: r.headers.get('etag') });
  }
  const page = await context.newPage();
  await page.goto(`${h.url}/admin`);
  await waitPage(page, () => document.body.dataset.state === 'ready', null, 10_000, 'dashboard ready');
  await show(page, 'collections');
  const booksRow = '#collections-table tr[data-collection="books"]';
  await waitPage(page, (sel) => /ago/.test(document.querySelector(sel)?.textContent ?? ''), booksRow, 10_000,
    'books listed with its last change');
  const cells = await page.$$eval(`${booksRow} td`, (tds) => tds.map((td) => td.textContent));
  assert.deepEqual(cells.slice(0, 4), ['books', 'books', '3', '/books'], `${cells}`);
  assert.match(cells[4], /ago \(#3\)$/, `${cells}`);
  const notes = await page.$$eval('#collections-table tr[data-collection="notes"] td', (tds) => tds.map((td) => td.textContent));
  assert.deepEqual([notes[2], notes[3], notes[4]], ['0', 'not mounted', 'never'], `${notes}`);
  await shot(page, 'collections');

  // A new document shows on the next refresh, without a reload.
  const fourth = await request(h.url, '/api/collections/books', { method: 'POST', body: { title: 'Book 4' } });
  created.push({ id: String(fourth.json.id), etag: fourth.headers.get('etag') });
  await page.click('#collections-refresh');
  await waitPage(page, (sel) => document.querySelector(`${sel} td.num`)?.textContent === '4', booksRow, 5_000,
    'the count follows');

  await page.click(`${booksRow} a`);
  await waitPage(page, () => document.body.dataset.view === 'collection'
    && document.querySelectorAll('#documents-table tbody tr').length === 4, null, 10_000, 'the inspector lists the documents',
  () => document.getElementById('documents-note').textContent);
  const rows = await page.$$eval('#documents-table tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((td) => td.textContent)));
  assert.deepEqual(rows.map((r) => [r[0], r[1]]), created.map((c) => [c.id, c.etag]));
  assert.equal(JSON.parse(rows[0][2]).title, 'Book 1');
  assert.ok(rows[0][2].includes(JSON.stringify(NASTY).slice(1, -1)), 'the document shows as text');
  assert.equal(await page.getAttribute('#collection-channel', 'href'), '#/channel/books');
  await shot(page, 'collection');
  await page.click('#collection-channel');
  await waitPage(page, () => document.body.dataset.view === 'channel'
    && document.getElementById('inspect-name').textContent === 'books', null, 5_000, 'its channel inspector');

  // Pages of 50: 54 documents are one full page, then the 4 after it.
  const more = Array.from({ length: 50 }, (_, i) => ({ id: 9e12 + i, title: `Imported ${i}` }));
  const imported = await request(h.url, '/api/collections/books/import', { method: 'POST', body: more });
  assert.equal(imported.status, 200, imported.text);
  await page.goBack();
  await waitPage(page, () => document.body.dataset.view === 'collection'
    && document.querySelectorAll('#documents-table tbody tr').length === 50
    && !document.getElementById('documents-next').disabled, null, 10_000, 'a first page of 50');
  await page.click('#documents-next');
  await waitPage(page, () => document.querySelectorAll('#documents-table tbody tr').length === 4
    && document.getElementById('documents-next').disabled, null, 5_000, 'the 4 after it',
  () => document.getElementById('documents-note').textContent);
  assert.equal(await page.textContent('#documents-note'), 'documents 51–54');
  await page.click('#documents-first');
  await waitPage(page, () => document.querySelectorAll('#documents-table tbody tr').length === 50, null, 5_000,
    'back to the first page');

  assert.equal(await page.evaluate(() => window.pwned), undefined, 'no document ran as HTML');
  assert.deepEqual(errorsOf(context), [], 'no console errors');
});

test('a phone viewport renders every view without sideways scrolling', async (t) => {
  const context = await browserContext(t, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  if (!context) return;
  const h = await startHerald(t);
  await publish(h.url, 'a rather long channel name:with parts:and more parts', 'x', { long: 'y'.repeat(300) });
  const page = await context.newPage();
  // A hand-typed inspector URL without a (valid) channel lands on the table.
  for (const hash of ['#/channel/', '#/channel/%E0%A4%A']) {
    await page.goto(`${h.url}/admin${hash}`);
    await waitPage(page, () => document.body.dataset.view === 'channels', null, 10_000, `${hash} → channels`);
  }
  for (const view of ['overview', 'channels', 'collections', 'publish', 'connections', 'sources']) {
    await page.goto(`${h.url}/admin#/${view}`);
    await waitPage(page, (v) => document.body.dataset.view === v, view, 10_000, `phone ${view}`);
    const { scroll, width, nav } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      width: window.innerWidth,
      nav: document.getElementById('nav').getBoundingClientRect().width,
    }));
    assert.ok(scroll <= width, `${view}: page is ${scroll}px wide in a ${width}px viewport`);
    assert.ok(nav > 0 && nav <= width, `${view}: nav ${nav}px`);
    if (view === 'overview' || view === 'channels') await shot(page, `phone_${view}`);
  }
  assert.deepEqual(errorsOf(context), [], 'no console errors');
});

test('the overview reads Prometheus text: sums by label, escaped labels, the p99 from bucket deltas, no data', async (t) => {
  const context = await browserContext(t);
  if (!context) return;
  const h = await startHerald(t);
  const page = await context.newPage();
  await page.goto(`${h.url}/admin#/channels`);
  await waitPage(page, () => document.body.dataset.view === 'channels', null, 10_000, 'page ready');
  const got = await page.evaluate(() => {
    const text = (n) => `# HELP herald_publish_duration_seconds Publish latency.
# TYPE herald_publish_duration_seconds histogram
herald_publish_duration_seconds_bucket{le="0.001"} 0
herald_publish_duration_seconds_bucket{le="0.005"} ${50 * n}
herald_publish_duration_seconds_bucket{le="0.01"} ${90 * n}
herald_publish_duration_seconds_bucket{le="+Inf"} ${100 * n}
herald_publish_duration_seconds_sum ${0.5 * n}
herald_publish_duration_seconds_count ${100 * n}
herald_connections{transport="socketio"} 3
herald_connections{transport="sse"} 2
herald_refusals_total{code="rate_limited",why="a \\"quoted\\" } brace"} 4
`;
    const before = parseMetrics(text(1)), now = parseMetrics(text(3));
    const b = buckets(before, 'herald_publish_duration_seconds'), a = buckets(now, 'herald_publish_duration_seconds');
    const result = {
      connections: total(now, 'herald_connections'),
      byTransport: byLabel(now, 'herald_connections', 'transport'),
      why: now.get('herald_refusals_total')[0].labels.why,
      refusals: total(now, 'herald_refusals_total'),
      missing: total(now, 'herald_deliveries_total'),
      p50: quantile(0.5, b, a), p70: quantile(0.7, b, a), p99: quantile(0.99, b, a),
      idle: quantile(0.99, a, a),
    };
    // A server without these series: every chart says so instead of drawing zeros.
    overview.build();
    overview.sample(null, { t: 0, metrics: parseMetrics('# nothing\nother_metric 1\n') });
    const states = [...document.querySelectorAll('#charts figure')].map((f) => [f.dataset.state, f.textContent]);
    return { ...result, states };
  });
  assert.equal(got.connections, 5);
  assert.deepEqual(got.byTransport, { socketio: 3, sse: 2 });
  assert.equal(got.why, 'a "quoted" } brace');
  assert.equal(got.refusals, 4);
  assert.equal(got.missing, null);
  assert.ok(Math.abs(got.p50 - 0.005) < 1e-9, `p50 ${got.p50}`);
  assert.ok(Math.abs(got.p70 - 0.0075) < 1e-9, `p70 ${got.p70}`);
  assert.equal(got.p99, 0.01, 'in the +Inf bucket: the highest finite bound');
  assert.equal(got.idle, null, 'no publish between the readings: no latency');
  assert.equal(got.states.length, 5);
  for (const [state, text] of got.states) {
    assert.equal(state, 'nodata', text);
    assert.match(text, /no data: \/metrics has no herald_/);
  }
  assert.deepEqual(errorsOf(context), [], 'no console errors');
});

test('with client authentication the page shows identities, and its tail follows history', async (t) => {
  const context = await browserContext(t);
  if (!context) return;
  const h = await startHerald(t, { config: `[auth]\n${KEY_BLOCKS.RS256}${rule({ pattern: 'room', subscribe: true })}` });
  await publish(h.url, 'room', 'said', { text: 'first' });
  const token = sign({ sub: 'alice', roles: ['owner', 'ops'] });
  await wsClient(t, h, `/ws/room?token=${encodeURIComponent(token)}`);
  const page = await context.newPage();
  await page.goto(`${h.url}/admin#/connections`);
  const row = '#connections-table tr[data-transport="websocket"]';
  await page.waitForSelector(row);
  assert.match(await page.textContent(`${row} td:nth-child(3)`), /^alice\s*owner, ops$/);

  // An API key is no client token: SSE refuses the page, which long-polls history with its key instead.
  await page.goto(`${h.url}/admin#/channel/room`);
  await waitPage(page, () => document.getElementById('tail-status').dataset.status === 'polling'
    && document.querySelectorAll('#history li').length === 1, null, 10_000, 'tail falls back to polling');
  assert.match(await page.textContent('#inspect-position'), /1 subscriber \(1 user\)/);
  const next = await publish(h.url, 'room', 'said', { text: 'second' });
  await page.waitForSelector(`#tail li[data-offset="${next.offset}"]`, { timeout: 5_000 });
  assert.deepEqual(await page.$$eval('#tail li', (lis) => lis.map((li) => li.dataset.offset)), [String(next.offset)],
    'the tail starts at the position, not at the start of history');
  await shot(page, 'channel_polling');
  // The refused stream is the one error the browser logs.
  for (const line of errorsOf(context)) assert.match(line, /status of 401/, line);
});

test('with API keys the page asks for an admin key', async (t) => {
  const context = await browserContext(t);
  if (!context) return;
  const h = await startHerald(t, {
    config: 'api_keys = ["admin-key", { key = "publisher", publish = ["*"], admin = false }]\n',
  });
  assert.equal((await request(h.url, '/api/admin/overview')).status, 401);
  assert.equal((await request(h.url, '/api/admin/overview', { headers: { authorization: 'Bearer publisher' } })).status,
    403);
  const page = await context.newPage();
  await page.goto(`${h.url}/admin#/channels`);
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.isVisible('#view-channels'), false);

  await page.fill('#login-key', 'wrong');
  await page.click('#login-form button');
  await waitPage(page, () => document.getElementById('login-error').textContent.includes('unauthorized')
    || document.getElementById('login-error').textContent.length > 0, null, 5_000, 'a wrong key is refused');
  await page.fill('#login-key', 'publisher');
  await page.click('#login-form button');
  await waitPage(page, () => document.getElementById('login-error').textContent.includes('no admin scope'), null,
    5_000, 'a key without admin scope is refused');
  await shot(page, 'login');

  await page.fill('#login-key', 'admin-key');
  await page.click('#login-form button');
  await waitPage(page, () => document.body.dataset.view === 'channels', null, 5_000, 'signed in');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.admin.key')), 'admin-key');
  await publish(h.url, 'keyed', 'x', {}, { headers: { authorization: 'Bearer admin-key' } });
  await page.click('#channels-refresh');
  await page.waitForSelector('#channels-table tr[data-channel="keyed"]');
  await show(page, 'overview');
  await waitPage(page, () => document.getElementById('metrics-error').hidden
    && document.querySelectorAll('#charts figure[data-state]').length === 5, null, 10_000,
  'metrics read with the key');
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.admin.key')), null);
  // Only the refused attempts' own responses are logged.
  for (const line of errorsOf(context)) assert.match(line, /status of 40[13]/, line);
});
