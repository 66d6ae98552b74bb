/* nasweb training for deployment: float and int8 learning curves, live.
 *
 * Draws the epochs the page was rendered with (json_script "deployment-live") with plotly and,
 * while the job runs, listens on the run's websocket (searches/events.py) for
 * `{"type": "deployment", "job": {...}}` messages about this job.  Every message carries the
 * whole progress list, so a lost one costs nothing; when the job ends the page reloads to show
 * the result the server renders.
 */
(function () {
  "use strict";

  const source = document.getElementById("deployment-live");
  const plot = document.getElementById("deployment-curves");
  if (!source || !plot) return;
  const config = JSON.parse(source.textContent);
  const ENDED = new Set(["done", "failed", "cancelled"]);
  let retries = 0;

  const fmtPct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);

  function draw(progress) {
    if (typeof Plotly === "undefined") return;
    const epochs = progress.map((p) => p.epoch);
    const traces = [
      { name: "float", x: epochs, y: progress.map((p) => p.val_accuracy), mode: "lines+markers" },
      { name: "int8", x: epochs, y: progress.map((p) => p.int8_val_accuracy), mode: "lines+markers" },
    ];
    const shapes = config.qat_from > 1 && progress.length >= config.qat_from
      ? [{ type: "line", x0: config.qat_from - 0.5, x1: config.qat_from - 0.5, yref: "paper", y0: 0, y1: 1,
           line: { dash: "dot", width: 1 } }]
      : [];
    Plotly.react(plot, traces, {
      margin: { t: 10, r: 10, b: 40, l: 50 },
      height: 280,
      xaxis: { title: "epoch (dotted: quantisation-aware from here)", dtick: 1 },
      yaxis: { title: "validation accuracy", tickformat: ".0%" },
      shapes,
    }, { displayModeBar: false, responsive: true });
  }

  function cell(text, numeric) {
    const td = document.createElement("td");
    if (numeric) td.className = "num";
    td.textContent = text;
    return td;
  }

  function table(progress) {
    const body = document.querySelector("#deployment-progress tbody");
    if (!body || !progress.length) return;
    body.replaceChildren(...progress.map((p) => {
      const tr = document.createElement("tr");
      tr.append(cell(String(p.epoch), true), cell(p.phase, false), cell(fmtPct(p.val_accuracy), true),
        cell(fmtPct(p.int8_val_accuracy), true), cell(p.loss.toFixed(4), true), cell(`${p.seconds.toFixed(1)} s`, true));
      return tr;
    }));
  }

  function render(job) {
    draw(job.progress);
    table(job.progress);
    const badge = document.getElementById("deployment-status");
    if (badge) badge.textContent = job.status;
    if (ENDED.has(job.status)) location.reload();
  }

  function open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${config.ws_path}`);
    socket.onopen = () => { retries = 0; };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "deployment" && message.job && message.job.id === config.job_id) render(message.job);
    };
    socket.onclose = (event) => {
      if (event.code === 4403) return; // searches.consumers.CLOSE_FORBIDDEN
      retries += 1;
      // A message missed while reconnecting: the page itself is the resync.
      if (retries > 1) location.reload();
      else setTimeout(open, 1000);
    };
  }

  draw(config.progress);
  if (config.ws_path && typeof WebSocket !== "undefined") open();
})();
