// Herald admin dashboard: plain JS, no build step. Every value from the server (channel names, payloads, user ids)
// reaches the page through textContent, never as HTML. Views are chosen by the URL hash (#/channels, #/channel/NAME…).
'use strict';

const KEY_STORE = 'herald.admin.key';
const POLL_MS = 2000;          // /metrics
const REFRESH_MS = 5000;       // tables
const WINDOW = 90;             // chart samples kept (3 minutes at POLL_MS)
const TAIL_MAX = 200;          // live tail rows kept
const SHOW_BYTES = 4000;       // payload characters shown per event
const PREVIEW = 160;           // document characters shown per row
const DOC_PAGE = 50;           // documents per page of the collection inspector

const $ = (id) => document.getElementById(id);

/** An element with properties (`text`, `className`, `title`, `dataset`, `on…`, other attributes) and children. */
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'text') e.textContent = String(v);
    else if (k === 'className') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status; this.code = code; this.field = field;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** JSON from the API; a 401 sends the user to the sign-in form. */
async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.body ? { 'content-type': 'application/json' } : {}) };
  let r;
  try {
    r = await fetch(path, { ...options, headers, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach Herald: ${e.message}`);
  }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const err = body?.error ?? {};
    const e = new ApiError(r.status, err.code ?? `http_${r.status}`, err.message ?? (text || r.statusText), err.field);
    if (r.status === 401) signIn(e.message);
    throw e;
  }
  return body;
}

function describe(e) {
  return e instanceof ApiError ? `${e.code}: ${e.message}` : String(e?.message ?? e);
}

// ---------------------------------------------------------------- formatting

function fmtNumber(v, digits = 0) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return v.toFixed(digits);
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function fmtSeconds(s) {
  if (s === null || !Number.isFinite(s)) return '–';
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function fmtAgo(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** How long since `ms` (ms since the epoch), without "ago". */
function fmtSince(ms) {
  return fmtAgo(ms).replace(' ago', '');
}

/** A payload as indented JSON, cut to SHOW_BYTES characters. */
function fmtJson(v) {
  let s;
  try { s = JSON.stringify(v, null, 2); } catch { s = String(v); }
  if (s === undefined) s = 'undefined';
  return s.length > SHOW_BYTES ? `${s.slice(0, SHOW_BYTES)}… (${s.length} characters)` : s;
}

/** One event of a channel as a list item: offset, name, time, id, payload. */
function eventItem(ev, fresh) {
  return el('li', { className: fresh ? 'fresh' : undefined, dataset: { offset: ev.offset } },
    el('div', { className: 'meta' },
      el('b', { text: `#${ev.offset}` }), el('span', { className: 'mono', text: ev.event }),
      el('span', { text: ev.time ?? '' }), el('span', { className: 'mono', text: ev.id ? `id ${ev.id}` : '' })),
    el('pre', { text: fmtJson(ev.data) }));
}

function noticeItem(text) {
  return el('li', { className: 'notice' }, el('div', { className: 'meta' }, el('b', { text })));
}

// ---------------------------------------------------------------- Prometheus text

/** Parses the exposition format into name → [{labels, value}]. */
function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) {
      for (const l of m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      }
    }
    const value = parseValue(m[3]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value });
  }
  return out;
}

function parseValue(s) {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  return Number(s);
}

/** Sum of a series (over all labels), or null when the server does not export it. */
function total(metrics, name) {
  const rows = metrics.get(name);
  return rows ? rows.reduce((a, r) => a + (Number.isFinite(r.value) ? r.value : 0), 0) : null;
}

/** Sums of a series by one label's value. */
function byLabel(metrics, name, label) {
  const out = {};
  for (const r of metrics.get(name) ?? []) {
    const k = r.labels[label] ?? '';
    out[k] = (out[k] ?? 0) + r.value;
  }
  return out;
}

/** Cumulative bucket counts of a histogram, summed over its other labels: [[le, count]…] by le. */
function buckets(metrics, name) {
  const rows = metrics.get(`${name}_bucket`);
  if (!rows) return null;
  const byLe = new Map();
  for (const r of rows) {
    const le = parseValue(r.labels.le);
    byLe.set(le, (byLe.get(le) ?? 0) + r.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

/** The q-quantile of the observations between two bucket readings (as Prometheus' histogram_quantile), or null. */
function quantile(q, before, now) {
  if (!before || !now || before.length !== now.length) return null;
  const delta = now.map(([le, c], i) => [le, c - before[i][1]]);
  const count = delta[delta.length - 1][1];
  if (!(count > 0)) return null;
  const rank = q * count;
  let prevLe = 0, prevCount = 0;
  for (const [le, c] of delta) {
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + (le - prevLe) * ((rank - prevCount) / Math.max(c - prevCount, 1e-12));
    }
    prevLe = le; prevCount = c;
  }
  return prevLe;
}

// ---------------------------------------------------------------- charts

/** A small line chart on a canvas: several series over the same sample times, with a "no data" state. */
class Chart {
  /** `floor`: the least top of the scale, so a flat zero line is not drawn as full scale. */
  constructor(title, series, format, floor = 1) {
    this.series = series; this.format = format; this.floor = floor; this.points = [];
    this.canvas = el('canvas', { role: 'img', 'aria-label': title });
    this.now = el('span', { className: 'now', text: '–' });
    this.nodata = el('div', { className: 'nodata', text: 'no data yet' });
    this.root = el('figure', { className: 'chart card', dataset: { chart: title } },
      el('figcaption', {}, el('span', { text: title }), this.now),
      this.canvas, this.nodata,
      el('div', { className: 'legend' },
        series.length > 1 ? series.map((s, i) => el('span', {}, el('i', { className: `s${i}` }), s)) : []));
  }

  /** Adds one sample: an array of values (null: unknown), or null when the server exports nothing for it. */
  push(values, missing) {
    if (missing) {
      this.root.dataset.state = 'nodata';
      this.nodata.textContent = missing;
      this.nodata.hidden = false;
      this.now.textContent = '–';
      this.points = [];
      this.draw();
      return;
    }
    this.points.push(values);
    if (this.points.length > WINDOW) this.points.shift();
    const known = this.points.some((p) => p.some((v) => v !== null));
    this.root.dataset.state = known ? 'data' : 'waiting';
    this.nodata.hidden = known;
    if (!known) this.nodata.textContent = 'no data yet';
    const last = values.reduce((a, v) => (v === null ? a : (a ?? 0) + v), null);
    this.now.textContent = this.format(last);
    this.draw();
  }

  draw() {
    const c = this.canvas, ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * ratio)) { c.width = Math.round(w * ratio); c.height = Math.round(h * ratio); }
    const g = c.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const colours = ['--c1', '--c2', '--c3', '--c4', '--c5'].map((v) => css.getPropertyValue(v).trim());
    const max = Math.max(this.floor, ...this.points.flat().filter((v) => v !== null));
    const top = niceCeiling(max);
    const left = 4, bottom = h - 14, plotH = bottom - 8;
    g.strokeStyle = css.getPropertyValue('--line').trim();
    g.fillStyle = css.getPropertyValue('--muted').trim();
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = bottom - plotH * f + 0.5;
      g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
    }
    if (!this.points.length) return;
    g.fillText(this.format(top), left + 2, bottom - plotH + 10);
    const step = (w - left) / Math.max(WINDOW - 1, 1);
    const x0 = w - step * (this.points.length - 1);
    this.series.forEach((_, s) => {
      g.strokeStyle = colours[s % colours.length];
      g.lineWidth = 1.75;
      g.beginPath();
      let pen = false;
      this.points.forEach((p, i) => {
        const v = p[s];
        if (v === null || v === undefined) { pen = false; return; }
        const x = x0 + step * i, y = bottom - plotH * (v / top);
        if (pen) g.lineTo(x, y); else g.moveTo(x, y);
        pen = true;
      });
      g.stroke();
    });
  }
}

function niceCeiling(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// ---------------------------------------------------------------- overview

const TRANSPORTS = ['socketio', 'websocket', 'sse'];

const overview = {
  charts: null,
  prev: null,          // { t, metrics }
  timer: null,
  startedAt: null,

  build() {
    const perSecond = (v) => (v === null ? '–' : `${fmtNumber(v, v < 10 ? 1 : 0)}/s`);
    this.charts = {
      connections: new Chart('Connections', TRANSPORTS, (v) => fmtNumber(v)),
      deliveries: new Chart('Deliveries/s', TRANSPORTS, perSecond),
      publishes: new Chart('Publishes/s', ['ok', 'rejected or failed'], perSecond),
      latency: new Chart('p99 publish latency', ['p99'], fmtSeconds, 0.001),
      errors: new Chart('Errors/s', ['engine errors', 'refusals'], perSecond),
    };
    $('charts').replaceChildren(...Object.values(this.charts).map((c) => c.root));
  },

  async enter() {
    if (!this.charts) this.build();
    await this.poll();
    this.timer = setInterval(() => this.poll(), POLL_MS);
  },

  leave() { clearInterval(this.timer); this.timer = null; },

  async loadNode() {
    try {
      const o = await api('/api/admin/overview');
      $('tile-engine').textContent = `${o.engine} · ${o.health}`;
      this.startedAt = o.started_at;
      $('tile-uptime').textContent = fmtSince(o.started_at);
      $('node').textContent = `v${o.version} · ${o.engine}`;
    } catch (e) { $('tile-engine').textContent = describe(e); }
  },

  async poll() {
    if (document.visibilityState === 'hidden') return;   // a background tab costs the server nothing
    let text;
    try {
      const r = await fetch('/metrics', { headers: authHeaders(), cache: 'no-store' });
      if (r.status === 401) { signIn('the key was refused'); return; }
      if (!r.ok) throw new Error(`/metrics answered ${r.status}`);
      text = await r.text();
      $('metrics-error').hidden = true;
    } catch (e) {
      $('metrics-error').textContent = `Metrics unavailable: ${e.message}`;
      $('metrics-error').hidden = false;
      return;
    }
    if (this.startedAt) $('tile-uptime').textContent = fmtSince(this.startedAt);
    const now = { t: performance.now(), metrics: parseMetrics(text) };
    this.sample(this.prev, now);
    this.prev = now;
  },

  sample(prev, now) {
    const m = now.metrics, c = this.charts;
    const missing = (name) => (m.has(name) || m.has(`${name}_bucket`) ? null : `no data: /metrics has no ${name}`);
    const dt = prev ? (now.t - prev.t) / 1000 : 0;
    const rate = (name, pick) => {
      if (!prev || !(dt > 0)) return null;
      const a = pick(prev.metrics, name), b = pick(now.metrics, name);
      if (a === null || b === null) return null;
      return Math.max(0, b - a) / dt;   // a restart resets counters: never a negative rate
    };
    const labelled = (name, label, value) => (mm) => (mm.has(name) ? (byLabel(mm, name, label)[value] ?? 0) : null);

    const conns = byLabel(m, 'herald_connections', 'transport');
    c.connections.push(TRANSPORTS.map((t) => conns[t] ?? 0), missing('herald_connections'));
    $('tile-connections').textContent = fmtNumber(total(m, 'herald_connections'));
    $('tile-subscriptions').textContent = fmtNumber(total(m, 'herald_subscriptions'));
    $('tile-channels').textContent = fmtNumber(total(m, 'herald_channels'));

    c.deliveries.push(TRANSPORTS.map((t) => rate('herald_deliveries_total', labelled('herald_deliveries_total', 'transport', t))),
      missing('herald_deliveries_total'));
    const okPublishes = (mm, name) => (mm.has(name) ? byLabel(mm, name, 'result').ok ?? 0 : null);
    const otherPublishes = (mm, name) => (mm.has(name) ? total(mm, name) - (byLabel(mm, name, 'result').ok ?? 0) : null);
    c.publishes.push([rate('herald_publishes_total', okPublishes), rate('herald_publishes_total', otherPublishes)],
      missing('herald_publishes_total'));
    c.latency.push([quantile(0.99, prev && buckets(prev.metrics, 'herald_publish_duration_seconds'),
      buckets(m, 'herald_publish_duration_seconds'))], missing('herald_publish_duration_seconds'));
    const sum = (mm, name) => total(mm, name);
    const errorsMissing = missing('herald_engine_errors_total') && missing('herald_refusals_total');
    c.errors.push([rate('herald_engine_errors_total', sum), rate('herald_refusals_total', sum)], errorsMissing);
  },
};

// ---------------------------------------------------------------- channels

const channels = {
  timer: null,
  searchTimer: null,

  async enter() {
    await this.load();
    this.timer = setInterval(() => this.load(), REFRESH_MS);
  },

  leave() { clearInterval(this.timer); this.timer = null; },

  async load() {
    const q = $('channel-search').value.trim();
    let body;
    try {
      body = await api(`/api/admin/channels?limit=500&q=${encodeURIComponent(q)}`);
    } catch (e) { $('channels-count').textContent = describe(e); return; }
    const rows = body.channels.map((c) => el('tr', {
      className: 'link', dataset: { channel: c.channel }, tabindex: 0,
      onclick: () => { location.hash = channelHash(c.channel); },
      onkeydown: (ev) => { if (ev.key === 'Enter') location.hash = channelHash(c.channel); },
    },
    el('td', { className: 'mono' }, el('a', { href: channelHash(c.channel), text: c.channel }),
      c.state ? el('span', { className: 'sub', text: 'state channel' }) : null),
    el('td', { className: 'num', text: c.last_offset }),
    el('td', { className: 'num hide-phone', text: c.first_offset }),
    el('td', { className: 'mono hide-phone', text: c.epoch }),
    el('td', { className: 'num', text: c.subscribers }),
    el('td', { className: 'num', text: c.users })));
    $('channels-table').tBodies[0].replaceChildren(...rows);
    $('channels-empty').hidden = rows.length > 0 || q !== '';
    $('channels-count').textContent = body.truncated
      ? `showing ${rows.length} of ${body.total} — refine the search`
      : `${body.total} channel${body.total === 1 ? '' : 's'}`;
  },

  search() {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => this.load(), 200);
  },
};

function channelHash(name) { return `#/channel/${encodeURIComponent(name)}`; }

// ---------------------------------------------------------------- channel inspector

const inspector = {
  channel: null,
  tail: null,          // { abort, paused }
  history: { since: 0, limit: 50, first: 1, last: 0, shownLast: 0 },

  async enter(name) {
    this.channel = name;
    $('inspect-name').textContent = name;
    $('inspect-publish').href = `#/publish/${encodeURIComponent(name)}`;
    $('tail').replaceChildren();
    $('tail-empty').hidden = false;
    $('history').replaceChildren();
    $('history-note').textContent = '';
    this.history.first = 1; this.history.last = 0;
    this.startTail();
    if (await this.position()) await this.readHistory(Math.max(0, this.history.last - this.history.limit));
  },

  leave() { this.stopTail(); this.channel = null; },

  /** Shows the channel's position and subscribers; false when it has no events yet. */
  async position() {
    let c;
    try {
      c = await api(`/api/admin/channels/${encodeURIComponent(this.channel)}`);
    } catch (e) {
      $('inspect-position').textContent = e.code === 'channel_not_found'
        ? 'No events yet: the live tail shows the first as it is published.' : describe(e);
      return false;
    }
    this.history.first = c.first_offset; this.history.last = c.last_offset;
    $('inspect-position').textContent = `offsets ${c.first_offset}–${c.last_offset} · epoch ${c.epoch} · `
      + `${c.subscribers} subscriber${c.subscribers === 1 ? '' : 's'} (${c.users} user${c.users === 1 ? '' : 's'})`
      + (c.state ? ' · state channel' : '');
    return true;
  },

  setTailStatus(status, title) {
    const p = $('tail-status');
    p.dataset.status = status; p.textContent = status; p.title = title ?? '';
  },

  addTail(item) {
    const list = $('tail');
    list.prepend(item);
    while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
    $('tail-empty').hidden = true;
  },

  startTail() {
    this.stopTail();
    const ctl = { abort: new AbortController(), cursor: null };
    this.tail = ctl;
    $('tail-toggle').textContent = 'Pause';
    this.sseLoop(this.channel, ctl);
  },

  stopTail() {
    if (this.tail) this.tail.abort.abort();
    this.tail = null;
    this.setTailStatus('idle');
  },

  toggleTail() {
    if (this.tail) { this.stopTail(); $('tail-toggle').textContent = 'Resume'; } else this.startTail();
  },

  /** Follows the channel over SSE (read as a stream, so every event name arrives), resuming from its cursor. */
  async sseLoop(channel, ctl) {
    const signal = ctl.abort.signal;
    while (!signal.aborted) {
      this.setTailStatus('connecting');
      const since = ctl.cursor ? `&since=${encodeURIComponent(ctl.cursor)}` : '';
      try {
        const r = await fetch(`/sse?channel=${encodeURIComponent(channel)}&envelope=1${since}`,
          { signal, cache: 'no-store' });
        if (r.status === 401 || r.status === 403) {
          // Client auth (JWT) is configured and the admin key is no token: follow history instead.
          return this.pollLoop(channel, ctl, 'SSE needs a client token here: following history');
        }
        if (!r.ok) throw new Error(`SSE answered ${r.status}`);
        this.setTailStatus('live');
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            this.sseRecord(buf.slice(0, end), ctl);
            buf = buf.slice(end + 2);
          }
        }
      } catch (e) {
        if (signal.aborted) return;
        this.setTailStatus('error', e.message);
      }
      await sleep(1500, signal);
    }
  },

  sseRecord(record, ctl) {
    let event = 'message', data = '', id = null;
    for (const line of record.split('\n')) {
      if (!line || line[0] === ':') continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data += (data ? '\n' : '') + value;
      else if (field === 'id') id = value;
    }
    if (id) ctl.cursor = id;
    let body = null;
    try { body = JSON.parse(data); } catch { body = data; }
    if (event === 'herald:gap') {
      this.addTail(noticeItem(`gap: ${body?.reason ?? ''} ${body?.from ?? ''}–${body?.to ?? ''}`));
    } else if (event === 'herald:status') {
      this.addTail(noticeItem(`engine ${body?.engine ?? '?'}`));
    } else if (event === 'herald:disconnect') {
      this.addTail(noticeItem(`disconnected: ${body?.reason ?? ''}`));
    } else if (body && typeof body === 'object' && 'offset' in body) {
      this.addTail(eventItem(body, true));
      this.history.last = Math.max(this.history.last, body.offset);
    }
  },

  /** Long-polls history: the tail where SSE refuses the page. */
  async pollLoop(channel, ctl, why) {
    const signal = ctl.abort.signal;
    this.setTailStatus('polling', why);
    // From the position now: the tail shows what comes, not what history already holds.
    let since = 0;
    try {
      since = (await api(`/api/admin/channels/${encodeURIComponent(channel)}`)).last_offset;
    } catch (e) {
      if (e.code !== 'channel_not_found') this.setTailStatus('error', describe(e));
    }
    while (!signal.aborted) {
      try {
        const page = await api(`/api/channels/${encodeURIComponent(channel)}/history?since=${since}&wait=25`,
          { signal });
        for (const ev of page.events) { this.addTail(eventItem(ev, true)); since = ev.offset; }
        if (page.last_offset < since) since = page.last_offset;   // a new epoch started over
        this.setTailStatus('polling', why);
      } catch (e) {
        if (signal.aborted) return;
        if (e.code !== 'channel_not_found') this.setTailStatus('error', describe(e));
        await sleep(1500, signal);
      }
    }
  },

  async readHistory(since) {
    const h = this.history;
    h.since = Math.max(0, since);
    $('history-since').value = h.since;
    let page;
    try {
      page = await api(`/api/channels/${encodeURIComponent(this.channel)}/history?since=${h.since}&limit=${h.limit}`);
    } catch (e) {
      $('history').replaceChildren();
      $('history-note').textContent = e.code === 'channel_not_found' ? 'This channel has no events.' : describe(e);
      return;
    }
    h.first = page.first_offset; h.last = page.last_offset;
    h.shownLast = page.events.length ? page.events[page.events.length - 1].offset : h.since;
    const items = page.events.map((ev) => eventItem(ev, false));
    if (page.gap) items.unshift(noticeItem(`offsets ${page.gap.from}–${page.gap.to} are no longer in history`));
    $('history').replaceChildren(...items);
    $('history-note').textContent = page.events.length
      ? `offsets ${page.events[0].offset}–${h.shownLast} of ${page.first_offset}–${page.last_offset}`
      : `nothing after offset ${h.since} (history holds ${page.first_offset}–${page.last_offset})`;
  },
};

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// ---------------------------------------------------------------- collections

function collectionHash(name) { return `#/collection/${encodeURIComponent(name)}`; }

/** A document cut to one line of JSON, at most PREVIEW characters. */
function preview(doc) {
  let s;
  try { s = JSON.stringify(doc); } catch { s = String(doc); }
  return s.length > PREVIEW ? `${s.slice(0, PREVIEW)}…` : s;
}

/** When the channel last changed (its last event's time), or null when it has no events. */
async function lastChange(channel) {
  // The search, not /api/admin/channels/NAME: a channel without events is an answer here, not a 404.
  const found = await api(`/api/admin/channels?limit=1000&q=${encodeURIComponent(channel)}`);
  const info = found.channels.find((c) => c.channel === channel);
  if (!info) return found.truncated ? { time: null, offset: null } : null;
  const page = await api(`/api/channels/${encodeURIComponent(channel)}/history?since=${Math.max(0, info.last_offset - 1)}&limit=1`);
  const ev = page.events[0];
  return ev ? { time: ev.time, offset: ev.offset } : { time: null, offset: info.last_offset };
}

const collections = {
  timer: null,

  async enter() {
    await this.load();
    this.timer = setInterval(() => this.load(), REFRESH_MS);
  },

  leave() { clearInterval(this.timer); this.timer = null; },

  async load() {
    const empty = $('collections-empty');
    let list;
    try {
      list = (await api('/api/collections')).collections;
    } catch (e) {
      $('collections-table').tBodies[0].replaceChildren();
      empty.textContent = e.code === 'not_found' ? 'No collections are configured ([[collections]]).' : describe(e);
      empty.hidden = false;
      $('collections-count').textContent = '';
      return;
    }
    // One read per collection's channel: collections are declared in the config, so they are few.
    const changes = await Promise.all(list.map((c) => lastChange(c.channel).catch((e) => ({ error: describe(e) }))));
    $('collections-table').tBodies[0].replaceChildren(...list.map((c, i) => {
      const change = changes[i];
      return el('tr', {
        className: 'link', dataset: { collection: c.name }, tabindex: 0,
        onclick: (ev) => { if (!ev.target.closest('a')) location.hash = collectionHash(c.name); },
        onkeydown: (ev) => { if (ev.key === 'Enter') location.hash = collectionHash(c.name); },
      },
      el('td', { className: 'mono' }, el('a', { href: collectionHash(c.name), text: c.name })),
      el('td', { className: 'mono' }, el('a', { href: channelHash(c.channel), text: c.channel })),
      el('td', { className: 'num', text: c.documents }),
      el('td', { className: 'mono hide-phone' }, c.path ?? el('span', { className: 'muted', text: 'not mounted' })),
      el('td', { title: change?.time ?? undefined },
        change?.error ? el('span', { className: 'error', text: change.error })
          : change?.time ? `${fmtAgo(Date.parse(change.time))} (#${change.offset})`
            : el('span', { className: 'muted', text: change ? 'unknown' : 'never' })));
    }));
    empty.textContent = 'No collections are configured ([[collections]]).';
    empty.hidden = list.length > 0;
    $('collections-count').textContent = `${list.length} collection${list.length === 1 ? '' : 's'}`;
  },
};

const collection = {
  name: null,
  idField: 'id',
  pages: [],           // the `after` of each page shown so far (null: the first)
  next: null,

  async enter(name) {
    this.name = name;
    $('collection-name').textContent = name;
    $('collection-about').textContent = '';
    $('collection-channel').href = '#/channels';
    $('documents-table').tBodies[0].replaceChildren();
    try {
      const c = (await api('/api/collections')).collections.find((x) => x.name === name);
      if (!c) { $('collection-about').textContent = `No collection ${JSON.stringify(name)} is configured.`; return; }
      $('collection-about').textContent = `${c.documents} document${c.documents === 1 ? '' : 's'} · channel ${c.channel}`
        + (c.path ? ` · mounted at ${c.path}` : ' · not mounted');
      this.idField = c.id_field ?? 'id';
      $('collection-channel').href = channelHash(c.channel);
      $('collection-channel').textContent = `Inspect its channel ${c.channel}`;
    } catch (e) {
      $('collection-about').textContent = describe(e);
      return;
    }
    await this.page(null);
  },

  leave() { this.name = null; },

  async page(after) {
    const name = this.name;
    let page;
    try {
      page = await api(`/api/collections/${encodeURIComponent(name)}?limit=${DOC_PAGE}`
        + (after !== null ? `&after=${encodeURIComponent(after)}` : ''));
    } catch (e) { $('documents-note').textContent = describe(e); return; }
    if (this.name !== name) return;   // the user moved on meanwhile
    if (after === null) this.pages = [];
    this.pages.push(after);
    this.next = page.next;
    $('documents-table').tBodies[0].replaceChildren(...page.documents.map((doc, i) => {
      const id = doc?.[this.idField] ?? '';
      return el('tr', { dataset: { id: String(id) } },
        el('td', { className: 'mono', text: typeof id === 'string' ? id : JSON.stringify(id) }),
        el('td', { className: 'mono hide-phone', text: page.versions?.[i] ?? '' }),
        el('td', {}, el('pre', { className: 'doc', title: fmtJson(doc), text: preview(doc) })));
    }));
    $('documents-next').disabled = !page.next;
    $('documents-first').disabled = this.pages.length <= 1;
    const start = (this.pages.length - 1) * DOC_PAGE;
    $('documents-note').textContent = page.documents.length
      ? `documents ${start + 1}–${start + page.documents.length}${page.next ? ', more after' : ''}`
      : 'No documents.';
  },
};

// ---------------------------------------------------------------- publish console

const publish = {
  enter(channel) {
    if (channel) $('publish-channel').value = channel;
  },
  leave() {},

  async submit(ev) {
    ev.preventDefault();
    const status = $('publish-status');
    const body = { channel: $('publish-channel').value, event: $('publish-event').value };
    const raw = $('publish-data').value.trim();
    try {
      body.data = raw === '' ? null : JSON.parse(raw);
    } catch (e) {
      status.className = 'error';
      status.textContent = `Data is not JSON: ${e.message}`;
      return;
    }
    if ($('publish-id').value) body.id = $('publish-id').value;
    if ($('publish-key').value) body.key = $('publish-key').value;
    status.className = 'muted';
    status.textContent = 'Publishing…';
    try {
      const r = await api('/api/publish', { method: 'POST', body: JSON.stringify(body) });
      const res = r.results[0];
      status.className = '';
      status.textContent = `Published at offset ${res.offset}${res.duplicate ? ' (duplicate id: first result)' : ''}`;
      $('publish-results').prepend(el('li', { dataset: { offset: res.offset } },
        el('div', { className: 'meta' },
          el('b', { text: `#${res.offset}` }),
          el('a', { href: channelHash(res.channel), className: 'mono', text: res.channel }),
          el('span', { className: 'mono', text: body.event }), el('span', { text: `epoch ${res.epoch}` }),
          el('span', { className: 'mono', text: `id ${res.id}` })),
        el('pre', { text: fmtJson(body.data) })));
      while ($('publish-results').children.length > 20) $('publish-results').lastElementChild.remove();
    } catch (e) {
      status.className = 'error';
      status.textContent = describe(e);
    }
  },
};

// ---------------------------------------------------------------- connections

const connections = {
  timer: null,
  next: null,

  async enter() {
    await this.load();
    this.timer = setInterval(() => this.load(), REFRESH_MS);
  },

  leave() { clearInterval(this.timer); this.timer = null; },

  async load(after) {
    const transport = $('connections-transport').value;
    let page;
    try {
      page = await api(`/api/connections?limit=200${transport ? `&transport=${transport}` : ''}`
        + (after ? `&after=${encodeURIComponent(after)}` : ''));
    } catch (e) { $('connections-count').textContent = describe(e); return; }
    const body = $('connections-table').tBodies[0];
    // A button waiting for its confirmation survives the refresh.
    if (!after && body.querySelector('button.armed')) return;
    const rows = page.connections.map((c) => this.row(c));
    if (after) body.append(...rows); else body.replaceChildren(...rows);
    this.next = page.next;
    $('connections-more').hidden = !page.next;
    $('connections-empty').hidden = body.children.length > 0;
    $('connections-count').textContent = `${body.children.length}${page.next ? '+' : ''} open on this node`;
  },

  row(c) {
    const subs = c.subscriptions ?? [];
    const shown = subs.slice(0, 5).join(', ') + (subs.length > 5 ? `, … (${subs.length})` : '');
    const button = el('button', { type: 'button', className: 'danger', text: 'Disconnect' });
    button.addEventListener('click', () => this.disconnect(c.id, button));
    return el('tr', { dataset: { id: c.id, transport: c.transport } },
      el('td', { className: 'mono', text: c.id }),
      el('td', {}, c.transport, c.carrier ? el('span', { className: 'sub', text: c.carrier }) : null),
      el('td', {}, c.user ?? el('span', { className: 'muted', text: 'anonymous' }),
        c.roles?.length ? el('span', { className: 'sub', text: c.roles.join(', ') }) : null),
      el('td', { className: 'mono hide-phone', text: c.address ?? '–' }),
      el('td', { className: 'hide-phone', title: new Date(c.connected_at).toISOString(), text: fmtAgo(c.connected_at) }),
      el('td', { className: 'mono' }, subs.length ? shown : el('span', { className: 'muted', text: 'none' })),
      el('td', { className: 'num', text: fmtBytes(c.queued_bytes) }),
      el('td', {}, button));
  },

  /** First click arms the button, a second within 4 s disconnects (no blocking confirm dialog). */
  async disconnect(id, button) {
    if (!button.classList.contains('armed')) {
      button.classList.add('armed');
      button.textContent = 'Confirm';
      setTimeout(() => {
        if (button.isConnected && button.classList.contains('armed')) {
          button.classList.remove('armed'); button.textContent = 'Disconnect';
        }
      }, 4000);
      return;
    }
    button.disabled = true;
    try {
      await api(`/api/connections/${encodeURIComponent(id)}/disconnect`, { method: 'POST' });
      button.textContent = 'Disconnected';
      button.closest('tr').dataset.state = 'disconnected';
    } catch (e) {
      button.textContent = describe(e);
    }
    button.classList.remove('armed');
    setTimeout(() => this.load(), 500);
  },
};

// ---------------------------------------------------------------- monitors and SQL sources

const sources = {
  timer: null,

  async enter() {
    await this.load();
    this.timer = setInterval(() => this.load(), REFRESH_MS);
  },

  leave() { clearInterval(this.timer); this.timer = null; },

  async load() {
    await Promise.all([this.monitors(), this.sql()]);
  },

  async monitors() {
    const empty = $('monitors-empty');
    let list;
    try {
      list = (await api('/api/monitors')).monitors;
    } catch (e) {
      $('monitors-table').tBodies[0].replaceChildren();
      empty.textContent = e.code === 'not_found' ? 'The monitor is not enabled.' : describe(e);
      empty.hidden = false;
      return;
    }
    $('monitors-table').tBodies[0].replaceChildren(...list.map((m) => el('tr', { dataset: { id: m.id } },
      el('td', { className: 'mono', text: m.id }),
      el('td', { text: m.name ?? '' }),
      el('td', {}, el('span', { className: 'pill', dataset: { status: m.paused ? 'paused' : m.status },
        text: m.paused ? 'paused' : m.status })),
      el('td', { className: 'mono', text: m.target ?? m.kind ?? '' }),
      el('td', { text: m.lastCheckAt ? fmtAgo(Date.parse(m.lastCheckAt)) : 'never' }),
      el('td', { text: m.message ?? '' }))));
    empty.textContent = 'No monitors. Declare them in [[monitor.monitors]] or POST /api/monitors.';
    empty.hidden = list.length > 0;
  },

  async sql() {
    const empty = $('sources-empty');
    let list;
    try {
      list = (await api('/api/sources')).sources;
    } catch (e) {
      $('sources-table').tBodies[0].replaceChildren();
      empty.textContent = e.code === 'not_found' ? 'No SQL sources are configured.' : describe(e);
      empty.hidden = false;
      return;
    }
    $('sources-table').tBodies[0].replaceChildren(...list.map((s) => {
      const polled = s.channels ?? [];
      const worst = polled.find((c) => c.status === 'error') ?? polled.find((c) => c.status !== 'ok') ?? polled[0];
      const status = worst ? worst.status : 'idle';
      return el('tr', { dataset: { id: s.id } },
        el('td', {}, el('span', { className: 'mono', text: s.id }),
          el('span', { className: 'sub', text: `${s.database} · ${s.mode}` })),
        el('td', { className: 'mono' }, s.channel,
          polled.map((c) => el('span', { className: 'sub', text: `${c.channel}: ${c.status}, ${c.rows} rows` }))),
        el('td', {}, el('span', { className: 'pill', dataset: { status }, text: status })),
        el('td', {}, `${s.queries} queries, every ${s.interval_ms} ms`,
          worst?.message ? el('span', { className: 'sub error', text: worst.message }) : null,
          polled.length ? null : el('span', { className: 'sub', text: 'polls only while a channel has subscribers' })));
    }));
    empty.textContent = 'No SQL sources are configured ([[sources.sql]]).';
    empty.hidden = list.length > 0;
  },
};

// ---------------------------------------------------------------- routing and sign-in

const VIEWS = { overview, channels, channel: inspector, collections, collection, publish, connections, sources };
let current = null;

function route() {
  if (document.body.dataset.state !== 'ready') return;
  const [, name = 'overview', ...rest] = location.hash.split('/');
  let arg = null;
  try { arg = rest.length ? decodeURIComponent(rest.join('/')) : null; } catch { /* a malformed hand-typed URL */ }
  // The inspector needs a channel; without one, the table to pick it from.
  const view = !VIEWS[name] ? 'overview' : name === 'channel' && !arg ? 'channels'
    : name === 'collection' && !arg ? 'collections' : name;
  if (current) VIEWS[current].leave();
  current = view;
  for (const section of document.querySelectorAll('section.view')) section.hidden = section.id !== `view-${view}`;
  for (const a of document.querySelectorAll('#nav a')) {
    const tab = view === 'channel' ? 'channels' : view === 'collection' ? 'collections' : view;
    if (a.dataset.view === tab) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.body.dataset.view = view;
  document.title = `Herald admin · ${view}`;
  VIEWS[view].enter(arg);
}

function signIn(message) {
  if (current) { VIEWS[current].leave(); current = null; }
  document.body.dataset.state = 'login';
  for (const section of document.querySelectorAll('section.view')) section.hidden = true;
  $('login').hidden = false;
  $('logout').hidden = true;
  $('login-error').textContent = sessionStorage.getItem(KEY_STORE) ? message : '';
  $('login-key').focus();
}

async function start() {
  $('login').hidden = true;
  try {
    await api('/api/admin/overview');
  } catch (e) {
    if (e.status === 401) return;   // the sign-in form is up
    document.body.dataset.state = 'login';
    $('login').hidden = false;
    $('login-error').textContent = e.status === 403 ? 'This key has no admin scope.' : describe(e);
    return;
  }
  document.body.dataset.state = 'ready';
  $('logout').hidden = !sessionStorage.getItem(KEY_STORE);
  overview.loadNode();
  route();
}

function init() {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORE, $('login-key').value.trim());
    $('login-key').value = '';
    start();
  });
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORE);
    location.hash = '#/overview';
    signIn('');
  });
  $('channel-search').addEventListener('input', () => channels.search());
  $('channels-refresh').addEventListener('click', () => channels.load());
  $('tail-toggle').addEventListener('click', () => inspector.toggleTail());
  $('tail-clear').addEventListener('click', () => { $('tail').replaceChildren(); $('tail-empty').hidden = false; });
  const h = inspector.history;
  $('history-go').addEventListener('click', () => inspector.readHistory(Number($('history-since').value) || 0));
  $('history-first').addEventListener('click', () => inspector.readHistory(h.first - 1));
  $('history-prev').addEventListener('click', () => inspector.readHistory(h.since - h.limit));
  $('history-next').addEventListener('click', () => inspector.readHistory(h.shownLast));
  $('history-latest').addEventListener('click', () => inspector.readHistory(h.last - h.limit));
  $('collections-refresh').addEventListener('click', () => collections.load());
  $('documents-first').addEventListener('click', () => collection.page(null));
  $('documents-next').addEventListener('click', () => collection.page(collection.next));
  $('publish-form').addEventListener('submit', (ev) => publish.submit(ev));
  $('connections-transport').addEventListener('change', () => connections.load());
  $('connections-refresh').addEventListener('click', () => connections.load());
  $('connections-more').addEventListener('click', () => connections.load(connections.next));
  window.addEventListener('hashchange', route);
  window.addEventListener('resize', () => { for (const c of Object.values(overview.charts ?? {})) c.draw(); });
  start();
}

init();
