// 20. The service monitor's status page (`GET /status`) in a real browser (headless Chromium via playwright-core).
// A local HTTP target whose answer the test flips is watched by a monitor checking every second; the page, opened
// once and never reloaded, must turn the monitor red within one check interval (plus a margin for the throttle and
// this shared machine) of the target failing, and green again when it recovers — updated only through the SSE
// stream: after load, the page may make no request but its initial fetches and the EventSource.
// Run with both event styles the page supports: Herald's preset (full objects, one snapshot event per monitor, live
// log events) and seed 002's (`service:status` with only the changed fields, `service:bulk-update` snapshot).
// Screenshots (desktop and a 390×844 phone) go to tests/js/artifacts/.
//
// Needs /usr/bin/chromium (override with HERALD_CHROMIUM); HERALD_SKIP_BROWSER=1 skips explicitly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startHerald, request, REPO_ROOT } from '../lib/herald.js';
import { browserContext as newContext } from '../lib/browser.js';

const ARTIFACTS = join(REPO_ROOT, 'tests/js/artifacts');
// Longer than the default 1 s per-monitor event throttle, so a check's result goes out as soon as it is known.
const INTERVAL_S = 2;
// One check interval (the failure shows at the next check) plus slack for a debug build on a loaded 2-core machine.
const TURN_MS = INTERVAL_S * 1000 + 1500;
// A name that would run script if the page ever put data into HTML.
const NASTY = 'Shop <img src=x onerror="window.pwned=1"> & "API"';

/** A browser context in the light scheme the screenshots are taken in. */
const browserContext = (t, options = {}) => newContext(t, { colorScheme: 'light', ...options });

/** A local HTTP target answering every request with the status the test sets. */
async function flippingTarget(t) {
  const target = { status: 200, hits: 0 };
  const server = http.createServer((req, res) => {
    target.hits++;
    res.writeHead(target.status, { 'content-type': 'text/plain' });
    res.end(target.status < 400 ? 'ok' : 'failing');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));
  target.url = `http://127.0.0.1:${server.address().port}/health`;
  return target;
}

async function createMonitor(h, body) {
  const r = await request(h.url, '/api/monitors', { method: 'POST', body });
  assert.equal(r.status, 201, `create monitor: ${r.status} ${r.text}`);
  assert.equal(typeof r.json.id, 'string');
  return r.json.id;
}

/** Every request a page makes, as {path, type}. */
function recordRequests(page) {
  const seen = [];
  page.on('request', (req) => {
    const u = new URL(req.url());
    seen.push({ path: u.pathname + u.search, type: req.resourceType() });
  });
  return seen;
}

/** Await `selector` on the page; on timeout, fail with what the page shows and the browser console. */
async function waitSelector(page, selector, ms, label) {
  const started = Date.now();
  try {
    await page.waitForSelector(selector, { timeout: ms, state: 'attached' });
  } catch (e) {
    const shown = await page.evaluate(() => [...document.querySelectorAll('.monitor')]
      .map((li) => `${li.dataset.monitorId}=${li.dataset.status}`).join(' ')
      + ` connection=${document.body.dataset.connection}`).catch(() => '?');
    throw new Error(`${label}: ${e.message.split('\n')[0]}; page shows: ${shown}; browser console: `
      + JSON.stringify((page.context().consoleLines ?? []).slice(-10)));
  }
  return Date.now() - started;
}

const card = (id) => `li.monitor[data-monitor-id="${id}"]`;

async function badge(h, id) {
  const r = await request(h.url, `/badge/${id}.svg`);
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type'), /^image\/svg\+xml/);
  assert.match(r.text, /^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.ok(!r.text.includes('<img'), `badge must escape the monitor name: ${r.text}`);
  return r.text;
}

/** The page's requests after load are only its initial fetches and one EventSource. */
function assertNoPolling(requests, channel, ids) {
  const allowed = [
    (p) => p === '/status',
    (p) => p === '/status/config',
    (p) => p === '/status/monitors',
    (p) => ids.some((id) => p === `/status/monitors/${encodeURIComponent(id)}/log?limit=10`),
    (p) => p === `/sse/${encodeURIComponent(channel)}`,
  ];
  const unexpected = requests.filter((r) => !allowed.some((ok) => ok(r.path)));
  assert.deepEqual(unexpected, [], `unexpected requests from the page: ${JSON.stringify(requests)}`);
  const count = (p) => requests.filter((r) => r.path === p).length;
  assert.equal(count('/status/config'), 1, `config fetched once: ${JSON.stringify(requests)}`);
  assert.equal(count(`/sse/${encodeURIComponent(channel)}`), 1, `one EventSource, no reconnects: ${JSON.stringify(requests)}`);
  for (const id of ids) {
    assert.ok(count(`/status/monitors/${encodeURIComponent(id)}/log?limit=10`) <= 1, 'each log is fetched at most once');
  }
  const sse = requests.find((r) => r.path.startsWith('/sse/'));
  assert.equal(sse.type, 'eventsource');
}

test('status page: a monitor going down turns red without a reload, within one check interval, and back to green', async (t) => {
  const context = await browserContext(t, { viewport: { width: 1280, height: 800 } });
  if (!context) return;
  const h = await startHerald(t);
  const target = await flippingTarget(t);

  const cfg = await request(h.url, '/status/config');
  assert.equal(cfg.status, 200, cfg.text);
  assert.deepEqual(cfg.json, {
    channel: 'monitors', statusEvent: 'monitor:status', changedOnly: false, bulkEvent: null,
    removedEvent: 'monitor:removed', logEvent: 'monitor:log', statsEvent: null,
  });
  const id = await createMonitor(h, {
    name: NASTY, check: { kind: 'http', url: target.url }, interval: INTERVAL_S, timeout: 1, tags: ['shop'],
  });

  const page = await context.newPage();
  const requests = recordRequests(page);
  await page.goto(`${h.url}/status`);
  await waitSelector(page, `${card(id)}[data-status="up"]`, 10_000, 'monitor shown up');
  await waitSelector(page, 'body[data-connection="live"]', 5_000, 'connection indicator live');

  // Data is text, never markup.
  const shown = await page.evaluate((sel) => ({
    name: document.querySelector(`${sel} .name`).textContent,
    target: document.querySelector(`${sel} .target`).textContent,
    imgs: document.querySelectorAll('img').length,
    pwned: window.pwned ?? null,
    pill: document.querySelector(`${sel} .pill`).textContent,
    viewport: document.querySelector('meta[name=viewport]')?.content,
  }), card(id));
  assert.deepEqual(shown, {
    name: NASTY, target: target.url, imgs: 0, pwned: null, pill: 'up', viewport: 'width=device-width, initial-scale=1',
  });

  // The monitor's log lines are rendered when its log is opened (from the fetch at load, then live).
  await page.click(`${card(id)} details summary`);
  await waitSelector(page, `${card(id)} .log .st[data-status="up"]`, 5_000, 'an up log line on the opened log');

  // Down: the page turns red by itself.
  target.status = 500;
  const downAfter = await waitSelector(page, `${card(id)}[data-status="down"]`, TURN_MS, 'monitor turned down');
  t.diagnostic(`turned red ${downAfter} ms after the target failed (interval ${INTERVAL_S * 1000} ms)`);
  const red = await page.evaluate((sel) => {
    const pill = document.querySelector(`${sel} .pill`);
    return { text: pill.textContent, colour: getComputedStyle(pill).backgroundColor };
  }, card(id));
  assert.deepEqual(red, { text: 'down', colour: 'rgb(207, 34, 46)' });
  // The live log event of the failed check reaches the monitor's log and the page-wide list.
  await waitSelector(page, `${card(id)} .log .st[data-status="down"]`, 5_000, 'a down log line on the card');
  await waitSelector(page, '#latest-log .st[data-status="down"]', 5_000, 'a down line in the latest checks');
  await waitSelector(page, '#overall[data-status="down"]', 5_000, 'summary says something is down');
  assert.match(await badge(h, id), />down</);

  mkdirSync(ARTIFACTS, { recursive: true });
  const shot = join(ARTIFACTS, 'status-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(statSync(shot).size > 1000, 'screenshot written');

  // Usable on a phone: one column, nothing wider than the screen.
  const phone = await browserContext(t, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  await small.goto(`${h.url}/status`);
  await waitSelector(small, `${card(id)}[data-status="down"]`, 10_000, 'phone page shows the monitor down');
  const layout = await small.evaluate((sel) => ({
    scrollWidth: document.documentElement.scrollWidth,
    cardWidth: document.querySelector(sel).getBoundingClientRect().width,
    columns: getComputedStyle(document.getElementById('monitors')).gridTemplateColumns.split(' ').length,
  }), card(id));
  assert.ok(layout.scrollWidth <= 390, `no horizontal scrolling on a phone: ${JSON.stringify(layout)}`);
  assert.equal(layout.columns, 1, `single column on a phone: ${JSON.stringify(layout)}`);
  assert.ok(layout.cardWidth > 300, `cards use the phone's width: ${JSON.stringify(layout)}`);
  await small.screenshot({ path: join(ARTIFACTS, 'status-page-phone.png'), fullPage: true });

  // Recovery: green again, still without a reload.
  target.status = 200;
  const upAfter = await waitSelector(page, `${card(id)}[data-status="up"]`, TURN_MS, 'monitor back up');
  t.diagnostic(`turned green ${upAfter} ms after the target recovered`);
  assert.equal(await page.evaluate((sel) => getComputedStyle(document.querySelector(`${sel} .pill`)).backgroundColor, card(id)),
    'rgb(26, 127, 55)');
  assert.match(await badge(h, id), />up</);
  // The sparkline has the checks' response times.
  const points = await page.$eval(`${card(id)} svg.spark polyline`, (p) => p.getAttribute('points').trim().split(/\s+/).length);
  assert.ok(points >= 3, `sparkline points: ${points}`);

  assertNoPolling(requests, 'monitors', [id]);
  assert.equal(requests.filter((r) => r.path === '/status/monitors').length, 1);
  h.assertNoPanic();
});

test('status page with seed 002 events: changed-field deltas and the bulk snapshot; monitors added and removed live', async (t) => {
  const context = await browserContext(t, { viewport: { width: 1024, height: 700 } });
  if (!context) return;
  const h = await startHerald(t, { config: '[monitor]\npreset = "services"\n' });
  const target = await flippingTarget(t);
  const cfg = await request(h.url, '/status/config');
  assert.equal(cfg.json.changedOnly, true, cfg.text);
  assert.equal(cfg.json.bulkEvent, 'service:bulk-update', cfg.text);
  assert.equal(cfg.json.statusEvent, 'service:status', cfg.text);

  const id = await createMonitor(h, { name: 'Checkout', check: { kind: 'http', url: target.url }, interval: INTERVAL_S });
  const page = await context.newPage();
  const requests = recordRequests(page);
  await page.goto(`${h.url}/status`);
  await waitSelector(page, `${card(id)}[data-status="up"]`, 10_000, 'monitor shown up');

  target.status = 503;
  const downAfter = await waitSelector(page, `${card(id)}[data-status="down"]`, TURN_MS, 'monitor turned down');
  t.diagnostic(`seed-002 deltas: turned red ${downAfter} ms after the target failed`);
  assert.equal(await page.$eval(`${card(id)} .name`, (e) => e.textContent), 'Checkout', 'deltas keep the snapshot name');
  target.status = 200;
  await waitSelector(page, `${card(id)}[data-status="up"]`, TURN_MS, 'monitor back up');
  assertNoPolling(requests, 'monitors', [id]);

  // A monitor created after load appears (its name fetched once, as deltas carry none); a deleted one goes away.
  const other = await createMonitor(h, { name: 'Search', check: { kind: 'tcp', host: '127.0.0.1', port: Number(new URL(target.url).port) }, interval: INTERVAL_S });
  await waitSelector(page, `${card(other)}[data-status="up"]`, 10_000, 'new monitor shown');
  await page.waitForFunction((sel) => document.querySelector(`${sel} .name`)?.textContent === 'Search', card(other), { timeout: 5_000 });
  const del = await request(h.url, `/api/monitors/${id}`, { method: 'DELETE' });
  assert.equal(del.status, 200, del.text);
  await page.waitForSelector(card(id), { state: 'detached', timeout: 5_000 });
  assert.equal(await page.$$eval('li.monitor', (l) => l.length), 1);
  h.assertNoPanic();
});

test('status page: Herald restarts under it; the EventSource reconnects and resumes by itself and updates continue', async (t) => {
  const context = await browserContext(t, { viewport: { width: 1024, height: 700 } });
  if (!context) return;
  const h = await startHerald(t);
  const target = await flippingTarget(t);
  const id = await createMonitor(h, { name: 'API', check: { kind: 'http', url: target.url }, interval: INTERVAL_S });
  const page = await context.newPage();
  const requests = recordRequests(page);
  await page.goto(`${h.url}/status`);
  await waitSelector(page, `${card(id)}[data-status="up"]`, 10_000, 'monitor shown up');
  await waitSelector(page, 'body[data-connection="live"]', 5_000, 'live');

  await h.stop('SIGTERM');
  await waitSelector(page, 'body[data-connection="reconnecting"]', 10_000, 'indicator shows the lost connection');
  await h.restart();
  await waitSelector(page, 'body[data-connection="live"]', 15_000, 'live again after the restart');

  // Updates after the restart still reach the page opened before it.
  target.status = 500;
  await waitSelector(page, `${card(id)}[data-status="down"]`, 10_000, 'down after the restart');
  assert.equal(await page.$$eval('li.monitor', (l) => l.length), 1, 'the resumed stream does not duplicate cards');
  // Only EventSource reconnections: no reload, no polling, and the initial fetches made once.
  const sse = requests.filter((r) => r.path === '/sse/monitors');
  assert.ok(sse.length >= 2, `the EventSource reconnected: ${JSON.stringify(requests)}`);
  assert.ok(sse.every((r) => r.type === 'eventsource'), JSON.stringify(sse));
  const others = requests.filter((r) => r.path !== '/sse/monitors');
  assert.deepEqual(others.map((r) => r.path).sort(),
    ['/status', '/status/config', '/status/monitors', `/status/monitors/${id}/log?limit=10`].sort(),
    `requests other than the stream: ${JSON.stringify(requests)}`);
});
