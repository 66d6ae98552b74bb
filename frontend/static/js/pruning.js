/* nasweb pruning job page: fills in the progress table from the run's live stream.
 *
 * Listens on the run's websocket (searches/events.py) for `{"type": "pruning", "job": {...}}`
 * messages about this job; every message carries the whole progress list, so a lost one costs
 * nothing.  When the job ends the page reloads to show the before/after table the server renders.
 */
(function () {
  "use strict";

  const source = document.getElementById("pruning-live");
  if (!source || typeof WebSocket === "undefined") return;
  const config = JSON.parse(source.textContent);
  const ENDED = new Set(["done", "failed", "cancelled"]);
  let retries = 0;

  const fmtPct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);

  function cell(text) {
    const td = document.createElement("td");
    td.className = "num";
    td.textContent = text;
    return td;
  }

  function render(job) {
    const body = document.querySelector("#pruning-progress tbody");
    if (body && job.progress.length) {
      body.replaceChildren(
        ...job.progress.map((p) => {
          const tr = document.createElement("tr");
          tr.append(
            cell(`${p.epoch} / ${p.epochs}`),
            cell(p.sparsity.toFixed(3)),
            cell(fmtPct(p.val_accuracy)),
            cell(p.loss === null ? "—" : p.loss.toFixed(4)),
          );
          return tr;
        }),
      );
    }
    const badge = document.getElementById("pruning-status");
    if (badge) {
      badge.textContent = job.status;
      badge.className = `badge ${job.status}`;
    }
    const state = document.getElementById("pruning-state");
    if (state && job.status === "running") {
      // The first row is the unpruned model, measured before epoch 1 starts (as the server says it).
      const finished = Math.max(job.progress.length - 1, 0);
      state.textContent = `Running: ${finished} of ${config.epochs} fine-tuning epochs finished.`;
    }
    if (ENDED.has(job.status)) location.reload();
  }

  function open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${config.ws_path}`);
    socket.onopen = () => { retries = 0; };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "pruning" && message.job && message.job.id === config.job_id) render(message.job);
    };
    socket.onclose = (event) => {
      if (event.code === 4403) return; // searches.consumers.CLOSE_FORBIDDEN
      retries += 1;
      // A message missed while reconnecting: the page itself is the resync.
      if (retries > 1) location.reload();
      else setTimeout(open, 1000);
    };
  }

  open();
})();
