// 13. Real browser clients (headless Chromium via playwright-core; Debian's /usr/bin/chromium, no downloaded browser).
// (a) Seed 003: a page that opens `new WebSocket('ws://host/ws/Final 1A')`, parses JSON in onmessage, ignores
//     heartbeat/error messages and reconnects by itself with exponential backoff, resuming with ?since=<offset>&epoch=.
// (b) The browser's own EventSource on /sse/{channel}, which reconnects by itself and sends Last-Event-ID.
// Each: a stream of events published over HTTP, Herald restarted (SIGTERM, same port and data dir) mid-stream while
// publishing continues; the page must end with every event exactly once, in order. The page reaches Herald through a
// TCP gate held closed until some events were published after the restart, so its resume must replay them.
//
// Needs /usr/bin/chromium (Debian package `chromium`; override with HERALD_CHROMIUM). Without it these tests FAIL;
// HERALD_SKIP_BROWSER=1 skips them explicitly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, publishRetry } from '../lib/herald.js';
import { browserContext, servePage, waitPage } from '../lib/browser.js';
import { gateProxy } from '../lib/plain.js';

const UNIT = 'Final 1A';
const N = 60;
const KILL_AT = 20;

// The seed-003 client, as a page served from a separate origin (WebSocket is not subject to CORS).
const UNIT_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Model Dağılımı</title></head>
<body><div id="status">…</div>
<script>
window.log = { events: [], heartbeats: 0, errors: 0, gaps: [], opens: 0, closes: [], urls: [], gaveUp: false };
// One WebSocket per production unit; reconnect with exponential backoff (the seed uses 1s, 2s, 4s … 30s, 20 attempts;
// scaled down here), resuming after the last offset seen in an envelope.
window.connectUnit = function (host, unit, { baseDelay, maxDelay, maxAttempts }) {
  let attempt = 0;
  let last = null;
  const connect = () => {
    let url = 'ws://' + host + '/ws/' + unit;   // like the seed: a raw space in the URL
    if (last) url += '?since=' + last.offset + '&epoch=' + encodeURIComponent(last.epoch);
    log.urls.push(url);
    const ws = new WebSocket(url);
    ws.onopen = () => { attempt = 0; log.opens++; document.getElementById('status').textContent = 'Canlı'; };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === 'heartbeat') { log.heartbeats++; return; }
      if (msg.type === 'error') { log.errors++; return; }
      if (msg.type === 'gap') { log.gaps.push(msg); return; }
      last = { offset: msg.offset, epoch: msg.epoch };
      log.events.push({ channel: msg.channel, offset: msg.offset, n: msg.data.n });
    };
    ws.onclose = (e) => {
      log.closes.push(e.code);
      document.getElementById('status').textContent = 'Bağlantı kesildi';
      if (attempt >= maxAttempts) { log.gaveUp = true; return; }
      const delay = Math.min(baseDelay * 2 ** attempt, maxDelay);
      attempt++;
      setTimeout(connect, delay);
    };
  };
  connect();
};
</script></body></html>`;

/**
 * Publish 1..N to `channel` (publishRetry: retried with the same idempotency id while Herald is down), restarting
 * Herald (SIGTERM, same port and data dir) after event KILL_AT without pausing the publisher. The page reaches Herald
 * through `gate`, which is closed from the restart until HELD events have been acknowledged by the restarted server
 * and the page has been refused at least once, so the page's own reconnection certainly has to replay those.
 */
const HELD = 10;
async function publishThroughRestart(h, channel, gate) {
  let interruption;
  let restarted = false;
  let publishedWhileHeld = 0;
  let epoch;
  for (let n = 1; n <= N; n++) {
    const r = await publishRetry(() => h.url, channel, 'tick', { n }, `${channel}#${n}`);
    assert.equal(r.offset, n, `offset of event ${n}`);
    epoch ??= r.epoch;
    assert.equal(r.epoch, epoch, 'the epoch survives a graceful restart');
    // Open once HELD events are in and the page has been refused at least once (its own retry path is exercised).
    if (restarted && !gate.isOpen && ++publishedWhileHeld >= HELD && gate.rejected >= 1) gate.open();
    if (n === KILL_AT) {
      gate.close(); // the page cannot reconnect until HELD events were published after the restart
      interruption = (async () => {
        const exit = await h.stop('SIGTERM');
        assert.equal(exit.code, 0, `graceful exit: ${JSON.stringify(exit)}`);
        await h.restart();
        restarted = true;
      })();
    }
  }
  await interruption;
  if (!gate.isOpen) {
    await gate.refused(1, 15_000); // the page is retrying by itself
    gate.open();
  }
  return { publishedWhileHeld, epoch };
}

test('browser WebSocket (seed 003): /ws/Final 1A with its own backoff reconnect and ?since= survives a Herald restart', async (t) => {
  const context = await browserContext(t);
  if (!context) return;
  const h = await startHerald(t, { config: '[websocket]\nheartbeat_interval = "300ms"\n' });
  const pageUrl = await servePage(t, UNIT_PAGE);
  const gate = await gateProxy(t, h.port);
  const page = await context.newPage();
  await page.goto(pageUrl);
  await page.evaluate(({ host, unit }) => window.connectUnit(host, unit, { baseDelay: 100, maxDelay: 1000, maxAttempts: 20 }),
    { host: `127.0.0.1:${gate.port}`, unit: UNIT });
  await waitPage(page, () => window.log.opens >= 1, undefined, 10_000, 'the page connects');

  const { publishedWhileHeld, epoch } = await publishThroughRestart(h, UNIT, gate);
  await waitPage(page, (n) => window.log.events.some((e) => e.n === n), N, 20_000, `event ${N} reaches the page`);
  await waitPage(page, () => window.log.heartbeats >= 1, undefined, 5_000, 'a heartbeat (ignored by the page)');

  const log = await page.evaluate(() => window.log);
  const ns = log.events.map((e) => e.n);
  const dups = ns.filter((x, i) => ns.indexOf(x) !== i);
  const missing = Array.from({ length: N }, (_, i) => i + 1).filter((n) => !ns.includes(n));
  assert.deepEqual(ns, Array.from({ length: N }, (_, i) => i + 1),
    `every event exactly once, in order (duplicates ${JSON.stringify(dups)}, missing ${JSON.stringify(missing)}; `
    + `page: opens ${log.opens}, closes ${JSON.stringify(log.closes)}, urls ${JSON.stringify(log.urls.slice(0, 3))}…)`);
  assert.deepEqual(log.events.map((e) => e.offset), ns, 'offsets match');
  assert.ok(log.events.every((e) => e.channel === UNIT), `channel is "${UNIT}"`);
  assert.deepEqual(log.gaps, [], 'no gap');
  assert.equal(log.errors, 0, 'no error messages');
  assert.equal(log.gaveUp, false);
  assert.ok(log.opens >= 2, `the page reconnected (opens ${log.opens})`);
  assert.equal(log.closes[0], 1001, `graceful shutdown closes with 1001 (closes ${JSON.stringify(log.closes)})`);
  const resumeUrls = log.urls.slice(1);
  assert.ok(resumeUrls.length >= 1 && resumeUrls.every((u) => /\?since=\d+&epoch=/.test(u)), `reconnects resume: ${JSON.stringify(log.urls)}`);
  assert.ok(resumeUrls.every((u) => u.includes(encodeURIComponent(epoch))), 'with the channel epoch');
  assert.ok(publishedWhileHeld >= HELD, `${publishedWhileHeld} events published while the page was held off (precondition)`);
  t.diagnostic(`${publishedWhileHeld} publishes while held off (${gate.rejected} connection attempts refused); `
    + `closes ${JSON.stringify(log.closes)}; ${log.heartbeats} heartbeats ignored`);
  h.assertNoPanic();
});

test('browser EventSource on /sse/Final 1A reconnects by itself (Last-Event-ID) across a Herald restart', async (t) => {
  const context = await browserContext(t);
  if (!context) return;
  const h = await startHerald(t, { config: '[sse]\nretry = "200ms"\nheartbeat_interval = "300ms"\n' });
  const gate = await gateProxy(t, h.port);
  const page = await context.newPage();
  await page.goto(`${gate.url}/healthz`); // Herald's own page (through the gate): EventSource is same-origin, no CORS
  await page.evaluate((unit) => {
    window.log = { events: [], gaps: [], opens: 0, errors: [], closedForGood: false };
    const es = new EventSource('/sse/' + unit);
    window.es = es;
    es.onopen = () => { window.log.opens++; };
    es.onerror = () => {
      window.log.errors.push(es.readyState);
      if (es.readyState === EventSource.CLOSED) window.log.closedForGood = true;
    };
    es.addEventListener('tick', (e) => window.log.events.push({ n: JSON.parse(e.data).n, id: e.lastEventId }));
    es.addEventListener('herald:gap', (e) => window.log.gaps.push(JSON.parse(e.data)));
  }, UNIT);
  await waitPage(page, () => window.log.opens >= 1, undefined, 10_000, 'EventSource opens');

  const { publishedWhileHeld, epoch } = await publishThroughRestart(h, UNIT, gate);
  await waitPage(page, (n) => window.log.events.some((e) => e.n === n) || window.log.closedForGood, N, 20_000,
    `event ${N} reaches the page`);

  const log = await page.evaluate(() => window.log);
  assert.equal(log.closedForGood, false, `EventSource gave up (readyState CLOSED): errors ${JSON.stringify(log.errors)}`);
  const ns = log.events.map((e) => e.n);
  const dups = ns.filter((x, i) => ns.indexOf(x) !== i);
  assert.deepEqual(ns, Array.from({ length: N }, (_, i) => i + 1),
    `every event exactly once, in order (duplicates ${JSON.stringify(dups)})`);
  assert.deepEqual(log.events.map((e) => e.id), ns.map((n) => `${epoch}:${n}`), 'lastEventId is <epoch>:<offset>');
  assert.deepEqual(log.gaps, [], 'no gap');
  assert.ok(log.opens >= 2, `EventSource reconnected (opens ${log.opens})`);
  assert.ok(publishedWhileHeld >= HELD, `${publishedWhileHeld} events published while the page was held off (precondition)`);
  t.diagnostic(`${publishedWhileHeld} publishes while held off (${gate.rejected} connection attempts refused); `
    + `${log.errors.length} error events (readyStates ${JSON.stringify(log.errors)})`);
  h.assertNoPanic();
});
