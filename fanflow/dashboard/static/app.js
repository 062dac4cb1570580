/* fanflow dashboard: runs list, live run view with replay, function statistics.
 *
 * One idea drives the run page: the server sends raw worker events, and
 * fold(events, until) turns them into task states, worker timelines and bytes
 * moved per edge at any instant. A live run folds everything received so far
 * (new batches arrive by server-sent events); a replay folds the events up to
 * the slider's time. Same code, so live and replay cannot disagree.
 */
"use strict";

cytoscape.use(cytoscapeDagre);

const COLORS = { waiting: "#cbd5e1", running: "#f59e0b", done: "#10b981", failed: "#ef4444" };
const PALETTE = ["#4f46e5", "#0891b2", "#ea580c", "#16a34a", "#db2777", "#9333ea", "#ca8a04", "#0d9488",
  "#dc2626", "#2563eb", "#65a30d", "#c026d3"];
const LABEL_MAX_NODES = 250;
const EDGE_LABEL_MAX = 150;
const MAX_FIT_ZOOM = 1.1;
const TOKEN = new URLSearchParams(location.search).get("token");

/* -- small helpers ----------------------------------------------------------------------- */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function withToken(path) {
  if (!TOKEN) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}
async function api(path) {
  const res = await fetch(withToken(path), { headers: { Accept: "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || `${res.status} ${res.statusText}`);
  return body;
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}
function fmtDur(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 0) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}
function fmtWhen(t) {
  const d = new Date(t * 1000);
  return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString();
}
function pill(status) { return el("span", { class: "pill " + status }, status); }
function sizes(v) { return typeof v === "string" ? JSON.parse(v) : (v || []); }

/* -- folding events into state ------------------------------------------------------------ */
function fold(graph, events, until, infer) {
  const tasks = graph.nodes.map(() => ({ state: "waiting", worker: null, start: null, end: null,
    attempts: 1, elements: 0, elementsDone: 0, outBytes: null }));
  const workers = new Map();
  const edges = new Map();
  const open = new Map();
  const worker = (id, t) => {
    if (!workers.has(id)) workers.set(id, { id, start: t, stop: null, cold: false, bars: [], index: workers.size });
    return workers.get(id);
  };
  for (const e of events) {
    if (e.t > until) break;
    const w = worker(e.worker, e.t);
    const s = e.task >= 0 ? tasks[e.task] : null;
    const key = `${e.worker}|${e.task}|${e.element ?? ""}`;
    switch (e.kind) {
      case "worker_started": w.start = e.t; w.cold = e.cold === true || e.cold === "true"; break;
      case "worker_stopped": w.stop = e.t; break;
      case "task_started": {
        const bar = { task: e.task, element: e.element ?? null, start: e.t, end: null, state: "running" };
        w.bars.push(bar);
        open.set(key, bar);
        if (s && (e.element === undefined || e.element === null)) {
          s.state = "running"; s.worker = e.worker; s.start = s.start ?? e.t;
        } else if (s && s.state === "waiting") {
          s.state = "running"; s.start = e.t;
        }
        break;
      }
      case "map_expanded": if (s) s.elements = Number(e.elements); break;
      case "task_retry": if (s) s.attempts = Number(e.attempt) + 1; break;
      case "task_finished": {
        const bar = open.get(key);
        if (bar) { bar.end = e.t; bar.state = "done"; open.delete(key); }
        if (!s || s.state === "failed") break; // a task that failed for good keeps its first ending
        if (e.element !== undefined && e.element !== null) { s.elementsDone++; break; }
        s.state = "done"; s.end = e.t; s.worker = e.worker; s.outBytes = Number(e.out_bytes);
        const ins = sizes(e.in_bytes);
        graph.deps[e.task].forEach((u, k) => {
          const n = ins[k];
          edges.set(`${u}-${e.task}`, n === null || n === undefined
            ? { bytes: tasks[u].outBytes, local: true } : { bytes: Number(n), local: false });
        });
        break;
      }
      case "task_failed": {
        const bar = open.get(key);
        if (bar) { bar.end = e.t; bar.state = "failed"; open.delete(key); }
        if (s) { s.state = "failed"; s.end = e.t; s.worker = e.worker; }
        break;
      }
      default: break;
    }
  }
  if (infer) {
    // A worker flushes a task's start with its end, so a start may not be in the stream yet. In fanflow a task
    // is claimed and started the moment its last input is done, so "all inputs done" means running.
    tasks.forEach((s, i) => {
      if (s.state === "waiting" && graph.deps[i].every((u) => tasks[u].state === "done")) s.state = "running";
    });
  }
  return { tasks, workers: [...workers.values()], edges };
}

function insertSorted(list, batch) {
  for (const e of batch) {
    e.t = Number(e.t);
    e.task = Number(e.task);
    if (!list.length || list[list.length - 1].t <= e.t) { list.push(e); continue; }
    let i = list.length;
    while (i > 0 && list[i - 1].t > e.t) i--;
    list.splice(i, 0, e);
  }
}

/* -- the DAG ----------------------------------------------------------------------------------- */
class DagView {
  constructor(container, graph, critical) {
    const big = graph.nodes.length > LABEL_MAX_NODES;
    const onPath = new Set(critical);
    const pathEdges = new Set(critical.slice(1).map((t, i) => `${critical[i]}-${t}`));
    const elements = [
      ...graph.nodes.map((n) => ({ data: { id: "n" + n.id, label: n.name + (n.map ? " ⋔" : ""), color: COLORS.waiting },
        classes: onPath.has(n.id) ? "critical" : "" })),
      ...graph.edges.map((e) => ({ data: { id: `e${e.source}-${e.target}`, source: "n" + e.source,
        target: "n" + e.target, label: "" }, classes: pathEdges.has(`${e.source}-${e.target}`) ? "critical" : "" })),
    ];
    this.showEdgeLabels = graph.edges.length <= EDGE_LABEL_MAX;
    this.cy = cytoscape({
      container, elements, wheelSensitivity: 0.3, minZoom: 0.05, maxZoom: 3,
      layout: { name: "dagre", rankDir: "LR", nodeSep: big ? 4 : 18, rankSep: big ? 30 : 70, edgeSep: 8 },
      style: [
        { selector: "node", style: {
          shape: "round-rectangle", "background-color": "data(color)", "border-width": 1, "border-color": "#94a3b8",
          label: big ? "" : "data(label)", "font-size": 11, "text-valign": "center", "text-halign": "center",
          color: "#111827", width: big ? 14 : "label", height: big ? 14 : 24, padding: big ? 0 : 8,
          "font-family": "ui-monospace, Menlo, Consolas, monospace" } },
        { selector: "edge", style: {
          width: 1.4, "line-color": "#b6bfcd", "target-arrow-color": "#b6bfcd", "target-arrow-shape": "triangle",
          "arrow-scale": 0.8, "curve-style": "bezier", label: "data(label)", "font-size": 9, color: "#6b7280",
          "text-background-color": "#fcfcfe", "text-background-opacity": 1, "text-background-padding": 1,
          "text-rotation": "autorotate" } },
        { selector: "edge.local", style: { "line-style": "dashed" } },
        { selector: "node.critical.hl", style: { "border-color": "#dc2626", "border-width": 3 } },
        { selector: "edge.critical.hl", style: { "line-color": "#dc2626", "target-arrow-color": "#dc2626", width: 3 } },
      ],
    });
    this.cy.fit(undefined, 24);
    if (this.cy.zoom() > MAX_FIT_ZOOM) {
      this.cy.zoom(MAX_FIT_ZOOM);
      this.cy.center();
    }
    this.colorKey = [];
  }
  highlightCritical(on) { this.cy.elements(".critical").toggleClass("hl", on); }
  update(state, mode, workerIndex) {
    const cy = this.cy;
    cy.batch(() => {
      state.tasks.forEach((t, i) => {
        const color = mode === "worker"
          ? (t.worker ? PALETTE[workerIndex.get(t.worker) % PALETTE.length] : COLORS.waiting)
          : COLORS[t.state];
        const node = cy.getElementById("n" + i);
        if (node.data("color") !== color) node.data("color", color);
        if (node.data("state") !== t.state) node.data("state", t.state);
      });
      if (!this.showEdgeLabels) return;
      cy.edges().forEach((edge) => {
        const moved = state.edges.get(edge.id().slice(1));
        const label = moved ? (moved.local ? "local" : fmtBytes(moved.bytes)) : "";
        if (edge.data("label") !== label) {
          edge.data("label", label);
          edge.toggleClass("local", Boolean(moved && moved.local));
        }
      });
    });
  }
  destroy() { this.cy.destroy(); }
}

/* -- the Gantt timeline ----------------------------------------------------------------------- */
function drawGantt(container, state, graph, t0, tNow, mode) {
  const width = Math.max(container.clientWidth, 600);
  const left = 170;
  const rowH = 22;
  const top = 22;
  const span = Math.max(tNow - t0, 1e-3);
  const x = (t) => left + ((t - t0) / span) * (width - left - 12);
  const functions = [...new Set(graph.nodes.map((n) => n.function))];
  const height = top + rowH * Math.max(state.workers.length, 1) + 6;
  const root = svg("svg", { width, height, role: "img", "aria-label": "tasks per worker over time" });
  const axis = svg("g", { class: "axis" });
  for (let k = 0; k <= 5; k++) {
    const t = t0 + (span * k) / 5;
    axis.append(svg("line", { x1: x(t), x2: x(t), y1: top - 4, y2: height }),
      svg("text", { x: x(t), y: 12, "text-anchor": k === 0 ? "start" : k === 5 ? "end" : "middle" }, fmtDur(t - t0)));
  }
  root.append(axis);
  state.workers.forEach((w, row) => {
    const y = top + row * rowH;
    root.append(svg("rect", { class: "lane", x: left, y, width: width - left - 12, height: rowH - 4 }));
    const stop = w.stop ?? tNow;
    root.append(svg("rect", { class: "life", x: x(w.start), y: y + 2, width: Math.max(x(stop) - x(w.start), 1),
      height: rowH - 8, rx: 3 }));
    const label = w.id.length > 22 ? "…" + w.id.slice(-21) : w.id;
    root.append(svg("text", { x: 4, y: y + 13 }, label + (w.cold ? " ❄" : "")));
    for (const b of w.bars) {
      const end = b.end ?? tNow;
      const node = graph.nodes[b.task];
      const color = mode === "worker"
        ? PALETTE[functions.indexOf(node.function) % PALETTE.length] : COLORS[b.state];
      const rect = svg("rect", { x: x(b.start), y: y + 1, width: Math.max(x(end) - x(b.start), 2), height: rowH - 6,
        rx: 3, fill: color });
      rect.append(svg("title", {}, `${node.name}${b.element !== null ? " [" + b.element + "]" : ""} · ${b.state} · ${fmtDur(end - b.start)}`));
      root.append(rect);
    }
  });
  if (!state.workers.length) root.append(svg("text", { x: left, y: top + 13 }, "no worker has reported yet"));
  container.replaceChildren(root);
  return { x, root, height };
}

/* -- views ------------------------------------------------------------------------------------------ */
let cleanup = () => {};

async function runsView(view) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const dag = el("input", { type: "text", placeholder: "DAG name", value: params.get("dag") || "" });
  const sig = el("input", { type: "text", placeholder: "signature (prefix)", value: params.get("signature") || "" });
  const status = el("select", {},
    ["", "running", "succeeded", "failed", "cancelled", "timeout", "unrecorded"].map((s) =>
      el("option", { value: s, selected: s === (params.get("status") || "") }, s || "any status")));
  const body = el("tbody");
  const apply = () => {
    const q = new URLSearchParams();
    if (dag.value) q.set("dag", dag.value);
    if (sig.value) q.set("signature", sig.value);
    if (status.value) q.set("status", status.value);
    history.replaceState(null, "", "#/" + (q.toString() ? "?" + q : ""));
    load();
  };
  for (const input of [dag, sig]) input.addEventListener("input", apply);
  status.addEventListener("change", apply);
  view.replaceChildren(
    el("h1", {}, "Runs"),
    el("p", { class: "muted" }, "Runs in flight and recorded runs, newest first. Click one for its live view or replay."),
    el("div", { class: "card" },
      el("div", { class: "filters" }, dag, sig, status),
      el("table", { id: "runs" },
        el("thead", {}, el("tr", {}, ["run", "DAG", "status", "submitted", "makespan", "predicted", "cost", "planner",
          "tasks", "workers"].map((h, i) => el("th", { class: i >= 4 && i !== 7 ? "num" : "" }, h)))),
        body)));
  let timer = null;
  async function load() {
    const q = new URLSearchParams();
    if (dag.value) q.set("dag", dag.value);
    if (sig.value) q.set("signature", sig.value);
    if (status.value) q.set("status", status.value);
    let data;
    try { data = await api("api/runs?" + q); } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "empty" }, String(err.message))));
      return;
    }
    body.replaceChildren(...(data.runs.length ? data.runs.map((r) => el("tr", {
      class: "link", "data-run": r.run_id, onclick: () => { location.hash = "#/run/" + encodeURIComponent(r.run_id); } },
    el("td", { class: "mono" }, r.run_id.length > 44 ? r.run_id.slice(0, 44) + "…" : r.run_id),
    el("td", {}, r.sink, el("div", { class: "muted mono" }, r.signature.slice(0, 12))),
    el("td", {}, pill(r.status)),
    el("td", { class: "num" }, fmtWhen(r.submitted_at)),
    el("td", { class: "num" }, fmtDur(r.makespan_s)),
    el("td", { class: "num" }, fmtDur(r.predicted_makespan_s)),
    el("td", { class: "num" }, r.cost === null || r.cost === undefined ? "–" : "$" + Number(r.cost).toFixed(6)),
    el("td", {}, r.planner || "–"),
    el("td", { class: "num" }, r.tasks_finished === null ? r.tasks : `${r.tasks_finished}/${r.tasks}`),
    el("td", { class: "num" }, r.workers ?? "–"))) : [el("tr", {}, el("td", { colspan: 10, class: "empty" },
      "No runs match. Run a workflow (fanflow run script.py, or compute(..., dashboard=True)) and it appears here."))]));
    clearTimeout(timer);
    timer = setTimeout(load, data.runs.some((r) => r.live) ? 1500 : 5000);
  }
  cleanup = () => clearTimeout(timer);
  await load();
}

function statCard(k, v, title) { return el("div", { class: "stat", title: title || null }, el("div", { class: "k" }, k), el("div", { class: "v" }, v)); }

async function runView(view, runId) {
  view.replaceChildren(el("p", { class: "muted" }, "Loading run…"));
  let detail;
  for (let attempt = 0; ; attempt++) {
    try { detail = await api("api/runs/" + encodeURIComponent(runId)); break; } catch (err) {
      if (attempt >= 10) {
        view.replaceChildren(el("div", { class: "card" }, el("h1", {}, "Run not found"), el("p", { class: "muted" }, err.message),
          el("a", { href: "#/" }, "← all runs")));
        return;
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  const page = new RunPage(view, runId, detail);
  cleanup = () => page.destroy();
}

class RunPage {
  constructor(view, runId, detail) {
    this.view = view;
    this.runId = runId;
    this.events = [];
    this.mode = "state";
    this.playing = false;
    this.cursor = null;
    this.source = null;
    this.timers = [];
    this.setup(detail);
  }

  setup(detail) {
    window.fanflowDashboard.page = this;
    this.detail = detail;
    this.graph = detail.graph;
    this.graph.deps = this.graph.nodes.map(() => []);
    for (const e of this.graph.edges) this.graph.deps[e.target][e.index] = e.source;
    this.clockOffset = detail.now - Date.now() / 1000;
    this.live = detail.live;
    this.render();
    if (this.live) this.follow(); else this.loadRecorded();
  }

  now() { return Date.now() / 1000 + this.clockOffset; }
  t0() { return this.detail.run.submitted_at; }
  tEnd() {
    const last = this.events.length ? this.events[this.events.length - 1].t : this.t0();
    return this.live ? Math.max(last, this.now()) : Math.max(last, this.detail.run.finished_at || last);
  }

  render() {
    const r = this.detail.run;
    const d = this.detail;
    this.progressBar = el("div", { class: "progress" });
    this.progressText = el("div", { class: "progress-text", id: "progress-text" });
    this.dagBox = el("div", { id: "dag" });
    this.ganttBox = el("div", { class: "gantt", id: "gantt" });
    this.statusPill = el("span", { id: "run-status" }, pill(r.status));
    const modeSeg = el("div", { class: "seg", id: "color-mode" },
      el("button", { class: "on", "data-mode": "state", onclick: (ev) => this.setMode("state", ev.target) }, "by state"),
      el("button", { "data-mode": "worker", onclick: (ev) => this.setMode("worker", ev.target) }, "by worker"));
    const critical = d.critical_path.length ? el("label", {}, el("input", { type: "checkbox", id: "show-critical", checked: true,
      onchange: (ev) => this.dag.highlightCritical(ev.target.checked) }), " critical path") : null;
    this.replayBox = el("div", { class: "card", id: "replay", hidden: this.live });
    this.errorsBox = el("div", { id: "errors" });
    const predicted = r.predicted_makespan_s;
    const diff = predicted && r.makespan_s ? ` (${r.makespan_s >= predicted ? "+" : ""}${(((r.makespan_s - predicted) / predicted) * 100).toFixed(0)}%)` : "";
    this.workersStat = el("div", { class: "v" }, r.workers === null ? "–" : `${r.workers}${r.cold_starts ? ` (${r.cold_starts} cold)` : ""}`);
    this.view.replaceChildren(...[
      el("div", { class: "row" }, el("a", { href: "#/" }, "← runs")),
      el("div", { class: "card" },
        el("div", { class: "row" },
          el("div", { class: "grow" }, el("h1", {}, r.sink, " ", this.statusPill),
            el("div", { class: "muted mono" }, r.run_id)),
          el("div", { class: "muted" }, r.platform || "", " · planner ", r.planner || "–")),
        d.notice ? el("div", { class: "notice" }, d.notice) : null,
        el("div", { class: "stats" },
          statCard("makespan", fmtDur(r.makespan_s)),
          statCard("predicted", fmtDur(predicted) + diff, "planner prediction vs actual makespan"),
          statCard("cost", r.cost === null || r.cost === undefined ? "–" : "$" + Number(r.cost).toFixed(6)),
          statCard("tasks", r.tasks_finished === null ? String(r.tasks) : `${r.tasks_finished} / ${r.tasks}`),
          el("div", { class: "stat" }, el("div", { class: "k" }, "workers"), this.workersStat),
          statCard("bytes fetched", fmtBytes(r.bytes_fetched)),
          statCard("submitted", fmtWhen(r.submitted_at)))),
      el("div", { class: "card" }, el("h2", {}, "Progress"), this.progressBar, this.progressText),
      this.replayBox,
      el("div", { class: "card" },
        el("div", { class: "row", style: "margin-bottom:10px" }, el("h2", { class: "grow", style: "margin:0" }, "DAG"),
          critical, modeSeg),
        this.dagBox,
        el("div", { class: "legend", style: "margin-top:8px" },
          Object.entries(COLORS).map(([k, c]) => el("span", {}, el("i", { style: `background:${c}` }), k)),
          el("span", {}, "edge labels: bytes fetched (dashed: taken from the worker's cache)"))),
      el("div", { class: "card" }, el("h2", {}, "Timeline per worker"), this.ganttBox),
      this.errorsBox,
      d.critical_path.length ? this.criticalCard() : null].filter(Boolean));
    this.dag = new DagView(this.dagBox, this.graph, d.critical_path);
    if (d.critical_path.length) this.dag.highlightCritical(true);
    this.renderErrors();
  }

  criticalCard() {
    const names = this.detail.critical_path.map((i) => this.graph.nodes[i].name);
    const byId = new Map(this.detail.tasks.map((t) => [t.task, t]));
    const rows = this.detail.critical_path.map((i) => byId.get(i)).filter(Boolean);
    return el("div", { class: "card", id: "critical" }, el("h2", {}, "Critical path"),
      el("div", { class: "crit-list" }, names.map((n, k) => [k ? "→" : null, el("span", { class: "t" }, n)])),
      el("table", { style: "margin-top:10px" }, el("thead", {}, el("tr", {}, ["task", "worker", "memory", "duration", "exec",
        "in", "out"].map((h, k) => el("th", { class: k >= 2 ? "num" : "" }, h)))),
      el("tbody", {}, rows.map((t) => el("tr", {}, el("td", { class: "mono" }, t.name), el("td", { class: "mono" }, t.worker),
        el("td", { class: "num" }, t.memory_mb + " MB"), el("td", { class: "num" }, fmtDur(t.duration_s)),
        el("td", { class: "num" }, fmtDur(t.exec_s)), el("td", { class: "num" }, fmtBytes(t.in_bytes)),
        el("td", { class: "num" }, fmtBytes(t.out_bytes)))))));
  }

  renderErrors() {
    const errors = this.detail.errors || [];
    if (!errors.length) { this.errorsBox.replaceChildren(); return; }
    this.errorsBox.replaceChildren(el("div", { class: "card" }, el("h2", {}, `Errors (${errors.length})`),
      errors.map((e, k) => el("details", { class: "error", open: k === 0 },
        el("summary", {}, e.task ? `${e.task}: ` : "", (e.exc_type || "").split(".").pop(), e.exc_type ? ": " : "", e.message || "",
          e.attempt ? el("span", { class: "muted" }, ` · attempt ${e.attempt}`) : null,
          e.worker ? el("span", { class: "muted" }, ` · ${e.worker}`) : null),
        el("pre", {}, e.traceback || "(no traceback recorded)")))));
  }

  setMode(mode, button) {
    this.mode = mode;
    for (const b of button.parentNode.children) b.classList.toggle("on", b === button);
    this.draw();
  }

  draw() {
    const until = this.cursor ?? Infinity;
    const ended = this.detail.run.finished_at;
    const state = fold(this.graph, this.events, until, this.live || (this.cursor !== null && this.cursor < ended));
    this.state = state;
    const workerIndex = new Map(state.workers.map((w) => [w.id, w.index]));
    this.dag.update(state, this.mode, workerIndex);
    const n = state.tasks.length;
    const count = (s) => state.tasks.filter((t) => t.state === s).length;
    const done = count("done");
    const running = count("running");
    const failed = count("failed");
    this.progressBar.replaceChildren(
      el("div", { class: "p-done", style: `width:${(100 * done) / n}%` }),
      el("div", { class: "p-running", style: `width:${(100 * running) / n}%` }),
      el("div", { class: "p-failed", style: `width:${(100 * failed) / n}%` }));
    const tNow = this.cursor ?? this.tEnd();
    if (this.live) this.workersStat.textContent = String(state.workers.length);
    this.progressText.textContent = `${done} / ${n} tasks done · ${running} running · ${failed} failed · `
      + `${state.workers.length} workers · ${fmtDur(Math.max(0, tNow - this.t0()))}`;
    const g = drawGantt(this.ganttBox, state, this.graph, this.t0(), this.live ? tNow : this.tEnd(), this.mode);
    if (this.cursor !== null) {
      g.root.append(svg("line", { class: "cursor", x1: g.x(this.cursor), x2: g.x(this.cursor), y1: 16, y2: g.height }));
    }
  }

  /* live: server-sent events until the run ends */
  follow() {
    this.draw();
    const url = withToken(`api/runs/${encodeURIComponent(this.runId)}/stream`);
    const source = new EventSource(url);
    this.source = source;
    const conn = document.getElementById("conn");
    source.onopen = () => { conn.textContent = "● live"; };
    source.onerror = () => { conn.textContent = "reconnecting…"; };
    let pending = false;
    source.addEventListener("events", (msg) => {
      const data = JSON.parse(msg.data);
      insertSorted(this.events, data.events);
      this.clockOffset = data.now - Date.now() / 1000;
      if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; this.draw(); }); }
    });
    source.addEventListener("end", async () => {
      source.close();
      this.source = null;
      conn.textContent = "";
      try {
        const detail = await api("api/runs/" + encodeURIComponent(this.runId));
        this.dag.destroy();
        this.setup(detail);
      } catch (err) {
        conn.textContent = String(err.message);
      }
    });
    this.timers.push(setInterval(() => { if (this.live) this.draw(); }, 250));
  }

  /* recorded: all events at once, then the replay controls */
  async loadRecorded() {
    const data = await api(`api/runs/${encodeURIComponent(this.runId)}/events`);
    this.events = [];
    insertSorted(this.events, data.events);
    this.buildReplay();
    this.draw();
  }

  buildReplay() {
    const t0 = this.t0();
    const t1 = this.tEnd();
    const steps = 1000;
    const slider = el("input", { type: "range", min: 0, max: steps, value: steps, id: "replay-slider",
      "aria-label": "replay time" });
    const clock = el("span", { class: "clock", id: "replay-clock" });
    const play = el("button", { class: "primary", id: "replay-play" }, "▶ Play");
    const speed = el("select", { id: "replay-speed", "aria-label": "replay speed" },
      [["auto", "fit 10 s"], ["0.25", "0.25×"], ["1", "1×"], ["4", "4×"], ["16", "16×"]].map(([v, t]) => el("option", { value: v }, t)));
    const setCursor = (t) => {
      this.cursor = Math.min(Math.max(t, t0), t1);
      slider.value = String(Math.round(((this.cursor - t0) / Math.max(t1 - t0, 1e-9)) * steps));
      clock.textContent = `${fmtDur(this.cursor - t0)} / ${fmtDur(t1 - t0)}`;
      this.draw();
    };
    slider.addEventListener("input", () => { this.stop(play); setCursor(t0 + (Number(slider.value) / steps) * (t1 - t0)); });
    play.addEventListener("click", () => {
      if (this.playing) { this.stop(play); return; }
      if (this.cursor === null || this.cursor >= t1) setCursor(t0);
      this.playing = true;
      play.textContent = "❚❚ Pause";
      let last = performance.now();
      const tick = (now) => {
        if (!this.playing) return;
        const rate = speed.value === "auto" ? (t1 - t0) / 10 : Number(speed.value);
        setCursor(this.cursor + ((now - last) / 1000) * rate);
        last = now;
        if (this.cursor >= t1) { this.stop(play); return; }
        this.frame = requestAnimationFrame(tick);
      };
      this.frame = requestAnimationFrame(tick);
    });
    this.replayBox.hidden = false;
    this.replayBox.replaceChildren(el("h2", {}, "Replay"), el("div", { class: "replay" }, play, slider, clock, speed));
    this.cursor = null;
    clock.textContent = `${fmtDur(t1 - t0)} / ${fmtDur(t1 - t0)}`;
  }

  stop(play) {
    this.playing = false;
    cancelAnimationFrame(this.frame);
    play.textContent = "▶ Play";
  }

  destroy() {
    this.playing = false;
    cancelAnimationFrame(this.frame);
    if (this.source) this.source.close();
    for (const t of this.timers) clearInterval(t);
    this.dag.destroy();
    if (window.fanflowDashboard.page === this) window.fanflowDashboard.page = null;
    document.getElementById("conn").textContent = "";
  }
}

async function functionsView(view) {
  view.replaceChildren(el("p", { class: "muted" }, "Loading functions…"));
  const data = await api("api/functions");
  const cards = data.functions.map((f) => el("div", { class: "card fn" },
    el("h2", {}, f.name, " ", el("span", { class: "muted mono", style: "font-weight:400" }, f.identity)),
    el("table", {}, el("thead", {}, el("tr", {}, ["memory", "runs", "mean", "stdev", "min", "max", "mean out"].map((h) =>
      el("th", { class: "num" }, h)))),
    el("tbody", {}, f.sizes.map((s) => el("tr", {}, el("td", { class: "num" }, s.memory_mb + " MB"),
      el("td", { class: "num" }, s.count), el("td", { class: "num" }, fmtDur(s.mean_s)), el("td", { class: "num" }, fmtDur(s.stdev_s)),
      el("td", { class: "num" }, fmtDur(s.min_s)), el("td", { class: "num" }, fmtDur(s.max_s)),
      el("td", { class: "num" }, fmtBytes(s.mean_out_bytes)))))),
    el("div", { class: "plots" }, ["input", "memory"].map((kind) => el("img", { loading: "lazy",
      alt: `${f.name}: time vs ${kind}`,
      src: withToken(`api/functions/plot.png?identity=${encodeURIComponent(f.identity)}&kind=${kind}`) })))));
  view.replaceChildren(el("h1", {}, "Functions"),
    el("p", { class: "muted" }, "Every task function across the recorded runs: execution time by memory size, "
      + "time against input size and against memory."),
    cards.length ? el("div", { class: "fn-grid" }, cards) : el("div", { class: "card empty" }, "No recorded executions yet."));
}

/* -- routing --------------------------------------------------------------------------------------- */
async function route() {
  cleanup();
  cleanup = () => {};
  const view = document.getElementById("view");
  const hash = location.hash.replace(/^#/, "") || "/";
  const section = hash.startsWith("/functions") ? "functions" : "runs";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === section);
  try {
    const match = hash.match(/^\/run\/([^?]+)/);
    if (match) await runView(view, decodeURIComponent(match[1]));
    else if (section === "functions") await functionsView(view);
    else await runsView(view);
  } catch (err) {
    view.replaceChildren(el("div", { class: "card" }, el("h1", {}, "Something went wrong"), el("p", { class: "muted" }, String(err.message))));
  }
}

/* A small read-only hook for tests and scripting: what the page shows right now. */
window.fanflowDashboard = {
  page: null,
  nodeStates() {
    const page = this.page;
    if (!page || !page.state) return {};
    return Object.fromEntries(page.state.tasks.map((t, i) => [page.graph.nodes[i].name, t.state]));
  },
  isLive() { return Boolean(this.page && this.page.live); },
};

window.addEventListener("hashchange", route);
route();
