/* fanflow dashboard: small helpers shared by every view (DOM building, API calls, units). */
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");

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

/* Three significant digits at most: 315.2142857 B reads "315 B". */
function round3(v) {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1).replace(/\.0$/, "");
  return v.toFixed(2).replace(/\.?0+$/, "");
}

function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return round3(v) + " " + units[i];
}

function fmtDur(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s === 0) return "0 s";
  if (s < 1e-3) return round3(s * 1e6) + " µs";
  if (s < 1) return round3(s * 1e3) + " ms";
  if (s < 120) return round3(s) + " s";
  if (s < 7200) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
}

/* Local date and time, ISO-like (2026-11-30 01:23:45): unambiguous in every locale. */
function fmtWhen(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtCost(c) { return c === null || c === undefined ? "–" : "$" + Number(c).toPrecision(3); }

/* A round tick step (1, 2 or 5 times a power of ten) giving about `count` ticks over `span`. */
function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

/* A tick label: as few digits as the step needs. */
function fmtTick(t, step) {
  if (step >= 60 && t >= 60) return Math.floor(t / 60) + "m" + (t % 60 ? String(Math.round(t % 60)).padStart(2, "0") + "s" : "");
  if (step >= 1) return Math.round(t) + " s";
  if (step >= 1e-3) return Math.round(t * 1e3) + " ms";
  return Math.round(t * 1e6) + " µs";
}

function pill(status) { return el("span", { class: "pill " + status }, status); }

function statCard(k, v, title) {
  const value = el("div", { class: "v" }, v);
  return { node: el("div", { class: "stat", title: title || null }, el("div", { class: "k" }, k), value), value };
}

/* Worker ids are "<host>-<pid>-<salt>-<n>", one per invocation: the process is all but the counter. */
const processKeys = new Map();
function processKey(workerId) {
  let key = processKeys.get(workerId);
  if (key === undefined) {
    const id = String(workerId);
    const cut = id.lastIndexOf("-");
    key = id.split("-").length >= 4 ? id.slice(0, cut) : id;
    processKeys.set(workerId, key);
  }
  return key;
}

/* "host pid 1234" for a process key. */
function processLabel(key) {
  const parts = key.split("-");
  return parts.length >= 3 ? `${parts.slice(0, -2).join("-")} pid ${parts[parts.length - 2]}` : key;
}

function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }
