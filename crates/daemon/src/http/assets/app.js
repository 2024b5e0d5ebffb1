// procyard dashboard: plain JS, no build step. Live data comes from /api/events (SSE);
// actions are POSTs carrying the page's CSRF token.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;
const showPayloads = document.querySelector('meta[name="payloads"]').content === "shown";
const $ = (s, r = document) => r.querySelector(s);
const PAGE = 50;
const WINDOW_MS = 5 * 60 * 1000;
let status = null;
let statusAt = 0;
const samples = {}; // task -> [{t, done, failed}]
let jobsOffset = 0;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function ago(ms) {
  if (!ms) return "—";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${s.toFixed(0)}s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)}m ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)}h ago`;
  return new Date(ms).toLocaleString();
}
function dur(ms) {
  if (ms == null) return "—";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}
function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}
function endText(end) {
  if (!end) return "running";
  switch (end.kind) {
    case "exited": return `exit code ${end.code}`;
    case "signalled": return `killed by ${end.signal}`;
    case "replied": return `replied ${end.outcome}`;
    default: return String(end.kind || JSON.stringify(end)).replace(/_/g, " ");
  }
}
function toast(msg, isErr) {
  const t = $("#toast");
  t.textContent = msg;
  t.className = "toast" + (isErr ? " err" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.add("hidden"), 4000);
}
async function api(path, body) {
  const opts = { credentials: "same-origin", headers: { "x-csrf-token": csrf } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* text */ }
  if (!r.ok) throw new Error(data && data.error ? data.error.message : `${r.status} ${text}`);
  return data;
}
async function act(path, body, done) {
  try {
    const r = await api(path, body ?? {});
    toast(done ? done(r) : (r.message || "done"));
    refresh();
  } catch (e) { toast(e.message, true); }
}

// --- header and overview -------------------------------------------------------------
function onStatus() {
  const s = status;
  const up = Math.round(s.uptime_secs * 1000 + (Date.now() - statusAt));
  $("#daemon-line").textContent = `pid ${s.pid} · ${s.state} · up ${up < 60000 ? dur(up) : ago(Date.now() - up).replace(" ago", "")}` +
    (s.reloads || s.failed_reloads ? ` · reloads ${s.reloads} ok, ${s.failed_reloads} failed` : "");
  const dead = s.groups.reduce((n, g) => n + ((g.queue && g.queue.dead) || 0), 0);
  const pill = $("#dead-count");
  pill.textContent = dead;
  pill.classList.toggle("hidden", dead === 0);
  $("#queue-line").innerHTML = `Queue <b>${esc(s.queue.backend)}</b> ` +
    `<span class="badge ${s.queue.ok ? "ok" : "bad"}">${s.queue.ok ? "healthy" : "unhealthy"}</span> ` +
    `<span class="mono muted">${esc(s.queue.detail)}</span>` +
    (s.last_reload_error ? ` <span class="badge bad" title="${esc(s.last_reload_error)}">last reload failed</span>` : "");
  const now = Date.now();
  for (const g of s.groups) {
    const list = (samples[g.name] ||= []);
    list.push({ t: now, done: g.done, failed: g.failed });
    while (list.length && list[0].t < now - WINDOW_MS - 10000) list.shift();
  }
  renderGroups();
  if (route().view === "overview") renderSchedules(false);
  const sel = $("#filter-task");
  if (sel.options.length - 1 !== s.groups.length) {
    const cur = sel.value;
    sel.innerHTML = '<option value="">all</option>' + s.groups.map(g => `<option>${esc(g.name)}</option>`).join("");
    sel.value = cur;
  }
}

function card(g) {
  const el = document.createElement("div");
  el.className = "card";
  el.dataset.task = g.name;
  el.innerHTML = `
    <div class="card-head"><span class="name">${esc(g.name)}</span><span class="model">${esc(g.work_model)}</span>
      <span class="badge bad crash-badge hidden">crash loop</span><span class="badge warn paused-badge hidden">paused</span>
      <span class="spacer"></span><span class="muted workers-label"></span></div>
    <div class="workers"></div>
    <div class="stats">
      <div class="stat"><b class="ready">0</b><span>ready</span></div>
      <div class="stat"><b class="delayed">0</b><span>delayed</span></div>
      <div class="stat"><b class="in-flight">0</b><span>in flight</span></div>
      <div class="stat bad"><b class="dead">0</b><span>dead</span></div>
      <div class="stat ok"><b class="done">0</b><span>done</span></div>
      <div class="stat bad"><b class="failed">0</b><span>failed</span></div>
      <div class="stat"><b class="retried">0</b><span>retried</span></div>
      <div class="stat"><b class="rate">0</b><span>done/s</span></div>
    </div>
    <canvas class="chart" width="760" height="140"></canvas>
    <div class="legend"><span><i class="l-done"></i>done/s</span><span><i class="l-failed"></i>failed/s</span><span class="spacer"></span><span>last 5 min</span></div>
    <div class="actions">
      <button class="pause"></button>
      <label class="muted">max workers <input class="scale-n" type="number" min="1"></label>
      <button class="scale">Scale</button>
      <span class="spacer"></span>
      <a class="jobs-link">jobs ›</a>
    </div>`;
  el.querySelector(".pause").addEventListener("click", () => {
    const g2 = status.groups.find(x => x.name === g.name);
    act(`/api/tasks/${encodeURIComponent(g.name)}/${g2 && g2.paused ? "resume" : "pause"}`);
  });
  el.querySelector(".scale").addEventListener("click", () => {
    const n = parseInt(el.querySelector(".scale-n").value, 10);
    act(`/api/tasks/${encodeURIComponent(g.name)}/scale`, { max_workers: n });
  });
  el.querySelector(".jobs-link").href = `#/jobs?task=${encodeURIComponent(g.name)}`;
  return el;
}

function renderGroups() {
  const box = $("#groups");
  const seen = new Set();
  for (const g of status.groups) {
    seen.add(g.name);
    let el = box.querySelector(`.card[data-task="${CSS.escape(g.name)}"]`);
    if (!el) { el = card(g); box.appendChild(el); }
    const q = g.queue || {};
    const set = (cls, v) => { el.querySelector("." + cls).textContent = v ?? "—"; };
    set("ready", q.ready); set("delayed", q.delayed); set("in-flight", g.in_flight); set("dead", q.dead);
    set("done", g.done); set("failed", g.failed); set("retried", g.retried);
    const busy = g.workers.filter(w => w.state === "busy").length;
    set("workers-label", `${busy} busy · ${g.workers.length - busy} idle · max ${g.max_workers}`);
    const wbox = el.querySelector(".workers");
    wbox.innerHTML = g.workers.map(w => `<span class="worker ${esc(w.state)}" title="pid ${w.pid} ${esc(w.state)}${w.job ? " job " + esc(w.job) : ""}"></span>`).join("");
    el.classList.toggle("crash", g.crash_loop);
    el.classList.toggle("paused", g.paused);
    el.querySelector(".crash-badge").classList.toggle("hidden", !g.crash_loop);
    el.querySelector(".paused-badge").classList.toggle("hidden", !g.paused);
    el.querySelector(".pause").textContent = g.paused ? "Resume" : "Pause";
    const input = el.querySelector(".scale-n");
    if (document.activeElement !== input) input.value = g.max_workers;
    const rates = rateSeries(samples[g.name] || []);
    const last = recentRate(samples[g.name] || []);
    set("rate", last >= 10 ? last.toFixed(0) : last.toFixed(1));
    drawChart(el.querySelector("canvas"), rates);
  }
  for (const el of [...box.children]) if (!seen.has(el.dataset.task)) el.remove();
}

// Rates per 5-second bucket, from the counters sampled at each event (and every 2 s).
const BUCKET_MS = 5000;
function rateSeries(list) {
  const out = [];
  if (list.length < 2) return out;
  const last = list[list.length - 1].t;
  for (let end = last; end > last - WINDOW_MS; end -= BUCKET_MS) {
    const inBucket = list.filter(s => s.t <= end && s.t > end - BUCKET_MS);
    const before = list.filter(s => s.t <= end - BUCKET_MS).pop();
    const a = before || inBucket[0], b = inBucket[inBucket.length - 1];
    if (!a || !b || b.t <= a.t) continue;
    const dt = (b.t - a.t) / 1000;
    out.unshift({ t: end, done: Math.max(0, b.done - a.done) / dt, failed: Math.max(0, b.failed - a.failed) / dt });
  }
  return out;
}
// Done per second over the last 10 s.
function recentRate(list) {
  if (list.length < 2) return 0;
  const b = list[list.length - 1];
  const a = list.find(s => s.t >= b.t - 10000) || list[0];
  return b.t > a.t ? Math.max(0, b.done - a.done) / ((b.t - a.t) / 1000) : 0;
}

function drawChart(c, rates) {
  const ctx = c.getContext("2d");
  const w = c.width, h = c.height, now = Date.now();
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#2a3541"; ctx.lineWidth = 1;
  for (let i = 1; i < 4; i++) { ctx.beginPath(); ctx.moveTo(0, (h * i) / 4); ctx.lineTo(w, (h * i) / 4); ctx.stroke(); }
  const max = Math.max(1, ...rates.map(r => Math.max(r.done, r.failed)));
  ctx.fillStyle = "#8a98a8"; ctx.font = "20px system-ui";
  ctx.fillText(`${max >= 10 ? max.toFixed(0) : max.toFixed(1)}/s`, 8, 24);
  const line = (key, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 3; ctx.beginPath();
    let first = true;
    for (const r of rates) {
      const x = w - ((now - r.t) / WINDOW_MS) * w;
      if (x < 0) continue;
      const y = h - 6 - (r[key] / max) * (h - 36);
      if (first) { ctx.moveTo(x, y); first = false; } else ctx.lineTo(x, y);
    }
    ctx.stroke();
  };
  line("done", "#3fcf8e");
  line("failed", "#ff6b6b");
}

// --- schedules (on the overview, read at most every few seconds) -------------------------
const SCHEDULES_EVERY_MS = 5000;
function until(ms) {
  const s = (ms - Date.now()) / 1000;
  if (s < 0) return "due";
  if (s < 60) return `in ${s.toFixed(0)}s`;
  if (s < 3600) return `in ${(s / 60).toFixed(0)}m`;
  return new Date(ms).toLocaleString();
}
async function renderSchedules(force) {
  if (!force && Date.now() - (renderSchedules.at || 0) < SCHEDULES_EVERY_MS) return;
  renderSchedules.at = Date.now();
  let list;
  try { list = await api("/api/schedules"); } catch (_) { return; } // the overview stays as it is
  $("#schedules-box").classList.toggle("hidden", list.length === 0);
  const html = list.map(s => `<tr data-name="${esc(s.name)}">
    <td>${esc(s.name)}</td><td class="mono">${esc(s.spec)}</td>
    <td class="next">${s.paused ? '<span class="badge warn">paused</span>' : esc(s.next_ms ? until(s.next_ms) : "—")}</td>
    <td>${ago(s.last_run_ms)}</td>
    <td class="id">${s.last_job ? `<a href="#/jobs/${esc(s.last_job)}">${esc(s.last_job.slice(0, 8))}…${esc(s.last_job.slice(-6))}</a>` : "—"}</td></tr>`).join("");
  if (renderSchedules.last !== html) {
    renderSchedules.last = html;
    $("#schedules-table tbody").innerHTML = html;
  }
}

// --- jobs ------------------------------------------------------------------------------
function jobsQuery() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  return { task: params.get("task") || "", state: params.get("state") || "" };
}
async function renderJobs() {
  const q = jobsQuery();
  $("#filter-task").value = q.task;
  $("#filter-state").value = q.state;
  const p = new URLSearchParams({ limit: PAGE, offset: jobsOffset });
  if (q.task) p.set("task", q.task);
  if (q.state) p.set("state", q.state);
  const page = await api(`/api/jobs?${p}`);
  // Redraw only what changed, so a row is not replaced under the pointer.
  const key = `${p}|${JSON.stringify(page)}`;
  if (renderJobs.last === key) return;
  renderJobs.last = key;
  const tbody = $("#jobs-table tbody");
  tbody.innerHTML = page.jobs.map(j => `<tr data-id="${esc(j.id)}">
    <td class="id"><a href="#/jobs/${esc(j.id)}">${esc(j.id.slice(0, 8))}…${esc(j.id.slice(-6))}</a></td>
    <td>${esc(j.task)}</td><td><span class="state ${esc(j.state)}">${esc(j.state)}</span></td>
    <td class="mono">${esc(j.routing_key)}</td><td title="${new Date(j.published_ms).toLocaleString()}">${ago(j.published_ms)}</td>
    <td>${j.finished_ms ? dur(j.finished_ms - j.published_ms) : "—"}</td><td>${j.deliveries}</td>
    <td class="muted">${esc(j.reason || "")}</td></tr>`).join("");
  $("#jobs-empty").classList.toggle("hidden", page.jobs.length > 0);
  $("#prev").disabled = jobsOffset === 0;
  $("#next").disabled = !page.more;
  $("#page-label").textContent = page.jobs.length ? `${jobsOffset + 1}–${jobsOffset + page.jobs.length}` : "";
}
function setFilter() {
  const p = new URLSearchParams();
  if ($("#filter-task").value) p.set("task", $("#filter-task").value);
  if ($("#filter-state").value) p.set("state", $("#filter-state").value);
  jobsOffset = 0;
  location.hash = `#/jobs${p.toString() ? "?" + p : ""}`;
}

// --- one job -----------------------------------------------------------------------------
async function renderJob(id) {
  const j = await api(`/api/jobs/${encodeURIComponent(id)}`);
  const running = j.state === "running";
  const live = running ? await api(`/api/jobs/${encodeURIComponent(id)}/live`) : null;
  $("#live-box").classList.toggle("hidden", !(live && live.running));
  if (live && live.running) {
    const part = (name, c) => c ? `<div class="stream"><h3>${name} · ${bytes(c.total)}</h3><pre class="live-${name}">${esc(c.bytes) || '<span class="muted">(nothing yet)</span>'}</pre></div>` : "";
    const html = part("stdout", live.stdout) + part("stderr", live.stderr);
    if ($("#live-output").innerHTML !== html) $("#live-output").innerHTML = html;
  }
  const key = JSON.stringify(j);
  if (renderJob.last === key) return;
  renderJob.last = key;
  $("#job-title").textContent = `Job ${j.id}`;
  const st = $("#job-state");
  st.textContent = j.state;
  st.className = `state ${j.state}`;
  const final = ["done", "failed", "dead", "cancelled"].includes(j.state);
  $("#job-cancel").classList.toggle("hidden", final);
  $("#job-cancel").onclick = () => act(`/api/jobs/${encodeURIComponent(j.id)}/cancel`, {}, r => `job ${r.cancelled === "waiting" ? "cancelled" : "stopping"}`);
  const facts = [["task", j.task], ["routing key", j.routing_key], ["payload", bytes(j.payload_len)],
    ["published", new Date(j.published_ms).toLocaleString()], ["finished", j.finished_ms ? new Date(j.finished_ms).toLocaleString() : "—"],
    ["deliveries", j.deliveries], ["reason", j.reason || "—"]];
  $("#job-facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  $("#payload-box").classList.toggle("hidden", !showPayloads);
  if (showPayloads && $("#payload").dataset.id !== j.id) {
    $("#payload").dataset.id = j.id;
    const r = await fetch(`/api/jobs/${encodeURIComponent(j.id)}/payload`, { credentials: "same-origin" });
    $("#payload").textContent = await r.text();
  }
  const stream = (name, c) => c ? `<div class="stream"><h3>${name} · ${bytes(c.total)}${c.dropped ? ` (${bytes(c.dropped)} dropped)` : ""}</h3><pre class="${name}">${esc(c.bytes) || '<span class="muted">(empty)</span>'}</pre></div>` : "";
  $("#attempts").innerHTML = j.attempts.length ? j.attempts.slice().reverse().map(a => {
    const took = a.started_ms && a.ended_ms ? a.ended_ms - a.started_ms : null;
    const u = a.usage;
    return `<div class="attempt" data-attempt="${a.number}"><div class="attempt-head">
      <b>#${a.number}</b><span>pid <b>${a.worker_pid ?? "—"}</b></span>
      <span>started <b>${a.started_ms ? new Date(a.started_ms).toLocaleTimeString() : "—"}</b></span>
      <span>took <b>${dur(took)}</b></span><span class="end">ended <b>${esc(endText(a.end))}</b></span>
      ${u ? `<span>max RSS <b>${bytes(u.max_rss_kib * 1024)}</b></span><span>CPU <b>${dur(Math.round(u.user_cpu_us / 1000))}</b> user, <b>${dur(Math.round(u.system_cpu_us / 1000))}</b> sys</span>` : ""}
      ${a.reason ? `<span>reason <b>${esc(a.reason)}</b></span>` : ""}</div>
      ${stream("stdout", a.stdout)}${stream("stderr", a.stderr)}</div>`;
  }).join("") : '<p class="empty">Not run yet.</p>';
}

// --- dead letters --------------------------------------------------------------------------
async function renderDead() {
  const dead = await api("/api/dead");
  const key = JSON.stringify(dead);
  if (renderDead.last === key && $("#dead-table tbody").children.length === dead.length) return;
  renderDead.last = key;
  $("#dead-table tbody").innerHTML = dead.map(d => `<tr data-id="${esc(d.id)}">
    <td class="id"><a href="#/jobs/${esc(d.id)}">${esc(d.id)}</a></td><td>${esc(d.task)}</td>
    <td class="mono">${esc(d.routing_key)}</td><td>${d.attempts}</td><td class="muted">${esc(d.reason)}</td>
    <td><button class="requeue" data-id="${esc(d.id)}">Requeue</button></td></tr>`).join("");
  $("#dead-empty").classList.toggle("hidden", dead.length > 0);
  for (const b of document.querySelectorAll("#dead-table .requeue")) {
    b.addEventListener("click", () => act("/api/dead/requeue", { ids: [b.dataset.id] }, r => `requeued ${r.count}`));
  }
}

// --- routing and live updates --------------------------------------------------------------
function route() {
  const h = location.hash || "#/";
  const path = h.slice(1).split("?")[0];
  let view = "overview";
  if (path.startsWith("/jobs/")) view = "job";
  else if (path.startsWith("/jobs")) view = "jobs";
  else if (path.startsWith("/dead")) view = "dead";
  for (const v of ["overview", "jobs", "job", "dead"]) $(`#view-${v}`).classList.toggle("hidden", v !== view);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === (view === "job" ? "jobs" : view));
  return { view, id: view === "job" ? decodeURIComponent(path.slice(6)) : null };
}
let busy = false, again = false;
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    const r = route();
    if (r.view === "jobs") await renderJobs();
    else if (r.view === "job") await renderJob(r.id);
    else if (r.view === "dead") await renderDead();
  } catch (e) { toast(e.message, true); }
  busy = false;
  if (again) { again = false; refresh(); }
}
function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("open", () => $("#live").classList.add("on"));
  es.addEventListener("error", () => $("#live").classList.remove("on"));
  es.addEventListener("status", e => {
    status = JSON.parse(e.data);
    statusAt = Date.now();
    onStatus();
    if (route().view !== "overview") refresh();
  });
}
window.addEventListener("hashchange", () => { if (!location.hash.startsWith("#/jobs?") && location.hash !== "#/jobs") jobsOffset = 0; refresh(); });
document.addEventListener("DOMContentLoaded", () => {
  $("#filter-task").addEventListener("change", setFilter);
  $("#filter-state").addEventListener("change", setFilter);
  $("#prev").addEventListener("click", () => { jobsOffset = Math.max(0, jobsOffset - PAGE); refresh(); });
  $("#next").addEventListener("click", () => { jobsOffset += PAGE; refresh(); });
  $("#requeue-all").addEventListener("click", () => act("/api/dead/requeue", { all: true }, r => `requeued ${r.count}`));
  $("#purge-dead").addEventListener("click", () => { if (confirm("Delete every dead letter for good?")) act("/api/dead/purge", {}, r => `purged ${r.count}`); });
  setInterval(() => {
    if (status && route().view === "overview") onStatus();
    // A running job's page asks for its output again (which keeps it followed).
    if (route().view === "job" && $("#job-state").textContent === "running") refresh();
  }, 2000);
  connect();
  refresh();
});
