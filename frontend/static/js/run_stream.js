/* Opens the run dashboard's live stream before plotly.min.js (4.6 MB) loads: the server reads
 * and sends the snapshot while the browser is still parsing the charting library, and
 * run_dashboard.js picks the stream up with `listen` (live.js keeps what arrived meanwhile).
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("dashboard-config").textContent);
  window.naswebStream = new window.LiveRun(config.ws_path, null).start();
})();
