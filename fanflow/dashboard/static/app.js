/* fanflow dashboard: routing, the runs list, run comparison and the functions page.
 * The run page is in run.js (its parts in fold.js, dag.js, timeline.js); helpers in util.js.
 */
"use strict";

let cleanup = () => {};

/* -- runs ------------------------------------------------------------------------------------ */
async function runsView(view) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const dag = el("input", { type: "text", placeholder: "workflow or DAG name", value: params.get("dag") || "" });
  const sig = el("input", { type: "text", placeholder: "signature (prefix)", value: params.get("signature") || "" });
  const status = el("select", {},
    ["", "running", "succeeded", "failed", "cancelled", "timeout", "unrecorded"].map((s) =>
      el("option", { value: s, selected: s === (params.get("status") || "") }, s || "any status")));
  const compare = el("button", { id: "compare", disabled: true }, "compare 2 runs");
  const picked = [];
  const body = el("tbody");
  const query = () => {
    const q = new URLSearchParams();
    if (dag.value) q.set("dag", dag.value);
    if (sig.value) q.set("signature", sig.value);
    if (status.value) q.set("status", status.value);
    return q;
  };
  const apply = () => {
    const q = query();
    history.replaceState(null, "", "#/" + (q.toString() ? "?" + q : ""));
    load();
  };
  for (const input of [dag, sig]) input.addEventListener("input", apply);
  status.addEventListener("change", apply);
  compare.addEventListener("click", () => { location.hash = `#/compare/${encodeURIComponent(picked[0])}/${encodeURIComponent(picked[1])}`; });
  const heads = ["", "run", "workflow", "status", "platform", "submitted", "duration", "predicted", "cost", "planner",
    "tasks", "workers"];
  const numeric = new Set(["duration", "predicted", "cost", "tasks", "workers"]);
  view.replaceChildren(
    el("h1", {}, "Runs"),
    el("p", { class: "muted" }, "Runs in flight and recorded runs, newest first. Click one for its live view or replay; "
      + "tick two runs of the same DAG to compare them."),
    el("div", { class: "card" },
      el("div", { class: "filters" }, dag, sig, status, compare),
      el("table", { id: "runs" },
        el("thead", {}, el("tr", {}, heads.map((h) => el("th", { class: numeric.has(h) ? "num" : "" }, h)))),
        body)));
  let timer = null;
  let rows = [];
  const pickedChanged = () => {
    const sigs = new Set(picked.map((id) => (rows.find((r) => r.run_id === id) || {}).signature));
    compare.disabled = picked.length !== 2 || sigs.size !== 1;
    compare.title = picked.length === 2 && sigs.size !== 1 ? "these runs are of different DAGs" : "";
  };
  async function load() {
    let data;
    try { data = await api("api/runs?" + query()); } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: heads.length, class: "empty" }, String(err.message))));
      return;
    }
    rows = data.runs;
    body.replaceChildren(...(rows.length ? rows.map((r) => {
      const open = () => { location.hash = "#/run/" + encodeURIComponent(r.run_id); };
      const box = el("input", { type: "checkbox", "aria-label": "pick for comparison", checked: picked.includes(r.run_id),
        onclick: (ev) => ev.stopPropagation(),
        onchange: (ev) => {
          if (ev.target.checked) picked.push(r.run_id); else picked.splice(picked.indexOf(r.run_id), 1);
          while (picked.length > 2) picked.shift();
          for (const b of body.querySelectorAll("input[type=checkbox]")) b.checked = picked.includes(b.closest("tr").dataset.run);
          pickedChanged();
        } });
      return el("tr", { class: "link", "data-run": r.run_id, onclick: open },
        el("td", {}, box),
        el("td", { class: "mono", title: r.run_id }, r.run_id.length > 28 ? r.run_id.slice(0, 28) + "…" : r.run_id),
        el("td", {}, r.workflow || r.sink, el("div", { class: "muted mono" }, `sink ${r.sink} · ${r.signature.slice(0, 10)}`)),
        el("td", {}, pill(r.status), r.error ? el("div", { class: "err-snippet", title: r.error }, r.error.split("\n")[0].slice(0, 90)) : null),
        el("td", {}, r.platform || "–"),
        el("td", { class: "mono" }, fmtWhen(r.submitted_at)),
        el("td", { class: "num" }, fmtDur(r.makespan_s)),
        el("td", { class: "num" }, fmtDur(r.predicted_makespan_s)),
        el("td", { class: "num" }, fmtCost(r.cost)),
        el("td", {}, r.planner || "–"),
        el("td", { class: "num" }, r.tasks_finished === null ? r.tasks : `${r.tasks_finished}/${r.tasks}`),
        el("td", { class: "num" }, r.workers ?? "–"));
    }) : [el("tr", {}, el("td", { colspan: heads.length, class: "empty" },
      "No runs match. Run a workflow (fanflow run script.py, or compute(..., dashboard=True)) and it appears here."))]));
    pickedChanged();
    clearTimeout(timer);
    timer = setTimeout(load, rows.some((r) => r.live) ? 1500 : 5000);
  }
  cleanup = () => clearTimeout(timer);
  await load();
}

/* -- comparing two runs of one DAG ---------------------------------------------------------- */
async function compareView(view, a, b) {
  view.replaceChildren(el("p", { class: "muted" }, "Loading runs…"));
  const [ra, rb] = await Promise.all([api("api/runs/" + encodeURIComponent(a)), api("api/runs/" + encodeURIComponent(b))]);
  const delta = (x, y) => {
    if (!x || !y) return "–";
    const pct = Math.round(((y - x) / x) * 100) || 0; // no "-0%"
    return `${pct >= 0 ? "+" : ""}${pct}%`;
  };
  const line = (name, f, fmt) => el("tr", {}, el("td", {}, name), el("td", { class: "num" }, fmt(f(ra.run))),
    el("td", { class: "num" }, fmt(f(rb.run))), el("td", { class: "num" }, delta(f(ra.run), f(rb.run))));
  const fa = new Map(Object.entries(ra.functions));
  const fb = new Map(Object.entries(rb.functions));
  const fns = [...new Set([...fa.keys(), ...fb.keys()])];
  const head = (...h) => el("thead", {}, el("tr", {}, h.map((x, k) => el("th", { class: k ? "num" : "" }, x))));
  view.replaceChildren(...[
    el("div", { class: "row" }, el("a", { href: "#/" }, "← runs")),
    el("h1", {}, "Comparing two runs of ", ra.run.workflow || ra.run.sink),
    ra.run.signature !== rb.run.signature ? el("div", { class: "notice" }, "These runs are of different DAGs.") : null,
    el("div", { class: "card", id: "comparison" },
      el("table", {}, head("", "A", "B", "B vs A"),
        el("tbody", {},
          el("tr", {}, el("td", {}, "run"), [ra, rb].map((r) => el("td", { class: "num mono" },
            el("a", { href: "#/run/" + encodeURIComponent(r.run.run_id) }, r.run.run_id.slice(0, 24)))), el("td")),
          el("tr", {}, el("td", {}, "status"), [ra, rb].map((r) => el("td", { class: "num" }, pill(r.run.status))), el("td")),
          el("tr", {}, el("td", {}, "platform / planner"), [ra, rb].map((r) => el("td", { class: "num" },
            `${r.run.platform || "–"} / ${r.run.planner || "–"}`)), el("td")),
          line("makespan", (r) => r.makespan_s, fmtDur),
          line("cost", (r) => r.cost, fmtCost),
          line("workers", (r) => r.workers, (v) => v ?? "–"),
          line("bytes fetched", (r) => r.bytes_fetched, fmtBytes)))),
    el("div", { class: "card" }, el("h2", {}, "Per function (total execution time)"),
      el("table", { id: "compare-functions" }, head("function", "tasks", "exec A", "exec B", "B vs A", "fetched A", "fetched B"),
        el("tbody", {}, fns.map((f) => {
          const x = fa.get(f) || {};
          const y = fb.get(f) || {};
          return el("tr", {}, el("td", { class: "mono" }, f), el("td", { class: "num" }, x.tasks ?? y.tasks),
            el("td", { class: "num" }, fmtDur(x.exec_s)), el("td", { class: "num" }, fmtDur(y.exec_s)),
            el("td", { class: "num" }, delta(x.exec_s, y.exec_s)),
            el("td", { class: "num" }, fmtBytes(x.in_bytes)), el("td", { class: "num" }, fmtBytes(y.in_bytes)));
        }))))].filter(Boolean));
}

/* -- functions ------------------------------------------------------------------------------- */
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/* A scatter plot of execution time (y) against `xKey`, one colour per memory size; drawn in the browser. */
function scatter(points, xKey, xLabel, fmtX) {
  const W = 420;
  const H = 230;
  const L = 64;
  const B = 40;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": `time vs ${xLabel}` });
  if (!points.length) { root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no executions kept")); return root; }
  const xs = points.map((p) => p[xKey]);
  const ys = points.map((p) => p.exec_s);
  // a little room past the largest value, and a unit range when every value is 0 (no inputs)
  const xMax = Math.max(...xs) > 0 ? Math.max(...xs) * 1.08 : 1;
  const yMax = Math.max(...ys) > 0 ? Math.max(...ys) * 1.08 : 1e-3;
  const x = (v) => L + (v / xMax) * (W - L - 12);
  const y = (v) => H - B - (v / yMax) * (H - B - 12);
  const xStep = niceStep(xMax, 4);
  const yStep = niceStep(yMax, 4);
  for (let v = 0; v <= xMax * 1.0001; v += xStep) {
    root.append(svg("line", { x1: x(v), x2: x(v), y1: 12, y2: H - B, class: "grid" }),
      svg("text", { x: x(v), y: H - B + 15, "text-anchor": "middle" }, fmtX(v)));
  }
  for (let v = 0; v <= yMax * 1.0001; v += yStep) {
    root.append(svg("line", { x1: L, x2: W - 12, y1: y(v), y2: y(v), class: "grid" }),
      svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtDur(v)));
  }
  const sizes = [...new Set(points.map((p) => p.memory_mb))].sort((p, q) => p - q);
  for (const p of points) {
    root.append(svg("circle", { cx: x(p[xKey]), cy: y(p.exec_s), r: 3.5, fill: PALETTE[sizes.indexOf(p.memory_mb) % PALETTE.length],
      "fill-opacity": 0.7 }, svg("title", {}, `${fmtDur(p.exec_s)} · ${fmtX(p[xKey])} · ${p.memory_mb} MB`)));
  }
  root.append(svg("text", { x: (L + W) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" }, xLabel),
    svg("text", { x: 12, y: (H - B) / 2, transform: `rotate(-90 12 ${(H - B) / 2})`, "text-anchor": "middle", class: "axis-label" }, "execution time"));
  return root;
}

async function showPlots(box, f) {
  box.replaceChildren(el("p", { class: "muted" }, "Loading executions…"));
  const data = await api("api/functions/executions?identity=" + encodeURIComponent(f.identity));
  const pts = data.executions;
  const runs = [...new Set(pts.map((p) => p.run_id).filter(Boolean))];
  const sizes = [...new Set(pts.map((p) => p.memory_mb))].sort((p, q) => p - q);
  box.replaceChildren(el("div", { class: "plots" }, scatter(pts, "in_bytes", "input size", fmtBytes),
    scatter(pts, "memory_mb", "memory", (v) => Math.round(v) + " MB")),
  el("div", { class: "legend" }, el("b", {}, "dots: one execution, by memory size: "),
    sizes.map((m, k) => el("span", {}, el("i", { style: `background:${PALETTE[k % PALETTE.length]}` }), `${m} MB`))),
  runs.length ? el("div", { class: "fn-runs" }, el("span", { class: "muted" }, `in ${runs.length} kept runs: `),
    runs.slice(-12).reverse().map((r) => el("a", { class: "mono", href: "#/run/" + encodeURIComponent(r) }, r.slice(0, 22))),
    runs.length > 12 ? el("span", { class: "muted" }, " …") : null) : null);
}

async function functionsView(view) {
  view.replaceChildren(el("p", { class: "muted" }, "Loading functions…"));
  const data = await api("api/functions");
  // user functions first: most executed first, fanflow's own helpers last
  const fns = data.functions.slice().sort((a, b) => (a.identity.startsWith("fanflow.") - b.identity.startsWith("fanflow."))
    || b.count - a.count || a.name.localeCompare(b.name));
  const names = new Map();
  for (const f of fns) names.set(f.name, (names.get(f.name) || 0) + 1);
  const cards = fns.map((f) => {
    const module = f.identity.split(":")[0].split(".").slice(0, -1).join(".");
    const plots = el("div", { class: "fn-plots" });
    const toggle = el("button", { class: "show-plots" }, "show plots");
    toggle.addEventListener("click", () => {
      if (plots.childElementCount) { plots.replaceChildren(); toggle.textContent = "show plots"; return; }
      toggle.textContent = "hide plots";
      showPlots(plots, f).catch((err) => plots.replaceChildren(el("p", { class: "muted" }, err.message)));
    });
    return el("div", { class: "card fn", "data-identity": f.identity },
      el("div", { class: "row" }, el("h2", { class: "grow", style: "margin:0" }, f.name, " ",
        el("span", { class: "muted", style: "font-weight:400" }, module || "", names.get(f.name) > 1 ? ` · ${f.identity.split(":")[1] || ""}` : "")),
      el("span", { class: "muted" }, `${f.count} executions`), toggle),
      el("table", {}, el("thead", {}, el("tr", {}, ["memory", "runs", "mean", "stdev", "min", "max", "mean out"].map((h) =>
        el("th", { class: "num" }, h)))),
      el("tbody", {}, f.sizes.map((s) => el("tr", {}, el("td", { class: "num" }, s.memory_mb + " MB"),
        el("td", { class: "num" }, s.count), el("td", { class: "num" }, fmtDur(s.mean_s)), el("td", { class: "num" }, fmtDur(s.stdev_s)),
        el("td", { class: "num" }, fmtDur(s.min_s)), el("td", { class: "num" }, fmtDur(s.max_s)),
        el("td", { class: "num" }, fmtBytes(s.mean_out_bytes)))))),
      plots);
  });
  view.replaceChildren(el("h1", {}, "Functions"),
    el("p", { class: "muted" }, "Every task function across the recorded runs: execution time by memory size. "
      + "Show plots for time against input size and against memory, and the runs it was in."),
    cards.length ? el("div", { class: "fn-grid" }, cards) : el("div", { class: "card empty" }, "No recorded executions yet."));
  if (cards.length) cards[0].querySelector(".show-plots").click();
}

/* -- routing --------------------------------------------------------------------------------- */
async function runView(view, runId) {
  view.replaceChildren(el("p", { class: "muted" }, "Loading run…"));
  let detail;
  // a recorded run's events are fetched at the same time as its header (a live run's come by its stream)
  const events = api(`api/runs/${encodeURIComponent(runId)}/events?after=0&limit=${EVENTS_PAGE}`).catch(() => null);
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
  const page = new RunPage(view, runId, detail, events);
  cleanup = () => page.destroy();
}

async function route() {
  cleanup();
  cleanup = () => {};
  const view = document.getElementById("view");
  const hash = location.hash.replace(/^#/, "") || "/";
  const section = hash.startsWith("/functions") ? "functions" : "runs";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === section);
  try {
    const run = hash.match(/^\/run\/([^?]+)/);
    const cmp = hash.match(/^\/compare\/([^/]+)\/([^/?]+)/);
    if (run) await runView(view, decodeURIComponent(run[1]));
    else if (cmp) await compareView(view, decodeURIComponent(cmp[1]), decodeURIComponent(cmp[2]));
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
  /* Ids of the DAG's drawn nodes: t<task>, g<group>, c<group>:<chunk>. */
  dagItems() { return this.page && this.page.dag ? this.page.dag.cy.nodes().map((n) => n.id()) : []; },
  /* Where a drawn node is, in page coordinates (for clicking it). */
  nodePosition(id) { return this.page && this.page.dag ? this.page.dag.pagePosition(id) : null; },
};

window.addEventListener("hashchange", route);
route();
