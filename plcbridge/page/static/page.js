// The station page: polls the daemon that served it (/api/status every second, the live
// image twice a second, /api/decisions when a new decision is there) and fills the page in.
// Plain browser JavaScript, no library, nothing loaded from anywhere else. Every value from
// the daemon is shown as text (textContent), never parsed as HTML.
//
// A browser is often on the line PC itself, on the two cores the model needs, and in Chromium
// every request costs a few ms of CPU and every image drawn several more: the page asks for
// nothing while its tab is hidden, shows a screenful of decisions, and loads thumbnails one at
// a time, newest first, only for rows still on screen: the first few at once, then one a
// second (at 30 decisions a second most rows are gone within a second, and most of them never
// get one: the rejects of a station that keeps a few frames a minute all do).
"use strict";

(function () {
  const STATUS_EVERY_MS = 1000;
  const LIVE_EVERY_MS = 500;
  const DECISIONS_SHOWN = 20;
  const THUMB_BURST = 8;  // thumbnails loaded without pause when the page opens on a full list,
  const THUMB_EVERY_MS = 1000;  // then one a second, while rows keep coming

  const state = {
    hasFrame: false, liveBusy: false, liveN: 0, newest: undefined, rows: new Map(), lastOk: null, statusPaused: false,
  };
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

  // Every second the same few dozen values come back, most unchanged: a node is touched only
  // when its text or class differs, and table rows are kept and updated, never rebuilt, so
  // the browser lays out and paints only what changed (a browser on the line PC shares the
  // model's two cores; rebuilding every table each second cost it a burst of work each time).
  function setText(node, text, cls) {
    const t = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== t) node.textContent = t;
    if (cls !== undefined && node.className !== cls) node.className = cls;
  }

  // Make `tbody` hold one row per key, in `keys` order: existing rows are kept (moved only if
  // their place changed), missing ones made with make(key) (`cells` tds), gone ones removed.
  // update(tr, key) then sets the cells.
  function syncRows(tbody, keys, cells, update) {
    const have = new Map();
    for (const tr of Array.from(tbody.rows)) {
      if (tr.dataset.key !== undefined && !have.has(tr.dataset.key)) have.set(tr.dataset.key, tr);
      else tr.remove();
    }
    const wanted = new Set(keys.map(String));
    for (const [k, tr] of have) if (!wanted.has(k)) { tr.remove(); have.delete(k); }
    let at = tbody.firstElementChild;
    for (const key of keys.map(String)) {
      let tr = have.get(key);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.key = key;
        for (let i = 0; i < cells; i++) tr.appendChild(document.createElement("td"));
      }
      if (tr !== at) tbody.insertBefore(tr, at);
      else at = at.nextElementSibling;
      update(tr, key);
    }
  }

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
    setText($("station"), s.station.name);
    setText($("mode"), s.station.mode + " · " + s.station.protocol + " " + s.station.plc + " · camera " + s.station.camera);
    const title = s.station.name + (s.ready ? " · READY" : " · NOT READY");
    if (document.title !== title) document.title = title;
    setText($("ready"), s.ready ? "READY" : "NOT READY", "badge " + (s.ready ? "ok" : "bad"));
    const alerts = $("alerts");
    const bad = s.readiness.filter((p) => !p.ok);
    const text = bad.map((p) => p.part + ": " + p.reason);
    if (Array.from(alerts.children, (d) => d.textContent).join("\n") !== text.join("\n")) {
      alerts.replaceChildren(...text.map((t) => el("div", t)));
    }
    if (alerts.hidden !== (bad.length === 0)) alerts.hidden = bad.length === 0;
  }

  function renderReadiness(s) {
    const parts = new Map(s.readiness.map((p) => [p.part, p]));
    syncRows($("readiness").tBodies[0], Array.from(parts.keys()), 4, (tr, key) => {
      const p = parts.get(key), c = tr.cells;
      tr.dataset.part = p.part;
      tr.dataset.ok = String(p.ok);
      setText(c[0], p.part);
      setText(c[1], p.ok ? "OK" : "NOT OK", p.ok ? "ok" : "bad");
      setText(c[2], p.reason || "");
      setText(c[3], p.ok ? "" : localTime(p.since_utc) + " (" + p.for_s + " s)");
    });
    const m = s.model;
    setText($("model"), m.loaded ? "model v" + m.version + " (" + m.manifest + ")" : "model NOT LOADED: " + (m.error || "loading"));
    const w = s.write_loop, late = w.lateness_ms || {};
    setText($("loop"), "write loop: period " + w.period_ms + " ms, " + w.ticks + " ticks, " + w.overruns +
      " overruns; lateness p50 " + ms(late.p50) + ", p99 " + ms(late.p99) + ", max " + ms(late.max));
  }

  function renderBlock(table, block, decode) {
    const body = table.tBodies[0];
    if (!block) {
      syncRows(body, [" none"], 3, (tr) => setText(tr.cells[0], "none yet", "muted"));
      return;
    }
    const values = block.values;
    syncRows(body, [...Object.keys(values), " age"], 3, (tr, key) => {
      const c = tr.cells;
      if (key === " age") {
        setText(c[0], "age", "muted");
        setText(c[1], ms(block.age_ms), "num muted");
        return;
      }
      tr.dataset.signal = key;
      tr.dataset.value = String(values[key]);
      setText(c[0], key);
      setText(c[1], values[key], "num");
      setText(c[2], decode(key, values[key], block), "bits");
    });
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
      setText(link, "connected (session " + l.sessions + "), reply " + ms(l.reply_age_ms) + " old, " +
        l.exchanges + " exchanges, " + l.late_exchanges + " late, " + l.reconnects + " reconnects" +
        (l.inputs_ok ? "" : " · INPUTS STALE"), l.inputs_ok ? "" : "warn");
    } else {
      setText(link, "NOT CONNECTED: " + (l.last_error || "connecting") + " · " + l.reconnects + " reconnects", "bad");
    }
    renderMqtt(s.mqtt);
    renderBlock($("outputs"), s.plc.outputs, decodeOutput);
    renderBlock($("inputs"), s.plc.inputs, () => "");
  }

  // Results to the plant ([mqtt]): the broker connection and the spool's backlog; hidden when off.
  function renderMqtt(m) {
    const p = $("mqtt");
    if (p.hidden !== !m) p.hidden = !m;
    if (!m) return;
    const backlog = "backlog " + m.backlog_messages + " (" + m.backlog_bytes + " bytes" +
      (m.backlog_oldest_age_s === null ? "" : ", oldest " + m.backlog_oldest_age_s + " s") + ")";
    const counts = m.published + " published, " + m.dropped + " dropped";
    if (m.connected) setText(p, "MQTT: connected to " + m.broker + " · " + backlog + " · " + counts, m.backlog_messages > 100 ? "warn" : "");
    else setText(p, "MQTT: NOT CONNECTED to " + m.broker + ": " + (m.last_error || m.state) + " · " + backlog + " · " + counts, "bad");
  }

  function renderCounts(s) {
    const lines = {
      "since start": [s.counts.since_start, s.yield.since_start],
      "last hour": [s.counts.last_hour, s.yield.last_hour],
    };
    syncRows($("counts").tBodies[0], Object.keys(lines), 5, (tr, key) => {
      const [counts, y] = lines[key], c = tr.cells;
      setText(c[0], key);
      setText(c[1], counts.PASS || 0, "num");
      setText(c[2], counts.FAIL || 0, "num");
      setText(c[3], counts.FAILSAFE || 0, "num");
      setText(c[4], pct(y), "num");
    });
  }

  async function pollStatus() {
    if (document.hidden) {  // resumed by the visibilitychange listener
      state.statusPaused = true;
      return;
    }
    try {
      const s = await getJSON("/api/status");
      state.lastOk = Date.now();
      setText($("conn"), "updated " + localTime(s.time_utc) + (s.uptime_s !== null ? " · up " + Math.round(s.uptime_s) + " s" : ""));
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
      setText($("ready"), "NO ANSWER", "badge unknown");
    } finally {
      setTimeout(pollStatus, STATUS_EVERY_MS);
    }
  }

  // ------------------------------------------------------------------ decisions

  function decisionRow(d) {
    const thumb = td("");
    const tr = row([
      td(localTime(d.time_utc)), td(d.result, d.result), td(typeof d.score === "number" ? d.score.toFixed(4) : "", "num"),
      td(d.findings_summary || "", "findings"), td(d.fault === "NONE" ? "" : d.fault), td(d.part_id ?? "", "num"), td(d.trigger_seq ?? "", "num"),
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
    // Rows already shown stay where they are in the DOM; new ones go in, gone ones out.
    const body = $("decisions").tBodies[0];
    for (const tr of Array.from(body.rows)) if (!rows.has(tr.dataset.decision)) tr.remove();
    let at = body.firstElementChild;
    for (const r of rows.values()) {
      if (r.tr !== at) body.insertBefore(r.tr, at);
      else at = at.nextElementSibling;
    }
    dropGoneThumbs();
  }

  // One thumbnail at a time, from a bucket of THUMB_BURST that refills one per THUMB_EVERY_MS:
  // each is an image read from disk and scaled on one of the endpoint's few worker threads,
  // then decoded and painted here, on what may be the model's cores. Newest first, and only
  // for rows still shown: the queue never holds more than the list.
  let thumbs = [];
  let thumbBusy = false;
  let thumbTokens = THUMB_BURST;
  let thumbRefilled = performance.now();
  let thumbTimer = null;

  function loadThumb(img, url) {
    thumbs.unshift([img, url]);
    nextThumb();
  }

  function dropGoneThumbs() {
    thumbs = thumbs.filter(([img]) => img.isConnected);
  }

  function nextThumb() {
    if (thumbBusy || thumbTimer !== null || thumbs.length === 0 || document.hidden) return;
    const now = performance.now();
    thumbTokens = Math.min(THUMB_BURST, thumbTokens + (now - thumbRefilled) / THUMB_EVERY_MS);
    thumbRefilled = now;
    if (thumbTokens < 1) {
      thumbTimer = setTimeout(() => { thumbTimer = null; nextThumb(); }, (1 - thumbTokens) * THUMB_EVERY_MS);
      return;
    }
    thumbTokens -= 1;
    const [img, url] = thumbs.shift();
    thumbBusy = true;
    const done = () => { thumbBusy = false; nextThumb(); };
    img.addEventListener("load", done, { once: true });
    img.addEventListener("error", done, { once: true });
    img.src = url;
  }

  // ------------------------------------------------------------------ live image

  function pollLive() {
    if (state.hasFrame && !state.liveBusy && !document.hidden) {  // never asked before a frame exists: no 404s
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
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) return;
      if (state.statusPaused) {
        state.statusPaused = false;
        pollStatus();
      }
      nextThumb();
    });
    pollStatus();
    setInterval(pollLive, LIVE_EVERY_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
