// 43. `/readyz` lists the engine and every source (the monitor, each SQL source) with whether it is ready; 503
// when a required part is not (issue 17).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, request, pause } from '../lib/herald.js';
import { startPostgres } from '../lib/sqldb.js';

const part = (body, name) => body.parts.find((p) => p.name === name);

/**
 * GET /readyz until it answers `status` (a source's probe result is kept for a second however often /readyz is
 * asked, so a change shows within about a second; the pause is the retry backoff, not a synchronisation). Each
 * answer must come within 5 s.
 */
async function readyzUntil(h, status, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const started = Date.now();
    const r = await request(h.url, '/readyz');
    assert.ok(Date.now() - started < 5_000, 'each answer is bounded');
    if (r.status === status || Date.now() > deadline) return r;
    await pause(200);
  }
}

test('/readyz lists the engine and the monitor, both ready and required', async (t) => {
  const h = await startHerald(t);
  const r = await request(h.url, '/readyz');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.status, 'ready');
  assert.deepEqual(part(r.json, 'engine'), { name: 'engine', kind: 'engine', ready: true, required: true });
  assert.deepEqual(part(r.json, 'monitor'), { name: 'monitor', kind: 'monitor', ready: true, required: true });
  assert.equal(r.json.parts[0].name, 'engine', 'the engine is listed first');
});

test('/readyz: a SQL source whose database stops is not ready; 503 only when it is required', async (t) => {
  const pg = await startPostgres(t);
  pg.exec('create table units (k text primary key, v int)');
  const h = await startHerald(t, { config: `
[[sources.sql]]
id = "needed"
url = "${pg.url}"
sql = "select * from units where k = {k}"
channel = "needed:{k}"
statement_timeout = "1s"
ready_required = true
[[sources.sql]]
id = "optional"
url = "${pg.url}"
sql = "select * from units where k = {k}"
channel = "optional:{k}"
statement_timeout = "1s"
` });
  let r = await request(h.url, '/readyz');
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(part(r.json, 'sql:needed'), { name: 'sql:needed', kind: 'sql', ready: true, required: true });
  assert.deepEqual(part(r.json, 'sql:optional'), { name: 'sql:optional', kind: 'sql', ready: true, required: false });

  await pg.stop();
  r = await readyzUntil(h, 503);
  assert.equal(r.status, 503, r.text);
  assert.equal(r.json.status, 'not_ready');
  assert.equal(r.json.error.code, 'not_ready');
  assert.match(r.json.error.message, /sql:needed/);
  const needed = part(r.json, 'sql:needed');
  assert.equal(needed.ready, false);
  assert.match(needed.message, /database/);
  assert.equal(part(r.json, 'sql:optional').ready, false, 'an optional source is listed as not ready too');
  assert.equal(part(r.json, 'engine').ready, true);

  await pg.start();
  r = await readyzUntil(h, 200);
  assert.equal(r.status, 200, `ready again once the database is back: ${r.text}`);
  assert.equal(part(r.json, 'sql:needed').ready, true);
});

test('/readyz: an optional SQL source that is down leaves the node ready', async (t) => {
  const pg = await startPostgres(t);
  const h = await startHerald(t, { config: `
[[sources.sql]]
id = "optional"
url = "${pg.url}"
sql = "select 1 as k where {k} = 'x'"
channel = "optional:{k}"
statement_timeout = "1s"
` });
  await pg.stop();
  // Until the probe notices, and after: 200 throughout.
  let r;
  const deadline = Date.now() + 10_000;
  do {
    r = await request(h.url, '/readyz');
    assert.equal(r.status, 200, r.text);
    if (part(r.json, 'sql:optional').ready === false) break;
    await pause(200);
  } while (Date.now() < deadline);
  assert.equal(r.json.status, 'ready');
  assert.equal(part(r.json, 'sql:optional').ready, false);
  assert.equal(part(r.json, 'sql:optional').required, false);
});
