// bioimp dashboard: one websocket (/ws) feeds everything; the page rebuilds its arrays from the first
// item after every (re)connect, so a reload or a lost connection never leaves half a history.
"use strict";

const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("bioimp-token", params.get("token"));
  params.delete("token"); // keep the token out of screenshots and history
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
}
const token = sessionStorage.getItem("bioimp-token");
const PLOT_CONFIG = { displayModeBar: false, responsive: true };
const ALARMS = new Set();
let run = null, operator = false, data = null, plan = null, status = null, tscale = 1, dirty = false;
let sessions = 0; // websocket sessions that delivered the run (1 + reconnects)

function fresh() {
  return {
    samples: {}, est: { t: [], x: [], sd: [] },
    ctl: { t: [], ms: [], fbT: [], fbMs: [], fbText: [] },
    sp: { intended: {}, applied: {}, refused: {} },
    events: [], audit: [], misses: [],
  };
}

function series(map, key) {
  if (!map[key]) map[key] = { t: [], v: [] };
  return map[key];
}

function apply(item) {
  const kind = item[0];
  if (kind === "s") {
    const s = series(data.samples, item[1]); s.t.push(item[2] / tscale); s.v.push(item[3]);
  } else if (kind === "e") {
    data.est.t.push(item[1] / tscale); data.est.x.push(item[2]); data.est.sd.push(item[3]);
  } else if (kind === "c") {
    const t = item[1] / tscale, ms = item[2] * 1000;
    data.ctl.t.push(t); data.ctl.ms.push(ms);
    if (item[4]) { data.ctl.fbT.push(t); data.ctl.fbMs.push(ms); data.ctl.fbText.push(item[3] + ": " + item[4]); }
  } else if (kind === "p") {
    for (const [name, value] of Object.entries(item[3])) {
      const s = series(data.sp[item[1]], name); s.t.push(item[2] / tscale); s.v.push(value);
    }
  } else if (kind === "v") {
    data.events.push(item);
    if (item[2] === "deadline_miss" || item[2] === "period_overrun") data.misses.push(item[1] / tscale);
  } else if (kind === "a") {
    data.audit.push(item);
  }
}

function el(id) { return document.getElementById(id); }

function plotDiv(container, id) {
  let div = el(id);
  if (!div) { div = document.createElement("div"); div.id = id; div.className = "plot"; el(container).appendChild(div); }
  return div;
}

function layout(title, ytitle) {
  const unit = tscale === 3600 ? "h" : "s";
  return {
    title: { text: `${title}${ytitle ? " [" + ytitle + "]" : ""} over plant time [${unit}]`, font: { size: 12 } },
    margin: { l: 50, r: 10, t: 26, b: 48 }, yaxis: { automargin: true }, showlegend: true,
    legend: { orientation: "h", font: { size: 10 }, y: -0.18, yanchor: "top" }, uirevision: title,
  };
}

function unitOf(name) { return (run.units && run.units[name]) || ""; }

function planTimes(n, offset) {
  const out = [];
  for (let k = 0; k < n; k++) out.push((plan.time + (k + offset) * plan.dt) / tscale);
  return out;
}

// A browser draws a few hundred points per trace quickly, tens of thousands slowly (SVG): long series
// are thinned to every k-th point (and the last) for drawing only; the record keeps every point.
const MAX_POINTS = Number(params.get("points")) || 400; // ?points=N draws up to N points per trace
function picks(n) {
  if (n <= MAX_POINTS) return null;
  const stride = Math.ceil(n / MAX_POINTS), out = [];
  for (let i = 0; i < n - 1; i += stride) out.push(i);
  out.push(n - 1);
  return out;
}
// Always a new array: Plotly.react redraws a trace only when its data arrays are new objects, and the
// page's own arrays grow in place.
function thin(a, idx) { return idx ? idx.map((i) => a[i]) : a.slice(); }

// Each plot is drawn as its own task, so websocket messages (a fail-safe) are handled between two plots
// rather than after all of them.
let jobs = [];
function draw(div, traces, lay) { jobs.push(() => Plotly.react(div, traces, lay, PLOT_CONFIG)); }
async function flush() {
  while (jobs.length) { jobs.shift()(); await new Promise((r) => setTimeout(r, 0)); }
}

function render() {
  if (!run || !data) return;
  const est = data.est, idx = picks(est.t.length), t = thin(est.t, idx);
  const xs = thin(est.x, idx), sds = thin(est.sd, idx);
  run.states.forEach((name, i) => {
    const x = xs.map((v) => v[i]);
    const hi = xs.map((v, k) => (sds[k][i] == null ? null : v[i] + 2 * sds[k][i]));
    const lo = xs.map((v, k) => (sds[k][i] == null ? null : v[i] - 2 * sds[k][i]));
    const meas = data.samples[name] || { t: [], v: [] }, mi = picks(meas.t.length);
    const traces = [
      { x: t, y: lo, mode: "lines", line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
      { x: t, y: hi, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(30,100,200,0.2)", name: "±2σ" },
      { x: t, y: x, mode: "lines", line: { color: "#1e64c8" }, name: "estimate" },
      { x: thin(meas.t, mi), y: thin(meas.v, mi), mode: "markers", marker: { size: 3, color: "#333" }, name: "measured" },
    ];
    if (plan && plan.predicted_x) {
      traces.push({ x: planTimes(plan.predicted_x.length, 0), y: plan.predicted_x.map((r) => r[i]), mode: "lines",
        line: { dash: "dash", color: "#e65100" }, name: "predicted" });
    }
    draw(plotDiv("states", "state-" + name), traces, layout(name, unitOf(name)));
  });
  const others = Object.keys(data.samples).filter((d) => !run.states.includes(d) && !run.inputs.includes(d)).sort();
  el("signals-panel").hidden = others.length === 0;
  for (const name of others) {
    const s = data.samples[name], si = picks(s.t.length);
    draw(plotDiv("signals", "signal-" + name),
      [{ x: thin(s.t, si), y: thin(s.v, si), mode: "markers+lines", marker: { size: 4 }, line: { width: 1 }, name: "measured" }],
      layout(name, unitOf(name)));
  }
  run.inputs.forEach((name, j) => {
    const traces = [];
    const add = (s, trace) => { if (s) { const k = picks(s.t.length); traces.push({ x: thin(s.t, k), y: thin(s.v, k), ...trace }); } };
    add(data.sp.intended[name], { mode: "lines", line: { shape: "hv", color: "#1e64c8" }, name: "intended" });
    add(data.sp.applied[name], { mode: "markers", marker: { size: 4, color: "#2e7d32" }, name: "applied" });
    add(data.sp.refused[name], { mode: "markers", marker: { size: 9, symbol: "x", color: "#c62828" }, name: "refused" });
    add(data.samples[name], { mode: "markers", marker: { size: 3, color: "#777" }, name: "reading" });
    if (plan && plan.planned_u) {
      traces.push({ x: planTimes(plan.planned_u.length, 0), y: plan.planned_u.map((r) => r[j]), mode: "lines",
        line: { dash: "dash", shape: "hv", color: "#e65100" }, name: "planned" });
    }
    draw(plotDiv("inputs", "input-" + name), traces, layout(name, unitOf(name)));
  });
  const ctl = data.ctl, ci = picks(ctl.t.length);
  const health = [
    { x: thin(ctl.t, ci), y: thin(ctl.ms, ci), mode: "markers", marker: { size: 3, color: "#1e64c8" }, name: "compute" },
    { x: ctl.fbT.slice(), y: ctl.fbMs.slice(), text: ctl.fbText.slice(), mode: "markers", marker: { size: 8, color: "#c62828" }, name: "fallback" },
  ];
  if (run.budget_s && ctl.t.length) {
    health.push({ x: [ctl.t[0], ctl.t[ctl.t.length - 1]], y: [run.budget_s * 1000, run.budget_s * 1000], mode: "lines",
      line: { dash: "dot", color: "#c62828" }, name: "budget" });
  }
  if (data.misses.length) {
    health.push({ x: data.misses.slice(), y: data.misses.map(() => (run.budget_s || 0) * 1000), mode: "markers",
      marker: { size: 9, symbol: "triangle-up", color: "#ff8f00" }, name: "deadline miss" });
  }
  const hl = layout("compute time per step", "ms"); hl.yaxis.type = "log";
  draw(el("health"), health, hl);
  const sorted = ctl.ms.slice().sort((a, b) => a - b);
  const pct = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))].toFixed(2) : "–");
  el("health-summary").textContent = `${ctl.t.length} steps · p50 ${pct(0.5)} ms · p99 ${pct(0.99)} ms · budget ` +
    `${run.budget_s ? (run.budget_s * 1000).toFixed(0) + " ms" : "none"} · fallbacks ${ctl.fbT.length} · ` +
    `deadline misses ${data.misses.length}`;
}

function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
function fmtT(t) { return t == null ? "–" : (t / tscale).toFixed(tscale === 3600 ? 2 : 1); }
function utc(wall) { return new Date(wall * 1000).toISOString().replace("T", " ").slice(0, 19); }

function renderTables() {
  const body = el("events").tBodies[0];
  body.replaceChildren();
  for (const e of data.events.slice(-200).reverse()) {
    const tr = document.createElement("tr");
    if (ALARMS.has(e[2]) || String(e[3]).includes("failsafe")) tr.className = "alarm";
    cell(tr, fmtT(e[1])); cell(tr, e[2]); cell(tr, e[3]); body.appendChild(tr);
  }
  const audit = el("audit").tBodies[0];
  audit.replaceChildren();
  for (const a of data.audit.slice().reverse()) {
    const tr = document.createElement("tr");
    cell(tr, utc(a[1])); cell(tr, a[2]); cell(tr, a[3]); cell(tr, a[4]); cell(tr, `${a[5] ?? "–"} → ${a[6] ?? "–"}`);
    audit.appendChild(tr);
  }
}

function showStatus() {
  if (!status) return;
  const badge = el("plant-state");
  if (status.plant_state === "failsafe") {
    badge.className = "badge alarm"; badge.textContent = "FAIL-SAFE" + (status.plant_reason ? ": " + status.plant_reason : "");
  } else if (status.plant_state === "armed") {
    badge.className = "badge ok"; badge.textContent = "plant armed";
  } else {
    badge.className = "badge unknown"; badge.textContent = "plant: unknown";
  }
  const fresh = el("freshness");
  if (status.stale) {
    fresh.className = "badge stale";
    fresh.textContent = status.last_data_wall ? "no data since " + utc(status.last_data_wall) + " UTC" : "no data yet";
  } else {
    fresh.className = "badge ok";
    fresh.textContent = "live" + (status.last_data_t != null ? " · plant t " + fmtT(status.last_data_t) + (tscale === 3600 ? " h" : " s") : "");
  }
  if (status.record !== "ok" && !run) el("run-title").textContent = status.record;
}

function onRun(message) {
  run = message.run; operator = message.operator; data = fresh(); plan = null; sessions += 1;
  tscale = run.period_s >= 60 ? 3600 : 1;
  el("run-title").textContent = `${run.scenario} · ${run.controller} · started ${run.started_utc} by ${run.operator}`;
  for (const id of ["states", "signals", "inputs"]) el(id).replaceChildren();
  const canAct = operator && !!token;
  el("operator").hidden = !canAct;
  el("read-only").textContent = canAct ? "" : operator ? "Operator actions need the operator URL (with its token) printed at start." : "Read-only view.";
  const select = el("op-name");
  select.replaceChildren();
  for (const name of [...run.inputs, ...run.states]) {
    const option = document.createElement("option"); option.value = option.textContent = name; select.appendChild(option);
  }
  select.onchange = () => {
    const lim = run.limits[select.value] || ["-inf", "inf"];
    el("op-lo").placeholder = "≥ " + lim[0]; el("op-hi").placeholder = "≤ " + lim[1];
  };
  select.onchange();
  dirty = true;
}

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { el("connection").className = "badge ok"; el("connection").textContent = "connected"; };
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "run") onRun(message);
    if (message.status) { status = message.status; showStatus(); }
    if (message.type === "update" && data) {
      let tables = false;
      for (const item of message.items) { apply(item); tables = tables || item[0] === "v" || item[0] === "a"; }
      if (tables) renderTables(); // alarms and audit rows at once, not after the next round of plots
      if ("plan" in message) plan = message.plan;
      if (message.items.length || "plan" in message) dirty = true;
    }
  };
  ws.onclose = () => {
    el("connection").className = "badge alarm"; el("connection").textContent = "disconnected – reconnecting";
    setTimeout(connect, 1000);
  };
}

async function act(body) {
  body.who = el("op-who").value; body.why = el("op-why").value;
  el("op-result").textContent = "sent; waiting for the batch…";
  try {
    const reply = await fetch("/api/action", { method: "POST", headers: { "Content-Type": "application/json", "X-Operator-Token": token }, body: JSON.stringify(body) });
    const answer = await reply.json();
    el("op-result").textContent = answer.ok ? "done (audit row " + answer.audit_rec + ")" : "refused: " + answer.error;
  } catch (error) {
    el("op-result").textContent = "failed: " + error;
  }
}

function bound(text) { const t = text.trim(); return t === "inf" || t === "-inf" ? t : Number(t); }
el("op-arm").onclick = () => act({ op: "arm" });
el("op-bound").onclick = () => act({ op: "set_bound", name: el("op-name").value, lo: bound(el("op-lo").value), hi: bound(el("op-hi").value) });

fetch("/api/info").then((r) => r.json()).then((info) => { for (const k of info.alarm_kinds) ALARMS.add(k); });
let drawing = false;
setInterval(async () => {
  if (!dirty || drawing) return;
  dirty = false; drawing = true; jobs = [];
  try { render(); await flush(); } finally { drawing = false; }
}, 1000);
connect();
