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
async function api(path, method = "GET", body = undefined) {
  const headers = { "Authorization": "Bearer " + token() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Error("the admin token is not right: enter the server's admin token above");
  if (!response.ok) throw new Error((answer.error && answer.error.message) || ("HTTP " + response.status));
  return answer;
}
// How long the explorer's debug button traces a session.
const DEBUG_MINUTES = 15;
// Switches a live session's debug tracing on (for DEBUG_MINUTES) or off.
function debugButton(s) {
  const button = el("button", { type: "button", class: "copy", "data-debug-toggle": s.session_id },
                    s.debug ? "debug off" : "debug on");
  button.title = s.debug ? "back to ordinary sampling" : `trace every message for ${DEBUG_MINUTES} minutes`;
  button.addEventListener("click", async (e) => {
    e.stopPropagation();
    const path = `/api/sessions/${s.session_id}/debug`;
    const status = document.getElementById("sessions-status");
    try {
      if (s.debug) await api(path, "DELETE");
      else await api(path, "POST", { minutes: DEBUG_MINUTES, requested_by: "session explorer" });
      await loadSessions();
    } catch (err) { setStatus(status, "Cannot switch debug tracing: " + err.message, true); }
  });
  return button;
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
                 el("td", { class: "mono", title: `TCP peer ${s.peer}` }, s.client || s.peer), el("td", {}, `${s.messages_in}/${s.messages_out}`),
                 el("td", { class: "channels" }, (s.channels || []).join(", ") || "-"));
      const actions = el("td");
      actions.append(debugButton(s));
      row.append(actions);
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
    const sessions = [...groups.keys()].filter(Boolean).length;
    for (const [session, lines] of groups) {
      const opened = lines.find(l => l.msg === "session opened");
      const origin = opened ? opened["trace.origin"] : undefined;
      const continued = origin && origin !== "new";
      // Another client may continue any trace: said only when this trace
      // does hold other sessions.
      const shared = continued && sessions > 1
        ? ": not necessarily the same client as the other sessions of this trace" : "";
      const title = session
        ? `session ${session}` + (continued ? ` · continued the caller's trace (traceparent from ${origin})${shared}` : origin ? " · started this trace" : "")
        : "server lines (no session)";
      const header = el("tr", { class: "session-group" + (continued ? " continued" : ""), "data-session-group": session });
      const cell = el("td", { colspan: "5" }, title);
      if (session) cell.append(" ", copyButton(session, "copy session id"));
      const traceId = lines.find(l => l.trace_id) && lines.find(l => l.trace_id).trace_id;
      if (traceId) cell.append(" ", copyButton(traceId, "copy trace id"));
      header.append(cell);
      body.append(header);
      if (session) body.append(summaryRow(lines));
      const spans = session ? sessionSpans(lines) : null;
      if (spans) body.append(waterfallRow(spans));
      const t0 = spans ? spans.t0 : micros(lines[0].time);
      for (const line of lines) {
        const recording = Array.isArray(line.flight_recorder) ? line.flight_recorder : null;
        const fields = Object.entries(line).filter(([k]) => !HIDDEN.has(k) && !(recording && k === "flight_recorder"))
          .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
        const laneName = spans ? spans.laneOf(line) : lane(line);
        const row = el("tr", { "data-msg": line.msg || "", class: "lane-" + laneName, id: lineId(line) });
        row.append(el("td", { class: "mono when", title: line.time || "" }, "+" + duration(micros(line.time) - t0)),
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
      + (data.scope === "cluster" ? ` from ${(data.instances || []).length} instance(s)` : "")
      + (Array.isArray(data.partial) ? "; incomplete, no answer from: "
        + data.partial.map(p => p.instance_id || `${p.instances} more`).join(", ") : "")
      + (data.cluster_error ? "; other instances not asked: " + data.cluster_error : "")
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
// A bunyan time in microseconds since the epoch (Date.parse keeps only
// milliseconds, and a whole session can last two of them).
function micros(time) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(time || "");
  if (!m) return Date.parse(time) * 1000;
  return Date.parse(m[1] + "Z") * 1000 + Number(((m[2] || "") + "000000").slice(0, 6));
}
function duration(us) {
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(3)} ms`;
  return `${(us / 1e6).toFixed(3)} s`;
}
// Row ids for the lines on the page, kept off the lines themselves (their
// fields are shown as they are).
const lineIds = new WeakMap();
let linesShown = 0;
function lineId(line) {
  if (!lineIds.has(line)) lineIds.set(line, "line-" + (++linesShown));
  return lineIds.get(line);
}
// The session's spans as its lines tell them. `ws.session` runs from
// `session opened` to `session closed` (or to now while it is open); a
// sampled message's `ws.receive` span ends at its `message handled` line,
// which carries its duration. Every other line is a point on the lane of
// the task (or message span) that wrote it.
function sessionSpans(lines) {
  const opened = lines.find(l => l.msg === "session opened");
  const closed = lines.find(l => l.msg === "session closed");
  const sessionSpan = (opened || closed || {}).span_id;
  const messages = [];
  const messageSpans = new Set();
  for (const l of lines) {
    if (l.msg !== "message handled" || typeof l.duration_us !== "number") continue;
    const end = micros(l.time);
    messages.push({ start: end - l.duration_us, end, line: l });
    messageSpans.add(l.span_id);
  }
  const laneOf = (l) => (l.span_id && l.span_id !== sessionSpan && (messageSpans.has(l.span_id) || l["ws.message.type"] !== undefined))
    ? "message" : lane(l);
  const first = micros(lines[0].time);
  const t0 = Math.min(opened ? micros(opened.time) : first, ...messages.map(m => m.start));
  const live = !closed;
  const last = micros(lines[lines.length - 1].time);
  const end = live ? Math.max(last, Date.now() * 1000) : micros(closed.time);
  return { t0, end: Math.max(end, t0 + 1), live, laneOf, messages,
           session: { start: opened ? micros(opened.time) : first, end }, lines };
}
// Scrolls to a line's row and marks it.
function showLine(id) {
  const row = document.getElementById(id);
  if (!row) return;
  for (const r of document.querySelectorAll("tr.picked")) r.classList.remove("picked");
  row.classList.add("picked");
  row.scrollIntoView({ block: "center" });
}
const LANES = [["session", "ws.session"], ["reader", "reader"], ["writer", "writer"],
               ["heartbeat", "heartbeat"], ["message", "message spans"]];
// A waterfall over the session's life: one lane per task, the session's
// and the sampled messages' spans as bars, every line as a mark that
// leads to its row below.
function waterfallRow(spans) {
  const total = spans.end - spans.t0;
  const at = (us) => (100 * (us - spans.t0) / total);
  const chart = el("div", { class: "waterfall", "data-waterfall": "" });
  const axis = el("div", { class: "wf-lane wf-axis" });
  const ticks = el("div", { class: "wf-track" });
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    ticks.append(el("span", { class: "wf-tick", style: `left:${(100 * f).toFixed(2)}%` }, duration(total * f)));
  }
  axis.append(el("div", { class: "wf-name" }, spans.live ? "open, so far" : ""), ticks);
  chart.append(axis);
  const tracks = {};
  for (const [key, name] of LANES) {
    const row = el("div", { class: "wf-lane lane-" + key, "data-lane": key });
    const track = el("div", { class: "wf-track" });
    row.append(el("div", { class: "wf-name mono" }, name), track);
    chart.append(row);
    tracks[key] = track;
  }
  const bar = (track, start, end, kind, title) => {
    const width = Math.max(at(end) - at(start), 0);
    track.append(el("div", { class: "wf-bar " + kind, title,
                             style: `left:${at(start).toFixed(3)}%;width:max(${width.toFixed(3)}%, 2px)` }));
  };
  bar(tracks.session, spans.session.start, spans.session.end, "span-session" + (spans.live ? " live" : ""),
      `ws.session · ${duration(spans.session.end - spans.session.start)}${spans.live ? " so far" : ""}`);
  for (const m of spans.messages) {
    bar(tracks.message, m.start, m.end, "span-message",
        `ws.receive ${m.line["ws.message.type"] || ""} ${m.line["ws.message.size"] ?? "?"} B · ${duration(m.line.duration_us)}`
        + ` · at +${duration(m.start - spans.t0)}`);
  }
  for (const l of spans.lines) {
    const mark = el("button", { type: "button", class: "wf-mark lvl-" + l.level,
                                style: `left:${at(micros(l.time)).toFixed(3)}%`,
                                title: `+${duration(micros(l.time) - spans.t0)} ${l.msg || ""}` });
    mark.addEventListener("click", () => showLine(lineId(l)));
    tracks[spans.laneOf(l)].append(mark);
  }
  const cell = el("td", { colspan: "5" });
  cell.append(chart);
  const row = el("tr", { class: "waterfall-row" });
  row.append(cell);
  return row;
}
// One line over a session's story: its age, how it ended, its rate.
function summaryRow(lines) {
  const first = micros(lines[0].time), last = micros(lines[lines.length - 1].time);
  const closed = lines.find(l => l.msg === "session closed");
  const opened = lines.find(l => l.msg === "session opened");
  const parts = [];
  if (closed) {
    const seconds = Math.max(1e-6, (last - first) / 1e6, (closed.duration_ms || 0) / 1000);
    parts.push(`lived ${duration(seconds * 1e6)}`,
               `closed ${closed.close_code}${closed.close_reason ? " (" + closed.close_reason + ")" : ""} by ${closed.closed_by}`,
               `${closed.messages_in} in / ${closed.messages_out} out`);
    // A rate over less than a second says nothing (970 µs would be
    // "9278.4 msg/s").
    if (seconds >= 1) parts.push(`${((closed.messages_in + closed.messages_out) / seconds).toFixed(1)} msg/s`);
  } else {
    parts.push(`open for ${duration(Date.now() * 1000 - first)}`, `idle ${duration(Math.max(0, Date.now() * 1000 - last))} since its last line`);
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
  if (hash.get("token")) {
    sessionStorage.setItem("wstrace-admin-token", hash.get("token"));
    // Nor stays in the address bar, the history or a copied link.
    hash.delete("token");
    const rest = hash.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
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
