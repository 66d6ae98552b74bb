"""Work that survives dead workers and broker outages: leases, attempts, an outbox and a reaper.

Every kind of background work (training a candidate, pruning, training for deployment,
verifying an export, starting a run, starting a finished run's top-K deployment jobs, and any
future job) is a database row with a status.  Its
service registers a :class:`WorkKind` saying which columns hold the state; this module then
gives every kind the same guarantees:

- **Leases, renewed by a heartbeat.**  A worker takes a row (:func:`take`) under its row lock:
  status *running*, ``attempts`` + 1, ``lease_expires`` = now + ``NASWEB_LEASE_SECONDS``.  While
  it works, a :class:`Heartbeat` thread pushes the lease forward every third of that.  A row
  whose lease is still valid is never taken by anyone else, so no work runs twice at once;
  results are written only by the holder of the current attempt (the attempt number is the
  fencing token), and a holder whose renewal finds the row taken away stops.
- **A reaper in every worker.**  :func:`reap` puts rows whose lease expired (their worker was
  SIGKILLed, OOM-killed, lost its machine) back in the queue, or, once ``NASWEB_MAX_ATTEMPTS``
  attempts were lost, fails them with the reason.  Each Celery worker runs it in a thread every
  ``NASWEB_REAP_SECONDS`` and once at start-up (:func:`start_reaper`).  A timer in the worker,
  not celery beat: nothing more to deploy or keep alive, no single reaper to lose (every worker
  machine has one; the row locks make concurrent reapers harmless), and if no worker runs
  nothing could do the work anyway.  With the defaults (30 s lease, 10 s reaper) lost work is
  back in the queue within 40 s.
- **An outbox.**  Queued rows are the outbox: :func:`enqueue_on_commit` stamps
  ``enqueued_at`` and sends the task after the transaction commits; a send that fails (broker
  down) clears the stamp instead of raising, and the reaper sends again every row that is
  queued and unsent, or sent longer than ``NASWEB_RESEND_SECONDS`` ago while the broker's
  queue is empty (a broker that restarted without its data lost the message; when the reaper,
  which asks the broker every second whether it is up, saw it down and then back: at once).  Duplicate
  messages are harmless: :func:`take` lets only one through.

Why not ``reject_on_worker_lost``: it re-queues the message the moment a pool child dies, but a
task that kills its child every time (out of memory) would then loop for ever, it does nothing
when the whole worker dies, and the redelivered task would find the dead attempt's lease still
valid anyway.  The lease covers every way of dying the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, models, transaction
from django.db.models import Q
from django.utils import timezone

from searches import queue

logger = logging.getLogger(__name__)


def lease_seconds() -> float:
    return float(getattr(settings, "NASWEB_LEASE_SECONDS", 30))


def reap_seconds() -> float:
    return float(getattr(settings, "NASWEB_REAP_SECONDS", 10))


def resend_seconds() -> float:
    return float(getattr(settings, "NASWEB_RESEND_SECONDS", 60))


def max_attempts() -> int:
    return int(getattr(settings, "NASWEB_MAX_ATTEMPTS", 3))


@dataclasses.dataclass(frozen=True)
class WorkKind:
    """One kind of background work: where its state lives and what to do with it.

    ``running`` None means the work is a single transaction (starting a run): it needs the
    outbox but no lease.  ``give_up(row, reason)`` runs with the row locked, inside the
    reaper's transaction; ``on_requeued(row)`` announces the row's return to the queue.
    """

    name: str
    model: type[models.Model]
    send: Callable[[int], bool | None]
    status_field: str = "status"
    queued: str | bool = "queued"
    running: str | None = "running"
    attempts_field: str = "attempts"
    lease_field: str = "lease_expires"
    enqueued_field: str = "enqueued_at"
    # Only queued rows matching this are (re)sent: e.g. candidates of running runs.
    sendable: Q = dataclasses.field(default_factory=Q)
    # Fields reset when lost work goes back in the queue (e.g. a pruning job's progress).
    reset: dict[str, Any] = dataclasses.field(default_factory=dict)
    give_up: Callable[[Any, str], None] | None = None
    on_requeued: Callable[[Any], None] | None = None
    # Called inside the reaper's transaction before the row is locked, to keep the lock order
    # of the code that takes the row (a candidate's run is locked before the candidate).
    lock_first: Callable[[int], None] | None = None


_KINDS: dict[str, WorkKind] = {}


def register(kind: WorkKind) -> WorkKind:
    """Make ``kind`` known to the reaper (services call this at import time)."""
    _KINDS[kind.name] = kind
    return kind


def kinds() -> list[WorkKind]:
    return list(_KINDS.values())


# ---- the outbox ------------------------------------------------------------------------------


def enqueue_on_commit(kind: WorkKind, pk: int) -> None:
    """Mark the row sent now and send its task once the current transaction commits."""
    kind.model.objects.filter(pk=pk).update(**{kind.enqueued_field: timezone.now()})
    transaction.on_commit(lambda: dispatch(kind, pk))


def dispatch(kind: WorkKind, pk: int) -> bool:
    """Send the row's task; if the broker refuses, clear its stamp so the reaper sends it again."""
    if kind.send(pk) is not False:
        return True
    try:
        kind.model.objects.filter(pk=pk).update(**{kind.enqueued_field: None})
    except Exception:
        # The stamp then ages out after NASWEB_RESEND_SECONDS instead.
        logger.warning("could not mark %s %s unsent", kind.name, pk, exc_info=True)
    return False


# ---- taking and holding work ---------------------------------------------------------------


def take(kind: WorkKind, row: Any) -> bool:
    """Lease a row the caller has locked: queued, or running under a lease that expired.

    False if another worker holds a valid lease, the row is not waiting for work, or its lost
    attempts are used up (the reaper fails it).  On success ``row``'s attempt counter is the
    fencing token to hand to :class:`Heartbeat` and to check before writing results.
    """
    status = getattr(row, kind.status_field)
    now = timezone.now()
    if status == kind.running:
        lease = getattr(row, kind.lease_field)
        if lease is not None and lease > now:
            return False
        if getattr(row, kind.attempts_field) >= max_attempts():
            return False
    elif status != kind.queued:
        return False
    setattr(row, kind.status_field, kind.running)
    setattr(row, kind.attempts_field, getattr(row, kind.attempts_field) + 1)
    setattr(row, kind.lease_field, now + timedelta(seconds=lease_seconds()))
    row.save(update_fields=[kind.status_field, kind.attempts_field, kind.lease_field])
    return True


def holds(kind: WorkKind, pk: int, attempt: int) -> Q:
    """The filter matching the row only while ``attempt`` still holds it."""
    return Q(pk=pk, **{kind.status_field: kind.running, kind.attempts_field: attempt})


class Heartbeat:
    """Renews a lease from a daemon thread while the work runs; ``lost`` is set if it was taken away.

    ``with Heartbeat(kind, pk, attempt) as beat: ... stop=beat.lost.is_set``
    """

    def __init__(self, kind: WorkKind, pk: int, attempt: int) -> None:
        self.kind, self.pk, self.attempt = kind, pk, attempt
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{kind.name}-{pk}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        interval = lease_seconds() / 3
        try:
            while not self._done.wait(interval):
                if not self._renew():
                    self.lost.set()
                    return
        finally:
            connections.close_all()

    def _renew(self) -> bool:
        expires = timezone.now() + timedelta(seconds=lease_seconds())
        try:
            rows = self.kind.model.objects.filter(holds(self.kind, self.pk, self.attempt))
            return bool(rows.update(**{self.kind.lease_field: expires}))
        except Exception:
            # The database may be back before the lease runs out; if not, the reaper decides.
            logger.warning("could not renew the lease of %s %s", self.kind.name, self.pk, exc_info=True)
            close_old_connections()
            return True


# ---- the reaper ----------------------------------------------------------------------------


def reap(now: datetime | None = None, *, broker_back: bool = False) -> dict[str, int]:
    """Requeue (or fail) work whose lease expired and send queued work that is unsent; returns counts.

    ``broker_back``: the broker was unreachable at the previous pass and answers now, so it may
    have restarted without its queue: queued work sent before now counts as stale at once
    (still only if the broker's queue is empty) instead of after ``NASWEB_RESEND_SECONDS``.
    """
    now = now or timezone.now()
    counts: dict[str, int] = {}
    for kind in kinds():
        if kind.running is not None:
            counts[f"{kind.name}_lost"] = _reap_expired(kind, now)
        counts[f"{kind.name}_sent"] = _resend(kind, now, broker_back)
    return counts


def _expired(kind: WorkKind, now: datetime) -> Q:
    """Running under a lease that ran out (work running under none is not a worker's: the
    ``verify_export`` command; migration 0012 gave the rows of older workers an expired lease)."""
    return Q(**{kind.status_field: kind.running, f"{kind.lease_field}__lt": now})


def _reap_expired(kind: WorkKind, now: datetime) -> int:
    expired = kind.model.objects.filter(_expired(kind, now))
    count = 0
    for pk in list(expired.values_list("pk", flat=True)):
        try:
            count += _reap_one(kind, pk, now)
        except Exception:
            logger.exception("could not requeue %s %s", kind.name, pk)
    return count


def _reap_one(kind: WorkKind, pk: int, now: datetime) -> int:
    with transaction.atomic():
        if kind.lock_first is not None:
            kind.lock_first(pk)
        row = kind.model.objects.select_for_update(of=("self",)).filter(_expired(kind, now), pk=pk).first()
        if row is None:  # renewed or finished meanwhile
            return 0
        attempts = getattr(row, kind.attempts_field)
        if attempts >= max_attempts():
            reason = f"its worker was lost {attempts} times (no heartbeat for {lease_seconds():.0f} s)"
            logger.warning("%s %s failed: %s", kind.name, pk, reason)
            if kind.give_up is not None:
                kind.give_up(row, reason)
            return 1
        logger.warning("%s %s: its worker was lost (attempt %d); queued again", kind.name, pk, attempts)
        fields = {kind.status_field: kind.queued, kind.lease_field: None, **kind.reset}
        kind.model.objects.filter(pk=pk).update(**fields)
        for name, value in fields.items():
            setattr(row, name, value)
        enqueue_on_commit(kind, pk)
        if kind.on_requeued is not None:
            kind.on_requeued(row)
    return 1


def _resend(kind: WorkKind, now: datetime, broker_back: bool = False) -> int:
    queued = kind.model.objects.filter(kind.sendable, **{kind.status_field: kind.queued})
    pks = list(queued.filter(**{f"{kind.enqueued_field}__isnull": True}).values_list("pk", flat=True)[:1000])
    cutoff = now if broker_back else now - timedelta(seconds=resend_seconds())
    stale = queued.filter(**{f"{kind.enqueued_field}__lt": cutoff})
    stale_pks = list(stale.values_list("pk", flat=True)[:1000])
    # Sent long ago and never taken: lost only if nothing waits in the broker's queue (a busy
    # worker's backlog is not a loss, and resending it would only pile up duplicates).
    if stale_pks and queue.waiting() == 0:
        pks += stale_pks
    count = 0
    for pk in pks:
        kind.model.objects.filter(pk=pk).update(**{kind.enqueued_field: now})
        if not dispatch(kind, pk):
            break  # the broker is still down: try again next time
        count += 1
    return count


def start_reaper() -> threading.Thread:
    """Run :func:`reap` now and then every ``NASWEB_REAP_SECONDS`` in a daemon thread (one per worker)."""
    thread = threading.Thread(target=_reap_forever, name="nasweb-reaper", daemon=True)
    thread.start()
    return thread


# How often the reaper thread asks the broker whether it is up (one LLEN): a broker that was
# down and is back may have lost its queue, and that deserves a pass at once.
PROBE_SECONDS = 1.0


def _reap_forever() -> None:
    stop = threading.Event()
    broker_was_down = False
    next_pass = 0.0
    while True:
        try:
            broker_up = queue.waiting() is not None
            broker_back = broker_up and broker_was_down
            broker_was_down = not broker_up
            if broker_back or time.monotonic() >= next_pass:
                next_pass = time.monotonic() + reap_seconds()
                close_old_connections()
                counts = {key: n for key, n in reap(broker_back=broker_back).items() if n}
                if counts:
                    logger.info("reaper: %s", counts)
        except Exception:
            logger.exception("reaper pass failed; next in %.0f s", reap_seconds())
            connections.close_all()
        stop.wait(min(PROBE_SECONDS, reap_seconds()))
