// Headless Chromium for the page tests: Debian's /usr/bin/chromium driven by playwright-core (no downloaded browser),
// one browser per test file, a fresh context per test, pages served from a local origin, and waits that fail with
// the page's own log and the browser console.
//
// Needs /usr/bin/chromium (Debian package `chromium`; override with HERALD_CHROMIUM). Without it these tests FAIL;
// HERALD_SKIP_BROWSER=1 skips them explicitly.
import { after } from 'node:test';
import http from 'node:http';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.HERALD_CHROMIUM || '/usr/bin/chromium';
const SKIP = process.env.HERALD_SKIP_BROWSER === '1';
const LAUNCH_ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update',
  '--disable-sync', '--no-first-run'];

let browserPromise;
after(async () => { if (browserPromise) await (await browserPromise.catch(() => null))?.close(); });

/** A fresh browser context (one shared Chromium per file); null when skipped. Console lines go into failures. */
export async function browserContext(t, options = {}) {
  if (SKIP) {
    t.skip('HERALD_SKIP_BROWSER=1');
    return null;
  }
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium), `
      + 'set HERALD_CHROMIUM, or set HERALD_SKIP_BROWSER=1 to skip the browser tests');
  }
  browserPromise ??= chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS, timeout: 30_000 });
  const context = await (await browserPromise).newContext(options);
  context.consoleLines = [];
  context.on('console', (m) => context.consoleLines.push(`${m.type()}: ${m.text()}`));
  context.on('weberror', (e) => context.consoleLines.push(`pageerror: ${e.error().message}`));
  t.after(() => context.close());
  return context;
}

/** Serves `html` from its own local origin; returns its URL. */
export async function servePage(t, html) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));
  return `http://127.0.0.1:${server.address().port}/`;
}

/** Waits for a page condition; on timeout, fails with `describe()` evaluated in the page and the browser console. */
export async function waitPage(page, fn, arg, ms, label, describe = () => JSON.stringify(window.log ?? null)) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    const log = await page.evaluate(describe).catch(() => '?');
    const consoleLines = page.context().consoleLines ?? [];
    throw new Error(`${label}: ${e.message.split('\n')[0]}; page log: ${log}; browser console (last 10): `
      + JSON.stringify(consoleLines.slice(-10)));
  }
}
