/* fanflow dashboard: worker events folded into the state of a run at any instant.
 *
 * The server sends raw worker events; fold(graph, events, until) turns them into
 * task states, per-task figures (bytes moved per edge among them) and worker invocations, as
 * they were at time `until`. A live run folds everything received so far, a
 * replay folds the events up to the slider's time: the same code, so live and
 * replay cannot disagree.
 *
 * States say only what the events show. "running" needs a worker's task_started
 * event; a task whose inputs are all done but that no worker reported starting is
 * "queued" (its start may be in a batch not flushed yet, or its worker may still
 * be starting). Tasks below a failure are "blocked" (not run: upstream failed),
 * and tasks a finished run never reached are "notrun".
 */
"use strict";

const STATES = {
  waiting: { color: "#cbd5e1", label: "waiting (inputs not done)" },
  queued: { color: "#93c5fd", label: "queued (inputs done, not reported started)" },
  running: { color: "#f59e0b", label: "running" },
  done: { color: "#10b981", label: "done" },
  failed: { color: "#ef4444", label: "failed" },
  blocked: { color: "#fecaca", label: "not run (upstream failed)" },
  notrun: { color: "#e5e7eb", label: "not run (run ended first)" },
};
const STATE_ORDER = ["done", "running", "queued", "failed", "blocked", "waiting", "notrun"];

/* Adds to `graph` what every view needs once: upstream and downstream lists, a topological order, DAG levels. */
function prepareGraph(graph) {
  const n = graph.nodes.length;
  graph.deps = graph.nodes.map(() => []);
  graph.dependents = graph.nodes.map(() => []);
  for (const e of graph.edges) {
    graph.deps[e.target][e.index] = e.source;
    graph.dependents[e.source].push(e.target);
  }
  const missing = graph.deps.map((d) => d.length);
  const order = [];
  for (let i = 0; i < n; i++) if (!missing[i]) order.push(i);
  for (let k = 0; k < order.length; k++) {
    for (const d of graph.dependents[order[k]]) if (--missing[d] === 0) order.push(d);
  }
  graph.topo = order;
  graph.level = new Array(n).fill(0);
  for (const i of order) for (const d of graph.dependents[i]) graph.level[d] = Math.max(graph.level[d], graph.level[i] + 1);
  graph.functions = [...new Set(graph.nodes.map((x) => x.function))];
  return graph;
}

function newTask() {
  return { state: "waiting", worker: null, start: null, end: null, fetch_s: null, exec_s: null, store_s: null,
    in_bytes: null, ins: null, out_bytes: null, attempt: 1, memory_mb: null, error: null, elements: 0, elementsDone: 0 };
}

/* Input sizes of a task_finished event: a list (one entry per input, null when taken from memory). */
function inputSizes(e) {
  if (e._ins === undefined) {
    const v = typeof e.in_bytes === "string" ? JSON.parse(e.in_bytes) : e.in_bytes;
    e._ins = Array.isArray(v) ? v : v === null || v === undefined ? [] : [Number(v)];
  }
  return e._ins;
}

function sum(list) {
  let total = 0;
  for (const b of list) if (b !== null && b !== undefined) total += Number(b);
  return total;
}

/* The run at time `until`. `ended`: the run is over at that instant, so tasks never started were not run. */
function fold(graph, events, until, ended) {
  const tasks = graph.nodes.map(newTask);
  const workers = new Map();
  const open = new Map();
  let bytesFetched = 0;
  const worker = (id, t) => {
    if (!workers.has(id)) {
      workers.set(id, { id, process: processKey(id), start: t, stop: null, cold: false, latency: 0, memory_mb: null,
        bars: [], tasks: 0 });
    }
    return workers.get(id);
  };
  for (const e of events) {
    if (e.t > until) break;
    const w = worker(e.worker, e.t);
    const s = e.task >= 0 ? tasks[e.task] : null;
    const element = e.element === undefined || e.element === null ? null : Number(e.element);
    const key = s === null ? "" : element === null ? e.worker + "|" + e.task : e.worker + "|" + e.task + "|" + element;
    switch (e.kind) {
      case "worker_started":
        w.start = e.t; w.cold = e.cold === true || e.cold === "true"; w.latency = Number(e.latency_s) || 0;
        w.memory_mb = e.memory_mb ?? null;
        break;
      case "worker_stopped": w.stop = e.t; break;
      case "task_started": {
        const bar = { task: e.task, element, start: e.t, end: null, state: "running", worker: e.worker };
        w.bars.push(bar);
        open.set(key, bar);
        if (s && s.state !== "done" && s.state !== "failed") {
          s.state = "running"; s.start = s.start ?? e.t;
          if (element === null) s.worker = e.worker;
        }
        break;
      }
      case "map_expanded": if (s) s.elements = Number(e.elements); break;
      case "task_retry": if (s) { s.attempt = Number(e.attempt) + 1; s.error = e.error || s.error; } break;
      case "task_finished": {
        const bar = open.get(key);
        if (bar) { bar.end = e.t; bar.state = "done"; open.delete(key); }
        const ins = inputSizes(e);
        const inBytes = sum(ins);
        bytesFetched += inBytes;
        if (!s || s.state === "failed") break; // a task that failed for good keeps its first ending
        if (element !== null) {
          s.elementsDone++;
          s.exec_s = (s.exec_s || 0) + Number(e.exec_s || 0);
          break;
        }
        w.tasks++;
        s.state = "done"; s.end = e.t; s.worker = e.worker; s.out_bytes = Number(e.out_bytes);
        s.in_bytes = inBytes; s.ins = ins; s.fetch_s = Number(e.fetch_s ?? NaN); s.exec_s = Number(e.exec_s ?? NaN);
        s.store_s = Number(e.store_s ?? NaN); s.attempt = Number(e.attempt || s.attempt);
        s.memory_mb = e.memory_mb ?? w.memory_mb;
        break;
      }
      case "task_failed": {
        const bar = open.get(key);
        if (bar) { bar.end = e.t; bar.state = "failed"; open.delete(key); }
        if (s) {
          Object.assign(s, { state: "failed", end: e.t, worker: e.worker, error: e.error || null,
            attempt: Number(e.attempt || s.attempt), memory_mb: w.memory_mb });
          s.start = s.start ?? e.t;
        }
        break;
      }
      default: break;
    }
  }
  for (const i of graph.topo) {
    const s = tasks[i];
    if (s.state !== "waiting") continue;
    let blocked = false;
    let ready = true;
    for (const u of graph.deps[i]) {
      const up = tasks[u].state;
      if (up === "failed" || up === "blocked") blocked = true;
      else if (up !== "done") ready = false;
    }
    if (blocked) s.state = "blocked";
    else if (ended) s.state = "notrun";
    else if (ready) s.state = "queued";
  }
  return { tasks, workers: [...workers.values()], bytesFetched, until };
}

/* What edge u -> t moved, once t is done: {bytes, local} (local: t's worker had u's output in memory), else null. */
function edgeMoved(graph, state, u, t) {
  const target = state.tasks[t];
  if (target.state !== "done" || !target.ins) return null;
  const n = target.ins[graph.deps[t].indexOf(u)];
  return n === null || n === undefined ? { bytes: state.tasks[u].out_bytes, local: true } : { bytes: Number(n), local: false };
}

/* Counts of each state among `indices` (all tasks when omitted). */
function countStates(state, indices) {
  const counts = Object.fromEntries(Object.keys(STATES).map((k) => [k, 0]));
  if (indices) for (const i of indices) counts[state.tasks[i].state]++;
  else for (const t of state.tasks) counts[t.state]++;
  return counts;
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
