// SQL-source benchmark: UNITS parameter sets polled every INTERVAL_MS with SUBS WebSocket subscribers each, against
// a PostgreSQL server started here. Reports Herald's CPU, the database's queries per second (pg_stat_statements) and
// the PostgreSQL backends' CPU over DURATION seconds, while CHANGES rows per second are updated at random.
//
// Usage: node bench/sql-sources.mjs   (see bench/run-sql-sources.sh, which builds the release binary first)
// Env:   HERALD_BIN, UNITS (100), SUBS (10), INTERVAL_MS (1000), DURATION (20), CHANGES (10), JSON=1
import { readFileSync, readdirSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { startHerald } from '../tests/js/lib/herald.js';
import { openWs, wsBase, directPath } from '../tests/js/lib/plain.js';
import { startPostgres } from '../tests/js/lib/sqldb.js';

const UNITS = Number(process.env.UNITS ?? 100);
const SUBS = Number(process.env.SUBS ?? 10);
const INTERVAL_MS = Number(process.env.INTERVAL_MS ?? 1000);
const DURATION = Number(process.env.DURATION ?? 20);
const CHANGES = Number(process.env.CHANGES ?? 10);
const TICK = 100; // USER_HZ on Linux

// node:test's context, reduced to what the helpers use: cleanups run at the end.
const cleanups = [];
const t = { after: (fn) => cleanups.push(fn), diagnostic: () => {} };
const cleanup = async () => { for (const fn of cleanups.reverse()) await Promise.resolve(fn()).catch(() => {}); };
process.on('SIGINT', () => cleanup().then(() => process.exit(130)));

/** utime+stime of `pid` in seconds. */
function cpu(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICK;
}

/** CPU seconds of every process whose parent chain reaches `root` (PostgreSQL's backends), plus root. */
function treeCpu(root) {
  const parents = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const f = readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1].split(' ');
      parents.set(Number(d), Number(f[1]));
    } catch { /* exited */ }
  }
  let sum = 0;
  for (const pid of parents.keys()) {
    let p = pid;
    while (p && p !== root && parents.has(p)) p = parents.get(p);
    if (p === root) { try { sum += cpu(pid); } catch { /* exited */ } }
  }
  return sum;
}

try {
  const pg = await startPostgres(t);
  pg.exec('create table readings (unit text, model text, qty int, primary key (unit, model))');
  pg.exec(`insert into readings select 'unit ' || u, 'M' || m, u * m from generate_series(1, ${UNITS}) u, generate_series(1, 5) m`);
  const h = await startHerald(t, { config: `
[limits]
connections_per_second_per_ip = 0
connections_per_ip = 0
[websocket]
compression = false
[[websocket.direct]]
pattern = "*"
payload = "data"
[[sources.sql]]
id = "bench"
url = "${pg.url}"
sql = "select model, qty from readings where unit = {unit} order by model"
channel = "unit:{unit}"
key = "model"
interval = "${INTERVAL_MS}ms"
pool_size = 4
` });
  const clients = [];
  for (let u = 1; u <= UNITS; u++) {
    const opened = [];
    for (let s = 0; s < SUBS; s++) opened.push(openWs(t, `${wsBase(h)}${directPath('/ws', `unit:unit ${u}`)}`));
    clients.push(...await Promise.all(opened));
  }
  await Promise.all(clients.map((c) => c.until((x) => x.messages.length >= 1, 60_000, 'snapshot')));
  // Settle for two intervals, then measure.
  await new Promise((r) => setTimeout(r, 2 * INTERVAL_MS));
  const calls = () => Number(pg.exec("select coalesce(sum(calls), 0) from pg_stat_statements where query like '%from readings%'").trim());
  const received = () => clients.reduce((n, c) => n + c.messages.length, 0);
  const pgPid = pg.server.proc.pid;
  const start = { t: performance.now(), herald: cpu(h.proc.pid), pg: treeCpu(pgPid), calls: calls(), msgs: received() };
  let changes = 0;
  const changer = CHANGES > 0 ? setInterval(() => {
    const u = 1 + Math.floor(Math.random() * UNITS);
    // psql run asynchronously: the subscribers' event loop must not stall on it.
    execFile('psql', ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'postgres', '-X', '-q', '-c',
      `update readings set qty = qty + 1 where unit = 'unit ${u}' and model = 'M1'`], () => {});
    changes++;
  }, 1000 / CHANGES) : null;
  await new Promise((r) => setTimeout(r, DURATION * 1000));
  if (changer) clearInterval(changer);
  const end = { t: performance.now(), herald: cpu(h.proc.pid), pg: treeCpu(pgPid), calls: calls(), msgs: received() };
  const secs = (end.t - start.t) / 1000;
  const result = {
    units: UNITS,
    subscribers: UNITS * SUBS,
    interval_ms: INTERVAL_MS,
    seconds: Number(secs.toFixed(1)),
    changes_per_s: Number((changes / secs).toFixed(1)),
    db_queries_per_s: Number(((end.calls - start.calls) / secs).toFixed(1)),
    herald_cpu_pct: Number((100 * (end.herald - start.herald) / secs).toFixed(1)),
    postgres_cpu_pct: Number((100 * (end.pg - start.pg) / secs).toFixed(1)),
    messages_per_s: Number(((end.msgs - start.msgs) / secs).toFixed(1)),
    herald_rss_mb: Number((Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${h.proc.pid}/status`, 'utf8'))[1]) / 1024).toFixed(1)),
  };
  if (process.env.JSON === '1') console.log(JSON.stringify(result));
  else {
    console.log(`${result.units} parameter sets × ${SUBS} subscribers, interval ${INTERVAL_MS} ms, ${result.seconds} s, ${result.changes_per_s} changes/s`);
    console.log(`  database queries/s   ${result.db_queries_per_s}  (expected ${(UNITS * 1000 / INTERVAL_MS).toFixed(0)})`);
    console.log(`  herald CPU           ${result.herald_cpu_pct} % of one core (RSS ${result.herald_rss_mb} MB)`);
    console.log(`  postgres CPU         ${result.postgres_cpu_pct} % of one core (all backends)`);
    console.log(`  messages pushed/s    ${result.messages_per_s}`);
  }
} finally {
  await cleanup();
}
