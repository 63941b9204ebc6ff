// The page's script; the server inlines it into index.html.
//
// `picamd`: the pure helpers, with no DOM access: reading the multipart stream, frame metadata,
// the X-Motion and X-Detections values, the outlines of the regions, the region command line, and what
// to do when frames stop coming. The tests load this file under node and call them. `startPage`: the
// page itself, run only where there is a document.
"use strict";
const picamd = (() => {
  const MAX_HEADER_BYTES = 65536;
  const MAX_PART_BYTES = 64 * 1024 * 1024;
  const STANDARD_HEADERS = ["content-type", "content-length", "x-frame-id", "x-timestamp", "x-dark-score",
                            "x-night", "x-exposure-us", "x-gain", "x-motion", "x-detections", "x-people"];
  const META_KEYS = ["frame_id", "ts", "dark_score", "night", "exposure_us", "gain", "motion", "detections", "people"];
  const NAME_FORBIDDEN = '=;:,"\\';

  function boundaryOf(contentType) {
    const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType || "");
    return m ? (m[1] || m[2]) : null;
  }

  function headerEnd(buf) {
    for (let i = 0; i + 3 < buf.length; i++) {
      if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) { return i; }
    }
    return -1;
  }

  function ascii(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i++) { text += String.fromCharCode(bytes[i]); }
    return text;
  }

  // Splits multipart/x-mixed-replace bytes, fed in chunks of any size, into parts with
  // lower-cased headers and a body of exactly Content-Length bytes.
  class MultipartReader {
    constructor(boundary) {
      this.delimiter = "--" + boundary;
      this.buf = new Uint8Array(0);
      this.part = null;
    }

    push(chunk) {
      if (this.buf.length === 0) {
        this.buf = chunk;
      } else {
        const joined = new Uint8Array(this.buf.length + chunk.length);
        joined.set(this.buf);
        joined.set(chunk, this.buf.length);
        this.buf = joined;
      }
      const parts = [];
      for (;;) {
        if (this.part === null) {
          const end = headerEnd(this.buf);
          if (end < 0) {
            if (this.buf.length > MAX_HEADER_BYTES) { throw new Error("part headers too long"); }
            break;
          }
          this.part = this.parseHeaders(this.buf.subarray(0, end));
          this.buf = this.buf.subarray(end + 4);
        }
        if (this.buf.length < this.part.length) { break; }
        parts.push({headers: this.part.headers, body: this.buf.slice(0, this.part.length)});
        this.buf = this.buf.subarray(this.part.length);
        this.part = null;
      }
      return parts;
    }

    parseHeaders(bytes) {
      const lines = ascii(bytes).split("\r\n");
      const at = lines.findIndex((line) => line.trim() === this.delimiter);
      if (at < 0) { throw new Error("unexpected data in the stream (no boundary line)"); }
      const headers = {};
      for (const line of lines.slice(at + 1)) {
        const colon = line.indexOf(":");
        if (colon > 0) { headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim(); }
      }
      const length = Number(headers["content-length"]);
      if (!Number.isInteger(length) || length < 0 || length > MAX_PART_BYTES) {
        throw new Error("a stream part without a usable Content-Length");
      }
      return {headers, length};
    }
  }

  function number(value) {
    if (value === undefined || value === null || value === "") { return null; }
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  }

  // The same fields from a stream part's X- headers or from /meta.
  function frameFromHeaders(h) {
    const other = {};
    for (const [key, value] of Object.entries(h)) {
      if (key.startsWith("x-") && !STANDARD_HEADERS.includes(key)) { other[key.slice(2)] = value; }
    }
    return {frame_id: number(h["x-frame-id"]), ts: number(h["x-timestamp"]), dark_score: number(h["x-dark-score"]),
            night: h["x-night"] === "1", exposure_us: number(h["x-exposure-us"]), gain: number(h["x-gain"]),
            motion: h["x-motion"] === undefined ? null : h["x-motion"],
            detections: parseDetections(h["x-detections"]), people: number(h["x-people"]), other};
  }

  function frameFromMeta(m) {
    const other = {};
    for (const [key, value] of Object.entries(m)) {
      if (!META_KEYS.includes(key)) {
        other[key.replace(/_/g, "-")] = typeof value === "string" ? value : JSON.stringify(value);
      }
    }
    return {frame_id: number(m.frame_id), ts: number(m.ts), dark_score: number(m.dark_score), night: Boolean(m.night),
            exposure_us: number(m.exposure_us), gain: number(m.gain), motion: m.motion === undefined ? null : m.motion,
            detections: parseDetections(m.detections), people: number(m.people), other};
  }

  // X-Detections (or /meta's `detections`): {f: frame id, t: time, s: [w, h] the pixels the boxes are in,
  // d: [[x1, y1, x2, y2, score, label, track], ...], g: groups as lists of indices into d}. Gives
  // {frameId, ts, boxes, groups}: each box in fractions of the frame (x, y, w, h), with its label, score,
  // track (0: not tracked), its index in d, its group (1-based, 0: none) and the text drawn on it; null
  // when the value is not that form.
  function parseDetections(value) {
    let tag = value;
    if (typeof value === "string") {
      try { tag = JSON.parse(value); } catch (e) { return null; }
    }
    if (!tag || typeof tag !== "object" || !Array.isArray(tag.d) || !Array.isArray(tag.s)) { return null; }
    const [sw, sh] = tag.s.map(Number);
    if (!(sw > 0 && sh > 0)) { return null; }
    const groups = Array.isArray(tag.g) ? tag.g.filter(Array.isArray).map((g) => g.filter(Number.isInteger)) : null;
    const groupOf = new Map();
    (groups || []).forEach((members, k) => { for (const i of members) { groupOf.set(i, k + 1); } });
    const clamp = (v) => Math.min(1, Math.max(0, v));
    const boxes = [];
    tag.d.forEach((d, index) => {
      if (!Array.isArray(d) || d.length < 6) { return; }
      const [x1, y1, x2, y2] = d.slice(0, 4).map(Number);
      if (![x1, y1, x2, y2].every(Number.isFinite) || x2 <= x1 || y2 <= y1) { return; }
      const score = Number(d[4]), label = String(d[5]), track = Number.isInteger(d[6]) && d[6] > 0 ? d[6] : 0;
      const x = clamp(x1 / sw), y = clamp(y1 / sh);
      boxes.push({x, y, w: clamp(x2 / sw) - x, h: clamp(y2 / sh) - y, score: Number.isFinite(score) ? score : 0, label, track,
                  index, group: groupOf.get(index) || 0,
                  text: label + (track ? " #" + track : "") + (Number.isFinite(score) ? " " + score.toFixed(2) : "")});
    });
    return {frameId: number(tag.f), ts: number(tag.t), boxes, groups};
  }

  // The people line beside the image: how many are in view, and how they stand in groups.
  function peopleSummary(people, detections) {
    const boxes = detections ? detections.boxes.filter((b) => b.label === "person") : [];
    const n = people !== null && people !== undefined ? people : (detections ? boxes.length : null);
    if (n === null) { return "no detection result (detection is off, or nothing has been computed yet)"; }
    let text = n === 0 ? "no one in view" : n === 1 ? "1 person in view" : n + " people in view";
    const sizes = ((detections && detections.groups) || []).map((g) => g.length).filter((k) => k > 0);
    if (sizes.length) {
      const grouped = sizes.reduce((a, b) => a + b, 0);
      text += ": " + (sizes.length === 1 ? "1 group of " + sizes[0] : sizes.length + " groups (" + sizes.join(", ") + ")") +
              (n > grouped ? ", " + (n - grouped) + " alone" : "");
    }
    return text;
  }

  // GET /regions -> [{name, points: [[x, y], ...] in fractions of the frame, state}] for the outlines
  // drawn over the image; `states` (from X-Motion: name -> state) is the newest frame's.
  function regionOutlines(payload, states) {
    if (!payload || !Array.isArray(payload.regions) || !Array.isArray(payload.frame)) { return []; }
    const [fw, fh] = payload.frame.map(Number);
    if (!(fw > 0 && fh > 0)) { return []; }
    const out = [];
    for (const r of payload.regions) {
      if (!r || !Array.isArray(r.points) || r.points.length < 3) { continue; }
      const points = r.points.map((p) => [Number(p[0]) / fw, Number(p[1]) / fh]);
      if (!points.every(([x, y]) => Number.isFinite(x) && Number.isFinite(y))) { continue; }
      const name = String(r.name);
      out.push({name, points, state: String((states && states[name]) || r.state || "UNKNOWN").toUpperCase()});
    }
    return out;
  }

  // "press1=0.1234:RUNNING;door=0.0000:STOPPED" -> [{name, fraction, state}]; null when it is not that form.
  function parseMotion(value) {
    if (typeof value !== "string" || value.trim() === "") { return null; }
    const regions = [];
    for (const item of value.split(";")) {
      const m = /^(.+)=(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?):([A-Za-z_]+)$/.exec(item.trim());
      if (!m) { return null; }
      regions.push({name: m[1], fraction: Number(m[2]), state: m[3].toUpperCase()});
    }
    return regions;
  }

  function nameProblem(name, takenNames) {
    if (!name) { return "give the region a name"; }
    if ([...name].length > 64) { return "the name is longer than 64 characters"; }
    if (/[\p{C}\p{Z}]/u.test(name) || [...name].some((c) => NAME_FORBIDDEN.includes(c))) {
      return "the name cannot contain spaces, = ; : , quotes or backslashes";
    }
    if ((takenNames || []).includes(name)) {
      return "a region named " + name + " exists already: pick another name (or send region del " + name + " first)";
    }
    return "";
  }

  // The rectangle `rect` ([x0, y0, x1, y1] as fractions of the image) in camera frame pixels, and the
  // `region add` line for it; `error` says what is missing, and then there is no command.
  function regionCommand(rect, frameSize, name, minText, takenNames, origin) {
    const [x0, y0, x1, y1] = rect;
    const result = {fractions: [x0, y0, x1 - x0, y1 - y0].map((v) => v.toFixed(4)).join(" "),
                    pixels: null, command: "", calibrate: "", error: ""};
    const [fw, fh] = frameSize || [0, 0];
    if (!(fw > 0 && fh > 0)) {
      result.error = "waiting for the first frame to learn the frame size";
      return result;
    }
    const x = Math.round(x0 * fw), y = Math.round(y0 * fh);
    const w = Math.round(x1 * fw) - x, h = Math.round(y1 * fh) - y;
    result.pixels = {x, y, w, h, frameWidth: fw, frameHeight: fh};
    if (w < 2 || h < 2) {
      result.error = "drag a larger rectangle (at least 2 x 2 frame pixels)";
      return result;
    }
    const cleanName = String(name).trim();
    result.error = nameProblem(cleanName, takenNames);
    if (result.error) { return result; }
    let minPart = "";
    const minClean = String(minText || "").trim();
    if (minClean !== "") {
      const v = Number(minClean);
      if (!/^[0-9.eE+-]+$/.test(minClean) || !Number.isFinite(v) || v <= 0) {
        result.error = "min change must be a number above 0: up to 1 a fraction of the region, above 1 a number of pixels";
        return result;
      }
      if (v > 1 && !Number.isInteger(v)) {
        result.error = "min change above 1 counts changed pixels and must be a whole number";
        return result;
      }
      minPart = " " + String(v);
    }
    const rectText = x + " " + y + " " + w + " " + h;
    result.command = "region add " + cleanName + " " + rectText + minPart;
    result.calibrate = ".venv/bin/python tools/calibrate.py --url " + (origin || "URL") + " --name " + cleanName + " --rect " + rectText;
    return result;
  }

  // What to do when no frame has arrived for `silentS` seconds while frames normally come every
  // `intervalS`. `probe` is null until /meta has been asked, else {reachable, frameId}; `baselineId`
  // is the daemon's newest frame when the silence began (the last frame shown, or the first probe's).
  //   live: nothing unusual; probe: ask /meta; down: the daemon does not answer;
  //   reconnect: the daemon has new frames this connection never delivered; waiting: the camera has none.
  function stallAction(silentS, intervalS, probe, baselineId) {
    const interval = intervalS > 0 ? intervalS : 0;
    if (silentS <= Math.max(4, 2.5 * interval)) { return "live"; }
    if (!probe) { return "probe"; }
    if (!probe.reachable) { return "down"; }
    const moved = probe.frameId !== null && probe.frameId !== undefined && baselineId !== null &&
                  baselineId !== undefined && probe.frameId !== baselineId;
    if (moved && silentS > Math.max(12, 3 * interval)) { return "reconnect"; }
    return "waiting";
  }

  function formatDuration(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) { return "-"; }
    const s = Math.floor(seconds);
    const pad = (v) => String(v).padStart(2, "0");
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + pad(s % 60) + " s"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min"; }
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function formatExposure(us) {
    if (us === null || us === undefined) { return null; }
    if (us >= 1e6) { return (us / 1e6).toFixed(us >= 1e7 ? 0 : 2) + " s"; }
    if (us >= 1000) { return (us / 1000).toFixed(us >= 1e5 ? 0 : 1) + " ms"; }
    return Math.round(us) + " \u00b5s";
  }

  // The health pill from /health: the overall state, what is degraded and why, and a synthetic scene named as
  // such, so drawn frames never pass for a camera's ({text, title, kind}).
  function healthSummary(h) {
    const bad = (h.degraded || []).map((n) => n + " " + String(((h.components || {})[n] || {}).state || "").replace(/^degraded /, ""));
    const camera = h.camera || {};
    let text = h.status === "ok" ? "healthy" : "degraded: " + bad.join(", ");
    const title = bad.slice();
    if (camera.synthetic) {
      text += " \u00b7 synthetic scene, not a camera";
      title.push(String(camera.chosen || "synthetic scene"));
    }
    return {text, title: title.join("\n"), kind: h.status === "ok" && !camera.synthetic ? "ok" : "warn"};
  }

  return {boundaryOf, MultipartReader, frameFromHeaders, frameFromMeta, parseMotion, nameProblem,
          regionCommand, stallAction, formatDuration, formatExposure, healthSummary, parseDetections,
          peopleSummary, regionOutlines};
})();

function startPage() {
  const $ = (id) => document.getElementById(id);
  const view = $("view"), img = $("stream"), sel = $("sel"), stateEl = $("state"), healthEl = $("health");
  const PROBE_EVERY_MS = 5000, DOWN_RETRY_MS = 3000, HIDDEN_PAUSE_MS = 10000;

  $("host").textContent = location.host;
  document.title = "picamd " + location.host;

  // ---- status: one line in the header, and a message over the image when it is not live
  function setState(kind, text, overlay) {
    stateEl.textContent = text;
    stateEl.className = "pill " + kind;
    view.classList.toggle("connecting", kind === "" && overlay !== undefined);
    view.classList.toggle("waiting", kind === "warn" && overlay !== undefined);
    view.classList.toggle("down", kind === "bad");
    $("panel").classList.toggle("stale", kind === "bad");
    $("overlay-text").textContent = overlay || text;
  }

  // ---- /health, every 10 s: the camera frame size, the command port, region names and times, overall state
  let health = null, healthAt = 0;
  async function refreshHealth() {
    try {
      const r = await fetch("health", {cache: "no-store"});
      const h = await r.json();
      if (!h || typeof h !== "object") { throw new Error("not JSON"); }
      health = h;
      healthAt = performance.now();
      const summary = picamd.healthSummary(h);
      healthEl.textContent = summary.text;
      healthEl.title = summary.title;
      healthEl.className = "pill " + summary.kind;
      showRegion();
    } catch (e) {
      healthEl.textContent = "health: no answer";
      healthEl.className = "pill";
    }
  }
  function frameSize() {
    const size = health && health.camera && health.camera.frame_size;
    if (Array.isArray(size) && size.length === 2 && size[0] > 0 && size[1] > 0) { return size; }
    return img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;
  }
  function regionNames() {
    return Object.keys((health && health.motion && health.motion.regions) || {});
  }
  function controlPort() {
    const port = health && health.clients && health.clients.control && health.clients.control.port;
    return Number.isInteger(port) && port > 0 ? port : 9999;
  }

  // ---- the metadata panel, updated with the frame that is on screen
  function show(id, text) { $(id).textContent = text; }
  function localTime(ts) {
    const d = new Date(ts * 1000);
    const p = (v, n = 2) => String(v).padStart(n, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" +
           p(d.getMinutes()) + ":" + p(d.getSeconds()) + "." + p(d.getMilliseconds(), 3);
  }
  function showFrame(f) {
    show("frame_id", f.frame_id === null ? "-" : f.frame_id);
    show("time", f.ts === null ? "-" : localTime(f.ts));
    $("time").title = f.ts === null ? "" : new Date(f.ts * 1000).toISOString() + " (UTC)";
    show("dark_score", f.dark_score === null ? "-" : f.dark_score.toFixed(1));
    const forced = health && health.night && health.night.mode && health.night.mode !== "auto" ? " (forced)" : "";
    show("night", (f.night ? "NIGHT" : "DAY") + forced);
    $("night").className = f.night ? "NIGHT" : "DAY";
    const exposure = picamd.formatExposure(f.exposure_us);
    show("exposure", (exposure || "-") + (f.gain === null ? "" : ", gain " + f.gain.toFixed(1)));
    const other = Object.entries(f.other || {});
    $("other-row").hidden = other.length === 0;
    show("other", other.map(([k, v]) => k + ": " + v).join("\n"));
    showMotion(f.motion);
    showPeople(f);
    drawMarks(f);
  }

  // ---- people and the marks over the image: boxes with track ids, and the regions' outlines
  const SVG = $("marks").namespaceURI;  // the SVG namespace, from the page's own <svg>
  let regionsPayload = null, regionNamesSeen = "";
  async function refreshRegions() {
    try {
      const r = await fetch("regions", {cache: "no-store"});
      if (r.ok) { regionsPayload = await r.json(); }
    } catch (e) {
      // the stream and the watchdog report a daemon that does not answer
    }
  }
  function showPeople(f) {
    show("people", picamd.peopleSummary(f.people, f.detections));
    const body = $("track-rows");
    body.replaceChildren();
    const boxes = f.detections ? f.detections.boxes : [];
    if (!boxes.length) {
      const td = cell(body.insertRow(), f.detections ? "nobody" : "-", "hint");
      td.colSpan = 4;
      return;
    }
    for (const b of boxes) {
      const row = body.insertRow();
      cell(row, b.track ? "#" + b.track : "-", "num");
      cell(row, b.label);
      cell(row, b.score.toFixed(2), "num");
      cell(row, b.group ? String(b.group) : "-", "num");
    }
  }
  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) { el.setAttribute(k, String(v)); }
    el.setAttribute("vector-effect", "non-scaling-stroke");
    return el;
  }
  function label(text, x, y, className) {
    const span = document.createElement("span");
    span.textContent = text;
    span.className = className;
    span.style.left = (x * 100).toFixed(3) + "%";
    span.style.top = (y * 100).toFixed(3) + "%";
    return span;
  }
  function drawMarks(f) {
    const states = {};
    for (const r of picamd.parseMotion(f.motion) || []) { states[r.name] = r.state; }
    const names = Object.keys(states).sort().join(";");
    if (names !== regionNamesSeen) { regionNamesSeen = names; refreshRegions(); }  // a region added or removed live
    const regionGroup = $("region-marks"), boxGroup = $("box-marks"), labels = $("labels");
    const spans = [];
    regionGroup.replaceChildren(...picamd.regionOutlines(regionsPayload, states).map((r) => {
      spans.push(label(r.name + " " + r.state, Math.min(...r.points.map((p) => p[0])), Math.min(...r.points.map((p) => p[1])), "region"));
      return svgEl("polygon", {points: r.points.map((p) => p.join(",")).join(" "), class: r.state});
    }));
    const boxes = f.detections ? f.detections.boxes : [];
    boxGroup.replaceChildren(...boxes.map((b) => {
      const other = b.label === "person" ? "" : "other";
      spans.push(label(b.text, b.x, b.y, other + (b.y < 0.05 ? " below" : "")));
      return svgEl("rect", {x: b.x, y: b.y, width: b.w, height: b.h, class: other});
    }));
    labels.replaceChildren(...spans);
  }
  $("show-marks").addEventListener("change", (ev) => view.classList.toggle("nomarks", !ev.target.checked));
  const STATE_HELP = {
    UNKNOWN: "not judged yet: the time window (motion.window_s) has not filled since the start or a change",
    RUNNING: "more than motion.running_fraction of the frames in the window moved",
    STOPPED: "too few frames in the window moved",
    DEEP_SLEEP: "stopped for longer than motion.deep_sleep_s",
    SETTLING: "judgement paused after a light change or a night switch (motion.settle_s)",
  };
  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) { td.className = className; }
    return td;
  }
  function showMotion(value) {
    const body = $("motion-rows");
    body.replaceChildren();
    const regions = picamd.parseMotion(value);
    if (regions === null) {
      const row = body.insertRow();
      const empty = value === null || value === "";
      const td = cell(row, empty ? "no regions (draw one below)" : String(value), empty ? "hint" : "");
      td.colSpan = 4;
      return;
    }
    const known = (health && health.motion && health.motion.regions) || {};
    const elapsed = (performance.now() - healthAt) / 1000;
    for (const r of regions) {
      const row = body.insertRow();
      cell(row, r.name);
      cell(row, r.state, "state " + r.state).title = STATE_HELP[r.state] || "";
      cell(row, (r.fraction * 100).toFixed(1) + " %", "num");
      const h = known[r.name];
      const same = h && (h.state === r.state || r.state === "SETTLING");
      cell(row, same ? picamd.formatDuration(h.in_state_s + elapsed) : "-", "num");
    }
  }

  // ---- the live image: /stream read with fetch, each JPEG shown in the <img> with its own headers
  const stream = {controller: null, openedAt: 0, lastAt: 0, lastId: null, interval: 0, arrivals: [],
                  failures: 0, retry: null, probing: false, probedAt: 0, baseline: null, everShown: false};
  let shownUrl = null, decoding = false, pending = null, lastExposureS = 0;

  function present(blob, fields) {
    if (decoding) { pending = {blob, fields}; return; }  // the browser is behind: show the newest frame next
    decoding = true;
    const url = URL.createObjectURL(blob);
    img.onload = () => {
      if (shownUrl) { URL.revokeObjectURL(shownUrl); }
      shownUrl = url;
      decoding = false;
      img.classList.remove("empty");
      view.style.setProperty("--ar", String(img.naturalWidth / img.naturalHeight));
      if (!stream.everShown) { stream.everShown = true; showRegion(); }
      showFrame(fields);
      if (pending) { const next = pending; pending = null; present(next.blob, next.fields); }
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      decoding = false;
      if (pending) { const next = pending; pending = null; present(next.blob, next.fields); }
    };
    img.src = url;
  }

  function onPart(part) {
    if (!String(part.headers["content-type"] || "").startsWith("image/jpeg")) { return; }
    const now = performance.now();
    if (stream.lastAt) {
      const gap = (now - stream.lastAt) / 1000;
      stream.interval = stream.interval ? stream.interval * 0.8 + gap * 0.2 : gap;
    }
    stream.lastAt = now;
    stream.failures = 0;
    stream.probedAt = 0;
    stream.baseline = null;
    stream.arrivals.push(now);
    while (stream.arrivals.length > 2 && now - stream.arrivals[0] > 3000) { stream.arrivals.shift(); }
    const fields = picamd.frameFromHeaders(part.headers);
    if (fields.frame_id !== null) { stream.lastId = fields.frame_id; }
    lastExposureS = (fields.exposure_us || 0) / 1e6;
    present(new Blob([part.body], {type: "image/jpeg"}), fields);
    if (!stateEl.classList.contains("ok")) { refreshHealth(); }  // back from a problem: show the health that goes with it
    const n = stream.arrivals.length;
    const span = n > 1 ? stream.arrivals[n - 1] - stream.arrivals[0] : 0;
    const fps = span > 0 ? (n - 1) * 1000 / span : 0;  // frames in one burst (a paused tab) give no rate
    setState("ok", fps > 0 ? "live, " + (fps >= 1 ? fps.toFixed(1) : fps.toFixed(2)) + " frames/s" : "live");
  }

  // The newest frame at once, while the stream waits for the next one (which takes a whole exposure at night).
  async function showSnapshot() {
    const openedAt = stream.openedAt;
    try {
      const r = await fetch("snapshot.jpg", {cache: "no-store"});
      if (!r.ok) { return; }
      const headers = {};
      r.headers.forEach((value, key) => { headers[key.toLowerCase()] = value; });
      const fields = picamd.frameFromHeaders(headers);
      const blob = await r.blob();
      if (stream.openedAt === openedAt && !stream.lastAt && fields.frame_id !== stream.lastId) {
        stream.lastId = fields.frame_id;
        stream.baseline = fields.frame_id;
        lastExposureS = (fields.exposure_us || 0) / 1e6;
        present(blob, fields);
      }
    } catch (e) {
      // the stream and the watchdog report a daemon that does not answer
    }
  }

  function expectedIntervalS() {
    return Math.max(stream.interval || 0, lastExposureS);
  }

  function closeStream() {
    clearTimeout(stream.retry);
    stream.retry = null;
    const controller = stream.controller;
    stream.controller = null;
    if (controller) { controller.abort(); }
  }

  async function openStream() {
    closeStream();
    if (document.hidden) { setState("", "paused while the tab is hidden"); return; }
    const controller = new AbortController();
    stream.controller = controller;
    stream.openedAt = performance.now();
    stream.lastAt = 0;
    stream.probedAt = 0;
    stream.baseline = stream.lastId;
    if (!stream.everShown) { setState("", "connecting", "connecting to the camera"); }
    showSnapshot();
    let reason = "the stream ended";
    try {
      const r = await fetch("stream", {cache: "no-store", signal: controller.signal});
      if (!r.ok) {
        throw new Error("the server answered " + r.status + ": " + (await r.text()).trim().slice(0, 200));
      }
      const boundary = picamd.boundaryOf(r.headers.get("Content-Type"));
      if (!boundary || !r.body) { throw new Error("the answer is not an MJPEG stream"); }
      const reader = r.body.getReader();
      const parts = new picamd.MultipartReader(boundary);
      for (;;) {
        const {value, done} = await reader.read();
        if (done) { break; }
        for (const part of parts.push(value)) { onPart(part); }
      }
    } catch (e) {
      reason = e.message || String(e);
    }
    if (stream.controller !== controller) { return; }  // closed on purpose; whoever closed it decides what is next
    stream.controller = null;
    streamLost(reason);
  }

  async function probeMeta() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 5000);
    try {
      const r = await fetch("meta", {cache: "no-store", signal: controller.signal});
      const m = await r.json().catch(() => ({}));
      return {reachable: true, frameId: r.ok && Number.isInteger(m.frame_id) ? m.frame_id : null};
    } catch (e) {
      return {reachable: false, why: controller.signal.aborted ? "no answer within 5 s" : "cannot connect"};
    } finally {
      clearTimeout(timer);
    }
  }

  let downSince = null;
  function markDown(why) {
    if (downSince === null) { downSince = new Date(); }
    const at = downSince.toLocaleTimeString();
    setState("bad", "daemon unreachable since " + at,
             "The camera daemon does not answer (" + why + ") since " + at + ". Retrying every " + DOWN_RETRY_MS / 1000 +
             " s; " + (stream.everShown ? "the image is the last one received." : "no image yet."));
  }

  async function streamLost(reason) {
    const probe = await probeMeta();
    if (stream.controller || document.hidden) { return; }
    if (!probe.reachable) {
      markDown(probe.why);
      stream.retry = setTimeout(retryWhileDown, DOWN_RETRY_MS);
      return;
    }
    downSince = null;
    stream.failures += 1;
    const wait = Math.min(10000, 1000 * 2 ** Math.min(stream.failures - 1, 4));
    setState("warn", "reconnecting", "The stream was interrupted (" + reason + "); reconnecting in " + wait / 1000 + " s.");
    stream.retry = setTimeout(openStream, wait);
  }

  async function retryWhileDown() {
    stream.retry = null;
    if (document.hidden) { return; }
    const probe = await probeMeta();
    if (stream.controller || stream.retry || document.hidden) { return; }
    if (probe.reachable) {
      downSince = null;
      refreshHealth();
      openStream();
    } else {
      markDown(probe.why);
      stream.retry = setTimeout(retryWhileDown, DOWN_RETRY_MS);
    }
  }

  // Once a second: a connection that delivers nothing is either a camera without new frames (say so and
  // wait), a connection that died quietly (reconnect), or a daemon that is gone (say so and retry).
  async function watchdog() {
    if (!stream.controller || stream.probing || document.hidden) { return; }
    const now = performance.now();
    const silentS = (now - (stream.lastAt || stream.openedAt)) / 1000;
    if (picamd.stallAction(silentS, expectedIntervalS(), null, stream.baseline) === "live") { return; }
    if (now - stream.probedAt < PROBE_EVERY_MS) {
      if (view.classList.contains("waiting")) { showWaiting(silentS); }
      return;
    }
    stream.probing = true;
    const probe = await probeMeta();
    stream.probing = false;
    stream.probedAt = performance.now();
    const controller = stream.controller;
    if (!controller) { return; }
    if (stream.baseline === null && probe.reachable) { stream.baseline = probe.frameId; }
    const action = picamd.stallAction(silentS, expectedIntervalS(), probe, stream.baseline);
    if (action === "down") {
      closeStream();
      markDown(probe.why);
      stream.retry = setTimeout(retryWhileDown, DOWN_RETRY_MS);
    } else if (action === "reconnect") {
      openStream();
    } else if (action === "waiting") {
      downSince = null;
      refreshHealth().then(() => { if (stream.controller === controller && view.classList.contains("waiting")) { showWaiting(silentS); } });
      showWaiting(silentS);
    }
  }
  function showWaiting(silentS) {
    const camera = health && health.camera && health.camera.state;
    const age = picamd.formatDuration(silentS);
    setState("warn", "no new frame for " + age, "No new frame from the camera for " + age + "." +
             (camera && camera !== "ok" ? " The daemon says: camera " + camera + "." : "") +
             " The image comes back by itself when frames flow again.");
  }

  // A hidden tab stops watching after a while, so a forgotten tab does not keep the Pi encoding.
  let hiddenTimer = null;
  document.addEventListener("visibilitychange", () => {
    clearTimeout(hiddenTimer);
    if (document.hidden) {
      hiddenTimer = setTimeout(() => { if (document.hidden) { closeStream(); setState("", "paused while the tab is hidden"); } }, HIDDEN_PAUSE_MS);
    } else if (!stream.controller && !stream.retry) {
      refreshHealth();
      openStream();
    }
  });

  // Browsers that cannot read a fetch body as a stream get the plain MJPEG <img> and /meta once a second.
  function legacyViewer() {
    let wasDown = false;
    img.onload = () => {
      img.classList.remove("empty");
      view.style.setProperty("--ar", String(img.naturalWidth / img.naturalHeight));
      stream.everShown = true;
    };
    img.src = "stream";
    setInterval(async () => {
      try {
        const r = await fetch("meta", {cache: "no-store"});
        const m = await r.json();
        if (!r.ok) { throw new Error(m.error || String(r.status)); }
        showFrame(picamd.frameFromMeta(m));
        if (wasDown) { img.src = "stream?t=" + Date.now(); wasDown = false; downSince = null; }
        setState("ok", "live");
      } catch (e) {
        wasDown = true;
        markDown(e.message || "cannot connect");
      }
    }, 1000);
  }

  // ---- the region tool: a rectangle dragged over the image, in camera frame pixels and fractions,
  // and the command line that adds it. It only computes text; it sends nothing to the daemon.
  const nameInput = $("rname"), minInput = $("rmin"), cmd = $("cmd"), note = $("rnote"), drawButton = $("draw");
  let region = null;  // [x0, y0, x1, y1] as fractions of the image
  let dragFrom = null;
  const coarse = window.matchMedia && window.matchMedia("(any-pointer: coarse)").matches;
  if (coarse) {
    $("howto").textContent = "Tap Draw, then drag a rectangle over the image with one finger. " +
      "This page only works out the command line; nothing changes until you send it to the command port.";
  }
  function fractionAt(ev) {
    const box = view.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((ev.clientX - box.left) / box.width), clamp((ev.clientY - box.top) / box.height)];
  }
  function showRegion() {
    if (!region) {
      sel.style.display = "none";
      cmd.value = "";
      show("rpx", "-");
      show("rfrac", "-");
      $("rcal-row").hidden = true;
      note.textContent = "";
      return;
    }
    const [x0, y0, x1, y1] = region;
    Object.assign(sel.style, {display: "block", left: x0 * 100 + "%", top: y0 * 100 + "%",
                              width: (x1 - x0) * 100 + "%", height: (y1 - y0) * 100 + "%"});
    const size = frameSize();
    const out = picamd.regionCommand(region, size, nameInput.value, minInput.value, regionNames(), location.origin);
    show("rfrac", out.fractions);
    const p = out.pixels;
    show("rpx", p ? "x " + p.x + ", y " + p.y + ", w " + p.w + ", h " + p.h + " (of " + p.frameWidth + " x " + p.frameHeight + ")" : "-");
    cmd.value = out.command;
    $("rcal-row").hidden = !out.calibrate;
    show("rcal", out.calibrate);
    if (out.error) {
      note.textContent = out.error;
      note.className = "hint bad";
      return;
    }
    const host = location.hostname || "HOST";
    note.textContent = 'Send it to the command port: echo "' + out.command + '" | nc ' + host + " " + controlPort() +
      " (with control.token set, send token SECRET on the same connection first)." +
      (health && health.camera && health.camera.frame_size ? "" : " The camera frame size is not known yet: these are stream pixels.");
    note.className = "hint";
  }
  view.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) { return; }
    if (ev.pointerType !== "mouse" && !view.classList.contains("drawing")) { return; }  // let a finger scroll
    ev.preventDefault();
    view.setPointerCapture(ev.pointerId);
    dragFrom = fractionAt(ev);
    region = [...dragFrom, ...dragFrom];
    showRegion();
  });
  view.addEventListener("pointermove", (ev) => {
    if (!dragFrom) { return; }
    const to = fractionAt(ev);
    region = [Math.min(dragFrom[0], to[0]), Math.min(dragFrom[1], to[1]), Math.max(dragFrom[0], to[0]), Math.max(dragFrom[1], to[1])];
    showRegion();
  });
  view.addEventListener("pointerup", (ev) => {
    if (dragFrom && ev.pointerType !== "mouse") { setDrawing(false); }  // one rectangle per tap on Draw: then a finger scrolls again
    dragFrom = null;
  });
  view.addEventListener("pointercancel", () => { dragFrom = null; });
  function clearRegion() { region = null; dragFrom = null; showRegion(); }
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") { clearRegion(); } });
  $("clear").addEventListener("click", clearRegion);
  function setDrawing(on) {
    view.classList.toggle("drawing", on);
    drawButton.setAttribute("aria-pressed", String(on));
    drawButton.textContent = on ? "Now drag over the image" : "Draw";
  }
  drawButton.addEventListener("click", () => setDrawing(!view.classList.contains("drawing")));
  nameInput.addEventListener("input", showRegion);
  minInput.addEventListener("input", showRegion);
  const copyButton = $("copy");
  let copyTimer = null;
  copyButton.addEventListener("click", async () => {
    if (!cmd.value) {
      note.textContent = "Drag a rectangle over the image first.";
      note.className = "hint bad";
      return;
    }
    let copied = false;
    try {
      await navigator.clipboard.writeText(cmd.value);  // only on https or localhost
      copied = true;
    } catch (e) {
      cmd.focus();
      cmd.select();
      try { copied = document.execCommand("copy"); } catch (e2) { copied = false; }
    }
    copyButton.textContent = copied ? "Copied" : "Select and copy";
    clearTimeout(copyTimer);
    copyTimer = setTimeout(() => { copyButton.textContent = "Copy"; }, 2000);
  });

  // ---- start
  const nameFree = () => {
    const taken = regionNames();
    if (!taken.includes(nameInput.value)) { return; }
    for (let i = 1; ; i++) { if (!taken.includes("region" + i)) { nameInput.value = "region" + i; return; } }
  };
  refreshHealth().then(nameFree);
  refreshRegions();
  setInterval(() => { if (!document.hidden) { refreshHealth(); refreshRegions(); } }, 10000);
  if (typeof ReadableStream === "function" && typeof Response === "function" && "body" in Response.prototype) {
    openStream();
    setInterval(watchdog, 1000);
  } else {
    legacyViewer();
  }
}

if (typeof document !== "undefined") { startPage(); }
