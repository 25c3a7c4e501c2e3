// 22. Seed 003 with Herald as its backend: a page in headless Chromium opens one bare WebSocket per production unit
// (`/ws/Final 1A`, `/ws/Final 1B`), renders the data once every unit has reported, re-renders when the table changes
// and only then, and reconnects by itself (exponential backoff) after Herald restarts — where the current result
// comes back as the snapshot, with no duplicate push. The backend is a [[sources.sql]] entry over PostgreSQL.
//
// Needs /usr/bin/chromium (or HERALD_CHROMIUM); without it this test FAILS; HERALD_SKIP_BROWSER=1 skips it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, request, withTimeout } from '../lib/herald.js';
import { browserContext, servePage, waitPage } from '../lib/browser.js';
import { startPostgres } from '../lib/sqldb.js';

// The seed-003 frontend: useDashboardData's logic without React. One socket per unit; data kept per unit; a render
// (dataVersion + 1) once every unit has reported; heartbeat/status messages ignored; backoff reconnect.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Model Dağılımı</title></head>
<body><div id="status">…</div><table id="data"></table>
<script>
window.log = { opens: 0, closes: 0, messages: {}, renders: 0, ignored: 0 };
window.start = function (host, units) {
  const unitDataMap = {};
  const render = () => {
    const rows = units.flatMap((u) => unitDataMap[u].map((r) => '<tr><td>' + u + '</td><td>' + r.model + '</td><td>' + r.qty + '</td></tr>'));
    document.getElementById('data').innerHTML = rows.join('');
    window.log.renders++;
  };
  for (const unit of units) {
    let attempt = 0;
    const connect = () => {
      const ws = new WebSocket('ws://' + host + '/ws/' + unit);
      ws.onopen = () => { attempt = 0; window.log.opens++; document.getElementById('status').textContent = 'Canlı'; };
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (!Array.isArray(msg)) { window.log.ignored++; return; }   // heartbeat, source status
        (window.log.messages[unit] ??= []).push(msg);
        unitDataMap[unit] = msg;
        if (units.every((u) => unitDataMap[u])) render();
      };
      ws.onclose = () => {
        window.log.closes++;
        document.getElementById('status').textContent = 'Bağlantı kesildi';
        const delay = Math.min(100 * 2 ** attempt, 2000);
        attempt++;
        setTimeout(connect, delay);
      };
    };
    connect();
  }
};
</script></body></html>`;

const tableText = (page) => page.$$eval('#data tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent).join('|')));

/** Resolves once every channel of source `id` was queried `n` more times (the API read again and again). */
async function pollsPass(h, id, n = 3) {
  const info = async () => (await request(h.url, `/api/sources/${id}`)).json;
  const start = Object.fromEntries((await info()).channels.map((c) => [c.channel, c.queries]));
  await withTimeout((async () => {
    for (;;) {
      const now = await info();
      if (now.channels.length > 0 && now.channels.every((c) => c.queries >= (start[c.channel] ?? 0) + n)) return;
      await new Promise((r) => setImmediate(r));
    }
  })(), 15_000, `${n} polls of every channel`);
}

test('seed-003 page in Chromium: two units over bare WebSockets, re-rendered on table changes only, reconnects after a restart', async (t) => {
  const context = await browserContext(t);
  if (!context) return;
  const pg = await startPostgres(t);
  pg.exec('create table production (unit text, model text, qty int, primary key (unit, model))');
  pg.exec("insert into production values ('Final 1A', 'X100', 5), ('Final 1A', 'X200', 2), ('Final 1B', 'Y300', 9)");
  const h = await startHerald(t, { config: `
[websocket]
heartbeat_interval = "200ms"

[[websocket.direct]]
pattern = "*"
payload = "data"

[[sources.sql]]
id = "units"
url = "${pg.url}"
sql = "select model, qty from production where unit = {unit} order by model"
channel = "{unit}"
key = "model"
interval = "100ms"
` });
  const page = await context.newPage();
  await page.goto(await servePage(t, PAGE));
  await page.evaluate(({ host }) => window.start(host, ['Final 1A', 'Final 1B']), { host: `127.0.0.1:${h.port}` });

  await waitPage(page, () => window.log.renders >= 1, undefined, 15_000, 'first render');
  assert.deepEqual(await tableText(page), ['Final 1A|X100|5', 'Final 1A|X200|2', 'Final 1B|Y300|9']);

  // Polls go on, nothing changes: no message, no render (heartbeats arrive and are ignored).
  await pollsPass(h, 'units');
  await waitPage(page, () => window.log.ignored >= 2, undefined, 10_000, 'heartbeats');
  let log = await page.evaluate(() => window.log);
  assert.equal(log.renders, 1, 'no render without a change');
  assert.equal(log.messages['Final 1A'].length, 1);
  assert.equal(log.messages['Final 1B'].length, 1);

  pg.exec("update production set qty = 6 where unit = 'Final 1A' and model = 'X100'");
  await waitPage(page, () => document.querySelector('#data tr td:nth-child(3)')?.textContent === '6', undefined, 10_000, 'update shown');
  log = await page.evaluate(() => window.log);
  assert.equal(log.messages['Final 1A'].length, 2, 'one push for the changed unit');
  assert.equal(log.messages['Final 1B'].length, 1, 'none for the other');
  assert.equal(log.renders, 2);

  // Herald restarts: the page reconnects by itself and gets the current result back as the snapshot.
  const exit = await h.stop('SIGTERM');
  assert.equal(exit.code, 0);
  pg.exec("insert into production values ('Final 1B', 'Y400', 1)");  // changed while Herald was down
  await h.restart();
  await waitPage(page, () => window.log.opens >= 4, undefined, 20_000, 'both sockets reconnect');
  await waitPage(page, () => [...document.querySelectorAll('#data tr')].length === 4, undefined, 15_000, 'change made while down shown');
  assert.deepEqual(await tableText(page), ['Final 1A|X100|6', 'Final 1A|X200|2', 'Final 1B|Y300|9', 'Final 1B|Y400|1']);
  await pollsPass(h, 'units');
  log = await page.evaluate(() => window.log);
  // Unit A: its snapshot again after the reconnect, and no duplicate push of an unchanged result.
  assert.equal(log.messages['Final 1A'].length, 3, JSON.stringify(log.messages['Final 1A']));
  assert.deepEqual(log.messages['Final 1A'][2], log.messages['Final 1A'][1]);

  pg.exec("delete from production where model = 'X200'");
  await waitPage(page, () => [...document.querySelectorAll('#data tr')].length === 3, undefined, 10_000, 'delete shown');
  assert.deepEqual(await tableText(page), ['Final 1A|X100|6', 'Final 1B|Y300|9', 'Final 1B|Y400|1']);
  h.assertNoPanic();
});
