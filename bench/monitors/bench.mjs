// Service-monitor benchmark: N HTTP monitors at a fixed interval against a local target, measuring Herald's CPU,
// memory and check-time drift; optionally the status page in headless Chromium with all N monitors live.
//
// Run through `bench/monitors/run.sh` (it builds Herald and pins the processes). This script runs on core 1 and
// holds the target itself (a plain Node HTTP server answering 200 "ok", keep-alive); Herald is spawned with
// `taskset -c 0`. Everything it starts it stops; it ends by itself after WARMUP + DURATION (+ PAGE_SECONDS).
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createInterface } from 'node:readline';
import http from 'node:http';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const env = (k, d) => (process.env[k] === undefined || process.env[k] === '' ? d : process.env[k]);
const BIN = env('HERALD_BIN', join(ROOT, 'target/release/herald'));
const N = Number(env('MONITORS', 1000));
const INTERVAL = Number(env('INTERVAL', 10));
const WARMUP = Number(env('WARMUP', 15));
const DURATION = Number(env('DURATION', 60));
const PAGE_SECONDS = Number(env('PAGE_SECONDS', 0));
const HERALD_CORE = env('HERALD_CORE', '0');
const CHROMIUM = env('HERALD_CHROMIUM', '/usr/bin/chromium');
const JSON_OUT = env('JSON_OUT', '');
const CLK_TCK = 100; // Linux USER_HZ; /proc/PID/stat counts in these ticks

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error('[bench]', ...a);

// ---- the target ------------------------------------------------------------------------------------------------
let targetHits = 0;
const target = http.createServer((req, res) => {
  targetHits++;
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
  res.end('ok');
});
target.keepAliveTimeout = 60_000;
await new Promise((r) => target.listen(0, '127.0.0.1', r));
const targetUrl = `http://127.0.0.1:${target.address().port}`;

// ---- Herald ----------------------------------------------------------------------------------------------------
const dir = mkdtempSync(join(tmpdir(), 'herald-bench-monitors-'));
writeFileSync(join(dir, 'herald.toml'), '');
const proc = spawn('taskset', ['-c', HERALD_CORE, BIN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', join(dir, 'data'),
  '--config', join(dir, 'herald.toml')], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: env('RUST_LOG', 'warn') } });
let stderr = '';
proc.stderr.setEncoding('utf8');
proc.stderr.on('data', (d) => { stderr += d; if (stderr.length > 1e6) stderr = stderr.slice(-5e5); });
const exited = new Promise((r) => proc.on('exit', (code, signal) => r({ code, signal })));
let cleanedUp = false;
async function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  if (proc.exitCode === null && proc.signalCode === null) {
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
  target.closeAllConnections();
  target.close();
  rmSync(dir, { recursive: true, force: true });
}
process.on('SIGINT', () => cleanup().then(() => process.exit(130)));
process.on('SIGTERM', () => cleanup().then(() => process.exit(143)));

const url = await new Promise((res, rej) => {
  const rl = createInterface({ input: proc.stdout });
  rl.on('line', (line) => {
    const m = /^herald listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(line);
    if (m) res(m[1]);
  });
  exited.then((e) => rej(new Error(`herald exited (${JSON.stringify(e)}): ${stderr.slice(-2000)}`)));
  setTimeout(() => rej(new Error('herald did not print its listening line in 15 s')), 15_000);
});
const pid = proc.pid; // taskset execs herald: same pid
const affinity = readFileSync(`/proc/${pid}/status`, 'utf8').match(/Cpus_allowed_list:\s*(\S+)/)?.[1];
log(`herald pid ${pid} on cpus ${affinity} at ${url}; target ${targetUrl}`);

function cpuTicks(p = pid) {
  // Fields after the command name (which may contain spaces): utime is field 14, stime 15.
  const s = readFileSync(`/proc/${p}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}
function rssKiB(p = pid) {
  return Number(readFileSync(`/proc/${p}/status`, 'utf8').match(/VmRSS:\s*(\d+)/)[1]);
}
function threads(p = pid) {
  return Number(readFileSync(`/proc/${p}/status`, 'utf8').match(/Threads:\s*(\d+)/)[1]);
}
function machineBusy() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}
async function metrics() {
  const text = await (await fetch(`${url}/metrics`)).text();
  const get = (re) => Number(text.match(re)?.[1]);
  const statuses = [...text.matchAll(/^monitor_status\{[^}]*\} (\d+)/gm)].map((m) => Number(m[1]));
  return {
    checks: get(/^herald_monitor_checks_total (\S+)/m),
    lateAvg: get(/^herald_monitor_check_lateness_seconds\{stat="avg"\} (\S+)/m),
    lateMax: get(/^herald_monitor_check_lateness_seconds\{stat="max"\} (\S+)/m),
    up: statuses.filter((s) => s === 1).length,
    bytes: text.length,
  };
}

const result = { monitors: N, interval: INTERVAL, warmup: WARMUP, duration: DURATION, herald_cpus: affinity };
try {
  result.rss_before_kib = rssKiB();
  // ---- create the monitors (16 requests in flight) -----------------------------------------------------------
  const createStart = Date.now();
  const cpuCreate0 = cpuTicks();
  let next = 0;
  const ids = [];
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < N) {
      const i = next++;
      const r = await fetch(`${url}/api/monitors`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: `svc-${String(i).padStart(4, '0')}`, check: { kind: 'http', url: `${targetUrl}/svc/${i}` },
          interval: INTERVAL, timeout: Math.min(5, INTERVAL) }),
      });
      if (r.status !== 201) throw new Error(`create ${i}: ${r.status} ${await r.text()}`);
      ids.push((await r.json()).id);
    }
  }));
  result.create_seconds = (Date.now() - createStart) / 1000;
  result.create_cpu_ms_per_monitor = ((cpuTicks() - cpuCreate0) * 1000 / CLK_TCK) / N;
  result.rss_after_create_kib = rssKiB();
  log(`created ${N} monitors in ${result.create_seconds.toFixed(1)} s`);

  // ---- warm-up: every monitor checked, then WARMUP seconds of steady state ----------------------------------
  for (let m = await metrics(); m.checks < N; m = await metrics()) await sleep(250);
  await sleep(WARMUP * 1000);

  // ---- measurement window -------------------------------------------------------------------------------------
  const m0 = await metrics();
  const c0 = cpuTicks();
  const b0 = machineBusy();
  const self0 = process.cpuUsage();
  const hits0 = targetHits;
  const t0 = Date.now();
  const rss = [];
  while (Date.now() - t0 < DURATION * 1000) {
    rss.push(rssKiB());
    await sleep(1000);
  }
  const secs = (Date.now() - t0) / 1000;
  const c1 = cpuTicks();
  const b1 = machineBusy();
  const self1 = process.cpuUsage(self0);
  const m1 = await metrics();
  const heraldCpu = (c1 - c0) / CLK_TCK / secs;
  const checks = m1.checks - m0.checks;
  Object.assign(result, {
    window_seconds: secs,
    checks_per_second: checks / secs,
    expected_checks_per_second: N / INTERVAL,
    target_requests_per_second: (targetHits - hits0) / secs,
    herald_cpu_of_one_core: heraldCpu,
    herald_cpu_us_per_check: (c1 - c0) / CLK_TCK * 1e6 / checks,
    rss_kib_min: Math.min(...rss),
    rss_kib_max: Math.max(...rss),
    rss_kib_end: rssKiB(),
    threads: threads(),
    lateness_avg_ms_cumulative: m1.lateAvg * 1000,
    lateness_max_ms_cumulative: m1.lateMax * 1000,
    // The metric is a running average over all scheduled checks; this is its value over the window alone.
    lateness_avg_ms_window: ((m1.lateAvg * m1.checks - m0.lateAvg * m0.checks) / checks) * 1000,
    monitors_up: m1.up,
    metrics_bytes: m1.bytes,
    driver_cpu_of_one_core: (self1.user + self1.system) / 1e6 / secs,
    machine_busy_cores: ((b1.busy - b0.busy) / (b1.total - b0.total)) * 2,
  });
  log(`window: ${checks} checks in ${secs.toFixed(1)} s, herald CPU ${(heraldCpu * 100).toFixed(1)}% of one core, `
    + `RSS ${(result.rss_kib_end / 1024).toFixed(1)} MiB`);

  // ---- optional: the status page with every monitor live -----------------------------------------------------
  if (PAGE_SECONDS > 0) {
    const pw = join(ROOT, 'tests/js/node_modules/playwright-core/index.mjs');
    if (!existsSync(pw)) throw new Error('PAGE_SECONDS needs playwright-core: run `npm ci` in tests/js');
    const { chromium } = await import(pathToFileURL(pw).href);
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu'] });
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const cdp = await page.context().newCDPSession(page);
      await cdp.send('Performance.enable');
      const p0 = Date.now();
      await page.goto(`${url}/status`);
      await page.waitForFunction((n) => document.querySelectorAll('li.monitor').length === n
        && document.body.dataset.connection === 'live', N, { timeout: 60_000, polling: 100 });
      result.page_first_render_ms = Date.now() - p0;
      const perf = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((x) => [x.name, x.value]));
      // Count the events the page handles in the window (its EventSource, observed without touching the page's code).
      await page.evaluate((cfg) => {
        window.__events = 0;
        for (const name of cfg) window.heraldStatus.source.addEventListener(name, () => { window.__events++; });
      }, ['monitor:status', 'monitor:log']);
      const q0 = await perf();
      const hc0 = cpuTicks();
      const w0 = Date.now();
      await sleep(PAGE_SECONDS * 1000);
      const q1 = await perf();
      const pageSecs = (Date.now() - w0) / 1000;
      result.page_window_seconds = pageSecs;
      result.page_events_per_second = (await page.evaluate(() => window.__events)) / pageSecs;
      result.page_main_thread_busy = (q1.TaskDuration - q0.TaskDuration) / pageSecs;
      result.page_script_share = (q1.ScriptDuration - q0.ScriptDuration) / pageSecs;
      result.page_heap_mib = q1.JSHeapUsedSize / 1048576;
      result.page_dom_nodes = q1.Nodes;
      result.herald_cpu_with_page = (cpuTicks() - hc0) / CLK_TCK / pageSecs;
      result.up_on_page = await page.evaluate(() => document.querySelectorAll('li.monitor[data-status="up"]').length);
      if (env('SCREENSHOT', '')) await page.screenshot({ path: env('SCREENSHOT', '') });
    } finally {
      await browser.close();
    }
  }
  result.herald_stderr_lines = stderr.split('\n').filter(Boolean).length;
} finally {
  await cleanup();
}
console.log(JSON.stringify(result, null, 2));
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(result, null, 2) + '\n');
