/* nasweb run dashboard: Pareto front, population scatter, progress and candidate table, live.
 *
 * Every change from the websocket (live.js) only marks things dirty; one requestAnimationFrame
 * redraw applies however many deltas arrived since the last one (Plotly.react with typed
 * arrays, the table one page at a time).  An event after a quiet spell is drawn on the next
 * frame; a burst of them is drawn once the stream pauses, or every BURST_MAX_WAIT_MS while it
 * does not: a redraw of 5,000 points blocks the page for a few hundred ms in a
 * software-rendered browser, and one started in the middle of a burst delays the final one by
 * as much.  The whole client state is `window.nasweb`, which the end-to-end tests and
 * the benchmarks read (`pointsDrawn()`, `drawnAt`).
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("dashboard-config").textContent);
  const limits = config.limits || {};
  const KB = 1024; // 1 KB = 1024 B throughout nasweb
  const PAGE_SIZE = 25;
  const ACTIVE = new Set(["pending", "running"]);
  // WebGL draws 5,000 points in tens of ms where SVG takes hundreds; SVG is the fallback.
  const SCATTER = (() => {
    try {
      return document.createElement("canvas").getContext("webgl") ? "scattergl" : "scatter";
    } catch (error) {
      return "scatter";
    }
  })();

  // ------------------------------------------------------------------ formatting

  const finite = (v) => (v === null || v === undefined ? NaN : Number(v));
  const kb = (bytes) => finite(bytes) / KB;
  const dash = "–";

  function fmtBytes(bytes) {
    if (bytes === null || bytes === undefined) return dash;
    if (bytes < KB) return `${bytes} B`;
    return `${(bytes / KB).toFixed(bytes < 100 * KB ? 2 : 1)} KB`;
  }

  function fmtCount(n) {
    if (n === null || n === undefined) return dash;
    if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
    if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
    return String(n);
  }

  const fmtPct = (v) => (v === null || v === undefined ? dash : `${(100 * v).toFixed(2)} %`);
  const fmtMs = (v) => (v === null || v === undefined ? dash : `${Number(v).toFixed(v < 10 ? 2 : 1)} ms`);

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
  }

  function candidateUrl(id) {
    return config.candidate_url.replace(/\/0\/(?=[^/]*$)/, `/${id}/`);
  }

  // ------------------------------------------------------------------ metrics and groups

  const ASHA = config.fidelity_schedule === "asha";

  const METRICS = {
    index: { label: "candidate #", value: (c) => c.index },
    // The error the search minimises: the float model's, or its int8 model's.
    error: config.error_objective === "int8"
      ? { label: "int8 validation error (%)", value: (c) => 100 * finite(c.int8_val_accuracy === null ? null : 1 - c.int8_val_accuracy) }
      : { label: "validation error (%)", value: (c) => 100 * finite(c.error) },
    sram: { label: "peak SRAM (KB)", value: (c) => kb(c.peak_sram_bytes), limit: limits.sram_bytes, scale: KB },
    flash: { label: "flash (KB)", value: (c) => kb(c.flash_bytes), limit: limits.flash_bytes, scale: KB },
    macs: { label: "MACs (log scale)", value: (c) => finite(c.macs), log: true },
    latency: { label: "est. latency (ms, calibrated model)", value: (c) => finite(c.latency_ms), limit: limits.latency_ms, scale: 1 },
  };

  // Population colours by status; `front` is the search's own front (all objectives).
  const DEPLOYED = { key: "deployment", name: "trained for deployment", color: "#2b8a3e", symbol: "star", size: 11 };
  const GROUPS = [
    DEPLOYED,
    { key: "front", name: "on the search's Pareto front", color: "#d9480f", symbol: "diamond", size: 9 },
    { key: "done", name: "trained", color: "#2f6fdb", symbol: "circle", size: 6 },
    { key: "running", name: "training", color: "#f59f00", symbol: "circle-open", size: 8 },
    { key: "pending", name: "pending", color: "#868e96", symbol: "circle-open", size: 6 },
    { key: "failed", name: "failed", color: "#b42318", symbol: "x-thin-open", size: 8 },
    { key: "cancelled", name: "cancelled", color: "#868e96", symbol: "x-thin-open", size: 6 },
    { key: "rejected", name: "rejected: over a limit", color: "#adb5bd", symbol: "x", size: 6 },
  ];

  function groupOf(c) {
    if (c.for_deployment) return "deployment";
    if (c.status === "done") return c.on_pareto ? "front" : c.feasible ? "done" : "rejected";
    return c.status;
  }

  const hoverCache = new WeakMap(); // row object -> hover text (a changed row is a new object)

  function hoverText(c) {
    let text = hoverCache.get(c);
    if (text === undefined) {
      text =
        `<b>${escapeHtml(c.label)}</b> ${c.status}${ASHA ? ` · rung ${c.rung}` : ""}${c.on_pareto ? " · Pareto front" : ""}${c.for_deployment ? " · trained for deployment" : ""}<br>` +
        `val acc ${fmtPct(c.val_accuracy)} (int8 ${fmtPct(c.int8_val_accuracy)}) · SRAM ${fmtBytes(c.peak_sram_bytes)} · flash ${fmtBytes(c.flash_bytes)}<br>` +
        `MACs ${fmtCount(c.macs)} · est. latency ${fmtMs(c.latency_ms)}` +
        (c.mutation ? `<br>${escapeHtml(c.mutation.slice(0, 60))}` : "");
      hoverCache.set(c, text);
    }
    return text;
  }

  // ------------------------------------------------------------------ state

  const nasweb = {
    config,
    live: null,
    axes: {
      pareto: { x: "sram", y: "error" },
      population: { x: "sram", y: "flash" },
    },
    table: { sortKey: "index", sortDir: -1, page: 0 },
    drawn: { pareto: 0, population: 0 },
    /** candidate id -> epoch ms (performance.timeOrigin + performance.now()) of its first drawing. */
    drawnAt: {},
    /** candidate id -> epoch ms when its row first arrived over the websocket. */
    receivedAt: {},
    renders: 0,
    lastRenderMs: 0,
    scatterType: SCATTER,
    /** Points drawn on the Pareto plot (or "population") by the last completed redraw. */
    pointsDrawn(which = "pareto") {
      return this.drawn[which];
    },
    rows() {
      return this.live ? this.live.rows : new Map();
    },
    /** Redraw everything on the next frame (benchmarks time it through lastRenderMs). */
    redraw() {
      invalidate({ plots: true, table: true, progress: true });
    },
  };
  window.nasweb = nasweb;

  const dirty = { plots: true, table: true, progress: true };
  let frame = 0;
  let drawing = false;
  let again = false;
  let plotsReady = null; // the socket opens at once; drawing waits for the (empty) plots to exist

  function invalidate(parts) {
    Object.assign(dirty, parts);
    if (drawing) {
      again = true;
    } else if (!frame) {
      frame = requestAnimationFrame(render);
    }
  }

  // Live changes: one event after a quiet spell is drawn on the next frame.  A burst (a message
  // that carries several events, which the publisher coalesced, or a change within QUIET_MS of
  // the previous one) is held until no change came for SETTLE_MS, or BURST_MAX_WAIT_MS after
  // its first held change, whichever is first: a redraw started in the middle of a burst
  // blocks the page, and so the final redraw, for its whole length.  (The publisher sends a
  // burst's events every 20 ms.)
  const QUIET_MS = 60;
  const SETTLE_MS = 30;
  const BURST_MAX_WAIT_MS = 400;
  const held = { plots: false, table: false, progress: false };
  let lastChangeAt = -Infinity;
  let heldSince = 0;
  let settleTimer = 0;

  function releaseHeld() {
    clearTimeout(settleTimer);
    settleTimer = 0;
    const parts = { ...held };
    held.plots = held.table = held.progress = false;
    invalidate(parts);
  }

  function liveChanged(parts, deltas) {
    const now = performance.now();
    const burst = deltas > 1 || now - lastChangeAt < QUIET_MS;
    lastChangeAt = now;
    if (!burst && !settleTimer) {
      invalidate(parts);
      return;
    }
    for (const key of Object.keys(parts)) held[key] = held[key] || parts[key];
    if (!settleTimer) heldSince = now;
    clearTimeout(settleTimer);
    const wait = Math.max(0, Math.min(SETTLE_MS, heldSince + BURST_MAX_WAIT_MS - now));
    settleTimer = setTimeout(releaseHeld, wait);
  }

  async function render() {
    frame = 0;
    drawing = true;
    const started = performance.now();
    try {
      const todo = { ...dirty };
      dirty.plots = dirty.table = dirty.progress = false;
      const rows = Array.from(nasweb.rows().values());
      if (todo.progress) renderProgress(rows);
      const tableStart = performance.now();
      if (todo.table) renderTable(rows);
      const plotsStart = performance.now();
      if (todo.plots) {
        await plotsReady;
        await renderPlots(rows);
      }
      nasweb.renders += 1;
      nasweb.lastRenderMs = performance.now() - started;
      nasweb.lastRender = { table: plotsStart - tableStart, plots: performance.now() - plotsStart, rows: rows.length };
    } finally {
      drawing = false;
      if (again) {
        again = false;
        invalidate({});
      }
    }
  }

  // ------------------------------------------------------------------ plots

  const plotConfig = {
    responsive: true,
    // WebGL canvases at the screen's own resolution: plotly's default (2) quadruples the pixels
    // drawn, and read back for compositing, on an ordinary screen for no visible gain.
    plotGlPixelRatio: Math.min(2, Math.max(1, window.devicePixelRatio || 1)),
    displaylogo: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
  };

  function axisLayout(key) {
    const metric = METRICS[key];
    const axis = { title: { text: metric.label }, zeroline: false, automargin: true };
    // MACs span orders of magnitude; everything else reads best from zero.
    if (metric.log) axis.type = "log";
    else axis.rangemode = "tozero";
    return axis;
  }

  function baseLayout(axes) {
    return {
      margin: { l: 56, r: 12, t: 8, b: 48 },
      xaxis: axisLayout(axes.x),
      yaxis: axisLayout(axes.y),
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 11 } },
      hovermode: "closest",
      // Keep the user's zoom across live updates; a new axis choice resets it.
      uirevision: `${axes.x}|${axes.y}`,
      font: { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12 },
      plot_bgcolor: "#fff",
      paper_bgcolor: "#fff",
    };
  }

  // A limit far beyond every point would squash the points into a corner: it is named instead.
  const LIMIT_IN_VIEW = 1.5;

  /** The limit of the metric on axis `dim`, in the axis's units, or null. */
  function limitOn(axes, dim) {
    const metric = METRICS[axes[dim]];
    if (metric.limit === null || metric.limit === undefined) return null;
    return { at: metric.limit / metric.scale, unit: metric.scale === KB ? "KB" : "ms" };
  }

  /** A dashed line at each limit near the points, with the region beyond it shaded and labelled. */
  function limitDecorations(axes, extent) {
    const shapes = [];
    const annotations = [];
    const red = "#b42318";
    for (const dim of ["x", "y"]) {
      const limit = limitOn(axes, dim);
      if (!limit || extent[dim] <= 0) continue;
      const label = `limit ${+limit.at.toFixed(2)} ${limit.unit}`;
      const other = dim === "x" ? "y" : "x";
      const note = { showarrow: false, font: { size: 10, color: red }, [`${other}ref`]: "paper" };
      if (limit.at > LIMIT_IN_VIEW * extent[dim]) {
        // Off the chart: say so at the end of the axis.
        const where = dim === "x" ? { x: 1, y: 0, xanchor: "right", yanchor: "bottom", text: `${label} →` }
          : { x: 0, y: 1, xanchor: "left", yanchor: "top", text: `↑ ${label}` };
        annotations.push({ ...note, ...where, xref: "paper", yref: "paper" });
        continue;
      }
      const far = Math.max(limit.at, extent[dim]) * 1.08;
      const span = { [`${dim}ref`]: dim, [`${other}ref`]: "paper", [`${other}0`]: 0, [`${other}1`]: 1 };
      shapes.push(
        { type: "rect", layer: "below", line: { width: 0 }, fillcolor: "rgba(180,35,24,0.07)", ...span,
          [`${dim}0`]: limit.at, [`${dim}1`]: far },
        { type: "line", line: { color: red, width: 1.5, dash: "dash" }, ...span,
          [`${dim}0`]: limit.at, [`${dim}1`]: limit.at },
      );
      // x limits are labelled at the top of their line, y limits at the left end of theirs.
      annotations.push(dim === "x"
        ? { ...note, x: limit.at, xref: "x", y: 1, xanchor: "left", yanchor: "top", text: label }
        : { ...note, y: limit.at, yref: "y", x: 0, xanchor: "left", yanchor: "bottom", text: label });
    }
    return { shapes, annotations };
  }

  /** Points of `rows` as growing arrays, keeping only those with both coordinates. */
  function points(rows, axes) {
    const fx = METRICS[axes.x].value;
    const fy = METRICS[axes.y].value;
    const out = [];
    for (const c of rows) {
      const x = fx(c);
      const y = fy(c);
      if (Number.isFinite(x) && Number.isFinite(y)) out.push({ c, x, y });
    }
    return out;
  }

  function scatter(name, pts, style) {
    return {
      type: SCATTER,
      mode: "markers",
      name,
      x: Float64Array.from(pts, (p) => p.x),
      y: Float64Array.from(pts, (p) => p.y),
      customdata: pts.map((p) => p.c.id),
      text: pts.map((p) => hoverText(p.c)),
      hovertemplate: "%{text}<extra></extra>",
      marker: { color: style.color, symbol: style.symbol, size: style.size, line: { width: 1, color: style.color } },
      showlegend: true,
    };
  }

  function extentOf(pts) {
    let x = 0;
    let y = 0;
    for (const p of pts) {
      if (p.x > x) x = p.x;
      if (p.y > y) y = p.y;
    }
    return { x, y };
  }

  /** The 2-D Pareto front (both axes minimised), sorted by x. */
  function front2d(pts) {
    const sorted = pts.slice().sort((a, b) => a.x - b.x || a.y - b.y);
    const front = [];
    let best = Infinity;
    for (const p of sorted) {
      if (p.y < best) {
        front.push(p);
        best = p.y;
      }
    }
    return front;
  }

  function paretoTraces(rows, axes) {
    // Deployment-trained models are their own series: the search's front compares like with like.
    const deployed = points(rows.filter((c) => c.for_deployment && c.status === "done"), axes);
    rows = rows.filter((c) => !c.for_deployment);
    const trained = points(rows.filter((c) => c.status === "done" && c.feasible), axes);
    const over = points(rows.filter((c) => c.status === "rejected" || (c.status === "done" && !c.feasible)), axes);
    const front = front2d(trained);
    const onFront = new Set(front.map((p) => p.c.id));
    const rest = trained.filter((p) => !onFront.has(p.c.id));
    const line = scatter("Pareto front (these two axes)", front, { color: "#d9480f", symbol: "diamond", size: 9 });
    line.mode = "lines+markers";
    line.line = { shape: "hv", color: "#d9480f", width: 2 };
    const traces = [
      scatter("trained", rest, { color: "#2f6fdb", symbol: "circle", size: 6 }),
      scatter("rejected: over a limit", over, { color: "#adb5bd", symbol: "x", size: 6 }),
      line,
      scatter(DEPLOYED.name, deployed, DEPLOYED),
    ];
    traces[0].marker.opacity = 0.55;
    return { traces, all: [...trained, ...over, ...deployed] };
  }

  function populationTraces(rows, axes) {
    const byGroup = new Map(GROUPS.map((g) => [g.key, []]));
    for (const c of rows) byGroup.get(groupOf(c))?.push(c);
    const traces = [];
    const all = [];
    for (const group of GROUPS) {
      const pts = points(byGroup.get(group.key), axes);
      all.push(...pts);
      traces.push(scatter(group.name, pts, group));
    }
    return { traces, all };
  }

  function drawPlot(element, which, built) {
    const axes = nasweb.axes[which];
    const layout = baseLayout(axes);
    Object.assign(layout, limitDecorations(axes, extentOf(built.all)));
    if (!built.all.length) {
      layout.xaxis.showticklabels = layout.yaxis.showticklabels = false;
      layout.annotations.push({
        text: which === "pareto" ? "No trained candidates yet" : "No candidates yet",
        showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#5f6b76", size: 14 },
      });
    }
    return Plotly.react(element, built.traces, layout, plotConfig).then(() => {
      nasweb.drawn[which] = built.all.length;
      return built.all;
    });
  }

  async function renderPlots(rows) {
    rows.sort((a, b) => a.index - b.index);
    const drawn = await Promise.all([
      drawPlot(els.pareto, "pareto", paretoTraces(rows, nasweb.axes.pareto)),
      drawPlot(els.population, "population", populationTraces(rows, nasweb.axes.population)),
    ]);
    const now = performance.timeOrigin + performance.now();
    for (const pts of drawn) {
      for (const p of pts) if (!(p.c.id in nasweb.drawnAt)) nasweb.drawnAt[p.c.id] = now;
    }
  }

  // ------------------------------------------------------------------ progress

  /** Counts by status of the rows the strategy proposed; pruning jobs' rows are counted apart. */
  function countRows(rows) {
    const counts = { done: 0, running: 0, pending: 0, failed: 0, cancelled: 0, rejected: 0, pruned: 0 };
    for (const c of rows) {
      if (c.pruned) counts.pruned += 1;
      else if (c.for_deployment) continue; // drawn as their own series, not run progress
      else if (c.status in counts) counts[c.status] += 1;
    }
    return counts;
  }

  function renderProgress(rows) {
    const counts = countRows(rows);
    const run = nasweb.live && nasweb.live.run ? nasweb.live.run : { status: config.status, budget: 0, evaluated: 0 };
    const active = ACTIVE.has(run.status);
    // "Evaluated" is the server's count (trained or failed proposals), as on the run list.
    const evaluated = run.evaluated || 0;
    const total = Math.max(run.budget, evaluated + counts.running + counts.pending, 1);
    const widths = { done: counts.done, failed: counts.failed, running: counts.running, pending: counts.pending };
    for (const [key, n] of Object.entries(widths)) els.bar[key].style.width = `${(100 * n) / total}%`;
    els.progress.setAttribute("aria-valuenow", String(evaluated));
    els.progress.setAttribute("aria-valuemax", String(total));
    // Cancelled rows are trained again when the run resumes: counted, not drawn in the bar.
    for (const key of Object.keys(els.count)) els.count[key].textContent = String(counts[key]);
    els.prunedItem.hidden = counts.pruned === 0;
    els.budget.textContent = `${evaluated} of ${run.budget} evaluated`;
    els.status.textContent = run.status;
    els.status.className = `badge ${run.status}`;
    // A finished run has nothing to cancel and nothing live to show (an extension brings both back).
    els.cancelForm.hidden = !active;
    els.cancel.disabled = !active;
    els.connection.hidden = !active;
    els.runError.textContent = run.error || "";
  }

  // ------------------------------------------------------------------ table

  // `first`: the direction of a column's first click, best first (-1: highest first).
  const COLUMNS = [
    { key: "status", label: "status", get: (c) => c.status, first: 1 },
    { key: "index", label: "#", get: (c) => c.index, first: -1 },
    // ASHA runs: the rung of the shown results (a promoted candidate training further shows the rung below).
    ...(ASHA ? [{ key: "rung", label: "rung", get: (c) => c.rung, show: String, first: -1 }] : []),
    { key: "val_accuracy", label: "val acc", get: (c) => c.val_accuracy, show: fmtPct, first: -1 },
    { key: "test_accuracy", label: "test acc", get: (c) => c.test_accuracy, show: fmtPct, first: -1 },
    { key: "int8_val_accuracy", label: "int8 val", get: (c) => c.int8_val_accuracy, show: fmtPct, first: -1 },
    { key: "int8_test_accuracy", label: "int8 test", get: (c) => c.int8_test_accuracy, show: fmtPct, first: -1 },
    { key: "peak_sram_bytes", label: "peak SRAM", get: (c) => c.peak_sram_bytes, show: fmtBytes },
    { key: "flash_bytes", label: "flash", get: (c) => c.flash_bytes, show: fmtBytes },
    { key: "macs", label: "MACs", get: (c) => c.macs, show: fmtCount },
    { key: "latency_ms", label: "est. latency", get: (c) => c.latency_ms, show: fmtMs },
    { key: "mutation", label: "mutation / reason", get: (c) => c.mutation || c.reject_reason || "" },
  ];

  function compareBy(column, dir) {
    return (a, b) => {
      const x = column.get(a);
      const y = column.get(b);
      // Missing values sort last in either direction.
      const missingX = x === null || x === undefined;
      const missingY = y === null || y === undefined;
      if (missingX || missingY) return missingX - missingY || a.index - b.index;
      if (x < y) return -dir;
      if (x > y) return dir;
      return a.index - b.index;
    };
  }

  function cellHtml(column, c) {
    if (column.key === "status") {
      return `<span class="badge ${escapeHtml(c.status)}">${escapeHtml(c.status)}</span>`;
    }
    if (column.key === "index") {
      let star = c.on_pareto ? ' <span class="front-mark" title="on the Pareto front">◆</span>' : "";
      if (c.for_deployment) star += ' <span class="deploy-mark" title="trained for deployment">★</span>';
      return `<a href="${escapeHtml(candidateUrl(c.id))}">${escapeHtml(c.label)}</a>${star}`;
    }
    if (column.key === "mutation" && (c.reject_reason || c.notes)) {
      // Why a row was rejected (or failed) matters more than how it was made: both are shown,
      // and the user's own note under them.
      const why = c.status === "rejected" ? "rejected" : c.status;
      const parts = c.mutation ? [escapeHtml(c.mutation)] : [];
      if (c.reject_reason) parts.push(`<span class="reason">${escapeHtml(why)}: ${escapeHtml(c.reject_reason)}</span>`);
      if (c.notes) parts.push(`<span class="note">note: ${escapeHtml(c.notes.slice(0, 120))}</span>`);
      return parts.join("<br>");
    }
    const value = column.get(c);
    const text = column.show ? column.show(value) : value;
    return escapeHtml(text === "" ? dash : text);
  }

  function renderHeader() {
    const { sortKey, sortDir } = nasweb.table;
    els.tableHead.innerHTML = COLUMNS.map((col) => {
      const sort = col.key === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none";
      const numeric = col.show || col.key === "index" ? " num" : "";
      return `<th scope="col" class="sortable${numeric}" aria-sort="${sort}" data-key="${col.key}">` +
        `<button type="button">${col.label}</button></th>`;
    }).join("");
  }

  function renderTable(rows) {
    const { sortKey, sortDir } = nasweb.table;
    const column = COLUMNS.find((col) => col.key === sortKey);
    rows.sort(compareBy(column, sortDir));
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    nasweb.table.page = Math.min(nasweb.table.page, pages - 1);
    const start = nasweb.table.page * PAGE_SIZE;
    const visible = rows.slice(start, start + PAGE_SIZE);
    els.tableBody.innerHTML = visible
      .map((c) => {
        const cells = COLUMNS.map((col) => {
          const numeric = col.show || col.key === "index" ? ' class="num"' : "";
          return `<td${numeric}>${cellHtml(col, c)}</td>`;
        });
        return `<tr data-id="${c.id}">${cells.join("")}</tr>`;
      })
      .join("");
    els.pageInfo.textContent = rows.length
      ? `${start + 1}–${start + visible.length} of ${rows.length}`
      : "no candidates yet";
    els.prev.disabled = nasweb.table.page === 0;
    els.next.disabled = nasweb.table.page >= pages - 1;
  }

  // ------------------------------------------------------------------ wiring

  const byId = (id) => document.getElementById(id);
  const els = {
    pareto: byId("pareto-plot"),
    population: byId("population-plot"),
    progress: byId("progress"),
    bar: {
      done: byId("bar-done"), failed: byId("bar-failed"), running: byId("bar-running"), pending: byId("bar-pending"),
    },
    count: {
      done: byId("count-done"), running: byId("count-running"), pending: byId("count-pending"),
      failed: byId("count-failed"), cancelled: byId("count-cancelled"), rejected: byId("count-rejected"),
      pruned: byId("count-pruned"),
    },
    prunedItem: byId("count-pruned-item"),
    cancelForm: byId("cancel-form"),
    budget: byId("progress-budget"),
    status: byId("run-status"),
    runError: byId("run-error"),
    connection: byId("connection"),
    cancel: byId("cancel-button"),
    actionMessage: byId("action-message"),
    tableHead: byId("candidate-head"),
    tableBody: byId("candidate-body"),
    pageInfo: byId("page-info"),
    prev: byId("page-prev"),
    next: byId("page-next"),
  };

  function fillAxisSelect(select, which, dim) {
    const keys = Object.keys(METRICS).filter((key) => which === "population" || key !== "index");
    select.innerHTML = keys.map((key) => `<option value="${key}">${METRICS[key].label}</option>`).join("");
    select.value = nasweb.axes[which][dim];
    select.addEventListener("change", () => {
      nasweb.axes[which][dim] = select.value;
      invalidate({ plots: true });
    });
  }

  for (const select of document.querySelectorAll("select[data-plot]")) {
    fillAxisSelect(select, select.dataset.plot, select.dataset.axis);
  }

  function onPlotClick(element) {
    element.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      if (point && point.customdata !== undefined) window.location.href = candidateUrl(point.customdata);
    });
  }

  els.tableHead.addEventListener("click", (event) => {
    const th = event.target.closest("th[data-key]");
    if (!th) return;
    const table = nasweb.table;
    if (table.sortKey === th.dataset.key) table.sortDir = -table.sortDir;
    else Object.assign(table, { sortKey: th.dataset.key, sortDir: COLUMNS.find((col) => col.key === th.dataset.key).first || 1 });
    table.page = 0;
    renderHeader();
    invalidate({ table: true });
  });

  els.prev.addEventListener("click", () => {
    nasweb.table.page = Math.max(0, nasweb.table.page - 1);
    invalidate({ table: true });
  });
  els.next.addEventListener("click", () => {
    nasweb.table.page += 1;
    invalidate({ table: true });
  });

  // Cancel / extend: ordinary forms (they work without JavaScript: Cancel then shows a confirmation
  // page), sent in the background here so that the charts stay; the run's new status arrives over
  // the websocket.  A form with data-confirm asks first (here, not in pages/confirm.js).
  for (const form of document.querySelectorAll("form[data-live-action]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      event.stopPropagation();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
      const body = new FormData(form);
      if (form.dataset.confirm) body.set("confirm", "yes");
      const label = form.dataset.liveAction;
      els.actionMessage.textContent = `${label}…`;
      try {
        const response = await fetch(form.action, {
          method: "POST",
          body,
          credentials: "same-origin",
          headers: {
            Accept: "application/json",
            "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value,
          },
        });
        const reply = await response.json().catch(() => ({}));
        els.actionMessage.textContent = reply.message || `${label}: HTTP ${response.status}`;
        els.actionMessage.classList.toggle("error", !response.ok);
      } catch (error) {
        els.actionMessage.textContent = `${label} failed: ${error.message}`;
        els.actionMessage.classList.add("error");
      }
    });
  }

  const CONNECTION_TEXT = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    forbidden: "access revoked: reload the page to log in again",
  };

  /**
   * The traces of an empty plot, each with one invisible point: plotly compiles its WebGL
   * programs and rasterises every marker shape now, while the snapshot is still on its way,
   * rather than in the first real redraw (most of its time with 5,000 candidates).
   */
  function warmUp(traces) {
    return traces.map((trace) => ({
      ...trace, x: [0], y: [0], customdata: undefined, text: undefined, hoverinfo: "skip", opacity: 0, showlegend: false,
    }));
  }

  function start() {
    renderHeader();
    plotsReady = Promise.all([
      Plotly.newPlot(els.pareto, warmUp(paretoTraces([], nasweb.axes.pareto).traces), baseLayout(nasweb.axes.pareto), plotConfig),
      Plotly.newPlot(els.population, warmUp(populationTraces([], nasweb.axes.population).traces), baseLayout(nasweb.axes.population), plotConfig),
    ]).then(() => {
      onPlotClick(els.pareto);
      onPlotClick(els.population);
    });
    // Opened by run_stream.js before plotly.min.js loaded; a page without it opens its own.
    nasweb.live = (window.naswebStream || new window.LiveRun(config.ws_path, null).start()).listen(
      (change) => {
        for (const id of change.ids) if (!(id in nasweb.receivedAt)) nasweb.receivedAt[id] = change.at;
        const rowsChanged = change.full || change.ids.size > 0;
        // A full snapshot (the page's first rows) is drawn at once; deltas and resyncs as below.
        if (change.full) invalidate({ plots: true, table: true, progress: true });
        else liveChanged({ plots: rowsChanged, table: rowsChanged, progress: true }, change.deltas);
      },
      (state) => {
        els.connection.textContent = CONNECTION_TEXT[state] || state;
        els.connection.className = `connection connection-${state}`;
      },
    );
  }

  start();
})();
