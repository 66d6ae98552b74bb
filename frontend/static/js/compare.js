/* nasweb run comparison: every run's Pareto front on the same axes (with each run's own SRAM
 * limit as a dashed line in its colour), and hypervolume after each trained candidate. */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("compare-data").textContent);
  const KB = 1024;
  const COLOURS = ["#2f6fdb", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#e67700", "#495057"];
  const layoutBase = {
    margin: { l: 56, r: 12, t: 8, b: 48 },
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 11 } },
    hovermode: "closest",
    showlegend: true,
    font: { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12 },
  };
  const plotConfig = { responsive: true, displaylogo: false };

  function frontTrace(run, i) {
    return {
      type: "scatter",
      mode: "lines+markers",
      name: run.name,
      x: run.front.map((c) => c.peak_sram_bytes / KB),
      y: run.front.map((c) => 100 * c.error),
      text: run.front.map((c) => `${run.name} ${c.label}`),
      customdata: run.front.map((c) => c.id),
      hovertemplate: "%{text}<br>SRAM %{x:.2f} KB · error %{y:.2f} %<extra></extra>",
      line: { shape: "hv", color: COLOURS[i % COLOURS.length] },
    };
  }

  function limitLines() {
    return data.runs
      .map((run, i) => ({ run, i }))
      .filter(({ run }) => run.limits.sram_bytes)
      .map(({ run, i }) => ({
        type: "line", xref: "x", yref: "paper", y0: 0, y1: 1,
        x0: run.limits.sram_bytes / KB, x1: run.limits.sram_bytes / KB,
        line: { color: COLOURS[i % COLOURS.length], width: 1, dash: "dash" },
      }));
  }

  function hypervolumeTrace(run, i) {
    return {
      type: "scatter",
      mode: "lines",
      name: run.name,
      x: run.hypervolume.map((_, k) => k + 1),
      y: run.hypervolume,
      line: { color: COLOURS[i % COLOURS.length] },
      hovertemplate: "after %{x} trained: %{y:.3f}<extra></extra>",
    };
  }

  const fronts = document.getElementById("compare-fronts");
  Plotly.newPlot(fronts, data.runs.map(frontTrace), {
    ...layoutBase,
    shapes: limitLines(),
    xaxis: { title: { text: "peak SRAM (KB)" }, rangemode: "tozero", automargin: true },
    yaxis: { title: { text: "validation error (%)" }, rangemode: "tozero", automargin: true },
  }, plotConfig).then(() => {
    fronts.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      if (point && point.customdata !== undefined) window.location.href = `/candidates/${point.customdata}/`;
    });
  });
  Plotly.newPlot(document.getElementById("compare-hypervolume"), data.runs.map(hypervolumeTrace), {
    ...layoutBase,
    xaxis: { title: { text: "trained candidates, in evaluation order" }, rangemode: "tozero", automargin: true },
    yaxis: { title: { text: "hypervolume (share of the reference box)" }, range: [0, 1], automargin: true },
  }, plotConfig);
  window.naswebCompare = data;
})();
