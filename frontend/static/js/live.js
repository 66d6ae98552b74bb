/* nasweb live run stream: one websocket per dashboard (protocol: searches/events.py).
 *
 * Keeps every candidate in a Map keyed by id and the run's progress, applies the server's
 * snapshot and deltas (a burst coalesced by the server, type "events", as one change), and
 * tracks sequence numbers: `seq` is the highest number up to which
 * every message has been applied.  A message from further ahead is applied at once (each row
 * carries its own seq, so an older copy never overwrites a newer one) and remembered; if the
 * hole before it is not filled within GAP_WAIT_MS, the client asks for a resync from `seq`.
 * On reconnect it asks the server for the rows changed since `seq` only.
 */
(function () {
  "use strict";

  const CLOSE_FORBIDDEN = 4403; // searches.consumers.CLOSE_FORBIDDEN: do not reconnect
  const GAP_WAIT_MS = 300; // messages from different workers may arrive slightly out of order
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 30000;

  class LiveRun {
    /**
     * @param {string} path websocket path, e.g. "/ws/runs/3/"
     * @param {((change: {ids: Set<number>, run: boolean, full: boolean, deltas: number, at: number}) => void) | null} onChange
     *   (`deltas`: how many of the server's events it applied; more than one: a coalesced burst)
     *   null: changes are kept until `listen` is called
     * @param {(state: string) => void} onState "connecting" | "live" | "reconnecting" | "forbidden"
     */
    constructor(path, onChange, onState) {
      this.path = path;
      this.onChange = onChange || null;
      this.onState = onState || (() => {});
      this.unheard = null; // changes that arrived before there was a listener
      this.rows = new Map();
      this.run = null;
      this.runSeq = -1;
      this.seq = -1; // -1: no snapshot yet
      this.ahead = new Set();
      this.partial = null; // the change so far while a snapshot arrives in parts
      this.gapTimer = 0;
      this.retries = 0;
      this.resyncs = 0;
      this.messages = 0; // websocket messages received (benchmarks count a burst's)
      this.socket = null;
      this.state = "connecting";
    }

    start() {
      this._open();
      return this;
    }

    _url() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const since = this.seq >= 0 ? `?since=${this.seq}` : "";
      return `${scheme}//${location.host}${this.path}${since}`;
    }

    _setState(state) {
      this.state = state;
      this.onState(state);
    }

    _open() {
      const socket = new WebSocket(this._url());
      this.socket = socket;
      socket.onopen = () => this._setState("live");
      socket.onmessage = (event) => {
        this.retries = 0;
        this.messages += 1;
        this._receive(JSON.parse(event.data));
      };
      socket.onclose = (event) => {
        if (this.socket !== socket) return;
        clearTimeout(this.gapTimer);
        this.partial = null;
        if (event.code === CLOSE_FORBIDDEN) {
          this._setState("forbidden");
          return;
        }
        this._setState("reconnecting");
        // Exponential backoff with jitter, so that a restarted server is not hit by every tab at once.
        const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** this.retries) * (0.5 + Math.random() / 2);
        this.retries += 1;
        setTimeout(() => this._open(), delay);
      };
    }

    _receive(message) {
      if (message.type === "snapshot") {
        this._applySnapshot(message);
        return;
      }
      // A burst the server coalesced ("events") is applied in order and reported as one change.
      const change = { ids: new Set(), run: false, full: false, deltas: 0 };
      for (const delta of message.type === "events" ? message.messages : [message]) {
        if (this._applyDelta(delta, change)) change.deltas += 1;
      }
      if (change.deltas) this._emit(change);
    }

    _applyDelta(message, change) {
      // Already applied, directly or through a snapshot.
      if (this.seq < 0 || message.seq <= this.seq) return false;
      if (message.type === "candidate") {
        this._put(message.candidate, change.ids);
      } else if (message.type === "candidates") {
        for (const row of message.candidates) this._put(row, change.ids);
      } else if (message.type === "run") {
        if (this._putRun(message.run, message.seq)) change.run = true;
      } else {
        return false;
      }
      this._advance(message.seq);
      return true;
    }

    /** Hand `change` to the listener; before there is one, changes are merged and kept. */
    _emit(change) {
      change.at = performance.timeOrigin + performance.now(); // when it arrived (epoch ms)
      if (this.onChange) {
        this.onChange(change);
        return;
      }
      const kept = this.unheard || { ids: new Set(), run: false, full: false, deltas: 0 };
      for (const id of change.ids) kept.ids.add(id);
      kept.deltas += change.deltas || 0;
      kept.run = kept.run || change.run;
      kept.full = kept.full || change.full;
      kept.at = change.at;
      this.unheard = kept;
    }

    /**
     * Start listening (a stream may be started before its page's scripts are ready: the
     * snapshot then travels while they load).  Whatever arrived before is one change.
     */
    listen(onChange, onState) {
      this.onChange = onChange;
      this.onState = onState || (() => {});
      this.onState(this.state);
      if (this.unheard) {
        const change = this.unheard;
        this.unheard = null;
        onChange(change);
      }
      return this;
    }

    _applySnapshot(message) {
      // A big snapshot comes in parts (`more`): the first may be full, the rest add rows.
      const change = this.partial || { ids: new Set(), run: true, full: message.full, deltas: 0 };
      if (message.full) this.rows.clear();
      for (const row of message.candidates) this._put(row, change.ids);
      this._putRun(message.run, message.seq);
      // A full snapshot is the truth even if it is older than what we had (a restored database).
      this.seq = message.full ? message.seq : Math.max(this.seq, message.seq);
      for (const seq of this.ahead) if (seq <= this.seq) this.ahead.delete(seq);
      this._advance(this.seq);
      this.partial = message.more ? change : null;
      if (!message.more) this._emit(change);
    }

    _put(row, ids) {
      const known = this.rows.get(row.id);
      if (known && known.seq > row.seq) return;
      this.rows.set(row.id, row);
      ids.add(row.id);
    }

    _putRun(run, seq) {
      if (seq < this.runSeq) return false;
      this.run = run;
      this.runSeq = seq;
      return true;
    }

    _advance(seq) {
      if (seq > this.seq + 1) {
        this.ahead.add(seq);
      } else if (seq === this.seq + 1) {
        this.seq = seq;
      }
      while (this.ahead.delete(this.seq + 1)) this.seq += 1;
      clearTimeout(this.gapTimer);
      if (this.ahead.size) this.gapTimer = setTimeout(() => this.resync(), GAP_WAIT_MS);
    }

    /** Ask for every row changed after the last contiguous sequence number. */
    resync() {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
      this.resyncs += 1;
      this.socket.send(JSON.stringify({ type: "resync", since: this.seq }));
    }
  }

  window.LiveRun = LiveRun;
})();
