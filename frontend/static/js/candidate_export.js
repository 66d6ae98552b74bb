/* nasweb candidate page: keeps the Export section and the int8 accuracies current.
 *
 * Follows the run's live stream (live.js) from the sequence number the page was rendered at,
 * so the first snapshot holds only what changed since.  When this candidate's row changes
 * (a verification queued, a step finished, int8 accuracies filled in), the int8 tiles are
 * updated from the row and the server renders the Export section again
 * (`{{ live_config.export_url }}`), which replaces the one on the page.
 */
(function () {
  "use strict";

  const source = document.getElementById("candidate-live");
  if (!source || typeof LiveRun === "undefined" || typeof WebSocket === "undefined") return;
  const config = JSON.parse(source.textContent);
  let seq = config.seq;
  let fetching = null;
  let again = false;

  const fmtPct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);

  function setTile(id, value) {
    const tile = document.querySelector(`#${id} .value`);
    if (tile) tile.textContent = fmtPct(value);
  }

  /** Fetch the rendered section; a change that arrives meanwhile fetches once more afterwards. */
  function refreshSection() {
    if (fetching) {
      again = true;
      return;
    }
    fetching = fetch(config.export_url, { headers: { Accept: "text/html" }, credentials: "same-origin" })
      .then((response) => (response.ok ? response.text() : null))
      .then((html) => {
        const current = document.getElementById("export-section");
        if (!html || !current) return;
        const holder = document.createElement("div");
        holder.innerHTML = html.trim();
        const fresh = holder.querySelector("#export-section");
        if (fresh) current.replaceWith(fresh);
      })
      .catch(() => {})
      .finally(() => {
        fetching = null;
        if (again) {
          again = false;
          refreshSection();
        }
      });
  }

  function onChange(change) {
    if (!change.ids.has(config.candidate_id)) return;
    const row = live.rows.get(config.candidate_id);
    if (!row || row.seq <= seq) return;
    seq = row.seq;
    setTile("int8-val", row.int8_val_accuracy);
    setTile("int8-test", row.int8_test_accuracy);
    refreshSection();
  }

  const live = new LiveRun(config.ws_path, onChange);
  live.seq = config.since; // only what changed after the page was rendered
  live.start();
  // For the end-to-end test (tests/e2e/test_export.py), as the dashboard's window.nasweb.
  window.naswebCandidate = { live, refreshSection };
})();
