"""The live-update protocol: the one module that talks to the channel layer.

Every change to a run or one of its candidates bumps the run's sequence number ``seq`` in the
database and stamps the changed row with it.  After the transaction commits, a delta carrying
that number goes to the run's group.  Group messages may be lost (a client reconnecting, a
full channel layer): a client that sees a gap, or reconnects, asks for everything newer than
the last number it applied, and the database answers.  The database is the truth.

Messages (JSON) a dashboard receives:

- ``{"type": "snapshot", "seq": N, "full": bool, "run": {...}, "candidates": [{...}, ...]}``
  (``full`` false: only rows changed after the client's ``since``; the consumer splits a large
  snapshot into parts, all but the last carrying ``"more": true``);
- ``{"type": "candidate", "seq": N, "candidate": {...}}`` (also when its export verification
  moves on: ``export_status`` tells, the candidate page fetches the report itself);
- ``{"type": "candidates", "seq": N, "candidates": [{...}, ...]}`` (several rows changed at once,
  e.g. the Pareto flags);
- ``{"type": "run", "seq": N, "run": {...}}``;
- ``{"type": "events", "messages": [...]}``: several of the messages above, coalesced by the
  publisher during a burst, to be applied in order and drawn once;
- ``{"type": "pruning", "seq": N, "job": {...}}``: a pruning job on one of the run's candidates
  moved on (an epoch finished, or the job ended).  It does not bump ``seq`` (N is the run's
  current number): the job's own row is its truth, and dashboards ignore the type.

- ``{"type": "deployment", "seq": N, "job": {...}}``: a deployment-training job on one of the
  run's candidates moved on (an epoch finished: the job carries its float and int8 learning
  curves, or the job ended).  Like ``pruning``, it does not bump ``seq``.

A client sends ``{"type": "resync", "since": N}`` to get a snapshot of changes after N.

Publishing is best effort and never raises: the database is the truth, so a lost delta costs a
dashboard one resync, while an exception here would fail the run that produced it (a Redis
blip used to).  Each process publishes through one long-lived :class:`Publisher`: a daemon
thread with its own event loop, so the channel layer's connection is opened once and kept
(one ``async_to_sync`` group send per event opened a new one: 2.3 s for a burst of 100).
The first event after a quiet spell is sent at once; after that, at most one send goes out
per ``COALESCE_SECONDS``, carrying every message of a group that was published meanwhile
(``{"type": "run.events", "messages": [...]}``, which the consumer relays to the browser as one
``events`` message, in order).  A failed send is retried with backoff for up to
``RETRY_SECONDS``, then dropped with a warning; the dashboards notice the gap by sequence
number (or reconnect after the outage with ``?since=``) and resync from the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import connection, transaction

from searches.models import Candidate, DeploymentJob, PruningJob, SearchRun, candidate_label

logger = logging.getLogger(__name__)

# How long a failed group send is retried (with backoff) before its messages are dropped.
RETRY_SECONDS = 15.0
# Messages waiting beyond this many (a long outage) are dropped, oldest first.
MAX_WAITING = 10_000
# The most messages one group send carries.
MAX_BATCH = 500
# At most one group send per this many seconds and process: a burst of events goes out in a
# few messages (each costs the dashboard a websocket frame and a redraw), not one per event.
COALESCE_SECONDS = 0.02


def group_name(run_id: int) -> str:
    return f"run-{run_id}"


def run_payload(run: SearchRun) -> dict[str, Any]:
    """What the dashboard shows about a run (status and progress counters).

    ``evaluated`` is the strategy's count of trained or failed proposals, the run list's too;
    the status counts are of the strategy's rows, and ``pruned`` counts pruning jobs' rows.
    """
    counts = dict.fromkeys(Candidate.Status.values, 0)
    pruned = 0
    for status, index in run.candidates.values_list("status", "index"):
        if index >= Candidate.DEPLOY_INDEX_BASE:
            continue  # trained for deployment: shown as their own series, not run progress
        if index >= Candidate.PRUNED_INDEX_BASE:
            pruned += 1
        else:
            counts[status] += 1
    return {
        "id": run.pk,
        "status": run.status,
        "budget": run.budget,
        "evaluated": run.evaluated,
        "done": counts[Candidate.Status.DONE],
        "running": counts[Candidate.Status.RUNNING],
        "pending": counts[Candidate.Status.PENDING],
        "failed": counts[Candidate.Status.FAILED],
        "rejected": counts[Candidate.Status.REJECTED],
        "pruned": pruned,
        "error": run.error,
    }


# Shown as they are stored; candidate_payload adds the id, label, parent and derived values.
PAYLOAD_FIELDS = (
    "index",
    "status",
    "mutation",
    "feasible",
    "on_pareto",
    "val_accuracy",
    "test_accuracy",
    "int8_val_accuracy",
    "int8_test_accuracy",
    "export_status",
    "peak_sram_bytes",
    "flash_bytes",
    "macs",
    "latency_ms",
    "params",
    "train_seconds",
    "rung",
    "for_deployment",
    "reject_reason",
    "notes",
    "seq",
)


def _payload(pk: int, fields: dict[str, Any], parent_index: int | None) -> dict[str, Any]:
    index = fields["index"]
    val_accuracy = fields["val_accuracy"]
    return {
        "id": pk,
        "label": candidate_label(index),
        "pruned": Candidate.PRUNED_INDEX_BASE <= index < Candidate.DEPLOY_INDEX_BASE,
        "parent": parent_index,
        **fields,
        "error": None if val_accuracy is None else 1.0 - val_accuracy,
    }


def candidate_payload(c: Candidate) -> dict[str, Any]:
    """One candidate as the dashboard's plots and table use it."""
    parent = c.parent.index if c.parent_id and c.parent else None
    return _payload(c.pk, {name: getattr(c, name) for name in PAYLOAD_FIELDS}, parent)


def snapshot(run: SearchRun, since: int | None = None) -> dict[str, Any]:
    """Everything (``since`` None) or the candidates changed after ``since``, with the run's seq."""
    run.refresh_from_db()
    # Plain values, not model instances: building 5,000 Candidates (and their parents) was
    # most of the snapshot's time, and the payload needs none of their other fields.
    rows = run.candidates.order_by("index").values_list("pk", "parent__index", *PAYLOAD_FIELDS)
    if since is not None:
        rows = rows.filter(seq__gt=since)
    return {
        "type": "snapshot",
        "seq": run.seq,
        "full": since is None,
        "run": run_payload(run),
        "candidates": [
            _payload(pk, dict(zip(PAYLOAD_FIELDS, values, strict=True)), parent)
            for pk, parent, *values in rows
        ],
    }


def _bump(run_id: int) -> int:
    """Add one to the run's ``seq`` and return the new value, in one statement.

    Every live event pays for this inside its transaction; ``UPDATE ... RETURNING`` (SQLite
    3.35+, PostgreSQL) saves the second query a separate read would cost.
    """
    table = connection.ops.quote_name(SearchRun._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET seq = seq + 1 WHERE id = %s RETURNING seq", [run_id])
        row = cursor.fetchone()
    if row is None:
        raise SearchRun.DoesNotExist(f"no run {run_id}")
    return int(row[0])


class Publisher:
    """Sends messages to channel-layer groups from one daemon thread per process (see the module doc)."""

    def __init__(self, layer_factory: Callable[[], Any] = get_channel_layer) -> None:
        self._layer_factory = layer_factory
        self._waiting: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        # Messages published and not yet sent or dropped (what flush waits for).
        self._outstanding = 0
        self._settled = threading.Condition()

    def publish(self, group: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for ``group``; returns at once and never raises."""
        try:
            layer = self._layer_factory()
            if layer is None:
                return
            if isinstance(layer, InMemoryChannelLayer):
                # It reaches only consumers of this very process and its queues belong to one
                # event loop: deliver in the caller's thread, as the consumers expect.
                async_to_sync(layer.group_send)(group, {"type": "run.event", "message": message})
                return
            self._ensure_thread()
            with self._settled:
                self._outstanding += 1
            self._waiting.put((group, message))
        except Exception:
            logger.warning("could not publish an event to %s", group, exc_info=True)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message was sent or dropped (benchmarks, tests, shutdown)."""
        with self._settled:
            return self._settled.wait_for(lambda: self._outstanding == 0, timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            # After a fork (a Celery pool child) the parent's thread does not exist here.
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._waiting = queue.SimpleQueue()
            self._outstanding = 0
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._serve, name="nasweb-events", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        last_send = -COALESCE_SECONDS
        while True:
            first = self._waiting.get()
            # The first event after a quiet spell goes at once; during a burst, whatever is
            # committed within COALESCE_SECONDS of the last send travels in the next one.
            wait = last_send + COALESCE_SECONDS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            batch = [first, *self._drain()]
            last_send = time.monotonic()
            settled = self._send_with_retry(loop, batch)
            with self._settled:
                self._outstanding -= settled
                self._settled.notify_all()

    def _drain(self) -> list[tuple[str, dict[str, Any]]]:
        items = []
        while True:
            try:
                items.append(self._waiting.get_nowait())
            except queue.Empty:
                return items

    def _send_with_retry(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[str, dict[str, Any]]]
    ) -> int:
        """Send ``batch``, dropping it after ``RETRY_SECONDS``; never raises.  Returns how many
        messages were settled (sent or dropped), those that joined the batch meanwhile included."""
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.1
        settled = 0
        while True:
            try:
                loop.run_until_complete(self._send(batch))
                return settled + len(batch)
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    logger.warning("dropped %d live events after retrying: %s", len(batch), exc)
                    return settled + len(batch)
                logger.info("live events not sent (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                # Whatever arrived meanwhile joins the batch, in order, so nothing overtakes it.
                batch = batch + self._drain()
                if len(batch) > MAX_WAITING:
                    dropped = len(batch) - MAX_WAITING
                    logger.warning("dropped %d live events: the channel layer is unreachable", dropped)
                    settled += dropped
                    batch = batch[-MAX_WAITING:]

    async def _send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        layer = self._layer_factory()
        by_group: dict[str, list[dict[str, Any]]] = {}
        for group, message in batch:
            by_group.setdefault(group, []).append(message)
        for group, messages in by_group.items():
            if len(messages) == 1:
                await layer.group_send(group, {"type": "run.event", "message": messages[0]})
                continue
            for start in range(0, len(messages), MAX_BATCH):
                chunk = messages[start : start + MAX_BATCH]
                await layer.group_send(group, {"type": "run.events", "messages": chunk})


publisher = Publisher()


def _send_after_commit(run_id: int, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: publisher.publish(group_name(run_id), message))


def candidate_changed(candidate: Candidate) -> None:
    """Stamp ``candidate`` with a new sequence number and announce it."""
    with transaction.atomic():
        seq = _bump(candidate.run_id)
        # Plain SQL: compiling the equivalent QuerySet.update was a third of this function's
        # time, and a burst of events pays it once per event.
        table = connection.ops.quote_name(Candidate._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET seq = %s WHERE id = %s", [seq, candidate.pk])
        candidate.seq = seq
        _send_after_commit(
            candidate.run_id, {"type": "candidate", "seq": seq, "candidate": candidate_payload(candidate)}
        )


def candidates_changed(run_id: int, candidate_ids: list[int]) -> None:
    """Stamp several candidates of one run with one new sequence number and announce them."""
    if not candidate_ids:
        return
    with transaction.atomic():
        seq = _bump(run_id)
        Candidate.objects.filter(run_id=run_id, pk__in=candidate_ids).update(seq=seq)
        rows = Candidate.objects.filter(pk__in=candidate_ids).select_related("parent").order_by("index")
        payload = [candidate_payload(c) for c in rows]
        _send_after_commit(run_id, {"type": "candidates", "seq": seq, "candidates": payload})


def run_changed(run: SearchRun) -> None:
    """Bump the run's sequence number and announce its status and progress."""
    with transaction.atomic():
        seq = _bump(run.pk)
        run.seq = seq
        _send_after_commit(run.pk, {"type": "run", "seq": seq, "run": run_payload(run)})


def pruning_payload(job: PruningJob) -> dict[str, Any]:
    """What the pruning page shows live: status, the epochs so far and the result's link."""
    return {
        "id": job.pk,
        "status": job.status,
        "progress": job.progress,
        "error": job.error,
        "result_candidate": job.result_candidate_id,
    }


def pruning_changed(job: PruningJob, run_id: int) -> None:
    """Announce a pruning job's new state on its run's stream (after the transaction commits)."""
    seq = int(SearchRun.objects.values_list("seq", flat=True).get(pk=run_id))
    _send_after_commit(run_id, {"type": "pruning", "seq": seq, "job": pruning_payload(job)})


def deployment_payload(job: DeploymentJob) -> dict[str, Any]:
    """What a deployment job's page shows live: status, the curves so far, the result's link."""
    return {
        "id": job.pk,
        "status": job.status,
        "progress": job.progress,
        "epochs": int(job.config.get("epochs", 0)) + int(job.config.get("qat_epochs", 0)),
        "error": job.error,
        "result_candidate": job.result_candidate_id,
    }


def deployment_changed(job: DeploymentJob, run_id: int) -> None:
    """Announce a deployment job's new state on its run's stream (after the transaction commits)."""
    seq = int(SearchRun.objects.values_list("seq", flat=True).get(pk=run_id))
    _send_after_commit(run_id, {"type": "deployment", "seq": seq, "job": deployment_payload(job)})
