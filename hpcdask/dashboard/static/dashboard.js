// hpcdask dashboard: polls the scheduler's JSON routes and draws with the DOM and a canvas.
// No libraries and no build step; URLs are relative so that the pages also work behind a
// proxy path (e.g. JupyterHub's /user/NAME/proxy/8787/status).
"use strict";

const POLL_MS = 750;       // status page: more than one update per second, even with jitter
const SLOW_MS = 2000;      // logs and jobs
const WINDOW_S = 30;       // task stream window
const MAX_RECORDS = 60000;

const state = { page: "status", cursor: -1, tcursor: -1, records: [], transfers: [],
                offset: 0, workers: [], updates: 0, stamps: [], timer: null, busy: false };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtBytes(n) {
  const u = ["B", "kiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 2 : 1) : String(Math.round(n))) + " " + u[i];
}

const colours = new Map();
function colourOf(prefix) {
  let c = colours.get(prefix);
  if (!c) {
    let h = 0;
    for (let i = 0; i < prefix.length; i++) h = (h * 31 + prefix.charCodeAt(i)) >>> 0;
    c = "hsl(" + (h % 360) + ", 62%, " + (45 + (h >> 9) % 15) + "%)";
    colours.set(prefix, c);
  }
  return c;
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 403) throw new Error("403: open the dashboard through client.dashboard_link (it carries the token)");
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

function setConn(ok, why) {
  const c = document.getElementById("conn");
  c.className = "conn " + (ok ? "ok" : "bad");
  c.title = ok ? state.updates + " updates" : why;
}

// ------------------------------------------------------------------ status page

function barRow(parent, label, segments, total, num, title) {
  const row = el("div", "row");
  const lab = el("span", "label", label);
  lab.title = title || label;
  const bar = el("div", "bar");
  for (const [cls, v] of segments) {
    if (v <= 0 || total <= 0) continue;
    const s = el("span", cls);
    s.style.width = (100 * v / total).toFixed(2) + "%";
    bar.appendChild(s);
  }
  row.append(lab, bar, el("span", "num", num));
  parent.appendChild(row);
}

function renderProgress(progress) {
  const box = document.getElementById("progress");
  box.replaceChildren();
  if (!progress.length) { box.appendChild(el("p", "muted", "no tasks")); return; }
  for (const p of progress) {
    const total = p.waiting + p.queued + p.processing + p.memory + p.erred;
    const row = barRow;
    row(box, p.prefix, [["memory", p.memory], ["erred", p.erred], ["processing", p.processing],
        ["queued", p.queued], ["waiting", p.waiting]], total,
        (p.memory + p.erred) + " / " + total + (p.erred ? " (" + p.erred + " erred)" : ""));
    box.lastChild.dataset.prefix = p.prefix;
  }
}

function renderWorkerBars(workers) {
  const mem = document.getElementById("memory");
  const cpu = document.getElementById("cpu");
  const tasks = document.getElementById("tasks");
  mem.replaceChildren(); cpu.replaceChildren(); tasks.replaceChildren();
  let maxTasks = 1;
  for (const w of workers) maxTasks = Math.max(maxTasks, w.processing + w.in_memory);
  for (const w of workers) {
    const label = w.name === w.address ? w.address : w.name + " " + w.address;
    const cap = Math.max(w.memory_limit || 0, w.rss + w.spilled, 1);
    barRow(mem, label, [["managed", w.managed], ["unmanaged", w.unmanaged], ["spilled", w.spilled]],
           cap, fmtBytes(w.rss) + (w.memory_limit ? " / " + fmtBytes(w.memory_limit) : ""), w.address);
    barRow(cpu, label, [["cpu", w.cpu]], Math.max(100 * w.nthreads, w.cpu, 1),
           Math.round(w.cpu) + "%", w.address);
    barRow(tasks, label, [["processing", w.processing], ["memory", w.in_memory]], maxTasks,
           w.processing + " / " + w.in_memory, w.address);
  }
  const threads = workers.reduce((a, w) => a + w.nthreads, 0);
  document.getElementById("summary").textContent =
    workers.length + " workers, " + threads + " threads";
}

function drawTaskStream() {
  const canvas = document.getElementById("task-stream");
  const rows = [];
  const rowOf = new Map();
  const lanes = new Map();
  for (const r of state.records) lanes.set(r[2], Math.max(lanes.get(r[2]) || 0, r[3] + 1));
  for (const w of state.workers) {
    const n = Math.max(w.nthreads, lanes.get(w.address) || 0);
    rowOf.set(w.address, rows.length);
    for (let i = 0; i < n; i++) rows.push(w.address);
  }
  const rowH = Math.max(2, Math.min(14, Math.floor(320 / Math.max(rows.length, 1))));
  const width = canvas.clientWidth || 800;
  const height = Math.max(40, rows.length * rowH + 18);
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.height = height + "px";
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const now = Date.now() / 1000 + state.offset;
  const t0 = now - WINDOW_S;
  const x = (t) => (t - t0) / WINDOW_S * width;
  const counts = new Map();
  let shown = 0;
  for (const r of state.records) {
    const [key, prefix, worker, lane, start, stop, ok] = r;
    if (stop < t0) continue;
    const base = rowOf.get(worker);
    if (base === undefined) continue;
    const x0 = x(start), x1 = Math.max(x(stop), x0 + 1);
    ctx.fillStyle = ok ? colourOf(prefix) : "#000";
    ctx.fillRect(x0, (base + lane) * rowH, x1 - x0, Math.max(1, rowH - 1));
    counts.set(prefix, (counts.get(prefix) || 0) + 1);
    shown++;
  }
  ctx.fillStyle = "rgba(214, 39, 40, 0.75)";
  for (const t of state.transfers) {
    const [worker, source, nkeys, nbytes, start, stop] = t;
    const base = rowOf.get(worker);
    if (base === undefined || stop < t0) continue;
    ctx.fillRect(x(start), base * rowH, Math.max(x(stop) - x(start), 1), Math.max(1, rowH / 3));
  }
  ctx.fillStyle = "#777";
  ctx.font = "11px sans-serif";
  for (let s = 0; s <= WINDOW_S; s += 5) {
    const xx = x(now - s);
    ctx.fillRect(xx, height - 16, 1, 4);
    ctx.fillText((s ? "-" + s : "now") + (s ? " s" : ""), Math.min(Math.max(xx - 10, 0), width - 24), height - 2);
  }
  canvas.dataset.count = String(shown);
  canvas.dataset.total = String(state.records.length);
  const legend = document.getElementById("ts-legend");
  legend.replaceChildren();
  for (const [prefix, n] of [...counts.entries()].sort()) {
    const li = el("li", "", prefix + " (" + n + ")");
    li.dataset.prefix = prefix;
    li.style.setProperty("--c", colourOf(prefix));
    legend.appendChild(li);
  }
}

async function pollStatus() {
  const d = await getJSON("api/status.json?since=" + state.cursor + "&tsince=" + state.tcursor);
  state.offset = d.now - Date.now() / 1000;
  state.cursor = d.cursor;
  state.tcursor = d.tcursor;
  state.workers = d.workers;
  const cutoff = d.now - WINDOW_S - 5;
  if (d.records.length) state.records = state.records.concat(d.records);
  if (d.transfers.length) state.transfers = state.transfers.concat(d.transfers);
  state.records = state.records.filter((r) => r[5] >= cutoff).slice(-MAX_RECORDS);
  state.transfers = state.transfers.filter((t) => t[5] >= cutoff).slice(-MAX_RECORDS);
  renderProgress(d.progress);
  renderWorkerBars(d.workers);
  drawTaskStream();
}

// ------------------------------------------------------------------ other pages

function fillTable(tbody, rows) {
  tbody.replaceChildren();
  for (const cells of rows) {
    const tr = el("tr");
    for (const c of cells) {
      const td = el("td", c && c.cls ? c.cls : "", c && c.text !== undefined ? c.text : String(c));
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

async function pollWorkers() {
  const d = await getJSON("api/workers.json");
  state.workers = d.workers;
  const tbody = document.querySelector("#workers-table tbody");
  fillTable(tbody, d.workers.map((w) => [w.name, w.address, w.nthreads, Math.round(w.cpu) + "%",
    fmtBytes(w.rss), fmtBytes(w.managed), w.memory_limit ? fmtBytes(w.memory_limit) : "none",
    w.processing, w.in_memory, w.last_seen.toFixed(1) + " s ago"]));
  [...tbody.rows].forEach((tr, i) => { tr.dataset.worker = d.workers[i].address; });
  renderWorkerBars(d.workers);
}

async function pollLogs() {
  const sel = document.getElementById("log-source");
  const worker = sel.value;
  const d = await getJSON("api/logs.json" + (worker ? "?worker=" + encodeURIComponent(worker) : ""));
  const known = new Set([...sel.options].map((o) => o.value));
  for (const a of Object.keys(d.workers)) {
    if (!known.has(a)) { const o = el("option", "", a); o.value = a; sel.appendChild(o); }
  }
  const lines = worker ? (d.workers[worker] || [d.error || "no such worker"]) : d.scheduler;
  const pre = document.getElementById("log-lines");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = lines.join("\n");
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

async function pollJobs() {
  const d = await getJSON("api/jobs.json");
  const none = document.getElementById("jobs-none");
  const tbody = document.querySelector("#jobs-table tbody");
  if (d.jobs === null) {
    none.textContent = "This scheduler does not belong to a batch-system cluster (SLURMCluster, PBSCluster, SGECluster...).";
    tbody.replaceChildren();
    return;
  }
  none.textContent = d.jobs.length ? "" : "No jobs submitted yet.";
  fillTable(tbody, d.jobs.map((j) => [j.id, j.state + (j.hopeless ? " (cannot start)" : ""),
    { text: j.reason || "", cls: "reason" }, j.workers.join(", "), j.connected.length + " / " + j.workers.length,
    j.age.toFixed(0) + " s"]));
  [...tbody.rows].forEach((tr, i) => { tr.dataset.job = d.jobs[i].id; tr.dataset.state = d.jobs[i].state; });
}

const POLLERS = { status: [pollStatus, POLL_MS], workers: [pollWorkers, POLL_MS * 2],
                  logs: [pollLogs, SLOW_MS], jobs: [pollJobs, SLOW_MS] };

async function tick() {
  if (state.busy) return;
  state.busy = true;
  try {
    await POLLERS[state.page][0]();
    state.updates++;
    document.body.dataset.updates = String(state.updates);
    state.stamps.push(Date.now());
    if (state.stamps.length > 20) state.stamps.shift();
    const gaps = state.stamps.slice(1).map((t, i) => t - state.stamps[i]).sort((a, b) => a - b);
    if (gaps.length) document.body.dataset.interval = String(gaps[gaps.length >> 1]);  // median, ms
    setConn(true);
  } catch (e) {
    setConn(false, String(e.message || e));
  } finally {
    state.busy = false;
  }
}

function show(page) {
  if (!POLLERS[page]) page = "status";
  state.page = page;
  for (const s of document.querySelectorAll(".page")) s.classList.toggle("active", s.id === "page-" + page);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  if (state.timer) clearInterval(state.timer);
  state.timer = setInterval(tick, POLLERS[page][1]);
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const a of document.querySelectorAll("nav a")) {
    a.setAttribute("href", a.dataset.page);  // relative: works behind a proxy path
    a.addEventListener("click", (ev) => {
      ev.preventDefault();
      history.pushState({}, "", a.dataset.page);
      show(a.dataset.page);
    });
  }
  document.getElementById("ts-window").textContent = String(WINDOW_S);
  document.getElementById("log-source").addEventListener("change", tick);
  window.addEventListener("popstate", () => show(location.pathname.split("/").pop()));
  window.addEventListener("resize", () => { if (state.page === "status") drawTaskStream(); });
  show(location.pathname.split("/").pop());
});
