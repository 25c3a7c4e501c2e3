// Collections benchmark (BENCHMARKS.md, "Collections"): document writes through REST with SUBS WebSocket
// subscribers on the collection's channel, under each durability. Reports writes/s and write→event latency (from
// sending the POST to each subscriber's receipt), server memory per stored document (RSS growth over an import of
// DOCS documents), and the time a new subscriber takes to receive the snapshot of every document.
//
// Usage: node bench/collections.mjs   (see bench/collections.sh, which builds the release binary first)
// Env:   HERALD_BIN, SUBS (1000), WRITES (2000), CONCURRENCY (16), DOCS (10000), DURABILITIES ("full,normal"), JSON=1
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { startHerald } from '../tests/js/lib/herald.js';

const require = createRequire(new URL('../tests/js/package.json', import.meta.url));
const WebSocket = require('ws');

const SUBS = Number(process.env.SUBS ?? 1000);
const WRITES = Number(process.env.WRITES ?? 2000);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 16);
const DOCS = Number(process.env.DOCS ?? 10_000);
const DURABILITIES = (process.env.DURABILITIES ?? 'full,normal').split(',');

const cleanups = [];
const t = { after: (fn) => cleanups.push(fn), diagnostic: () => {} };
const cleanup = async () => { for (const fn of cleanups.splice(0).reverse()) await Promise.resolve(fn()).catch(() => {}); };
process.on('SIGINT', () => cleanup().then(() => process.exit(130)));

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

const config = (durability) => `
durability = "${durability}"
max_body_bytes = 4194304
[limits]
connections_per_second_per_ip = 0
connections_per_ip = 0
publishes_per_second_per_key = 0
[websocket]
max_queue_bytes = 16777216
[[collections]]
name = "books"
path = "/books"
id = "timestamp"
access = { list = "anyone", read = "anyone", create = "anyone", update = "anyone", delete = "anyone" }
events = { created = "bookAdded", updated = "bookUpdated", deleted = "bookDeleted" }
[[collections.values]]
channel = "dashboard"
event = "dashboardStats"
value = { totalBooks = "count", totalFavorites = "sum(len(favorites))" }
`;

/** A lean subscriber: counts bookAdded events and records the latency of each against `sent`. */
function subscriber(url, sent, lat, onSnapshot) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    const s = { ws, got: 0 };
    ws.on('message', (buf) => {
      const now = performance.now();
      const m = JSON.parse(buf);
      if (m.type !== 'event') return;
      if (m.event === 'bookAdded' && typeof m.data?.n === 'number') {
        s.got++;
        const at = sent[m.data.n];
        if (at !== undefined) lat.push(now - at);
      } else if (m.event === 'books:snapshot') {
        onSnapshot?.(m.data, now);
        resolve(s);
      }
    });
    ws.on('error', reject);
    t.after(() => ws.terminate());
  });
}

async function post(url, path, body) {
  const r = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (r.status >= 300) throw new Error(`${path} → ${r.status} ${await r.text()}`);
  return r.json();
}

const results = [];
try {
  for (const durability of DURABILITIES) {
    const h = await startHerald(t, { config: config(durability) });
    const wsUrl = `${h.url.replace(/^http/, 'ws')}/ws/books`;
    const sent = [];
    const lat = [];
    const subs = [];
    for (let i = 0; i < SUBS; i += 100) {
      const batch = [];
      for (let j = i; j < Math.min(SUBS, i + 100); j++) batch.push(subscriber(wsUrl, sent, lat));
      subs.push(...await Promise.all(batch));
    }
    // Writes: CONCURRENCY clients each POST in turn.
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      for (;;) {
        const n = next++;
        if (n >= WRITES) return;
        sent[n] = performance.now();
        await post(h.url, '/books', { title: `w${n}`, author: 'bench', n, favorites: [] });
      }
    }));
    const t1 = performance.now();
    const deadline = Date.now() + 120_000;
    while (subs.some((s) => s.got < WRITES) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const delivered = subs.reduce((a, s) => a + s.got, 0);
    lat.sort((a, b) => a - b);
    // Memory per document: RSS growth over an import of DOCS documents, in batches of 1000.
    const before = rssKiB(h.proc.pid);
    for (let i = 0; i < DOCS; i += 1000) {
      const docs = [];
      for (let j = i; j < Math.min(DOCS, i + 1000); j++) {
        docs.push({ id: 1_000_000 + j, title: `Book ${j}`, author: `Author ${j % 97}`, returnDateTime: null, favorites: j % 2 ? ['u1'] : [] });
      }
      await post(h.url, '/api/collections/books/import', docs);
    }
    const grown = rssKiB(h.proc.pid) - before;
    for (const s of subs) s.ws.terminate();
    // Snapshot of every document to a new subscriber.
    let snapshot;
    const s0 = performance.now();
    await subscriber(wsUrl, [], [], (data, at) => { snapshot = { documents: data.length, ms: at - s0 }; });
    const r = {
      durability,
      subscribers: SUBS,
      writes: WRITES,
      concurrency: CONCURRENCY,
      writes_per_s: Math.round(WRITES / ((t1 - t0) / 1000)),
      deliveries: delivered,
      expected_deliveries: WRITES * SUBS,
      latency_ms: { p50: +pct(lat, 0.5).toFixed(1), p99: +pct(lat, 0.99).toFixed(1), max: +lat.at(-1).toFixed(1) },
      memory_per_document_bytes: Math.round((grown * 1024) / DOCS),
      snapshot_documents: snapshot.documents,
      snapshot_ms: +snapshot.ms.toFixed(1),
    };
    results.push(r);
    if (!process.env.JSON) console.log(`${durability}: ${r.writes_per_s} writes/s with ${SUBS} subscribers; write→event p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms, max ${r.latency_ms.max} ms (${delivered}/${WRITES * SUBS} delivered); ${r.memory_per_document_bytes} B/document; snapshot of ${r.snapshot_documents} documents in ${r.snapshot_ms} ms`);
    await cleanup();
  }
  if (process.env.JSON) console.log(JSON.stringify(results));
} finally {
  await cleanup();
}
