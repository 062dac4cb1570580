/* fanflow dashboard: the page of one run, live or recorded (with its replay). */
"use strict";

const TABLE_PAGE = 50;
const TABLE_EVERY_MS = 700;
const LIVE_EVERY_MS = 250;
const EVENTS_PAGE = 3000;
const LIVE_IDLE = 3;

class RunPage {
  constructor(view, runId, detail, events) {
    this.recordedEvents = events;
    this.view = view;
    this.runId = runId;
    this.events = [];
    this.mode = "state";
    this.playing = false;
    this.cursor = null;
    this.source = null;
    this.timers = [];
    this.selected = null;
    this.table = { query: "", sort: "task", desc: false, page: 0, drawnAt: 0 };
    this.tip = document.getElementById("tip");
    this.setup(detail);
  }

  setup(detail) {
    window.fanflowDashboard.page = this;
    this.detail = detail;
    this.graph = prepareGraph(detail.graph);
    this.clockOffset = detail.now - Date.now() / 1000;
    this.live = detail.live;
    this.errorsByTask = new Map();
    for (const e of detail.errors || []) {
      const i = e.task_id ?? this.graph.nodes.findIndex((n) => n.name === e.task);
      if (i !== null && i >= 0 && !this.errorsByTask.has(Number(i))) this.errorsByTask.set(Number(i), e);
    }
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
    this.statusPill = el("span", { id: "run-status" }, pill(r.status));
    const predicted = r.predicted_makespan_s;
    const diff = predicted && r.makespan_s ? ` (${r.makespan_s >= predicted ? "+" : ""}${(((r.makespan_s - predicted) / predicted) * 100).toFixed(0)}%)` : "";
    this.cards = {
      makespan: statCard("makespan", fmtDur(r.makespan_s)),
      predicted: statCard(
        "predicted",
        fmtDur(predicted) + diff + (r.predicted_p10_s != null ? ` · p10–p90 ${fmtDur(r.predicted_p10_s)}–${fmtDur(r.predicted_p90_s)}` : ""),
        "planner prediction vs actual makespan, with the interval the actual was predicted to fall in",
      ),
      cost: statCard("cost", fmtCost(r.cost)),
      tasks: statCard("tasks done", "–"),
      workers: statCard("workers", "–", "worker invocations started (cold starts)"),
      bytes: statCard("bytes fetched", fmtBytes(r.bytes_fetched)),
      submitted: statCard("submitted", fmtWhen(r.submitted_at)),
    };
    this.progressBox = el("div", { id: "progress" });
    this.progressText = el("div", { class: "progress-text", id: "progress-text" });
    this.fnProgress = el("div", { class: "fn-progress", id: "fn-progress" });
    this.dagBox = el("div", { id: "dag" });
    this.detailBox = el("div", { class: "task-detail", id: "task-detail" },
      el("p", { class: "muted" }, "Hover or click a task (a node, a timeline bar or a table row) for its details. "
        + (this.graph.nodes.length > GROUP_ABOVE ? "Click a group to open it." : "")));
    this.ganttBox = el("div", { class: "gantt", id: "gantt" });
    this.tableBox = el("div", { id: "task-table" });
    this.replayBox = el("div", { class: "card", id: "replay", hidden: this.live });
    this.errorsBox = el("div", { id: "errors" });
    const modeSeg = el("div", { class: "seg", id: "color-mode" },
      el("button", { class: "on", "data-mode": "state", onclick: (ev) => this.setMode("state", ev.target) }, "by state"),
      el("button", { "data-mode": "worker", onclick: (ev) => this.setMode("worker", ev.target) }, "by process"));
    const critical = d.critical_path.length ? el("label", {}, el("input", { type: "checkbox", id: "show-critical", checked: true,
      onchange: (ev) => this.dag?.highlightCritical(ev.target.checked) }), " critical path") : null;
    const grouped = this.graph.nodes.length > GROUP_ABOVE;
    this.dagLegend = el("div", { class: "legend", id: "dag-legend" });
    this.view.replaceChildren(...[
      el("div", { class: "row" }, el("a", { href: "#/" }, "← runs")),
      el("div", { class: "card" },
        el("div", { class: "row" },
          el("div", { class: "grow" }, el("h1", {}, r.workflow || r.sink, " ", this.statusPill),
            el("div", { class: "muted mono" }, r.run_id)),
          el("div", { class: "muted" }, r.platform || "", " · planner ", r.planner || "–")),
        d.notice ? el("div", { class: "notice" }, d.notice) : null,
        this.live && (r.metrics_upload || "shutdown") === "shutdown" ? el("div", { class: "notice", id: "upload-notice" },
          "Workers of this run send their events when they end (metrics_upload=\"shutdown\"), so tasks show as queued "
          + "until then. Run with metrics_upload=\"task\" (or \"periodic:1\") to see them running live.") : null,
        el("div", { class: "stats" }, Object.values(this.cards).map((c) => c.node))),
      this.errorsBox,
      this.replayBox,
      el("div", { class: "card" }, el("h2", {}, "Progress"), this.progressBox, this.progressText, this.fnProgress),
      el("div", { class: "card" },
        el("div", { class: "row", style: "margin-bottom:10px" },
          el("h2", { class: "grow", style: "margin:0" }, "DAG", grouped
            ? el("span", { class: "muted", style: "font-weight:400" }, ` · ${this.graph.nodes.length} tasks shown as groups by function and level`) : null),
          grouped ? el("button", { id: "regroup", onclick: () => this.dag?.collapse() }, "close all groups") : null,
          critical, modeSeg),
        el("div", { class: "dag-wrap" }, this.dagBox, this.detailBox),
        this.dagLegend),
      el("div", { class: "card" }, el("h2", {}, "Timeline per worker process"), this.ganttBox),
      el("div", { class: "card" }, el("h2", {}, "Tasks"), this.tableBox),
      d.critical_path.length ? this.criticalCard() : null].filter(Boolean));
    const handlers = {
      select: (i) => this.select(i, false),
      hover: (i, ev) => this.hover(i, ev),
      hoverGroup: (members, title, ev) => this.hoverGroup(members, title, ev),
    };
    // the graph view in a task of its own, after the page is on screen
    this.dag = null;
    this.dagTimer = setTimeout(() => {
      this.dag = new DagView(this.dagBox, this.graph, d.critical_path, handlers);
      if (this.state) this.colorDag();
    }, 0);
    this.timeline = new Timeline(this.ganttBox, this.graph, { select: (i) => this.select(i, true), hover: handlers.hover });
    this.renderErrors();
    this.renderLegend();
  }

  renderLegend() {
    const items = this.mode === "worker"
      ? [...this.processColors().entries()].slice(0, 16).map(([p, c]) => el("span", {}, el("i", { style: `background:${c}` }), processLabel(p)))
      : Object.values(STATES).map((s) => el("span", {}, el("i", { style: `background:${s.color}` }), s.label));
    this.dagLegend.replaceChildren(...[el("b", {}, this.mode === "worker" ? "nodes by process: " : "nodes: "), items,
      this.graph.nodes.length > GROUP_ABOVE ? el("span", {}, "a group is filled by the share of its tasks in each state") : null,
      el("span", {}, "edge labels: bytes fetched (dashed: the worker had the input in memory); ×N: N task edges"),
      this.detail.critical_path.length ? el("span", {}, el("i", { style: "background:#dc2626" }), "critical path") : null]
      .flat().filter(Boolean));
  }

  processColors() {
    const colors = new Map();
    for (const w of this.state ? this.state.workers : []) {
      if (!colors.has(w.process)) colors.set(w.process, PALETTE[colors.size % PALETTE.length]);
    }
    return colors;
  }

  criticalCard() {
    const names = this.detail.critical_path.map((i) => this.graph.nodes[i].name);
    const rows = this.detail.critical_tasks;
    return el("div", { class: "card", id: "critical" }, el("h2", {}, "Critical path"),
      el("div", { class: "crit-list" }, names.map((n, k) => [k ? "→" : null, el("span", { class: "t" }, n)])),
      el("table", { style: "margin-top:10px" }, el("thead", {}, el("tr", {}, ["task", "worker", "memory", "duration", "exec",
        "in", "out"].map((h, k) => el("th", { class: k >= 2 ? "num" : "" }, h)))),
      el("tbody", {}, rows.map((t) => el("tr", { class: "link", onclick: () => this.select(t.task, true) },
        el("td", { class: "mono" }, t.name), el("td", { class: "mono" }, t.worker),
        el("td", { class: "num" }, t.memory_mb + " MB"), el("td", { class: "num" }, fmtDur(t.duration_s)),
        el("td", { class: "num" }, fmtDur(t.exec_s)), el("td", { class: "num" }, fmtBytes(t.in_bytes)),
        el("td", { class: "num" }, fmtBytes(t.out_bytes)))))));
  }

  renderErrors() {
    const errors = this.detail.errors || [];
    if (!errors.length) { this.errorsBox.replaceChildren(); return; }
    this.errorsBox.replaceChildren(el("div", { class: "card errors" }, el("h2", {}, `Errors (${errors.length})`),
      errors.map((e, k) => el("details", { class: "error", open: k === 0 },
        el("summary", {}, e.task ? `${e.task}: ` : "", (e.exc_type || "").split(".").pop(), e.exc_type ? ": " : "", e.message || "",
          e.attempt ? el("span", { class: "muted" }, ` · attempt ${e.attempt}`) : null,
          e.worker ? el("span", { class: "muted" }, ` · ${e.worker}`) : null),
        el("pre", {}, e.traceback || "(no traceback recorded)")))));
  }

  setMode(mode, button) {
    this.mode = mode;
    for (const b of button.parentNode.children) b.classList.toggle("on", b === button);
    this.renderLegend();
    this.draw();
  }

  /* -- details of one task ------------------------------------------------------------------ */
  taskFacts(i) {
    const node = this.graph.nodes[i];
    const t = this.state.tasks[i];
    const t0 = this.t0();
    const facts = [
      ["state", STATES[t.state].label], ["function", node.identity || node.function], ["level", this.graph.level[i]],
      ["process", t.worker ? processLabel(processKey(t.worker)) : "–"], ["worker", t.worker || "–"],
      ["started", t.start === null ? "–" : "+" + fmtDur(t.start - t0)],
      ["ended", t.end === null ? "–" : "+" + fmtDur(t.end - t0)],
      ["duration", t.start !== null && t.end !== null ? fmtDur(t.end - t.start) : "–"],
      ["fetch / exec / store", `${fmtDur(t.fetch_s)} / ${fmtDur(t.exec_s)} / ${fmtDur(t.store_s)}`],
      ["bytes in / out", `${fmtBytes(t.in_bytes)} / ${fmtBytes(t.out_bytes)}`],
      ["attempt", t.attempt], ["memory", t.memory_mb === null ? "–" : t.memory_mb + " MB"],
      ["upstream / downstream", `${this.graph.deps[i].length} / ${this.graph.dependents[i].length}`],
    ];
    if (node.map) facts.push(["elements", `${t.elementsDone} / ${t.elements} done`]);
    return facts;
  }

  select(i, reveal) {
    this.selected = i;
    if (reveal && this.dag) this.dag.reveal(i);
    this.renderDetail();
  }

  renderDetail() {
    const i = this.selected;
    if (i === null || !this.state) return;
    const node = this.graph.nodes[i];
    const error = this.errorsByTask.get(i);
    const t = this.state.tasks[i];
    this.detailBox.replaceChildren(...[
      el("h3", {}, node.name, " ", el("span", { class: "pill " + t.state }, t.state)),
      el("dl", {}, this.taskFacts(i).map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
      t.error || error ? el("div", { class: "error" },
        el("div", { class: "error-head" }, error ? `${(error.exc_type || "").split(".").pop()}: ${error.message}` : t.error),
        el("pre", {}, error && error.traceback ? error.traceback : "(no traceback recorded for this task)")) : null]
      .filter(Boolean));
  }

  hover(i, ev) {
    if (i === null || i === undefined || !this.state) { this.tip.hidden = true; return; }
    const node = this.graph.nodes[i];
    const t = this.state.tasks[i];
    this.showTip(ev, el("b", {}, node.name), el("div", {}, STATES[t.state].label),
      this.taskFacts(i).slice(4, 12).map(([k, v]) => el("div", {}, el("span", { class: "muted" }, k + ": "), String(v))),
      t.error ? el("div", { class: "tip-error" }, t.error) : null);
  }

  hoverGroup(members, title, ev) {
    const counts = countStates(this.state, members);
    this.showTip(ev, el("b", {}, title),
      STATE_ORDER.filter((s) => counts[s]).map((s) => el("div", {}, el("i", { class: "dot", style: `background:${STATES[s].color}` }),
        `${counts[s]} ${STATES[s].label}`)),
      el("div", { class: "muted" }, "click to open"));
  }

  showTip(ev, ...children) {
    if (!ev) return;
    this.tip.replaceChildren(...children.flat().filter(Boolean));
    this.tip.hidden = false;
    const x = Math.min(ev.clientX + 14, window.innerWidth - this.tip.offsetWidth - 8);
    const y = Math.min(ev.clientY + 14, window.innerHeight - this.tip.offsetHeight - 8);
    this.tip.style.left = x + "px";
    this.tip.style.top = y + "px";
  }

  /* -- the searchable, sortable table of tasks ---------------------------------------------- */
  tableColumns() {
    const t0 = this.t0();
    const s = this.state.tasks;
    const g = this.graph;
    return [
      ["task", (i) => i, (i) => g.nodes[i].name],
      ["function", (i) => g.nodes[i].function, (i) => g.nodes[i].function],
      ["state", (i) => STATE_ORDER.indexOf(s[i].state), (i) => s[i].state],
      ["process", (i) => s[i].worker || "", (i) => (s[i].worker ? processLabel(processKey(s[i].worker)) : "–")],
      ["start", (i) => s[i].start ?? Infinity, (i) => (s[i].start === null ? "–" : "+" + fmtDur(s[i].start - t0)), true],
      ["duration", (i) => (s[i].end && s[i].start ? s[i].end - s[i].start : -1), (i) => (s[i].end && s[i].start ? fmtDur(s[i].end - s[i].start) : "–"), true],
      ["exec", (i) => s[i].exec_s ?? -1, (i) => fmtDur(s[i].exec_s), true],
      ["fetch", (i) => s[i].fetch_s ?? -1, (i) => fmtDur(s[i].fetch_s), true],
      ["in", (i) => s[i].in_bytes ?? -1, (i) => fmtBytes(s[i].in_bytes), true],
      ["out", (i) => s[i].out_bytes ?? -1, (i) => fmtBytes(s[i].out_bytes), true],
      ["attempt", (i) => s[i].attempt, (i) => s[i].attempt, true],
    ];
  }

  renderTable(force) {
    const now = performance.now();
    if (!force && now - this.table.drawnAt < TABLE_EVERY_MS) {
      // at most one redraw per TABLE_EVERY_MS while live or replaying, and always one after the last change
      if (!this.table.trailing) {
        this.table.trailing = setTimeout(() => { this.table.trailing = null; if (this.state) this.renderTable(true); }, TABLE_EVERY_MS);
      }
      return;
    }
    this.table.drawnAt = now;
    const cols = this.tableColumns();
    const q = this.table.query.toLowerCase();
    const s = this.state.tasks;
    let rows = this.graph.nodes.map((_, i) => i);
    if (q) {
      rows = rows.filter((i) => {
        const n = this.graph.nodes[i];
        return n.name.toLowerCase().includes(q) || n.function.toLowerCase().includes(q) || s[i].state.includes(q)
          || (s[i].worker || "").toLowerCase().includes(q);
      });
    }
    const col = cols.find((c) => c[0] === this.table.sort) || cols[0];
    const key = col[1];
    const keys = new Map(rows.map((i) => [i, key(i)]));
    const sign = this.table.desc ? -1 : 1;
    rows.sort((a, b) => { const ka = keys.get(a); const kb = keys.get(b); return (ka < kb ? -1 : ka > kb ? 1 : a - b) * sign; });
    const pages = Math.max(1, Math.ceil(rows.length / TABLE_PAGE));
    this.table.page = Math.min(this.table.page, pages - 1);
    const shown = rows.slice(this.table.page * TABLE_PAGE, (this.table.page + 1) * TABLE_PAGE);
    if (!this.tableParts) {
      const search = el("input", { type: "search", placeholder: "search name, function, state, worker", id: "task-search",
        "aria-label": "search tasks" });
      search.addEventListener("input", () => { this.table.query = search.value; this.table.page = 0; this.renderTable(true); });
      const head = el("tr");
      const pager = el("div", { class: "pager" });
      const body = el("tbody");
      this.tableParts = { head, body, pager };
      this.tableBox.replaceChildren(el("div", { class: "filters" }, search, pager),
        el("table", { class: "tasks" }, el("thead", {}, head), body));
    }
    const { head, body, pager } = this.tableParts;
    head.replaceChildren(...cols.map(([name, , , num]) => el("th", { class: "sortable" + (num ? " num" : ""), "data-col": name,
      onclick: () => {
        this.table.desc = this.table.sort === name ? !this.table.desc : false;
        this.table.sort = name;
        this.renderTable(true);
      } }, name, this.table.sort === name ? (this.table.desc ? " ▼" : " ▲") : "")));
    body.replaceChildren(...(shown.length ? shown.map((i) => el("tr", { class: "link" + (i === this.selected ? " sel" : ""),
      "data-task": i, onclick: () => this.select(i, true) },
    cols.map(([name, , show, num]) => el("td", { class: (num ? "num" : "") + (name === "task" ? " mono" : "") },
      name === "state" ? el("span", { class: "pill " + s[i].state }, show(i)) : show(i)))))
      : [el("tr", {}, el("td", { colspan: cols.length, class: "empty" }, "No task matches."))]));
    pager.replaceChildren(
      el("button", { disabled: this.table.page === 0, onclick: () => { this.table.page--; this.renderTable(true); } }, "‹"),
      el("span", { class: "muted" }, `${rows.length ? this.table.page * TABLE_PAGE + 1 : 0}–${this.table.page * TABLE_PAGE + shown.length} of ${rows.length}`),
      el("button", { disabled: this.table.page >= pages - 1, onclick: () => { this.table.page++; this.renderTable(true); } }, "›"));
  }

  /* -- drawing the run at the cursor ----------------------------------------------------------- */
  draw() {
    const began = performance.now();
    const until = this.cursor ?? Infinity;
    const finished = this.detail.run.finished_at;
    const ended = !this.live && (this.cursor === null || (finished && this.cursor >= finished));
    const state = fold(this.graph, this.events, until, ended);
    this.state = state;
    const colors = this.processColors();
    if (this.dag) this.colorDag(colors);
    if (this.mode === "worker" && colors.size !== this.legendProcesses) { this.legendProcesses = colors.size; this.renderLegend(); }
    const n = state.tasks.length;
    const counts = countStates(state);
    this.progressBox.replaceChildren(progressBar(counts, n, "progress"));
    const tNow = this.cursor ?? this.tEnd();
    const cold = state.workers.filter((w) => w.cold).length;
    this.cards.tasks.value.textContent = `${counts.done} / ${n}`;
    this.cards.workers.value.textContent = `${state.workers.length}${cold ? ` (${cold} cold)` : ""}`;
    this.cards.bytes.value.textContent = fmtBytes(state.bytesFetched);
    this.progressText.textContent = `${counts.done} / ${n} tasks done · ${counts.running} running · ${counts.queued} queued · `
      + `${counts.failed} failed${counts.blocked ? ` · ${counts.blocked} not run (upstream failed)` : ""} · `
      + `${plural(new Set(state.workers.map((w) => w.process)).size, "process", "processes")} · ${fmtDur(Math.max(0, tNow - this.t0()))}`;
    // the rest in tasks of their own, so no single task holds the page for long; frames coalesce into one
    if (this.restPending) return;
    this.restPending = true;
    const steps = [
      () => {
        const at = this.cursor ?? this.tEnd();
        this.timeline.draw(this.state, this.t0(), this.live ? at : this.tEnd(), at, this.cursor);
      },
      () => this.renderFunctionProgress(this.state),
      () => { this.renderTable(false); this.renderDetail(); },
    ];
    let cost = performance.now() - began;
    const next = () => {
      if (window.fanflowDashboard.page !== this || !this.state) { this.restPending = false; return; }
      const t = performance.now();
      steps.shift()();
      cost += performance.now() - t;
      if (steps.length) setTimeout(next, 0);
      else { this.restPending = false; this.drawCost = cost; }
    };
    setTimeout(next, 0);
  }

  colorDag(colors = this.processColors()) {
    this.dag.update(this.state, this.mode, (w) => colors.get(processKey(w)) || STATES.waiting.color);
    this.dagBox.dataset.drawn = "1";
  }

  renderFunctionProgress(state) {
    const byFn = new Map(this.graph.functions.map((f) => [f, []]));
    this.graph.nodes.forEach((node, i) => byFn.get(node.function).push(i));
    const rows = [...byFn.entries()].slice(0, 40).map(([fn, members]) => {
      const counts = countStates(state, members);
      return el("div", { class: "fn-row" }, el("span", { class: "mono fn-name", title: fn }, fn),
        progressBar(counts, members.length, "progress small"),
        el("span", { class: "num muted" }, `${counts.done} / ${members.length}`));
    });
    this.fnProgress.replaceChildren(...rows);
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
    source.addEventListener("events", (msg) => {
      const data = JSON.parse(msg.data);
      insertSorted(this.events, data.events);
      this.clockOffset = data.now - Date.now() / 1000;
      this.requestDraw();
    });
    source.addEventListener("end", async () => {
      source.close();
      this.source = null;
      conn.textContent = "";
      try {
        const detail = await api("api/runs/" + encodeURIComponent(this.runId));
        this.teardown();
        this.setup(detail);
      } catch (err) {
        conn.textContent = String(err.message);
      }
    });
    this.timers.push(setInterval(() => { if (this.live) this.requestDraw(); }, LIVE_EVERY_MS));
  }

  /* One live redraw at a time, spaced by at least LIVE_EVERY_MS and LIVE_IDLE times the last redraw's cost,
   * so a big run on a busy machine leaves the page responsive instead of redrawing back to back. */
  requestDraw() {
    if (this.drawTimer) return;
    const wait = Math.max(LIVE_EVERY_MS, (this.drawCost || 0) * LIVE_IDLE) - (performance.now() - (this.drawnAt || 0));
    this.drawTimer = setTimeout(() => {
      this.drawTimer = null;
      if (window.fanflowDashboard.page !== this || !this.live) return;
      this.drawnAt = performance.now();
      this.draw();
    }, Math.max(0, wait));
  }

  /* recorded: all events at once, then the replay controls */
  async loadRecorded() {
    // in pieces of EVENTS_PAGE, so that parsing a big run's events never holds the page for long
    let data = this.recordedEvents ? await this.recordedEvents : null;
    this.recordedEvents = null;
    const url = (after) => `api/runs/${encodeURIComponent(this.runId)}/events?after=${after}&limit=${EVENTS_PAGE}`;
    if (!data || !data.ended) data = await api(url(0));
    this.events = [];
    insertSorted(this.events, data.events);
    while (data.more) {
      data = await api(url(data.last));
      insertSorted(this.events, data.events);
    }
    await new Promise((resolve) => setTimeout(resolve, 0));
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

  teardown() {
    clearTimeout(this.dagTimer);
    clearTimeout(this.table.trailing);
    this.table.trailing = null;
    if (this.dag) this.dag.destroy();
    this.tableParts = null;
    this.tip.hidden = true;
  }

  destroy() {
    this.playing = false;
    cancelAnimationFrame(this.frame);
    if (this.source) this.source.close();
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.drawTimer);
    this.teardown();
    if (window.fanflowDashboard.page === this) window.fanflowDashboard.page = null;
    document.getElementById("conn").textContent = "";
  }
}

function progressBar(counts, total, cls) {
  return el("div", { class: cls }, STATE_ORDER.filter((s) => counts[s] && s !== "waiting").map((s) =>
    el("div", { class: "p-" + s, style: `width:${(100 * counts[s]) / total}%;background:${STATES[s].color}`, title: `${counts[s]} ${STATES[s].label}` })));
}
