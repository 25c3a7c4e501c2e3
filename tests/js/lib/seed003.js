// Seed 003's frontend (/work/shared/seeds/003_*.txt), without React, for tests that replay it against Herald.
//
// The seed documents its client as a flow, not as source code, so this transcribes that flow step by step and adds
// nothing to it:
//
//   WebSocket message arrives
//     ├── unitDataMap[unit] = newData
//     ├── All units reported?
//     │     ├── YES → setUpdating(true), setData([...allData]), setLastUpdate(now), setDataVersion(v + 1)
//     │     │         setTimeout(500ms) → setUpdating(false)
//     │     └── NO  → wait for remaining units
//     └── heartbeat/error → ignore
//
// One WebSocket per selected unit: `ws://host/ws/{unit_name}` (standard and report views) or
// `ws://host/ws/hourly/{unit_name}` (hourly signage), the unit name as is (a raw space in `Final 1A`).
// Historical views call `/historical-data/`, `/historical-hourly-data/` and `/report-data` with `fetch()` and read
// the rows of the JSON body.
import WebSocket from 'ws';
import { Waitable } from './herald.js';

/**
 * The `useDashboardData` hook: opens one socket per unit under `path` (`/ws/` or `/ws/hourly/`) of `host`
 * (`127.0.0.1:PORT`). Returns the hook's state (`data`, `updating`, `lastUpdate`, `dataVersion`), awaitable with
 * `until`, plus what arrived on each socket (`raw[unit]`, parsed, recorded beside the seed's handler) for the test.
 */
export function useDashboardData(t, host, units, { path = '/ws/' } = {}) {
  const view = new Waitable();
  view.state = { data: [], updating: false, lastUpdate: null, dataVersion: 0 };
  view.raw = Object.fromEntries(units.map((u) => [u, []]));
  view.summary = () => JSON.stringify({ state: view.state, raw: view.raw }).slice(0, 2000);
  const setUpdating = (v) => { view.state.updating = v; };
  const setData = (v) => { view.state.data = v; };
  const setLastUpdate = (v) => { view.state.lastUpdate = v; };
  const setDataVersion = (f) => { view.state.dataVersion = f(view.state.dataVersion); };

  const unitDataMap = {};
  const sockets = [];
  for (const unit of units) {
    const ws = new WebSocket(`ws://${host}${path}${unit}`);
    // --- the seed's handler ---
    ws.onmessage = (event) => {
      const newData = JSON.parse(event.data);
      if (newData.type === 'heartbeat' || newData.type === 'error') return;   // heartbeat/error → ignore
      unitDataMap[unit] = newData;
      if (units.every((u) => unitDataMap[u] !== undefined)) {                // all units reported?
        const allData = units.map((u) => unitDataMap[u]);
        setUpdating(true);
        setData([...allData]);
        setLastUpdate(new Date());
        setDataVersion((v) => v + 1);
        setTimeout(() => setUpdating(false), 500).unref();
      }
    };
    // --- the test's own record, beside it (runs after the seed's handler) ---
    ws.addEventListener('message', (event) => {
      view.raw[unit].push(JSON.parse(event.data));
      view._check();
    });
    sockets.push(ws);
  }
  t.after(() => sockets.forEach((ws) => ws.terminate()));
  return view;
}

/** The historical views' fetch calls: `/historical-data/` (model breakdown of a unit over a date range). */
export async function fetchHistoricalData(base, unit, startDate, endDate) {
  const response = await fetch(`${base}/historical-data/?unit_name=${encodeURIComponent(unit)}&start_date=${startDate}&end_date=${endDate}`);
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status, body: await response.json() });
  return response.json();
}

/** `/historical-hourly-data/`: hourly breakdown of a unit on a date. */
export async function fetchHistoricalHourlyData(base, unit, date) {
  const response = await fetch(`${base}/historical-hourly-data/?unit_name=${encodeURIComponent(unit)}&date=${date}`);
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status, body: await response.json() });
  return response.json();
}

/** `/report-data`: per-unit totals over a date range (the report view's charts). */
export async function fetchReportData(base, startDate, endDate) {
  const response = await fetch(`${base}/report-data?start_date=${startDate}&end_date=${endDate}`);
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status, body: await response.json() });
  return response.json();
}
