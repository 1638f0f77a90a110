"use strict";
const HIDDEN = new Set(["v","name","msg","level","hostname","pid","instance_id","time","target","trace_id","span_id","session_id"]);
const LEVELS = {10:"TRACE",20:"DEBUG",30:"INFO",40:"WARN",50:"ERROR",60:"FATAL"};
let config = { grafana_url: null, admin_api: false };

function token() { return sessionStorage.getItem("wstrace-admin-token") || ""; }
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}
async function api(path) {
  const response = await fetch(path, { headers: { "Authorization": "Bearer " + token() } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || ("HTTP " + response.status));
  return body;
}
function grafanaLink(traceId) {
  if (!config.grafana_url) return null;
  const panes = {
    logs: { datasource: "loki", queries: [{ refId: "A", datasource: { type: "loki", uid: "loki" },
            expr: `{service="wstrace"} | trace_id="${traceId}"` }], range: { from: "now-6h", to: "now" } },
    trace: { datasource: "tempo", queries: [{ refId: "A", datasource: { type: "tempo", uid: "tempo" },
             queryType: "traceql", query: traceId }], range: { from: "now-6h", to: "now" } },
  };
  return config.grafana_url.replace(/\/$/, "") + "/explore?schemaVersion=1&panes=" + encodeURIComponent(JSON.stringify(panes));
}
async function loadSessions() {
  const status = document.getElementById("sessions-status");
  const body = document.getElementById("sessions");
  if (!config.admin_api) { status.textContent = "The admin API is off (set WSTRACE_ADMIN_TOKEN on the server)."; return; }
  if (!token()) { status.textContent = "Enter the admin token to list sessions."; return; }
  try {
    const data = await api("/api/sessions");
    body.replaceChildren();
    const scope = data.scope === "cluster" ? ", whole cluster" : "";
    document.getElementById("session-count").textContent = `(${data.count}${scope})`;
    for (const s of data.sessions) {
      const row = el("tr", { class: "session", "data-session": s.session_id, title: "trace " + s.trace_id });
      row.append(el("td", { class: "mono" }, s.session_id.slice(-12)), el("td", { class: "mono" }, s.instance_id || "-"),
                 el("td", {}, s.user || "-"),
                 el("td", { class: "mono" }, s.peer), el("td", {}, `${s.messages_in}/${s.messages_out}`),
                 el("td", {}, (s.channels || []).join(", ") || "-"));
      row.addEventListener("click", () => { document.getElementById("query").value = s.trace_id; search(s.trace_id); });
      body.append(row);
    }
    status.textContent = data.count ? "Click a session to see its timeline." : "No live sessions.";
    if (data.cluster_error) status.textContent += " This instance only: " + data.cluster_error;
  } catch (e) { status.textContent = "Cannot list sessions: " + e.message; status.className = "note error"; }
}
async function search(query) {
  query = query.trim();
  const status = document.getElementById("timeline-status");
  const body = document.getElementById("timeline");
  const links = document.getElementById("links");
  body.replaceChildren(); links.replaceChildren();
  if (!query) return;
  if (!token()) { status.textContent = "Enter the admin token to search logs."; return; }
  status.textContent = "Searching…";
  try {
    const data = await api("/api/logs?q=" + encodeURIComponent(query));
    // One trace may hold several sessions: a client may continue any
    // trace it likes (W3C traceparent), so each session is shown apart,
    // and one that continued the caller's trace says so.
    const groups = new Map();
    for (const line of data.lines) {
      const key = line.session_id || "";
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(line);
    }
    for (const [session, lines] of groups) {
      const opened = lines.find(l => l.msg === "session opened");
      const origin = opened ? opened["trace.origin"] : undefined;
      const continued = origin && origin !== "new";
      const title = session
        ? `session ${session}` + (continued ? ` · continued the caller's trace (traceparent from ${origin}): not necessarily the same client as the other sessions of this trace` : origin ? " · started this trace" : "")
        : "server lines (no session)";
      const header = el("tr", { class: "session-group" + (continued ? " continued" : ""), "data-session-group": session });
      header.append(el("td", { colspan: "5" }, title));
      body.append(header);
      for (const line of lines) {
        const recording = Array.isArray(line.flight_recorder) ? line.flight_recorder : null;
        const fields = Object.entries(line).filter(([k]) => !HIDDEN.has(k) && !(recording && k === "flight_recorder"))
          .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
        const row = el("tr", { "data-msg": line.msg || "" });
        row.append(el("td", { class: "mono" }, (line.time || "").slice(11, 23)),
                   el("td", { class: "lvl-" + line.level }, LEVELS[line.level] || String(line.level)),
                   el("td", { class: "mono" }, (line.target || "").replace("wstrace::", "")),
                   el("td", {}, line.msg || ""), el("td", { class: "fields mono" }, fields));
        body.append(row);
        if (recording) body.append(flightRows(recording));
      }
    }
    const traces = [...new Set(data.lines.map(l => l.trace_id).filter(Boolean))];
    for (const t of traces) {
      const href = grafanaLink(t);
      links.append(href ? el("a", { href, target: "_blank", rel: "noopener" }, `Open trace ${t} in Grafana`) : el("span", { class: "mono" }, "trace " + t));
      links.append(" ");
    }
    status.textContent = `${data.lines.length} line(s)` + (data.corrupt ? `, ${data.corrupt} corrupt line(s) skipped` : "")
      + (data.truncated ? " (first lines only)" : "")
      + (data.scan_capped ? " (the search stopped before the oldest files)" : "");
  } catch (e) { status.textContent = "Search failed: " + e.message; status.className = "note error"; }
}
// The messages a failing session recorded before it failed (shape only,
// never content), as a small table under its "flight recorder" line.
function flightRows(entries) {
  const table = el("table", { class: "flight" });
  const head = el("tr");
  for (const h of ["#", "at", "", "type", "size", "message / span"]) head.append(el("th", {}, h));
  table.append(head);
  for (const e of entries) {
    const row = el("tr", { class: "flight-" + e.dir });
    const ids = [e.message_id ? "message " + e.message_id : "", e.span_id ? "span " + e.span_id : ""].filter(Boolean).join(" · ");
    row.append(el("td", { class: "mono" }, String(e.seq)),
               el("td", { class: "mono" }, "+" + Number(e.at_ms).toFixed(3) + " ms"),
               el("td", {}, e.dir === "in" ? "→ in" : "← out"),
               el("td", {}, e.type || "?"),
               el("td", { class: "mono" }, e.size + " B"),
               el("td", { class: "mono" }, ids || "-"));
    table.append(row);
  }
  const cell = el("td", { colspan: "5" });
  cell.append(el("div", { class: "note" }, `The ${entries.length} message(s) before the failure, oldest first:`), table);
  const row = el("tr", { class: "flight-recording" });
  row.append(cell);
  return row;
}
async function init() {
  // A token or query in the URL fragment never reaches the server's logs.
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) sessionStorage.setItem("wstrace-admin-token", hash.get("token"));
  document.getElementById("token").value = token();
  document.getElementById("save-token").addEventListener("click", () => {
    sessionStorage.setItem("wstrace-admin-token", document.getElementById("token").value);
    loadSessions();
  });
  document.getElementById("search").addEventListener("submit", (e) => { e.preventDefault(); search(document.getElementById("query").value); });
  config = await (await fetch("/explorer/config.json")).json();
  await loadSessions();
  setInterval(loadSessions, 5000);
  if (hash.get("q")) { document.getElementById("query").value = hash.get("q"); await search(hash.get("q")); }
}
init();
