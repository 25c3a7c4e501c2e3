// 44. `/api/openapi.json` (issue 17): served without a key, an OpenAPI 3.1 document whose ErrorCode enum holds
// the codes the server answers; the route test (cargo test --lib server::tests) and the schemathesis run
// (scripts/openapi-fuzz) keep it true. Here: what a client of the live server sees.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, request, assertApiError } from '../lib/herald.js';

test('/api/openapi.json is public, OpenAPI 3.1, and lists every error code it answers', async (t) => {
  const h = await startHerald(t, { args: ['--api-key', 'secret'] });
  const r = await request(h.url, '/api/openapi.json');
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type'), /^application\/json/);
  assert.equal(r.json.openapi, '3.1.0');
  for (const path of ['/api/publish', '/api/channels/{channel}/history', '/readyz', '/api/openapi.json']) {
    assert.ok(r.json.paths[path], `describes ${path}`);
  }
  const codes = new Set(r.json.components.schemas.ErrorCode.enum);
  // Answers of this server, each checked against the enum.
  const answers = [
    await request(h.url, '/api/channels'),                                         // no key
    await request(h.url, '/api/nope', { headers: { authorization: 'Bearer secret' } }),
    await request(h.url, '/api/publish', { method: 'POST', rawBody: 'x', headers: { authorization: 'Bearer secret' } }),
  ];
  for (const a of answers) {
    assert.ok(codes.has(a.json?.error?.code), `${a.json?.error?.code} is in ErrorCode (${a.text})`);
  }
});

test('a query string an extractor cannot read is a JSON 400, not plain text', async (t) => {
  const h = await startHerald(t);
  for (const path of ['/api/monitors/x/log?limit=-1', '/status/monitors/x/log?limit=abc']) {
    const r = await request(h.url, path);
    assertApiError(r, 400, 'invalid_request', path);
    assert.equal(r.json.error.field, 'limit', path);
    assert.match(r.headers.get('content-type'), /^application\/json/, path);
  }
  // A path segment that is not UTF-8: axum's own plain-text rejection, rewrapped for every route.
  const r = await request(h.url, '/api/monitors/%FF');
  assertApiError(r, 400, 'invalid_request', 'a path that is not UTF-8');
  assert.match(r.json.error.message, /UTF-8|utf-8|decode/i);
});

// Found by scripts/openapi-fuzz: a monitor rescheduled (updated, resumed) and checked at once answered 503
// `monitor_unavailable` on a single node, because the replaced task's guard, dropped after its successor started,
// cleared the "checked here" flag the new task had just set.
test('a monitor checked right after each update or resume is checked, never "checked by another node"', async (t) => {
  const h = await startHerald(t);
  const spec = (name) => ({ id: 'local', name, check: { kind: 'tcp', host: '127.0.0.1', port: 9 }, interval: 60 });
  assert.equal((await request(h.url, '/api/monitors', { method: 'POST', body: spec('a') })).status, 201);
  for (let i = 0; i < 25; i++) {
    if (i % 2) {
      assert.equal((await request(h.url, '/api/monitors/local/pause', { method: 'POST' })).status, 200);
      assert.equal((await request(h.url, '/api/monitors/local/resume', { method: 'POST' })).status, 200);
    } else {
      assert.equal((await request(h.url, '/api/monitors/local', { method: 'PUT', body: spec(`n${i}`) })).status, 200);
    }
    const r = await request(h.url, '/api/monitors/local/check', { method: 'POST' });
    assert.equal(r.status, 200, `round ${i}: ${r.text}`);
    assert.equal(r.json.outcome.ok, false, 'port 9 refuses');
  }
});
