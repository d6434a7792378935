// The station page: polls the daemon that served it (/api/status every second, the live
// image twice a second, /api/decisions when a new decision is there) and fills the page in.
// Plain browser JavaScript, no library, nothing loaded from anywhere else. Every value from
// the daemon is shown as text (textContent), never parsed as HTML.
"use strict";

(function () {
  const STATUS_EVERY_MS = 1000;
  const LIVE_EVERY_MS = 500;
  const DECISIONS_SHOWN = 50;

  const state = { hasFrame: false, liveBusy: false, liveN: 0, newest: undefined, rows: new Map(), lastOk: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    return tr;
  }

  function td(text, cls) { return el("td", text, cls); }

  function localTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; }

  function ms(v) { return v === null || v === undefined ? "–" : v + " ms"; }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  // ------------------------------------------------------------------ status

  function renderHeader(s) {
    $("station").textContent = s.station.name;
    $("mode").textContent = s.station.mode + " · " + s.station.protocol + " " + s.station.plc + " · camera " + s.station.camera;
    document.title = s.station.name + (s.ready ? " · READY" : " · NOT READY");
    const badge = $("ready");
    badge.textContent = s.ready ? "READY" : "NOT READY";
    badge.className = "badge " + (s.ready ? "ok" : "bad");
    const alerts = $("alerts");
    const bad = s.readiness.filter((p) => !p.ok);
    alerts.replaceChildren(...bad.map((p) => el("div", p.part + ": " + p.reason)));
    alerts.hidden = bad.length === 0;
  }

  function renderReadiness(s) {
    const rows = s.readiness.map((p) => row([
      td(p.part),
      td(p.ok ? "OK" : "NOT OK", p.ok ? "ok" : "bad"),
      td(p.reason || ""),
      td(p.ok ? "" : localTime(p.since_utc) + " (" + p.for_s + " s)"),
    ]));
    rows.forEach((r, i) => { r.dataset.part = s.readiness[i].part; r.dataset.ok = String(s.readiness[i].ok); });
    $("readiness").tBodies[0].replaceChildren(...rows);
    const m = s.model;
    $("model").textContent = m.loaded ? "model v" + m.version + " (" + m.manifest + ")" : "model NOT LOADED: " + (m.error || "loading");
    const w = s.write_loop, late = w.lateness_ms || {};
    $("loop").textContent = "write loop: period " + w.period_ms + " ms, " + w.ticks + " ticks, " + w.overruns +
      " overruns; lateness p50 " + ms(late.p50) + ", p99 " + ms(late.p99) + ", max " + ms(late.max);
  }

  function renderBlock(table, block, decode) {
    const body = table.tBodies[0];
    if (!block) {
      body.replaceChildren(row([td("none yet", "muted")]));
      return;
    }
    const rows = Object.entries(block.values).map(([name, value]) => {
      const r = row([td(name), td(value, "num"), td(decode(name, value, block), "bits")]);
      r.dataset.signal = name;
      r.dataset.value = String(value);
      return r;
    });
    rows.push(row([td("age", "muted"), td(ms(block.age_ms), "num muted"), td("")]));
    body.replaceChildren(...rows);
  }

  function decodeOutput(name, value, block) {
    if (name === "status") return block.status_bits.join(" ");
    if (name === "result_code") return block.result === null ? "unknown code" : block.result;
    if (name === "fault_code") return block.fault === null ? "unknown code" : block.fault;
    return "";
  }

  function renderPlc(s) {
    const l = s.plc.link;
    const link = $("link");
    if (l.connected) {
      link.className = l.inputs_ok ? "" : "warn";
      link.textContent = "connected (session " + l.sessions + "), reply " + ms(l.reply_age_ms) + " old, " +
        l.exchanges + " exchanges, " + l.late_exchanges + " late, " + l.reconnects + " reconnects" +
        (l.inputs_ok ? "" : " · INPUTS STALE");
    } else {
      link.className = "bad";
      link.textContent = "NOT CONNECTED: " + (l.last_error || "connecting") + " · " + l.reconnects + " reconnects";
    }
    renderBlock($("outputs"), s.plc.outputs, decodeOutput);
    renderBlock($("inputs"), s.plc.inputs, () => "");
  }

  function renderCounts(s) {
    const line = (label, counts, y) => row([
      td(label), td(counts.PASS || 0, "num"), td(counts.FAIL || 0, "num"), td(counts.FAILSAFE || 0, "num"), td(pct(y), "num"),
    ]);
    $("counts").tBodies[0].replaceChildren(
      line("since start", s.counts.since_start, s.yield.since_start),
      line("last hour", s.counts.last_hour, s.yield.last_hour));
  }

  async function pollStatus() {
    try {
      const s = await getJSON("/api/status");
      state.lastOk = Date.now();
      $("conn").textContent = "updated " + localTime(s.time_utc) + (s.uptime_s !== null ? " · up " + Math.round(s.uptime_s) + " s" : "");
      renderHeader(s);
      renderReadiness(s);
      renderPlc(s);
      renderCounts(s);
      state.hasFrame = s.live.decision_id !== null;
      if (s.newest_decision_id !== state.newest) {
        await pollDecisions();
        state.newest = s.newest_decision_id;  // only once shown: a failed fetch is tried again
      }
    } catch (e) {
      $("conn").textContent = "the daemon does not answer" + (state.lastOk ? " (last answer " + Math.round((Date.now() - state.lastOk) / 1000) + " s ago)" : "");
      const badge = $("ready");
      badge.textContent = "NO ANSWER";
      badge.className = "badge unknown";
    } finally {
      setTimeout(pollStatus, STATUS_EVERY_MS);
    }
  }

  // ------------------------------------------------------------------ decisions

  function decisionRow(d) {
    const thumb = td("");
    const tr = row([
      td(localTime(d.time_utc)), td(d.result, d.result), td(typeof d.score === "number" ? d.score.toFixed(4) : "", "num"),
      td(d.fault === "NONE" ? "" : d.fault), td(d.part_id ?? "", "num"), td(d.trigger_seq ?? "", "num"),
      td(d.frame_seq ?? "", "num"), td(d.latency_ms ?? "", "num"), td(d.reason || "", "reason"), thumb,
    ]);
    tr.dataset.decision = d.decision_id;
    return { tr: tr, thumb: thumb, hasThumb: false };
  }

  async function pollDecisions() {
    const data = await getJSON("/api/decisions?limit=" + DECISIONS_SHOWN);
    const rows = new Map();
    for (const d of data.decisions) {
      const r = state.rows.get(d.decision_id) || decisionRow(d);
      if (d.thumb && !r.hasThumb) {  // an archived frame appears once the archive has written it
        const img = el("img");
        img.alt = d.result + " " + d.decision_id;
        r.thumb.replaceChildren(img);
        r.thumb.className = "";
        r.hasThumb = true;
        loadThumb(img, d.thumb);
      } else if (!d.thumb && !r.hasThumb) {
        r.thumb.textContent = d.image ? "not archived" : "no frame";
        r.thumb.className = "muted";
      }
      rows.set(d.decision_id, r);
    }
    state.rows = rows;
    $("decisions").tBodies[0].replaceChildren(...Array.from(rows.values(), (r) => r.tr));
  }

  // One thumbnail at a time: a page opened on a full list asks the daemon for 50 of them, and
  // each is an image read from disk on one of the endpoint's few worker threads.
  const thumbs = [];
  let thumbBusy = false;

  function loadThumb(img, url) {
    thumbs.push([img, url]);
    nextThumb();
  }

  function nextThumb() {
    if (thumbBusy || thumbs.length === 0) return;
    const [img, url] = thumbs.shift();
    thumbBusy = true;
    const done = () => { thumbBusy = false; nextThumb(); };
    img.addEventListener("load", done, { once: true });
    img.addEventListener("error", done, { once: true });
    img.src = url;
  }

  // ------------------------------------------------------------------ live image

  function pollLive() {
    if (state.hasFrame && !state.liveBusy) {  // never asked before a frame exists: no 404s
      state.liveBusy = true;
      $("live").src = "/api/live.jpg?n=" + (++state.liveN);
    }
  }

  function start() {
    const live = $("live");
    live.addEventListener("load", () => {
      state.liveBusy = false;
      live.hidden = false;
      $("live-none").hidden = true;
    });
    live.addEventListener("error", () => { state.liveBusy = false; });
    pollStatus();
    setInterval(pollLive, LIVE_EVERY_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
