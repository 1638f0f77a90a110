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
  if (response.status === 401) throw new Error("the admin token is not right: enter the server's admin token above");
  if (!response.ok) throw new Error((body.error && body.error.message) || ("HTTP " + response.status));
  return body;
}
// A status line: plain, or red for an error; a later success clears the red.
function setStatus(node, text, isError = false) {
  node.textContent = text;
  node.className = isError ? "note error" : "note";
}
function copyButton(text, label) {
  const button = el("button", { type: "button", class: "copy", title: "copy " + text }, label);
  button.addEventListener("click", (e) => {
    e.stopPropagation();
    if (navigator.clipboard) navigator.clipboard.writeText(text).then(() => { button.textContent = "copied"; }, () => {});
  });
  return button;
}
let selectedSession = null;
async function loadStats() {
  const bar = document.getElementById("stats");
  if (!config.admin_api || !token()) { bar.replaceChildren(); return; }
  try {
    const data = await api("/api/stats");
    const own = data.instance || data;
    const codes = Object.entries(own.sessions_closed_by_code || {}).map(([c, n]) => `${c}×${n}`).join(" ") || "-";
    bar.replaceChildren(
      el("span", { class: "stat" }, `active sessions ${own.sessions_active}`),
      el("span", { class: "stat" }, `opened ${own.sessions_opened_total}`),
      el("span", { class: "stat", "data-close-codes": "" }, `closed by code ${codes}`),
      el("span", { class: "stat" }, `up ${own.uptime_s} s`));
  } catch (e) { bar.replaceChildren(el("span", { class: "note error" }, "Cannot read stats: " + e.message)); }
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
  if (!config.admin_api) { setStatus(status, "The admin API is off (start the server with WSTRACE_ADMIN_TOKEN set)."); return; }
  if (!token()) { setStatus(status, "Enter the admin token to list sessions."); return; }
  try {
    const data = await api("/api/sessions");
    body.replaceChildren();
    const scope = data.scope === "cluster" ? ", whole cluster" : "";
    document.getElementById("session-count").textContent = `(${data.count}${scope})`;
    for (const s of data.sessions) {
      const row = el("tr", { class: "session" + (s.session_id === selectedSession ? " selected" : "") + (s.debug ? " debug" : ""),
                             "data-session": s.session_id, title: "trace " + s.trace_id });
      row.append(el("td", { class: "mono" }, s.session_id.slice(-12)), el("td", { class: "mono" }, s.instance_id || "-"),
                 el("td", {}, s.user || "-"),
                 el("td", { class: "mono" }, s.peer), el("td", {}, `${s.messages_in}/${s.messages_out}`),
                 el("td", { class: "channels" }, (s.channels || []).join(", ") || "-"));
      row.addEventListener("click", () => {
        selectedSession = s.session_id;
        for (const r of body.querySelectorAll("tr.selected")) r.classList.remove("selected");
        row.classList.add("selected");
        document.getElementById("query").value = s.trace_id; search(s.trace_id);
      });
      body.append(row);
    }
    setStatus(status, (data.count ? "Click a session to see its timeline." : "No live sessions.")
      + (data.cluster_error ? " This instance only: " + data.cluster_error : ""));
  } catch (e) { setStatus(status, "Cannot list sessions: " + e.message, true); }
}
async function search(query) {
  query = query.trim();
  const status = document.getElementById("timeline-status");
  const body = document.getElementById("timeline");
  const links = document.getElementById("links");
  body.replaceChildren(); links.replaceChildren();
  if (!query) return;
  if (!token()) { setStatus(status, "Enter the admin token to search logs."); return; }
  setStatus(status, "Searching…");
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
      const cell = el("td", { colspan: "5" }, title);
      if (session) cell.append(" ", copyButton(session, "copy session id"));
      const traceId = lines.find(l => l.trace_id) && lines.find(l => l.trace_id).trace_id;
      if (traceId) cell.append(" ", copyButton(traceId, "copy trace id"));
      header.append(cell);
      body.append(header);
      if (session) body.append(summaryRow(lines));
      const t0 = Date.parse(lines[0].time);
      const span = Math.max(1, Date.parse(lines[lines.length - 1].time) - t0);
      for (const line of lines) {
        const recording = Array.isArray(line.flight_recorder) ? line.flight_recorder : null;
        const fields = Object.entries(line).filter(([k]) => !HIDDEN.has(k) && !(recording && k === "flight_recorder"))
          .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
        const row = el("tr", { "data-msg": line.msg || "", class: "lane-" + lane(line) });
        const offset = Date.parse(line.time) - t0;
        const when = el("td", { class: "mono when", title: line.time || "" });
        when.append(el("div", {}, "+" + (offset / 1000).toFixed(3) + " s"),
                    el("div", { class: "bar", style: `margin-left:${(100 * offset / span).toFixed(1)}%` }));
        row.append(when,
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
    setStatus(status, `${data.lines.length} line(s)` + (data.corrupt ? `, ${data.corrupt} corrupt line(s) skipped` : "")
      + (data.truncated ? " (first lines only)" : "")
      + (data.scan_capped ? " (the search stopped before the oldest files)" : "")
      + (data.lines.length ? "" : ": no line has that trace or session id (a short id needs 8 or more characters)"));
  } catch (e) { setStatus(status, "Search failed: " + e.message, true); }
}
// Which part of the session wrote a line: its task, or a message's span.
function lane(line) {
  if (line["ws.message.type"] !== undefined) return "message";
  const target = (line.target || "").replace("wstrace::", "");
  if (target.endsWith("reader")) return "reader";
  if (target.endsWith("writer")) return "writer";
  if (target.endsWith("heartbeat")) return "heartbeat";
  return "session";
}
// One line over a session's story: its age, how it ended, its rate.
function summaryRow(lines) {
  const first = Date.parse(lines[0].time), last = Date.parse(lines[lines.length - 1].time);
  const closed = lines.find(l => l.msg === "session closed");
  const opened = lines.find(l => l.msg === "session opened");
  const parts = [];
  if (closed) {
    const seconds = Math.max(0.001, (closed.duration_ms || (last - first)) / 1000);
    parts.push(`lived ${seconds.toFixed(3)} s`,
               `closed ${closed.close_code}${closed.close_reason ? " (" + closed.close_reason + ")" : ""} by ${closed.closed_by}`,
               `${closed.messages_in} in / ${closed.messages_out} out`,
               `${((closed.messages_in + closed.messages_out) / seconds).toFixed(1)} msg/s`);
  } else {
    parts.push(`open for ${((Date.now() - first) / 1000).toFixed(0)} s`, `idle ${((Date.now() - last) / 1000).toFixed(0)} s since its last line`);
  }
  if (opened && opened.debug) parts.push(`debug session (${opened.debug_reason})`);
  const row = el("tr", { class: "session-summary" });
  row.append(el("td", { colspan: "5", class: "note" }, parts.join(" · ")));
  return row;
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
    loadSessions(); loadStats();
  });
  document.getElementById("search").addEventListener("submit", (e) => { e.preventDefault(); search(document.getElementById("query").value); });
  config = await (await fetch("/explorer/config.json")).json();
  await Promise.all([loadSessions(), loadStats()]);
  setInterval(() => { loadSessions(); loadStats(); }, 5000);
  if (hash.get("q")) { document.getElementById("query").value = hash.get("q"); await search(hash.get("q")); }
}
init();
