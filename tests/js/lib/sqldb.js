// Real databases for the SQL-source tests: a PostgreSQL and a MariaDB server started by the test itself, each in a
// temporary directory on a free loopback port, and SQLite files. Statements are run with the databases' own CLIs
// (psql, mariadb, sqlite3), so the tests need no client library.
//
// Needs Debian's `postgresql`, `mariadb-server` and `sqlite3` packages (installed by .ci/run). Without them these
// tests FAIL; they are never skipped.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, chownSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { withTimeout } from './herald.js';

/** A free loopback TCP port (bound then released). */
export async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve, reject) => srv.listen(0, '127.0.0.1', resolve).on('error', reject));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

function pgBin(name) {
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base) ? readdirSync(base).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) {
    const p = join(base, v, 'bin', name);
    if (existsSync(p)) return p;
  }
  throw new Error(`PostgreSQL's ${name} not found under ${base}: apt-get install -y postgresql`);
}

/** uid/gid of a system account, to drop root for servers that refuse to run as root. */
function account(name) {
  if (process.getuid?.() !== 0) return {};
  const uid = Number(execFileSync('id', ['-u', name]).toString().trim());
  const gid = Number(execFileSync('id', ['-g', name]).toString().trim());
  return { uid, gid };
}

/** Spawn a server and resolve once `ready` matches its log (stderr or stdout); kill it in t.after. */
async function serve(t, cmd, args, opts, ready, label) {
  const proc = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const up = new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d;
      if (ready.test(log)) resolve();
    };
    proc.stdout.setEncoding('utf8').on('data', onData);
    proc.stderr.setEncoding('utf8').on('data', onData);
    proc.on('error', reject);
    exited.then(({ code, signal }) => reject(new Error(`${label} exited (code ${code}, signal ${signal}):\n${log}`)));
  });
  up.catch(() => {});
  const server = {
    proc,
    log: () => log,
    exited,
    alive: () => proc.exitCode === null && proc.signalCode === null,
    async stop() {
      if (!server.alive()) return;
      proc.kill('SIGKILL');
      await exited;
    },
  };
  t.after(() => server.stop());
  await withTimeout(up, 60_000, `${label} to be ready; log:\n${log}`);
  return server;
}

/**
 * A PostgreSQL server (initdb + postgres) with pg_stat_statements loaded, on `port` (a free one if omitted).
 * Returns { url, port, exec(sql) → text, rows(sql) → [[col…]…], stop(), start() }.
 */
export async function startPostgres(t, { port } = {}) {
  port ??= await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'herald-pg-'));
  const who = account('postgres');
  if (who.uid !== undefined) chownSync(dir, who.uid, who.gid);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const data = join(dir, 'data');
  execFileSync(pgBin('initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'],
    { ...who, stdio: 'pipe' });
  const pg = {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    server: null,
    async start() {
      pg.server = await serve(t, pgBin('postgres'), ['-D', data, '-p', String(port), '-k', dir,
        '-c', 'listen_addresses=127.0.0.1', '-c', 'shared_preload_libraries=pg_stat_statements',
        '-c', 'fsync=off', '-c', 'max_connections=200', '-c', 'pg_stat_statements.track=all'],
      who, /database system is ready to accept connections/, 'postgres');
    },
    async stop() { await pg.server?.stop(); },
    exec(sql) {
      return execFileSync('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres',
        '-v', 'ON_ERROR_STOP=1', '-X', '-q', '-At', '-c', sql], { stdio: 'pipe' }).toString();
    },
    rows(sql) {
      return pg.exec(sql).split('\n').filter((l) => l !== '').map((l) => l.split('|'));
    },
  };
  await pg.start();
  pg.exec('create extension pg_stat_statements');
  return pg;
}

/**
 * A MariaDB server (mariadb-install-db + mariadbd --no-defaults) with database `t` and a passwordless user
 * `herald`. Returns { url, port, exec(sql) → text, rows(sql) }.
 */
export async function startMariaDb(t, { port } = {}) {
  port ??= await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'herald-maria-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const data = join(dir, 'data');
  const sock = join(dir, 'sock');
  const user = process.getuid?.() === 0 ? ['--user=root'] : [];
  execFileSync('mariadb-install-db', ['--no-defaults', `--datadir=${data}`, ...user,
    '--auth-root-authentication-method=normal', '--skip-test-db'], { stdio: 'pipe' });
  const db = {
    port,
    url: `mysql://herald@127.0.0.1:${port}/t`,
    exec(sql) {
      return execFileSync('mariadb', ['-S', sock, '-u', 'root', '-D', 't', '-N', '-B', '-e', sql],
        { stdio: 'pipe' }).toString();
    },
    rows(sql) {
      return db.exec(sql).split('\n').filter((l) => l !== '').map((l) => l.split('\t'));
    },
  };
  db.server = await serve(t, '/usr/sbin/mariadbd', ['--no-defaults', `--datadir=${data}`, `--socket=${sock}`,
    `--port=${port}`, '--bind-address=127.0.0.1', ...user, '--skip-log-bin', '--innodb-buffer-pool-size=16M',
    '--skip-name-resolve'], {}, /ready for connections/, 'mariadbd');
  execFileSync('mariadb', ['-S', sock, '-u', 'root', '-e',
    "create database t; create user herald@'%'; grant all on *.* to herald@'%';"], { stdio: 'pipe' });
  return db;
}

/** A SQLite database file. Returns { url, path, exec(sql) → text }. */
export function sqliteDb(t) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-sqlite-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'db.sqlite');
  const db = {
    path,
    url: `sqlite:${path}`,
    exec(sql) {
      return execFileSync('sqlite3', ['-bail', path, sql], { stdio: 'pipe' }).toString();
    },
  };
  // WAL: the source's read-only connections never block the test's writes.
  db.exec('pragma journal_mode=wal');
  return db;
}
