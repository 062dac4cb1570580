/* fanflow dashboard: the timeline, one lane per worker process, drawn on a canvas.
 *
 * A worker id names one invocation; its process is the id without the counter.
 * Invocations of one process are segments of its lane; when a process runs
 * several at once (the threads platform), it gets as many sub-lanes as it ran
 * at the same time. Task bars are coloured by function (legend below), failed
 * ones red. Before the first worker starts, the run is starting workers: that
 * stretch is hatched and labelled. A canvas keeps thousands of bars cheap to
 * redraw at every replay frame; hit-testing gives the hover and click details.
 */
"use strict";

const LEFT = 180;
const TOP = 24;

function functionColor(graph, name) { return PALETTE[graph.functions.indexOf(name) % PALETTE.length]; }

/* Lanes: [{label, process, bars, invocations}], processes in order of their first start.
 * A process gets one sub-lane per invocation it ran at the same time, up to its share of MAX_ROWS; past
 * that (thousands of threads in one process) invocations share the sub-lane that frees first.
 */
const MAX_ROWS = 64;
function lanesOf(state, tNow) {
  const byProcess = new Map();
  for (const w of state.workers) {
    if (!byProcess.has(w.process)) byProcess.set(w.process, []);
    byProcess.get(w.process).push(w);
  }
  const cap = Math.max(2, Math.floor(MAX_ROWS / Math.max(byProcess.size, 1)));
  const lanes = [];
  for (const [process, workers] of byProcess) {
    workers.sort((a, b) => a.start - b.start);
    const sub = [];
    let shared = false;
    for (const w of workers) {
      const from = w.start - w.latency;
      let lane = null;
      let soonest = null;
      for (const l of sub) {
        if (l.end <= from) { lane = l; break; }
        if (!soonest || l.end < soonest.end) soonest = l;
      }
      if (!lane && sub.length < cap) {
        lane = { process, label: processLabel(process), invocations: [], bars: [], end: -Infinity };
        sub.push(lane);
      }
      if (!lane) { lane = soonest; shared = true; }
      lane.invocations.push(w);
      for (const b of w.bars) lane.bars.push(b);
      lane.end = Math.max(lane.end, w.stop ?? tNow);
    }
    if (sub.length > 1) sub.forEach((l, k) => { l.label += ` #${k + 1}`; });
    if (shared) sub[0].label += " (overlapping)";
    lanes.push(...sub);
  }
  return lanes;
}

let hatchPattern = null;
function hatchFill(ctx) {
  if (!hatchPattern) {
    const tile = document.createElement("canvas");
    tile.width = 6; tile.height = 6;
    const t = tile.getContext("2d");
    t.fillStyle = "#f1f5f9"; t.fillRect(0, 0, 6, 6);
    t.strokeStyle = "#cbd5e1"; t.beginPath(); t.moveTo(0, 6); t.lineTo(6, 0); t.stroke();
    hatchPattern = ctx.createPattern(tile, "repeat");
  }
  return hatchPattern;
}

class Timeline {
  constructor(container, graph, handlers) {
    this.graph = graph;
    this.handlers = handlers;
    this.canvas = el("canvas", { "aria-label": "task bars per worker process over time", role: "img" });
    this.legend = el("div", { class: "legend" });
    container.replaceChildren(this.canvas, this.legend);
    this.container = container;
    this.hits = [];
    this.canvas.addEventListener("mousemove", (ev) => {
      const bar = this.hit(ev);
      this.canvas.style.cursor = bar ? "pointer" : "default";
      this.handlers.hover(bar ? bar.task : null, ev, bar);
    });
    this.canvas.addEventListener("mouseleave", () => this.handlers.hover(null));
    this.canvas.addEventListener("click", (ev) => { const bar = this.hit(ev); if (bar) this.handlers.select(bar.task); });
    this.drawLegend();
  }

  drawLegend() {
    const fns = this.graph.functions;
    this.legend.replaceChildren(...[
      el("b", {}, "bars: "),
      fns.slice(0, 24).map((f) => el("span", {}, el("i", { style: `background:${functionColor(this.graph, f)}` }), f)),
      fns.length > 24 ? el("span", {}, `(+${fns.length - 24} more functions, colours repeat)`) : null,
      el("span", {}, el("i", { style: `background:${STATES.failed.color};outline:1px solid #7f1d1d` }), "failed"),
      el("span", {}, el("i", { class: "open" }), "still running at this instant"),
      el("span", {}, el("i", { style: "background:#e2e5ee" }), "worker invocation alive"),
      el("span", {}, el("i", { class: "hatch" }), "starting workers / waiting for a worker"),
      el("span", {}, el("i", { style: "background:#38bdf8" }), "cold start")].flat().filter(Boolean));
  }

  hit(ev) {
    const r = this.canvas.getBoundingClientRect();
    const x = ev.clientX - r.left;
    const y = ev.clientY - r.top;
    const row = Math.floor((y - TOP) / this.rowH);
    const lane = this.hits[row];
    if (!lane) return null;
    let best = null;
    for (const h of lane) if (x >= h.x0 - 2 && x <= h.x1 + 2 && (!best || h.x1 - h.x0 < best.x1 - best.x0)) best = h;
    return best;
  }

  draw(state, t0, t1, tNow, cursor) {
    const graph = this.graph;
    const lanes = lanesOf(state, tNow);
    const width = Math.max(this.container.clientWidth, 600);
    const rowH = lanes.length <= 30 ? 20 : Math.max(10, Math.floor(720 / lanes.length));
    this.rowH = rowH;
    const height = TOP + rowH * Math.max(lanes.length, 1) + 8;
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== width * dpr || this.canvas.height !== height * dpr) {
      this.canvas.width = width * dpr;
      this.canvas.height = height * dpr;
      this.canvas.style.width = width + "px";
      this.canvas.style.height = height + "px";
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const span = Math.max(t1 - t0, 1e-3);
    const plotW = width - LEFT - 12;
    const x = (t) => LEFT + ((t - t0) / span) * plotW;
    this.x = x;
    ctx.font = "11px ui-monospace, Menlo, Consolas, monospace";
    // round ticks: 0, 0.5 s, 1 s ... (a 1-2-5 step)
    const step = niceStep(span, plotW / 110);
    ctx.fillStyle = "#6b7280";
    ctx.strokeStyle = "#e5e7eb";
    ctx.textAlign = "center";
    for (let k = 0; k * step <= span + 1e-9; k++) {
      const xx = x(t0 + k * step);
      ctx.beginPath(); ctx.moveTo(xx, TOP - 4); ctx.lineTo(xx, height); ctx.stroke();
      ctx.fillText(fmtTick(k * step, step), Math.min(Math.max(xx, LEFT + 12), width - 24), 13);
    }
    lanes.forEach((_, row) => {
      ctx.fillStyle = row % 2 ? "#fafbfc" : "#f4f6f9";
      ctx.fillRect(LEFT, TOP + row * rowH, plotW, rowH - 1);
    });
    // starting workers: from submission to the first worker's start
    let first = Math.min(tNow, t1);
    for (const w of state.workers) first = Math.min(first, w.start - w.latency);
    if (first > t0) this.hatch(ctx, x(t0), TOP - 2, x(first) - x(t0), height - TOP, "starting workers");
    this.hits = [];
    ctx.textAlign = "left";
    lanes.forEach((lane, row) => {
      const y = TOP + row * rowH;
      const hits = [];
      for (const w of lane.invocations) {
        const stop = w.stop ?? tNow;
        if (x(w.start) - x(w.start - w.latency) >= 2) this.hatch(ctx, x(w.start - w.latency), y + 2, x(w.start) - x(w.start - w.latency), rowH - 5, "");
        ctx.fillStyle = "#e2e5ee";
        ctx.fillRect(x(w.start), y + 2, Math.max(x(stop) - x(w.start), 1), rowH - 5);
        if (w.cold) { ctx.fillStyle = "#38bdf8"; ctx.fillRect(x(w.start), y + 2, 3, rowH - 5); }
      }
      for (const b of lane.bars) {
        const end = b.end ?? tNow;
        const x0 = x(b.start);
        const x1 = Math.max(x(end), x0 + 1.5);
        const failed = b.state === "failed";
        ctx.fillStyle = failed ? STATES.failed.color : functionColor(graph, graph.nodes[b.task].function);
        ctx.fillRect(x0, y + 3, x1 - x0, rowH - 7);
        if (failed) { ctx.strokeStyle = "#7f1d1d"; ctx.strokeRect(x0, y + 3, x1 - x0, rowH - 7); }
        if (b.end === null) { ctx.fillStyle = "#111827"; ctx.fillRect(x1 - 2, y + 3, 2, rowH - 7); }
        hits.push({ x0, x1, task: b.task, bar: b });
      }
      this.hits.push(hits);
      if (rowH >= 10) {
        ctx.fillStyle = "#4b5563";
        const label = lane.label.length > 26 ? "…" + lane.label.slice(-25) : lane.label;
        ctx.fillText(label, 4, y + rowH / 2 + 4);
      }
    });
    if (!lanes.length) {
      ctx.fillStyle = "#6b7280";
      ctx.fillText("no worker has reported yet", LEFT + 8, TOP + 14);
    }
    if (cursor !== null && cursor !== undefined) {
      ctx.strokeStyle = "#4f46e5"; ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(x(cursor), TOP - 6); ctx.lineTo(x(cursor), height); ctx.stroke();
      ctx.lineWidth = 1;
    }
    this.lanes = lanes;
  }

  hatch(ctx, x0, y, w, h, label) {
    if (w <= 0.5) return;
    ctx.fillStyle = hatchFill(ctx);
    ctx.fillRect(x0, y, w, h);
    if (label && w > 110) {
      ctx.fillStyle = "#475569"; ctx.textAlign = "center";
      ctx.fillText(label, x0 + w / 2, y + Math.min(h / 2 + 4, 40)); ctx.textAlign = "left";
    }
  }
}
