/* fanflow dashboard: the DAG view.
 *
 * Small DAGs show every task. Above GROUP_ABOVE tasks the view shows task
 * groups instead (one node per function and DAG level, like Dask's task
 * groups), each filled by the share of its tasks in each state; a click opens a
 * group into chunks of tasks, and a chunk into its tasks. So the browser never
 * lays out or draws thousands of nodes, whatever the run's size.
 *
 * The layout is computed here, not by a graph library: DAG levels give the
 * columns, and each column is ordered and placed at the mean height of its
 * upstream nodes, then pushed apart. It is linear in the size of the graph, so
 * it runs on the main thread in a few milliseconds and cytoscape only draws
 * the given positions ("preset" layout).
 */
"use strict";

const GROUP_ABOVE = 200;
const MAX_ITEMS = 300;
const CHUNK_MIN = 40;
const EDGE_LABEL_MAX = 150;
const MIN_FIT_ZOOM = 0.9;
const CHAR_W = 6.8;
const PALETTE = ["#4f46e5", "#0891b2", "#ea580c", "#16a34a", "#db2777", "#9333ea", "#ca8a04", "#0d9488",
  "#dc2626", "#2563eb", "#65a30d", "#c026d3"];

/* Groups of tasks by function and level band: as many levels per band as keeps the groups under MAX_ITEMS. */
function taskGroups(graph) {
  const levels = Math.max(...graph.level) + 1;
  for (let band = 1; ; band *= 2) {
    const byKey = new Map();
    graph.nodes.forEach((node, i) => {
      const b = Math.floor(graph.level[i] / band);
      const key = node.function + "@" + b;
      if (!byKey.has(key)) byKey.set(key, { function: node.function, level: b * band, band, members: [] });
      byKey.get(key).members.push(i);
    });
    if (byKey.size <= MAX_ITEMS || band >= levels) return [...byKey.values()];
  }
}

function gradient(counts, total) {
  const colors = [];
  const stops = [];
  let at = 0;
  for (const s of STATE_ORDER) {
    if (!counts[s]) continue;
    const next = at + (100 * counts[s]) / total;
    colors.push(STATES[s].color, STATES[s].color);
    stops.push(at.toFixed(2) + "%", next.toFixed(2) + "%");
    at = next;
  }
  return { colors: colors.join(" "), stops: stops.join(" ") };
}

class DagView {
  constructor(container, graph, critical, handlers) {
    this.graph = graph;
    this.handlers = handlers;
    this.grouped = graph.nodes.length > GROUP_ABOVE;
    this.expanded = new Set();
    this.critical = new Set(critical);
    this.criticalEdges = new Set(critical.slice(1).map((t, i) => `${critical[i]}-${t}`));
    this.mode = "state";
    if (this.grouped) {
      this.groups = taskGroups(graph);
      this.groupOf = new Int32Array(graph.nodes.length);
      this.posInGroup = new Int32Array(graph.nodes.length);
      this.groups.forEach((g, gi) => {
        g.chunk = Math.max(CHUNK_MIN, Math.ceil(g.members.length / 40));
        g.members.forEach((t, p) => { this.groupOf[t] = gi; this.posInGroup[t] = p; });
      });
    }
    this.cy = cytoscape({
      container, wheelSensitivity: 0.3, minZoom: 0.02, maxZoom: 4, boxSelectionEnabled: false,
      style: [
        { selector: "node", style: {
          shape: "round-rectangle", "background-color": "data(color)", "border-width": 1, "border-color": "#94a3b8",
          label: "data(label)", "font-size": 11, "min-zoomed-font-size": 7, "text-valign": "center",
          "text-halign": "center", color: "#111827", width: "data(w)", height: "data(h)", "text-wrap": "wrap",
          "font-family": "ui-monospace, Menlo, Consolas, monospace" } },
        { selector: "node.group", style: {
          "background-fill": "linear-gradient", "background-gradient-direction": "to-right",
          "background-gradient-stop-colors": "data(gcolors)", "background-gradient-stop-positions": "data(gstops)",
          "border-width": 2, "border-color": "#64748b", "border-style": "double", "font-weight": 600,
          "font-size": 12 } },
        { selector: "node.chunk", style: { "border-style": "dashed" } },
        { selector: "node:selected", style: { "border-color": "#4f46e5", "border-width": 3 } },
        { selector: "edge", style: {
          width: "data(width)", "line-color": "#b6bfcd", "target-arrow-color": "#b6bfcd",
          "target-arrow-shape": "triangle", "arrow-scale": 0.8, "curve-style": "straight", label: "data(label)",
          "font-size": 9, "min-zoomed-font-size": 7, color: "#6b7280", "text-background-color": "#fcfcfe",
          "text-background-opacity": 1, "text-background-padding": 1, "text-rotation": "autorotate" } },
        { selector: "edge.local", style: { "line-style": "dashed" } },
        { selector: "node.critical.hl", style: { "border-color": "#dc2626", "border-width": 3 } },
        { selector: "edge.critical.hl", style: { "line-color": "#dc2626", "target-arrow-color": "#dc2626" } },
      ],
    });
    this.cy.on("tap", "node", (ev) => this.tap(ev.target.id()));
    this.cy.on("mouseover", "node", (ev) => {
      const id = ev.target.id();
      if (id.startsWith("t")) this.handlers.hover(Number(id.slice(1)), ev.originalEvent);
      else this.handlers.hoverGroup(this.membersOf(id), this.itemTitle(id), ev.originalEvent);
    });
    this.cy.on("mouseout", "node", () => this.handlers.hover(null));
    this.observer = new ResizeObserver(() => this.cy.resize());
    this.observer.observe(container);
    this.rebuild(null);
  }

  /* The displayed item holding task i: the task itself, its chunk or its group. */
  itemOf(i) {
    if (!this.grouped) return "t" + i;
    const gi = this.groupOf[i];
    const g = this.groups[gi];
    if (!this.expanded.has("g" + gi)) return "g" + gi;
    if (g.members.length <= g.chunk) return "t" + i;
    const c = `c${gi}:${Math.floor(this.posInGroup[i] / g.chunk)}`;
    return this.expanded.has(c) ? "t" + i : c;
  }

  membersOf(id) {
    if (id.startsWith("t")) return [Number(id.slice(1))];
    if (id.startsWith("g")) return this.groups[Number(id.slice(1))].members;
    const [gi, k] = id.slice(1).split(":").map(Number);
    const g = this.groups[gi];
    return g.members.slice(k * g.chunk, (k + 1) * g.chunk);
  }

  itemTitle(id) {
    if (id.startsWith("t")) return this.graph.nodes[Number(id.slice(1))].name;
    const gi = Number(id.slice(1).split(":")[0]);
    const g = this.groups[gi];
    const levels = g.band > 1 ? `levels ${g.level}–${g.level + g.band - 1}` : `level ${g.level}`;
    if (id.startsWith("g")) return `${g.function} ×${g.members.length} · ${levels}`;
    const members = this.membersOf(id);
    return `${g.function} ${this.posInGroup[members[0]] + 1}–${this.posInGroup[members[members.length - 1]] + 1} of ${g.members.length} · ${levels}`;
  }

  items() {
    if (!this.grouped) return this.graph.nodes.map((_, i) => "t" + i);
    const out = [];
    this.groups.forEach((g, gi) => {
      if (!this.expanded.has("g" + gi)) { out.push("g" + gi); return; }
      if (g.members.length <= g.chunk) { for (const t of g.members) out.push("t" + t); return; }
      for (let k = 0; k * g.chunk < g.members.length; k++) {
        const c = `c${gi}:${k}`;
        if (this.expanded.has(c)) for (const t of this.membersOf(c)) out.push("t" + t);
        else out.push(c);
      }
    });
    return out;
  }

  levelOf(id) {
    if (id.startsWith("t")) return this.graph.level[Number(id.slice(1))];
    return this.groups[Number(id.slice(1).split(":")[0])].level;
  }

  /* Rebuild the elements after an expansion; `focus`: item ids to bring into view (null: fit everything). */
  rebuild(focus) {
    const graph = this.graph;
    const ids = this.items();
    // items by index, links keyed by a number: this loop runs over every task edge of the run
    const index = new Map(ids.map((id, k) => [id, k]));
    const itemOf = new Int32Array(graph.nodes.length);
    for (let i = 0; i < itemOf.length; i++) itemOf[i] = index.get(this.itemOf(i));
    const links = new Map();
    const critical = this.criticalEdges;
    for (const e of graph.edges) {
      const a = itemOf[e.source];
      const b = itemOf[e.target];
      if (a === b) continue;
      const key = a * ids.length + b;
      let link = links.get(key);
      if (!link) { link = { a: ids[a], b: ids[b], count: 0, critical: false, task: null }; links.set(key, link); }
      link.count++;
      if (link.count === 1) link.task = `${e.source}-${e.target}`;
      if (critical.size && critical.has(`${e.source}-${e.target}`)) link.critical = true;
    }
    const pos = this.layout(ids, links);
    const nodes = ids.map((id) => {
      const members = this.membersOf(id);
      const isTask = id.startsWith("t");
      const label = isTask ? graph.nodes[members[0]].name + (graph.nodes[members[0]].map ? " ⋔" : "")
        : this.itemTitle(id).replace(" · ", "\n");
      const w = this.widthOf(id);
      const critical = members.some((t) => this.critical.has(t));
      const h = isTask ? 24 : Math.min(36 + 6 * Math.log2(members.length), 96);
      return { data: { id, label, w, h, color: STATES.waiting.color, gcolors: "#cbd5e1 #cbd5e1",
        gstops: "0% 100%" }, position: pos.get(id),
      classes: [isTask ? "" : id.startsWith("g") ? "group" : "group chunk", critical ? "critical" : ""].join(" ") };
    });
    this.taskEdges = links.size <= EDGE_LABEL_MAX;
    const edges = [...links.values()].map((l) => ({ data: { id: "e" + l.a + ">" + l.b, source: l.a, target: l.b,
      label: this.taskEdges || l.count === 1 ? "" : "×" + l.count, width: Math.min(1.2 + Math.log2(l.count), 7),
      task: l.count === 1 ? l.task : null }, classes: l.critical ? "critical" : "" }));
    this.cy.batch(() => {
      this.cy.elements().remove();
      this.cy.add([...nodes, ...edges]);
    });
    this.highlightCritical(this.showCritical ?? true);
    this.lastColors = new Map();
    if (focus && focus.length) {
      // the opened nodes, readable: fitted when they fit, else the first of them at a readable zoom
      const eles = this.cy.collection(focus.map((id) => this.cy.getElementById(id)));
      this.cy.fit(eles, 40);
      if (this.cy.zoom() < MIN_FIT_ZOOM) {
        this.cy.zoom(MIN_FIT_ZOOM);
        const first = eles[0].position();
        this.cy.pan({ x: this.cy.width() / 2 - first.x * MIN_FIT_ZOOM, y: 60 - first.y * MIN_FIT_ZOOM });
      }
    } else {
      this.cy.fit(undefined, 24);
    }
    if (this.cy.zoom() > 1.2) { this.cy.zoom(1.2); if (!focus) this.cy.center(); }
    if (!focus && this.cy.zoom() < MIN_FIT_ZOOM) {
      // too small to read when fitted: start readable at the roots, pan or zoom out to see the rest
      const box = this.cy.elements().boundingBox();
      this.cy.zoom(MIN_FIT_ZOOM);
      this.cy.pan({ x: 24 - box.x1 * MIN_FIT_ZOOM, y: this.cy.height() / 2 - ((box.y1 + box.y2) / 2) * MIN_FIT_ZOOM });
    }
    if (this.state) this.update(this.state, this.mode, this.workerColor);
  }

  /* Columns by level; in each column, items at the mean height of their upstream items, pushed apart. */
  layout(ids, links) {
    const ups = new Map(ids.map((id) => [id, []]));
    for (const l of links.values()) ups.get(l.b).push(l.a);
    const columns = new Map();
    for (const id of ids) {
      const lv = this.levelOf(id);
      if (!columns.has(lv)) columns.set(lv, []);
      columns.get(lv).push(id);
    }
    const y = new Map();
    const pos = new Map();
    let x = 0;
    let prevW = 0;
    for (const lv of [...columns.keys()].sort((a, b) => a - b)) {
      const col = columns.get(lv);
      const sep = col.some((id) => !id.startsWith("t")) ? 110 : 32;
      const want = col.map((id, k) => {
        const u = ups.get(id).filter((p) => y.has(p));
        return { id, k, y: u.length ? u.reduce((a, p) => a + y.get(p), 0) / u.length : k * sep };
      });
      want.sort((a, b) => a.y - b.y || a.k - b.k);
      let last = -Infinity;
      let shift = 0;
      const placed = want.map((w) => { last = Math.max(w.y, last + sep); shift += last - w.y; return last; });
      shift /= want.length;
      const width = Math.max(...col.map((id) => this.widthOf(id)));
      x += prevW / 2 + width / 2 + (prevW ? 44 : 0);
      prevW = width;
      want.forEach((w, k) => { y.set(w.id, placed[k] - shift); pos.set(w.id, { x, y: placed[k] - shift }); });
    }
    return pos;
  }

  widthOf(id) {
    if (id.startsWith("t")) return this.graph.nodes[Number(id.slice(1))].name.length * CHAR_W + 18;
    return Math.max(...this.itemTitle(id).split(" · ").map((l) => l.length)) * CHAR_W * 1.1 + 24;
  }

  tap(id) {
    if (id.startsWith("t")) { this.handlers.select(Number(id.slice(1))); return; }
    const inside = new Set(this.membersOf(id));
    this.expanded.add(id);
    this.rebuild(this.items().filter((x) => inside.has(this.membersOf(x)[0])));
  }

  collapse() {
    if (!this.expanded.size) return;
    this.expanded.clear();
    this.rebuild(null);
  }

  /* Show task i: open its group and chunk, select and center it. */
  reveal(i) {
    if (this.grouped) {
      const gi = this.groupOf[i];
      const g = this.groups[gi];
      const before = this.expanded.size;
      this.expanded.add("g" + gi);
      if (g.members.length > g.chunk) this.expanded.add(`c${gi}:${Math.floor(this.posInGroup[i] / g.chunk)}`);
      if (this.expanded.size !== before) this.rebuild(["t" + i]);
    }
    const node = this.cy.getElementById("t" + i);
    this.cy.$(":selected").unselect();
    node.select();
    this.cy.animate({ center: { eles: node } }, { duration: 200 });
  }

  highlightCritical(on) {
    this.showCritical = on;
    this.cy.elements(".critical").toggleClass("hl", on);
  }

  update(state, mode, workerColor) {
    this.state = state;
    this.mode = mode;
    this.workerColor = workerColor;
    const cy = this.cy;
    const set = (ele, key, value) => { if (ele.data(key) !== value) ele.data(key, value); };
    cy.batch(() => {
      cy.nodes().forEach((node) => {
        const id = node.id();
        if (id.startsWith("t")) {
          const t = state.tasks[Number(id.slice(1))];
          set(node, "color", mode === "worker" && t.worker ? workerColor(t.worker) : STATES[t.state].color);
          return;
        }
        const members = this.membersOf(id);
        const g = gradient(countStates(state, members), members.length);
        set(node, "gcolors", g.colors);
        set(node, "gstops", g.stops);
      });
      if (!this.taskEdges) return;
      cy.edges().forEach((edge) => {
        const key = edge.data("task");
        const [u, t] = key ? key.split("-").map(Number) : [];
        const moved = key ? edgeMoved(this.graph, state, u, t) : null;
        set(edge, "label", moved ? (moved.local ? "local" : fmtBytes(moved.bytes)) : "");
        edge.toggleClass("local", Boolean(moved && moved.local));
      });
    });
  }

  /* Where item `id` is drawn, in page coordinates (for tests and tooltips). */
  pagePosition(id) {
    const node = this.cy.getElementById(id);
    if (!node.length) return null;
    const box = this.cy.container().getBoundingClientRect();
    const p = node.renderedPosition();
    return { x: box.left + p.x, y: box.top + p.y };
  }

  destroy() {
    this.observer.disconnect();
    this.cy.destroy();
  }
}
