// The profiler's page: reads the JSON API under /v1 and shows the device, its latency table, a search-space
// heatmap, its jobs (live, by polling) and the fleet of devices sharing its database. Plain JavaScript, no build
// step, no other host: the page works on an offline device. Every failure becomes a message on the page.
"use strict";

(() => {
  const POLL_ACTIVE_MS = 1000;   // jobs refresh while one is queued or running
  const POLL_IDLE_MS = 5000;     // ... and otherwise
  const RETRY_MS = 5000;         // reload after the database or the service did not answer
  const JOBS_SHOWN = 50;

  const page = {
    device: null,          // GET /v1/device
    rows: [],              // GET /v1/table measurements
    tableLoaded: false,
    sort: { key: null, dir: 1 },
    spaces: [],            // GET /v1/spaces
    spaceDetails: new Map(),
    heatmapShown: false,
    jobs: [],
    openJobId: null,
    activeJobIds: new Set(),
    token: "",             // kept in this tab's memory only
    cancelJobId: null,
    pollTimer: null,
    retryTimer: null,
    failures: 0,           // how often the banner was raised (a load without new failures clears it)
  };

  // --- small DOM helpers --------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function showMessage(id, text, kind) {
    const box = $(id);
    if (!text) { box.hidden = true; box.textContent = ""; return; }
    box.className = "message" + (kind ? " " + kind : "");
    box.textContent = text;
    box.hidden = false;
  }

  const fmtMs = (value) => Number(value).toFixed(4);
  const shortHash = (hash) => (hash ? String(hash).slice(0, 12) : "\u2014");
  function fmtTime(iso) {
    if (!iso) return "\u2014";
    return String(iso).replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, "");
  }

  // The canonical op spec grammar (nas_ops/spec.py) starts with the kind, then r<H>x<W>.
  const specKind = (spec) => spec.split("_")[0];
  function specResolution(spec) {
    const match = /_r(\d+)x(\d+)(?:_|$)/.exec(spec);
    return match ? `${match[1]}x${match[2]}` : "";
  }

  // --- talking to the API -------------------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, code, detail) {
      super(detail);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  // {status, body} of a request; a network failure is status 0. Never throws.
  async function request(path, options) {
    let response;
    try {
      response = await fetch(new URL(path, document.baseURI), options);
    } catch (error) {
      return { status: 0, body: null };
    }
    let body = null;
    try { body = await response.json(); } catch (error) { body = null; }
    return { status: response.status, body };
  }

  // The JSON body of a successful request; an ApiFailure with the API's {detail, code} otherwise.
  async function api(path, options) {
    const { status, body } = await request(path, options);
    if (status === 0) throw new ApiFailure(0, "unreachable", "the service does not answer (is it running?)");
    if (status < 200 || status >= 300) {
      const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${status}`;
      const code = body && typeof body.code === "string" ? body.code : "http_error";
      throw new ApiFailure(status, code, detail);
    }
    if (body === null) throw new ApiFailure(status, "not_json", "the service's answer is not JSON");
    return body;
  }

  const postJson = (path, payload, headers) => api(path, {
    method: "POST", headers: { "Content-Type": "application/json", ...(headers || {}) },
    body: JSON.stringify(payload),
  });

  // A sentence for a failed request. A server error leads to a look at /v1/ready: when the database is what
  // fails, say so (and the page retries); the banner at the top says it once for the whole page.
  async function explain(error) {
    if (!(error instanceof ApiFailure)) return `unexpected error: ${error && error.message ? error.message : error}`;
    if (error.status === 0) {
      setBanner("The service does not answer: it is stopped or unreachable from this browser. " +
        `The page tries again every ${RETRY_MS / 1000} s.`);
      scheduleRetry();
      return "The service does not answer.";
    }
    if (error.status >= 500) {
      const ready = await request("v1/ready");
      const database = ready.body && typeof ready.body.database === "string" ? ready.body.database : null;
      if (error.code === "database_unavailable" || (database !== null && database !== "ok")) {
        setBanner("The database is unreachable: the service runs, but it cannot read or write its database" +
          (database && database !== "ok" ? ` (readiness: database ${database})` : "") +
          `. Stored data cannot be shown until it answers; the page tries again every ${RETRY_MS / 1000} s.`);
        scheduleRetry();
        return "The database is unreachable, so this cannot be shown now.";
      }
      return `The service failed: ${error.detail} (HTTP ${error.status}).`;
    }
    return `${error.detail} (HTTP ${error.status}, ${error.code})`;
  }

  function setBanner(text) {
    if (text) page.failures += 1;
    const banner = $("banner");
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function scheduleRetry() {
    if (page.retryTimer !== null) return;
    page.retryTimer = setTimeout(() => {
      page.retryTimer = null;
      loadAll();
    }, RETRY_MS);
  }

  // --- device --------------------------------------------------------------------------------------------
  function kvList(entries) {
    const list = el("dl", { class: "kv" });
    for (const [key, value] of entries) {
      const shown = value !== null && typeof value === "object" ? JSON.stringify(value) : value;
      list.append(el("dt", { text: key }), el("dd", { "data-key": key }, shown === null || shown === undefined ? "\u2014" : shown));
    }
    return list;
  }

  // "key: value, ..." of a backend's options (nested values as JSON).
  const optionsText = (options) => Object.entries(options || {})
    .map(([k, v]) => `${k}: ${v !== null && typeof v === "object" ? JSON.stringify(v) : v}`).join(", ") || "\u2014";

  function card(title, ...content) {
    return el("div", { class: "card" }, el("h3", { text: title }), ...content);
  }

  async function loadDevice() {
    let device;
    try {
      device = await api("v1/device");
    } catch (error) {
      showMessage("device-message", await explain(error), "error");
      return;
    }
    showMessage("device-message", "");
    page.device = device;
    document.title = `${device.name} \u2014 proxyless-hw profiler`;
    $("device-title").textContent = device.name;
    const [ready, health] = await Promise.all([request("v1/ready"), request("v1/health")]);
    if (health.body && health.body.version) $("footer-version").textContent = `proxyless-hw profiler ${health.body.version}`;
    const readiness = ready.body && typeof ready.body === "object" ? Object.entries(ready.body)
      : [["status", ready.status === 0 ? "the service does not answer" : `HTTP ${ready.status}`]];

    const backends = el("table", { class: "data", id: "device-backends" },
      el("thead", {}, el("tr", {}, el("th", { text: "backend" }), el("th", { text: "env hash" }),
        el("th", { text: "options" }))),
      el("tbody", {}, ...device.backends.map((b) => el("tr", { "data-backend": b.name },
        el("td", { text: b.name }), el("td", { class: "spec", text: b.env_hash }),
        el("td", { class: "spec", text: optionsText(b.options) })))));
    const protocolParams = el("details", {}, el("summary", { text: "parameters" }),
      kvList(Object.entries(device.protocol.params || {})));
    $("device-body").replaceChildren(
      card("Identity", kvList([["name", device.name], ["fingerprint hash", device.fingerprint_hash],
        ["default threads", device.default_threads], ["protocol", device.protocol.version]]), protocolParams),
      card("Fingerprint", kvList(Object.entries(device.fingerprint))),
      card("Backends", device.backends.length ? backends : el("p", { text: "This device serves no backend." })),
      card("Limits", kvList(Object.entries(device.limits))),
      card("Readiness and drift", el("div", { id: "device-readiness" }, kvList(readiness)),
        el("p", { class: "hint", text: "As /v1/ready reports it (drift of the canary ops, where the service checks it)." })),
    );
    fillSelect($("heatmap-backend"), device.backends.map((b) => b.name), false);
    if (!$("heatmap-threads").value) $("heatmap-threads").value = device.default_threads;
    refreshBackendFilter();
  }

  function fillSelect(select, values, withAll) {
    const current = select.value;
    select.replaceChildren(...(withAll ? [el("option", { value: "", text: "all" })] : []),
      ...values.map((v) => el("option", { value: v, text: v })));
    if (values.includes(current) || (withAll && current === "")) select.value = current;
  }

  // --- latency table -------------------------------------------------------------------------------------
  async function loadTable() {
    let body;
    try {
      body = await api("v1/table?format=json");
    } catch (error) {
      showMessage("table-message", await explain(error), "error");
      return;
    }
    page.rows = body.measurements;
    page.tableLoaded = true;
    if (page.rows.length === 0) {
      showMessage("table-message", "No measurements are stored on this device yet. Measure ops with " +
        "POST /v1/measure, `proxyless-profiler measure` or `proxyless-search lut`; they appear here.", "empty");
    } else {
      showMessage("table-message", "");
    }
    const distinct = (f) => [...new Set(page.rows.map(f))].filter((v) => v !== "").sort();
    fillSelect($("filter-kind"), distinct((r) => specKind(r.op_spec)), true);
    const resolutions = distinct((r) => specResolution(r.op_spec));
    resolutions.sort((a, b) => parseInt(a, 10) - parseInt(b, 10));
    fillSelect($("filter-resolution"), resolutions, true);
    refreshBackendFilter();
    const specs = distinct((r) => r.op_spec).slice(0, 1000);
    $("known-specs").replaceChildren(...specs.map((s) => el("option", { value: s })));
    renderTable();
  }

  function refreshBackendFilter() {
    const names = new Set(page.rows.map((r) => r.backend));
    if (page.device) page.device.backends.forEach((b) => names.add(b.name));
    fillSelect($("filter-backend"), [...names].sort(), true);
  }

  function filteredRows() {
    const backend = $("filter-backend").value;
    const kind = $("filter-kind").value;
    const resolution = $("filter-resolution").value;
    const text = $("filter-spec").value.trim().toLowerCase();
    const rows = page.rows.filter((r) => (!backend || r.backend === backend)
      && (!kind || specKind(r.op_spec) === kind)
      && (!resolution || specResolution(r.op_spec) === resolution)
      && (!text || r.op_spec.toLowerCase().includes(text)));
    const { key, dir } = page.sort;
    if (key) {
      const numeric = $("table-rows").querySelector(`th[data-key="${key}"]`).dataset.type === "number";
      rows.sort((a, b) => {
        const order = numeric ? a[key] - b[key] : compareText(String(a[key]), String(b[key]));
        return order * dir || a.id - b.id;
      });
    }
    return rows;
  }

  function renderTable() {
    const rows = filteredRows();
    const body = $("table-rows").tBodies[0];
    const numCell = (row, key, text) => el("td", { class: "num", "data-key": key, "data-value": row[key] }, text);
    body.replaceChildren(...rows.map((r) => el("tr", { "data-id": r.id, "data-spec": r.op_spec },
      el("td", { class: "spec", "data-key": "op_spec", text: r.op_spec }),
      el("td", { "data-key": "backend", text: r.backend }),
      numCell(r, "batch", r.batch), el("td", { "data-key": "dtype", text: r.dtype }),
      numCell(r, "threads", r.threads),
      numCell(r, "median_ms", fmtMs(r.median_ms)), numCell(r, "p10_ms", fmtMs(r.p10_ms)),
      numCell(r, "p90_ms", fmtMs(r.p90_ms)), numCell(r, "iqr_ms", fmtMs(r.iqr_ms)),
      numCell(r, "samples", r.samples),
      el("td", { "data-key": "protocol_version", text: r.protocol_version }),
      el("td", { class: "spec", "data-key": "env_hash", title: r.env_hash, text: shortHash(r.env_hash) }),
      el("td", { "data-key": "updated_at", text: fmtTime(r.updated_at) }))));
    if (page.rows.length > 0 && rows.length === 0) {
      body.append(el("tr", { class: "no-match" },
        el("td", { colspan: 13, text: "No stored measurement matches these filters." })));
    }
    $("table-count").textContent = page.tableLoaded
      ? `${rows.length} of ${page.rows.length} stored measurements shown` : "";
    for (const th of $("table-rows").tHead.rows[0].cells) {
      if (th.dataset.key === page.sort.key) th.setAttribute("aria-sort", page.sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    const backend = $("filter-backend").value;
    const query = backend ? `&backend=${encodeURIComponent(backend)}` : "";
    $("download-csv").href = `v1/table?format=csv${query}`;
    $("download-json").href = `v1/table?format=json${query}`;
  }

  // Code-point order (as in the API's exports), not the locale's: "_" and "-" sort where they are.
  const compareText = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

  function sortBy(key) {
    page.sort = page.sort.key === key ? { key, dir: -page.sort.dir } : { key, dir: 1 };
    renderTable();
  }

  // --- search-space heatmap ------------------------------------------------------------------------------
  async function loadSpaces() {
    try {
      page.spaces = (await api("v1/spaces")).spaces;
    } catch (error) {
      showMessage("heatmap-message", await explain(error), "error");
      return;
    }
    const select = $("heatmap-space");
    fillSelect(select, page.spaces.map((s) => s.name), false);
  }

  // A space's cells, specs and the working set of its typical network at this batch and dtype (what lut sends).
  async function spaceDetail(name, batch = 1, dtype = "float32") {
    const key = `${name}|${batch}|${dtype}`;
    if (!page.spaceDetails.has(key)) {
      const query = new URLSearchParams({ batch: String(batch), dtype });
      page.spaceDetails.set(key, await api(`v1/spaces/${encodeURIComponent(name)}?${query}`));
    }
    return page.spaceDetails.get(key);
  }

  const candidateSpecs = (space) => space.cells.flatMap((c) => c.candidates.filter((_, i) => i !== c.zero_index));

  // The space whose candidates this device holds most rows of (the first named space when it holds none).
  async function pickDefaultSpace() {
    const stored = new Set(page.rows.map((r) => r.op_spec));
    let best = null;
    let bestCount = 0;
    for (const summary of page.spaces) {
      const space = await spaceDetail(summary.name);
      const count = candidateSpecs(space).filter((s) => stored.has(s)).length;
      if (count > bestCount) { best = summary.name; bestCount = count; }
    }
    if (best) $("heatmap-space").value = best;
  }

  function heatColor(t) {
    // light blue (fast) through green to red (slow)
    const hue = 210 - 210 * t;
    return `hsl(${hue.toFixed(0)}, ${(70 - 10 * Math.sin(Math.PI * t)).toFixed(0)}%, ${(88 - 26 * t).toFixed(0)}%)`;
  }

  async function showHeatmap() {
    showMessage("heatmap-message", "");
    const name = $("heatmap-space").value;
    const backend = $("heatmap-backend").value;
    if (!name || !backend) {
      showMessage("heatmap-message", "Choose a search space and a backend.", "error");
      return;
    }
    const context = { backend, dtype: $("heatmap-dtype").value,
      batch: parseInt($("heatmap-batch").value, 10), threads: parseInt($("heatmap-threads").value, 10) };
    for (const field of ["batch", "threads"]) {
      if (!Number.isInteger(context[field]) || context[field] < 1) {
        showMessage("heatmap-message", `${field}: give a whole number of at least 1.`, "error");
        return;
      }
    }
    let space;
    let lookup;
    try {
      // the rows of the space's own regime, as lut stored them: its typical network's working set
      space = await spaceDetail(name, context.batch, context.dtype);
      const specs = [...new Set([...space.fixed.map((f) => f.spec), ...candidateSpecs(space)])];
      lookup = await postJson("v1/lookup", { ...context, working_set_bytes: space.working_set_bytes, ops: specs });
    } catch (error) {
      showMessage("heatmap-message", await explain(error), "error");
      $("heatmap-grid").replaceChildren();
      $("heatmap-summary").textContent = "";
      $("heatmap-fixed").replaceChildren();
      return;
    }
    renderHeatmap(space, lookup);
  }

  function renderHeatmap(space, lookup) {
    const found = lookup.found;
    const values = Object.values(found).map((s) => s.median_ms);
    const low = Math.min(...values);
    const high = Math.max(...values);
    const grid = $("heatmap-grid");
    const head = el("tr", {}, el("th", { class: "cell", text: "cell" }), el("th", { text: "shape" }),
      ...space.candidate_names.map((n) => el("th", { text: n })));
    const rows = space.cells.map((cell) => {
      const tds = space.candidate_names.map((name) => {
        const i = cell.candidate_names.indexOf(name);
        if (i < 0) return el("td", { class: "na", title: `${name} is not a choice of this cell`, text: "\u2014" });
        if (i === cell.zero_index) return el("td", { class: "zero", "data-zero": true, title: "Zero: the cell is skipped (0 ms)", text: "0" });
        const spec = cell.candidates[i];
        const stats = found[spec];
        if (!stats) return el("td", { class: "missing", "data-spec": spec, title: `${spec}: not stored`, text: "missing" });
        const t = high > low ? (stats.median_ms - low) / (high - low) : 0;
        const td = el("td", { "data-spec": spec, "data-value": stats.median_ms,
          title: `${spec}\nmedian ${fmtMs(stats.median_ms)} ms, p10 ${fmtMs(stats.p10_ms)}, p90 ${fmtMs(stats.p90_ms)}, ` +
            `IQR ${fmtMs(stats.iqr_ms)}, ${stats.samples} samples` }, fmtMs(stats.median_ms));
        td.style.background = heatColor(t);
        return td;
      });
      return el("tr", { "data-cell": cell.index },
        el("th", { class: "cell", text: `cell ${cell.index} (stage ${cell.stage})` }),
        el("td", { class: "spec", text: `${cell.height}x${cell.width} c${cell.in_chs}-${cell.out_chs} s${cell.stride}` }),
        ...tds);
    });
    grid.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));

    const entries = space.cells.reduce((n, c) => n + c.candidates.length - (c.zero_index === null ? 0 : 1), 0);
    const stored = space.cells.reduce((n, c) => n + c.candidates.filter((s, i) => i !== c.zero_index && found[s]).length, 0);
    const summary = $("heatmap-summary");
    summary.replaceChildren(
      `${space.name} (${space.input_size.join("x")}) on ${lookup.backend}, batch ${lookup.batch}, ${lookup.dtype}, ` +
      `${lookup.threads} thread(s), protocol ${lookup.protocol_version}, env ${shortHash(lookup.env_hash)}: `,
      el("b", { id: "heatmap-stored", text: `${stored} of ${entries}` }), " entries stored, ",
      el("b", { id: "heatmap-missing", text: String(entries - stored) }), " missing (hatched).",
      values.length ? el("span", {}, " Scale:", el("span", { class: "legend" }), `${fmtMs(low)} \u2013 ${fmtMs(high)} ms`) : "");
    if (entries - stored > 0) {
      summary.append(el("br"), `Measure the missing entries with: proxyless-search lut --space ${space.name} ` +
        `--device ${location.origin} --backend ${lookup.backend}`);
    }
    const fixed = el("table", { class: "data", id: "heatmap-fixed-rows" },
      el("thead", {}, el("tr", {}, el("th", { text: "fixed op" }), el("th", { text: "spec" }),
        el("th", { class: "num", text: "median ms" }))),
      el("tbody", {}, ...space.fixed.map((f) => el("tr", { "data-spec": f.spec }, el("td", { text: f.role }),
        el("td", { class: "spec", text: f.spec }),
        found[f.spec] ? el("td", { class: "num", "data-value": found[f.spec].median_ms, text: fmtMs(found[f.spec].median_ms) })
          : el("td", { class: "num missing-text", text: "missing" })))));
    $("heatmap-fixed").replaceChildren(el("h3", { text: "Fixed ops (every architecture has them)" }), fixed);
    page.heatmapShown = true;
  }

  // --- jobs ---------------------------------------------------------------------------------------------
  const ACTIVE = new Set(["queued", "running"]);

  // The bar fills with the items worked on (done, skipped, failed); cancelled ones are counted, not filled.
  function progressCell(job) {
    const worked = job.done + job.skipped + job.failed;
    return el("td", { class: "progress" },
      el("progress", { max: Math.max(job.total, 1), value: worked }),
      el("span", { "data-field": "done", text: job.done }), " done, ",
      el("span", { "data-field": "skipped", text: job.skipped }), " skipped, ",
      job.cancelled ? el("span", {}, el("span", { "data-field": "cancelled", text: job.cancelled }), " cancelled, ") : null,
      "of ", el("span", { "data-field": "total", text: job.total }));
  }

  function errorText(job) {
    if (job.error) return job.error;
    if (job.failed_items.length) {
      const first = job.failed_items[0];
      return `${job.failed} failed; first: ${first.op}: ${first.error || "no message"}`;
    }
    return "";
  }

  function cancelButton(job) {
    if (!ACTIVE.has(job.status)) return null;
    const button = el("button", { type: "button", class: "cancel", "data-job-id": job.id, text: "Cancel\u2026" });
    button.addEventListener("click", () => askCancel(job.id));
    return button;
  }

  function renderJobs() {
    const body = $("jobs-rows").tBodies[0];
    body.replaceChildren(...page.jobs.map((job) => el("tr", { "data-job-id": job.id },
      el("td", {}, el("a", { href: "#jobs", "data-open-job": job.id, text: `#${job.id}` })),
      el("td", { text: job.kind }),
      el("td", { class: `status status-${job.status}`, "data-field": "status", text: job.status }),
      el("td", { text: job.backend }),
      progressCell(job),
      el("td", { class: "num", "data-field": "pending", text: job.pending }),
      el("td", { class: "num", "data-field": "failed", text: job.failed }),
      el("td", { text: fmtTime(job.created_at) }),
      el("td", { text: fmtTime(job.finished_at) }),
      el("td", { class: "error-text", title: errorText(job), text: errorText(job).slice(0, 80) }),
      el("td", {}, cancelButton(job)))));
    if (page.jobs.length === 0) {
      body.append(el("tr", { class: "no-match" }, el("td", { colspan: 11,
        text: "No jobs on this device yet: POST /v1/measure creates one." })));
    }
    for (const link of body.querySelectorAll("a[data-open-job]")) {
      link.addEventListener("click", (event) => { event.preventDefault(); openJob(Number(link.dataset.openJob)); });
    }
  }

  function renderJobDetail(job) {
    const detail = $("job-detail");
    const failed = job.failed_items.length
      ? el("ul", {}, ...job.failed_items.map((item) => el("li", {}, el("code", { text: item.op }), `: ${item.error || "no message"}`)))
      : null;
    const result = job.result ? kvList(Object.entries(job.result).map(([k, v]) => [k, k === "samples" ? v : fmtMs(v)])) : null;
    detail.replaceChildren(el("div", { class: "card", "data-job-id": job.id },
      el("h3", {}, `Job #${job.id} `, el("span", { class: `status-${job.status}`, "data-field": "status", text: job.status }),
        " ", cancelButton(job)),
      el("table", { class: "data" }, el("tbody", {}, el("tr", {}, progressCell(job)))),
      kvList([["kind", job.kind], ["backend", job.backend], ["batch", job.batch], ["dtype", job.dtype],
        ["threads", job.threads], ["pending", job.pending], ["failed", job.failed], ["cancelled", job.cancelled],
        ["created", fmtTime(job.created_at)], ["started", fmtTime(job.started_at)],
        ["finished", fmtTime(job.finished_at)], ["error", job.error]]),
      result ? el("div", {}, el("h3", { text: "Result (whole network)" }), result) : null,
      failed ? el("div", {}, el("h3", { text: "Failed items" }), failed) : null));
    detail.hidden = false;
  }

  async function openJob(id) {
    page.openJobId = id;
    $("job-open-id").value = id;
    await refreshOpenJob();
    schedulePoll();
  }

  async function refreshOpenJob() {
    if (page.openJobId === null) return;
    const id = page.openJobId;
    try {
      const job = await api(`v1/jobs/${id}`);
      renderJobDetail(job);
      if (ACTIVE.has(job.status)) page.activeJobIds.add(job.id);
    } catch (error) {
      $("job-detail").hidden = true;
      page.openJobId = null;
      const text = error instanceof ApiFailure && error.status === 404
        ? `Unknown job #${id}: ${error.detail} on this device.` : await explain(error);
      showMessage("job-message", text, "error");
    }
  }

  async function loadJobs() {
    let body;
    try {
      body = await api(`v1/jobs?limit=${JOBS_SHOWN}`);
    } catch (error) {
      showMessage("jobs-message", await explain(error), "error");
      return false;
    }
    showMessage("jobs-message", "");
    const wereActive = page.activeJobIds;
    page.jobs = body.jobs;
    page.activeJobIds = new Set(page.jobs.filter((j) => ACTIVE.has(j.status)).map((j) => j.id));
    renderJobs();
    // a job that finished since the last poll stored rows: show them
    if ([...wereActive].some((id) => !page.activeJobIds.has(id))) {
      await loadTable();
      await loadFleet();
    }
    return true;
  }

  function schedulePoll() {
    if (page.pollTimer !== null) clearTimeout(page.pollTimer);
    const delay = page.activeJobIds.size ? POLL_ACTIVE_MS : POLL_IDLE_MS;
    $("jobs-poll").textContent = `updating every ${delay / 1000} s`;
    page.pollTimer = setTimeout(pollJobs, delay);
  }

  async function pollJobs() {
    page.pollTimer = null;
    await loadJobs();
    await refreshOpenJob();
    schedulePoll();
  }

  function askCancel(id) {
    page.cancelJobId = id;
    $("cancel-job-id").textContent = `#${id}`;
    $("cancel-token").value = page.token;
    showMessage("cancel-message", "");
    $("cancel-dialog").hidden = false;
    $("cancel-token").focus();
  }

  async function confirmCancel() {
    const id = page.cancelJobId;
    showMessage("job-message", "");
    const token = $("cancel-token").value.trim();
    // the service refuses a POST without a JSON content type: a page of another site could send one
    const headers = { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    try {
      const job = await api(`v1/jobs/${id}/cancel`, { method: "POST", headers });
      page.token = token;
      $("cancel-dialog").hidden = true;
      showMessage("job-message", `Job #${job.id} is ${job.status}: ${job.done} item(s) measured are kept.`, "ok");
    } catch (error) {
      let text;
      if (error instanceof ApiFailure && error.code === "auth_required") {
        text = "This service needs its bearer token to cancel jobs; without it the page is read-only.";
      } else if (error instanceof ApiFailure && error.code === "auth_refused") {
        text = `The service refused the token (${error.detail}); the job was not cancelled.`;
      } else if (error instanceof ApiFailure && error.status === 409) {
        text = `Job #${id} had already finished: ${error.detail}.`;
      } else if (error instanceof ApiFailure && error.status === 404) {
        text = `Unknown job #${id}: ${error.detail}.`;
      } else {
        text = await explain(error);
      }
      showMessage("cancel-message", text, "error");
    }
    await loadJobs();
    await refreshOpenJob();
    schedulePoll();
  }

  // --- fleet --------------------------------------------------------------------------------------------
  function hardware(fp) {
    const parts = [];
    if (fp.cpu_model) parts.push(`${fp.cpu_model}${fp.cpu_cores ? ` (${fp.cpu_cores} cores)` : ""}`);
    if (fp.gpu) parts.push(`${fp.gpu_count > 1 ? fp.gpu_count + " x " : ""}${fp.gpu}`);
    return parts.join(", ") || "\u2014";
  }

  async function loadFleet() {
    let body;
    try {
      body = await api("v1/fleet/devices");
    } catch (error) {
      showMessage("fleet-message", await explain(error), "error");
      return;
    }
    const devices = body.devices;
    showMessage("fleet-message", devices.length > 1 ? `${devices.length} devices share this database.`
      : "Only this device uses this database. The profilers of other devices that share it (PostgreSQL) appear here.");
    $("fleet-devices").tBodies[0].replaceChildren(...devices.map((d) => el("tr",
      { "data-device-id": d.id, class: d.this_device ? "this-device" : null },
      el("td", { "data-field": "name", text: d.name }),
      el("td", { class: "spec", title: d.fingerprint_hash, text: shortHash(d.fingerprint_hash) }),
      el("td", { text: hardware(d.fingerprint) }),
      el("td", { text: fmtTime(d.first_seen) }), el("td", { text: fmtTime(d.last_seen) }),
      el("td", { class: "num", "data-field": "measurements", text: d.measurements }),
      el("td", { class: "num", "data-field": "ops", text: d.ops }),
      el("td", { text: d.backends.join(", ") || "\u2014" }),
      el("td", { text: fmtTime(d.last_measured_at) }))));
  }

  // A bar `width` px long (set through the CSSOM: the page's policy forbids inline style attributes).
  function bar(width) {
    const node = el("span", { class: "bar" });
    node.style.width = `${width.toFixed(1)}px`;
    return node;
  }

  async function showFleetOp() {
    const spec = $("fleet-op-spec").value.trim();
    showMessage("fleet-op-message", "");
    $("fleet-op-missing").textContent = "";
    const table = $("fleet-op-rows");
    if (!spec) {
      showMessage("fleet-op-message", "Give an op spec, e.g. one of the latency table's.", "error");
      table.hidden = true;
      return;
    }
    let body;
    try {
      body = await api(`v1/fleet/op?spec=${encodeURIComponent(spec)}`);
    } catch (error) {
      showMessage("fleet-op-message", await explain(error), "error");
      table.hidden = true;
      return;
    }
    const high = Math.max(...body.rows.map((r) => r.stats.median_ms), 0);
    table.tBodies[0].replaceChildren(...body.rows.map((r) => el("tr",
      { "data-device-id": r.device.id, class: r.device.this_device ? "this-device" : null },
      el("td", { "data-field": "device", text: r.device.name }), el("td", { text: r.backend }),
      el("td", { class: "num", text: r.batch }), el("td", { text: r.dtype }), el("td", { class: "num", text: r.threads }),
      el("td", { class: "num", "data-key": "median_ms", "data-value": r.stats.median_ms, text: fmtMs(r.stats.median_ms) }),
      el("td", { class: "num", "data-key": "p10_ms", "data-value": r.stats.p10_ms, text: fmtMs(r.stats.p10_ms) }),
      el("td", { class: "num", "data-key": "p90_ms", "data-value": r.stats.p90_ms, text: fmtMs(r.stats.p90_ms) }),
      el("td", { class: "num", "data-key": "iqr_ms", "data-value": r.stats.iqr_ms, text: fmtMs(r.stats.iqr_ms) }),
      el("td", { class: "num", "data-key": "samples", "data-value": r.stats.samples, text: r.stats.samples }),
      el("td", { text: r.protocol_version }),
      el("td", { class: "spec", title: r.env_hash, text: shortHash(r.env_hash) }),
      el("td", {}, bar(high > 0 ? 120 * r.stats.median_ms / high : 0)))));
    table.hidden = body.rows.length === 0;
    if (body.rows.length === 0) {
      showMessage("fleet-op-message", `No device of this database has measured ${body.op_spec}.`, "empty");
    }
    if (body.missing_on.length && body.rows.length) {
      $("fleet-op-missing").textContent = `Not measured on: ${body.missing_on.map((d) => d.name).join(", ")}.`;
    }
  }

  // --- start ---------------------------------------------------------------------------------------------
  async function loadAll() {
    const failures = page.failures;
    await loadDevice();
    await loadTable();
    await loadSpaces();
    if (!page.heatmapShown && page.spaces.length && page.device) {
      try {
        if (page.tableLoaded) await pickDefaultSpace();
        await showHeatmap();
      } catch (error) {
        showMessage("heatmap-message", await explain(error), "error");
      }
    }
    await loadJobs();
    await loadFleet();
    if (page.failures === failures) setBanner("");
    schedulePoll();
  }

  function wire() {
    for (const id of ["filter-backend", "filter-kind", "filter-resolution"]) $(id).addEventListener("change", renderTable);
    $("filter-spec").addEventListener("input", renderTable);
    $("table-filters").addEventListener("submit", (event) => event.preventDefault());
    $("table-reload").addEventListener("click", loadTable);
    for (const th of $("table-rows").tHead.rows[0].cells) th.addEventListener("click", () => sortBy(th.dataset.key));
    $("heatmap-form").addEventListener("submit", (event) => { event.preventDefault(); showHeatmap(); });
    $("job-open-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = Number($("job-open-id").value);
      if (!Number.isSafeInteger(id) || id < 1) {
        showMessage("job-message", "Give a job number (a whole number of at least 1).", "error");
        return;
      }
      showMessage("job-message", "");
      openJob(id);
    });
    $("cancel-confirm").addEventListener("click", confirmCancel);
    $("cancel-close").addEventListener("click", () => { $("cancel-dialog").hidden = true; });
    $("fleet-op-form").addEventListener("submit", (event) => { event.preventDefault(); showFleetOp(); });
  }

  window.addEventListener("error", (event) => setBanner(`The page hit an unexpected error (${event.message}). ` +
    "Reload it; the JSON API under /v1 still answers."));
  window.addEventListener("unhandledrejection", (event) => setBanner("The page hit an unexpected error " +
    `(${event.reason && event.reason.message ? event.reason.message : event.reason}). Reload it.`));

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    document.body.dataset.ready = "loading";
    loadAll().finally(() => { document.body.dataset.ready = "yes"; });
  });
})();
