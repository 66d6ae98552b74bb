/* nasweb candidate page: the memory timeline (live bytes per step, default order against the
 * optimal one) and the tensor lifetimes of the optimal order.
 *
 * Reads `{{ memory|json_script:"memory-data" }}`: order, timeline, default_order,
 * default_timeline, live_sets, default_live_sets, tensor_bytes.  Draws into #memory-chart.
 */
(function () {
  "use strict";

  const KB = 1024; // 1 KB = 1024 B
  const source = document.getElementById("memory-data");
  const root = document.getElementById("memory-chart");
  if (!source || !root || typeof Plotly === "undefined") return;
  const memory = JSON.parse(source.textContent);
  if (!memory || !Array.isArray(memory.timeline) || memory.timeline.length === 0) {
    root.textContent = "No memory plan for this candidate.";
    return;
  }

  const font = { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12 };
  const plotConfig = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
  const COLORS = { optimal: "#d9480f", default: "#5f6b76" };

  const fmtKB = (bytes) => (bytes < KB ? `${bytes} B` : `${(bytes / KB).toFixed(2)} KB`);
  const peakOf = (timeline) => Math.max(...timeline);

  function section(title, note) {
    const wrap = document.createElement("div");
    wrap.className = "memory-section";
    const heading = document.createElement("h3");
    heading.textContent = title;
    const caption = document.createElement("p");
    caption.className = "muted";
    caption.textContent = note;
    const plot = document.createElement("div");
    plot.className = "memory-plot";
    wrap.append(heading, caption, plot);
    root.append(wrap);
    return plot;
  }

  /** Steps as numbers; labelled with the op that runs there when one order is drawn and they fit. */
  function stepAxis(order) {
    const axis = { title: { text: "execution step" }, zeroline: false, automargin: true };
    if (order) axis.range = [0, order.length];
    if (order && order.length <= 40) {
      axis.tickvals = order.map((_, k) => k + 0.5);
      axis.ticktext = order;
      axis.tickangle = order.length > 6 ? -35 : 0;
      axis.title.text = "execution step (op running)";
    }
    return axis;
  }

  /** A step line: step k holds timeline[k] from x = k to k + 1. */
  function stepTrace(name, timeline, order, color, dash) {
    const x = new Float64Array(timeline.length + 1);
    const y = new Float64Array(timeline.length + 1);
    timeline.forEach((bytes, k) => {
      x[k] = k;
      y[k] = bytes / KB;
    });
    x[timeline.length] = timeline.length;
    y[timeline.length] = timeline[timeline.length - 1] / KB;
    return {
      type: "scatter",
      mode: "lines",
      name: `${name}: peak ${fmtKB(peakOf(timeline))}`,
      x,
      y,
      customdata: [...order, order[order.length - 1]],
      hovertemplate: `${name} · step %{x}: %{customdata}<br>%{y:.2f} KB live<extra></extra>`,
      line: { shape: "hv", color, width: 2, dash },
    };
  }

  function peakLine(timeline, color) {
    const peak = peakOf(timeline) / KB;
    return {
      type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: peak, y1: peak,
      line: { color, width: 1, dash: "dot" },
    };
  }

  function drawTimeline(element) {
    const order = memory.order;
    const defaultOrder = memory.default_order || order;
    const traces = [
      stepTrace("default order", memory.default_timeline || memory.timeline, defaultOrder, COLORS.default, "dash"),
      stepTrace("optimal order", memory.timeline, order, COLORS.optimal, "solid"),
    ];
    const layout = {
      font,
      margin: { l: 64, r: 16, t: 8, b: 56 },
      // The two orders run different ops at the same step: number the steps, name the ops on hover.
      xaxis: { ...stepAxis(null), range: [0, order.length], dtick: order.length > 30 ? undefined : 1 },
      yaxis: { title: { text: "live activations (KB)" }, rangemode: "tozero", zeroline: false },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      shapes: [peakLine(memory.default_timeline || memory.timeline, COLORS.default), peakLine(memory.timeline, COLORS.optimal)],
      hovermode: "closest",
    };
    return Plotly.newPlot(element, traces, layout, plotConfig);
  }

  /** [first, last] step of every tensor live somewhere in `liveSets`, in order of first use. */
  function lifetimes(liveSets) {
    const spans = new Map();
    liveSets.forEach((live, step) => {
      for (const id of live) {
        const span = spans.get(id);
        if (span) span.last = step;
        else spans.set(id, { id, first: step, last: step });
      }
    });
    return [...spans.values()].sort((a, b) => a.first - b.first || a.last - b.last);
  }

  /** Light (small) to dark orange (the largest tensor). */
  function sizeColor(fraction) {
    const light = [255, 232, 204];
    const dark = [217, 72, 15];
    const mix = light.map((c, i) => Math.round(c + (dark[i] - c) * Math.sqrt(fraction)));
    return `rgb(${mix.join(",")})`;
  }

  function drawLifetimes(element, liveSets, order) {
    const spans = lifetimes(liveSets || []);
    const bytes = memory.tensor_bytes || {};
    const sizes = spans.map((s) => bytes[s.id] || 0);
    const largest = Math.max(1, ...sizes);
    const labels = spans.map((s, i) => `${s.id} · ${fmtKB(sizes[i])}`);
    const trace = {
      type: "bar",
      orientation: "h",
      y: labels,
      base: spans.map((s) => s.first),
      x: spans.map((s) => s.last - s.first + 1),
      customdata: spans.map((s) => [s.first, s.last]),
      hovertemplate: "%{y}<br>live from step %{customdata[0]} to %{customdata[1]}<extra></extra>",
      marker: { color: sizes.map((b) => sizeColor(b / largest)), line: { color: "#a63c0c", width: 0.5 } },
      showlegend: false,
    };
    element.style.height = `${Math.max(260, 22 * spans.length + 120)}px`;
    const layout = {
      font,
      margin: { l: 110, r: 16, t: 8, b: 56 },
      xaxis: stepAxis(order),
      yaxis: { autorange: "reversed", automargin: true, title: { text: "tensor · size" } },
      bargap: 0.25,
      hovermode: "closest",
    };
    return Plotly.newPlot(element, [trace], layout, plotConfig);
  }

  const saved = peakOf(memory.default_timeline || memory.timeline) - peakOf(memory.timeline);
  const savedNote = saved > 0 ? `the optimal order saves ${fmtKB(saved)} of peak SRAM.` : "both orders have the same peak.";
  drawTimeline(section("Live bytes per step", `Default order (dashed) against the optimal order (solid): ${savedNote}`));
  drawLifetimes(
    section(
      "Tensor lifetimes (optimal order)",
      "One bar per activation tensor, from the step that writes it to its last reader; darker is larger.",
    ),
    memory.live_sets,
    memory.order,
  );
  drawLifetimes(
    section(
      "Tensor lifetimes (default order)",
      "The same tensors when the layers run in the order the architecture lists them.",
    ),
    memory.default_live_sets || memory.live_sets,
    memory.default_order || memory.order,
  );
})();
