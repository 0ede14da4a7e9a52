// The event explorer's page: renders snapshots pushed over Server-Sent Events.
// No framework, no build step. The selected order lives in the URL hash (#order=<id>).
"use strict";

const LANES = ["order", "inventory", "product", "user"];
const COLORS = { order: "#7aa2f7", inventory: "#9ece6a", product: "#e0af68", user: "#bb9af7" };
const color = (service) => COLORS[service] || "#8a94a8";
const $ = (id) => document.getElementById(id);
const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const clock = (iso) => (iso ? iso.slice(11, 23) : "");
const short = (id) => (id ? id.slice(0, 8) : "");

let last = null;          // the latest snapshot
let drawn = "";           // the chain as last drawn (JSON), to redraw only on change
let fetchedAt = 0;
let fetching = false;

function selected() {
  const match = location.hash.match(/order=([^&]+)/);
  return match ? decodeURIComponent(match[1]) : null;
}

function current() {
  return selected() || (last && last.orders.length ? last.orders[0].id : null);
}

// -- live stream ------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false); // EventSource reconnects by itself
}

function setLive(on) {
  $("live").className = on ? "live" : "live off";
  $("live").lastElementChild.textContent = on ? "live" : "reconnecting…";
}

function render(snapshot) {
  last = snapshot;
  $("prefix").textContent = snapshot.prefix || "(none)";
  $("records").textContent = snapshot.records.toLocaleString();
  for (const [name, value] of Object.entries(snapshot.counters)) {
    const cell = $("count-" + name);
    if (cell) {
      cell.textContent = value.toLocaleString();
      cell.classList.toggle("zero", value === 0);
    }
  }
  renderOrders(snapshot.orders);
  renderTopics(snapshot.topics);
  renderTopicNames(snapshot.topics);
  renderGroups(snapshot.groups);
  renderLetters(snapshot.dead_letters);
  renderUndecodable(snapshot.undecodable);
  refreshChain();
}

// -- orders -----------------------------------------------------------------------------

function renderOrders(orders) {
  const list = $("orders");
  if (!orders.length) return;
  const chosen = current();
  list.innerHTML = orders.map((o) => `
    <li class="order${o.id === chosen ? " selected" : ""}" data-order="${esc(o.id)}" data-state="${esc(o.state)}" title="${esc(o.id)}">
      <span class="state ${esc(o.state)}">${esc(o.state)}</span>
      <span><span class="id">${esc(short(o.id))}</span><br><span class="when">${esc(clock(o.created))}</span></span>
      <span class="dots">${o.services.map((s) => `<i class="dot" style="background:${color(s)}" title="${esc(s)}"></i>`).join("")}<span class="count" title="events">${o.events}</span></span>
    </li>`).join("");
}

$("orders").addEventListener("click", (event) => {
  const item = event.target.closest("li.order");
  if (item) location.hash = "order=" + encodeURIComponent(item.dataset.order);
});

window.addEventListener("hashchange", () => {
  drawn = "";
  fetchedAt = 0;
  if (last) render(last);
});

// -- the causal chain -------------------------------------------------------------------

// The chain changes with new events and with the groups' offsets (who has read a hop):
// fetched again on a snapshot, at most once a second, and redrawn only when it changed.
async function refreshChain() {
  const id = current();
  if (!id || fetching) return;
  const wait = fetchedAt + 1000 - Date.now();
  if (wait > 0) {
    setTimeout(refreshChain, wait);
    return;
  }
  fetching = true;
  fetchedAt = Date.now();
  try {
    const response = await fetch("/api/orders/" + encodeURIComponent(id));
    if (response.ok) {
      const text = await response.text();
      if (text !== drawn || !$("chain").querySelector("svg")) {
        drawn = text;
        drawChain(JSON.parse(text));
      }
    } else if (response.status === 404) {
      drawn = "";
      $("chain-title").textContent = short(id);
      $("chain").innerHTML = `<p class="empty">No events of order ${esc(id)} in view (yet).</p>`;
    }
  } finally {
    fetching = false;
  }
}

// The order's trace: a link when it was sampled (and so exported) and the explorer knows
// where traces are shown (EXPLORER_TRACE_URL); otherwise its id, and why there is no link.
function traceLink(trace) {
  if (!trace) return ` <span class="trace none" title="its events carry no traceparent">no trace</span>`;
  if (trace.url) return ` <a class="trace" href="${esc(trace.url)}" target="_blank" rel="noopener noreferrer" title="trace ${esc(trace.id)}">trace ${esc(short(trace.id))} ↗</a>`;
  const why = trace.sampled ? "sampled; no trace address set (EXPLORER_TRACE_URL)" : "not sampled: its spans were not exported";
  return ` <span class="trace ${trace.sampled ? "unlinked" : "unsampled"}" title="trace ${esc(trace.id)}: ${esc(why)}">trace ${esc(short(trace.id))} · ${trace.sampled ? "sampled" : "not sampled"}</span>`;
}

function drawChain(order) {
  const events = order.chain;
  $("chain").dataset.order = order.id;
  $("chain-title").innerHTML = `<code>${esc(order.id)}</code> <span class="state ${esc(order.state)}">${esc(order.state)}</span>${traceLink(order.trace)}`;
  const lanes = [...LANES, ...order.lanes.filter((s) => !LANES.includes(s))];
  const roots = events.filter((e) => e.cause === null);
  const box = $("chain");
  const width = Math.max(box.clientWidth - 4, 760);
  const requestWidth = 112, top = 44, rowHeight = 78, nodeHeight = 58;
  // lanes with events are twice as wide as those without: the chain gets the room
  const busy = new Set(events.map((e) => e.service));
  const weights = lanes.map((s) => (busy.has(s) ? 2 : 1));
  const unit = (width - requestWidth) / weights.reduce((a, b) => a + b, 0);
  const lefts = weights.map((_, i) => requestWidth + unit * weights.slice(0, i).reduce((a, b) => a + b, 0));
  const laneWidth = (service) => unit * weights[lanes.indexOf(service)];
  const nodeWidth = Math.min(2 * unit - 48, 232);
  const height = top + events.length * rowHeight + 12;
  const x = (service) => lefts[lanes.indexOf(service)] + laneWidth(service) / 2;
  const y = (index) => top + index * rowHeight + 8;
  const started = events.length ? Date.parse(events[0].time) : 0;

  const parts = [`<svg width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="causal chain">`,
    `<defs>${lanes.map((s) => `<marker id="arrow-${esc(s)}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="${color(s)}"/></marker>`).join("")}</defs>`];
  parts.push(`<g class="lane" data-service="request"><text class="lane-name" x="${requestWidth / 2}" y="20" text-anchor="middle" style="fill:#7d889e">request</text></g>`);
  lanes.forEach((service, i) => {
    const left = lefts[i], w = laneWidth(service);
    parts.push(`<g class="lane" data-service="${esc(service)}">`,
      `<rect class="lane-bg" x="${left + 4}" y="30" width="${w - 8}" height="${height - 34}" rx="8"/>`,
      `<text class="lane-name" x="${left + w / 2}" y="20" text-anchor="middle" style="fill:${color(service)}"><tspan font-size="9">●</tspan> ${esc(service)}</text></g>`);
  });
  // edges first, so nodes sit on top of them
  events.forEach((event, index) => {
    const ex = x(event.service), ey = y(index);
    if (event.cause === null) {
      const sx = requestWidth / 2 + 46, sy = ey + nodeHeight / 2;
      parts.push(`<path class="edge" d="M${sx},${sy} L${ex - nodeWidth / 2 - 2},${sy}" stroke="#4a5468" stroke-dasharray="4 4" marker-end="url(#arrow-${esc(event.service)})"/>`);
      return;
    }
    const cause = events[event.cause];
    const cx = x(cause.service), cy = y(event.cause);
    const stroke = color(cause.service);
    const sy = cy + nodeHeight / 2, my = ey + nodeHeight / 2;
    let d;
    if (cx === ex) { // same lane: a loop along the node's right side
      const side = ex + nodeWidth / 2, bend = 26 + Math.min(30, (my - sy) / 8);
      d = `M${side},${sy} C${side + bend},${sy} ${side + bend},${my} ${side + 2},${my}`;
    } else { // across lanes: from the cause's side to the effect's facing side
      const dir = ex > cx ? 1 : -1;
      const sx = cx + dir * nodeWidth / 2, tx = ex - dir * (nodeWidth / 2 + 2);
      const k = Math.max(16, Math.abs(tx - sx) / 2) * dir;
      d = `M${sx},${sy} C${sx + k},${sy} ${tx - k},${my} ${tx},${my}`;
    }
    parts.push(`<path class="edge" d="${d}" stroke="${stroke}" marker-end="url(#arrow-${esc(cause.service)})"/>`);
  });
  // who has read each hop: a service's consumer group past its offset (filled) or not yet
  events.forEach((event, index) => {
    const cy = y(index) + nodeHeight / 2, from = x(event.service);
    for (const [service, read] of [...event.read_by.map((s) => [s, true]), ...event.waiting.map((s) => [s, false])]) {
      if (!lanes.includes(service) || service === event.service) continue;
      const cx = x(service), dir = cx > from ? 1 : -1;
      const edge = from + dir * nodeWidth / 2;
      parts.push(`<g class="read" data-service="${esc(service)}" data-read="${read}">`,
        `<path class="read-line" d="M${edge},${cy} L${cx - dir * 8},${cy}" style="stroke:${color(service)}"/>`,
        `<circle cx="${cx}" cy="${cy}" r="6" class="${read ? "read-dot" : "wait-dot"}" style="stroke:${color(service)};${read ? "fill:" + color(service) : ""}"/>`,
        `<text class="read-text" x="${cx + 11}" y="${cy + 4}">${read ? "read" : "not yet"}</text>`,
        `<title>${esc(service)}'s consumer group ${read ? "has read past" : "has not yet read"} ${esc(event.where)}</title></g>`);
    }
  });
  roots.forEach((event) => {
    const index = events.indexOf(event), cy = y(index) + nodeHeight / 2;
    parts.push(`<g class="root"><rect class="request" x="${requestWidth / 2 - 52}" y="${cy - 14}" width="98" height="28" rx="14"/>`,
      `<text class="request-text" x="${requestWidth / 2 - 3}" y="${cy + 4}" text-anchor="middle">${esc(event.causation_id ? "req " + short(event.causation_id) : "no cause")}</text>`,
      `<title>caused by ${esc(event.causation_id || "nothing recorded")} (not an event of this order: an HTTP request)</title></g>`);
  });
  events.forEach((event, index) => {
    const left = x(event.service) - nodeWidth / 2, top_ = y(index);
    const delta = Date.parse(event.time) - started;
    parts.push(`<g class="hop" data-type="${esc(event.type)}" data-service="${esc(event.service)}" data-where="${esc(event.where)}">`,
      `<rect class="node" x="${left}" y="${top_}" width="${nodeWidth}" height="${nodeHeight}" rx="9" stroke="${color(event.service)}"/>`,
      `<text class="type" x="${left + 12}" y="${top_ + 19}" style="fill:${color(event.service)}">${esc(event.type)}</text>`,
      `<text class="where" x="${left + 12}" y="${top_ + 36}">${esc(event.where)}</text>`,
      `<text class="time" x="${left + 12}" y="${top_ + 51}">${esc(clock(event.time))}${index ? "  +" + delta + " ms" : ""}</text>`,
      `<title>${esc(event.type)} from ${esc(event.source)}\nid ${esc(event.id)}\ncaused by ${esc(event.causation_id || "-")}\ncorrelation ${esc(event.correlation_id || "-")}\nkey ${esc(event.key)}\ntrace ${esc(event.trace_id || "-")}${event.trace_id ? (event.sampled ? " (sampled)" : " (not sampled)") : ""}\n${esc(event.time)}</title></g>`);
  });
  parts.push("</svg>");
  box.innerHTML = parts.join("") + (order.dropped ? `<p class="small">${order.dropped} more events not kept.</p>` : "");
}

// -- topics and groups ------------------------------------------------------------------

function renderTopics(topics) {
  $("topics").innerHTML = topics.map((t) => `
    <tr data-topic="${esc(t.topic)}">
      <td class="name">${esc(t.topic)}</td>
      <td><div class="parts">${t.partitions.map((p) => `<span class="part" title="partition ${p.partition}: offsets ${p.low}..${p.end}">${p.partition}: <b>${p.end}</b></span>`).join("")}</div></td>
      <td class="num">${t.records.toLocaleString()}</td>
    </tr>`).join("") || `<tr><td colspan="3" class="empty">No topics yet.</td></tr>`;
}

function renderGroups(groups) {
  const worst = Math.max(1, ...groups.map((g) => g.lag));
  $("groups").innerHTML = groups.map((g) => `
    <tr data-group="${esc(g.group)}" title="${esc(g.partitions.map((p) => `${p.topic}[${p.partition}] ${p.committed}/${p.end}`).join("\n"))}">
      <td><span class="name">${esc(g.group)}</span><br><span class="small">${esc(g.state)}${g.redrive ? " · redrive progress" : ""}</span></td>
      <td class="small">${esc(g.topics.join(", "))}</td>
      <td class="num"><span class="${g.lag ? "lagN" : "lag0"}">${g.lag ? g.lag.toLocaleString() : "0"}</span>
        <div class="bar"><i style="width:${(100 * g.lag) / worst}%"></i></div></td>
    </tr>`).join("") || `<tr><td colspan="3" class="empty">No group has committed on these topics yet.</td></tr>`;
}

// -- dead letters and undecodable records -----------------------------------------------

function renderLetters(letters) {
  const waiting = {};
  for (const letter of letters) {
    if (!letter.redriven && !letter.outbox && letter.consumer) waiting[letter.consumer] = (waiting[letter.consumer] || 0) + 1;
  }
  const bar = $("redrive-bar");
  const busy = bar.querySelector("button:disabled");
  if (!busy) {
    bar.innerHTML = Object.entries(waiting).map(([consumer, count]) =>
      `<button class="redrive" data-consumer="${esc(consumer)}" title="re-read ${esc(consumer)}'s dead-lettered records from their topics and re-publish them there">Redrive ${esc(consumer)} (${count})</button>`).join("");
  }
  $("letters").innerHTML = letters.map((l) => `
    <li class="letter${l.redriven ? " redriven" : ""}" data-consumer="${esc(l.consumer)}" data-where="${esc(l.where)}">
      <div class="head"><span class="reason">${esc(l.reason)}</span>
        <code>${esc(l.origin)}</code><span class="small">→</span><code>${esc(l.where)}</code>
        <span class="small">${esc(l.consumer)}${l.type ? " · " + esc(l.type) : ""} · ${esc(clock(l.time))}${l.redriven ? " · redriven" : ""}</span></div>
      <div class="error">${esc(l.error)}</div>${l.outbox ? `
      <div class="small">parked in its outbox; once fixed: <code>${esc(l.retry)}</code></div>` : ""}
    </li>`).join("") || `<li class="empty">None. Every record was applied.</li>`;
}

$("redrive-bar").addEventListener("click", async (event) => {
  const button = event.target.closest("button.redrive");
  if (!button) return;
  const consumer = button.dataset.consumer;
  const result = $("redrive-result");
  button.disabled = true;
  result.className = "redrive-result";
  result.textContent = `redriving ${consumer}…`;
  try {
    const response = await fetch("/api/redrive", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ consumer }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || response.statusText);
    const skipped = Object.entries(body.skipped || {}).map(([reason, count]) => `${count} ${reason}`);
    result.textContent = `re-published ${body.republished} dead-lettered event(s) of ${body.consumer} from ${body.topic}` +
      (skipped.length ? `; skipped, never published: ${skipped.join(", ")}` : "");
  } catch (error) {
    result.className = "redrive-result failed";
    result.textContent = String(error.message || error);
  } finally {
    button.disabled = false;
  }
});

function renderUndecodable(records) {
  $("undecodable").innerHTML = records.map((r) => `
    <li class="bad-record" data-where="${esc(r.where)}">
      <code>${esc(r.where)}</code><span class="reason">${esc(r.reason)}</span>
      <span class="small">key ${esc(r.key)} · headers ${esc(r.headers.join(", ") || "none")}</span><code class="error">${esc(r.value)}</code>
    </li>`).join("") || `<li class="empty">None: every record in view decoded.</li>`;
}

// -- searching the log -------------------------------------------------------------------

$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(event.target)) {
    if (String(value).trim() !== "") params.append(name, String(value).trim());
  }
  const summary = $("search-summary");
  summary.className = "search-summary";
  summary.textContent = "searching…";
  try {
    const response = await fetch("/api/search?" + params.toString());
    const body = await response.json();
    if (!response.ok) {
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => `${d.field}: ${d.reason}`).join("; ") : body.detail;
      throw new Error(detail || response.statusText);
    }
    renderSearch(body);
  } catch (error) {
    summary.className = "search-summary failed";
    summary.textContent = "search failed: " + error.message;
    $("search-results").innerHTML = "";
  }
});

function renderSearch(found) {
  const where = found.partitions.map((p) => `${p.topic}[${p.partition}] ${p.read.toLocaleString()}`).join(", ");
  const summary = $("search-summary");
  summary.dataset.read = found.read;
  summary.dataset.found = found.found;
  summary.textContent = `${found.query}: found ${found.found.toLocaleString()}, read ${found.read.toLocaleString()} record(s)` +
    (found.by_key ? " in the key's partition of each topic" : "") + (where ? ` (${where})` : "") +
    (found.complete ? "" : "; stopped at the limit: more may match");
  $("search-results").innerHTML = found.records.map((r) => `
    <tr class="hit" data-id="${esc(r.id)}" data-key="${esc(r.key)}" data-type="${esc(r.type)}" data-where="${esc(`${r.topic}[${r.partition}]@${r.offset}`)}">
      <td>${esc(r.time)}</td><td>${esc(`${r.topic}[${r.partition}]@${r.offset}`)}</td>
      <td>${esc(r.type || "UNDECODABLE")}</td><td>${esc(r.key)}</td><td title="${esc(r.id)}">${esc(r.id)}</td>
    </tr>`).join("") || `<tr><td colspan="5" class="empty">Nothing matches.</td></tr>`;
}

// -- lag over time ----------------------------------------------------------------------

const SPARK = { width: 180, height: 30 };

function sparkline(group) {
  const points = group.points;
  const first = points[0][0], span = Math.max(1, points[points.length - 1][0] - first);
  const top = Math.max(1, group.most);
  const x = (at) => ((at - first) / span) * (SPARK.width - 4) + 2;
  const y = (lag) => SPARK.height - 2 - (lag / top) * (SPARK.height - 4);
  const line = points.map(([at, lag]) => `${x(at).toFixed(1)},${y(lag).toFixed(1)}`).join(" ");
  const [lastAt, lastLag] = points[points.length - 1];
  return `<svg class="spark" data-group="${esc(group.group)}" data-points="${points.length}" width="${SPARK.width}" height="${SPARK.height}" viewBox="0 0 ${SPARK.width} ${SPARK.height}" role="img" aria-label="lag of ${esc(group.group)}, at most ${group.most}">
    <title>${esc(group.group)}: ${points.length} samples, at most ${group.most}, now ${group.lag}</title>
    <line class="base" x1="2" x2="${SPARK.width - 2}" y1="${SPARK.height - 2}" y2="${SPARK.height - 2}"></line>
    <polyline points="${line}"></polyline><circle cx="${x(lastAt).toFixed(1)}" cy="${y(lastLag).toFixed(1)}" r="2"></circle></svg>`;
}



async function refreshLag() {
  let every = 5;
  try {
    const response = await fetch("/api/lag");
    if (response.ok) {
      const history = await response.json();
      every = history.every;
      $("lag-sub").textContent = `records behind, every ${history.every}s, last ${history.points} samples`;
      $("lag-history").innerHTML = history.groups.map((g) => `
        <tr data-group="${esc(g.group)}">
          <td class="name">${esc(g.group)}</td><td>${sparkline(g)}</td>
          <td class="num"><span class="${g.lag ? "lagN" : "lag0"}">${g.lag.toLocaleString()}</span></td>
        </tr>`).join("") || `<tr><td colspan="3" class="empty">No samples yet.</td></tr>`;
    }
  } finally {
    setTimeout(refreshLag, Math.max(1, every) * 1000);
  }
}

function renderTopicNames(topics) {
  const names = topics.map((t) => t.topic).join("\n");
  const list = $("topic-names");
  if (list.dataset.names !== names) {
    list.dataset.names = names;
    list.innerHTML = topics.map((t) => `<option value="${esc(t.topic)}">`).join("");
  }
}

window.addEventListener("resize", () => { drawn = ""; fetchedAt = 0; if (last) refreshChain(); });
connect();
refreshLag();
