"""Driving search runs on Celery workers: asynchronous aging evolution with its state in the database.

A run keeps up to ``parallel`` evaluations outstanding.  ``fill`` asks the strategy for
proposals until that many are queued, stores each as a pending Candidate row and queues one
``evaluate_candidate`` task per row once the transaction commits.  A worker trains its
candidate holding no lock, then locks the run row, reloads the strategy from ``run.state``,
tells it the result, stores it and fills the freed slot.  So results may arrive in any order,
any worker may pick up any candidate, and a worker holds nothing that cannot be rebuilt from
the database.

Decisions worth knowing:

- Every change of the strategy happens under the run's row lock (``SELECT ... FOR UPDATE`` on
  PostgreSQL; on SQLite every transaction takes the write lock up front).
- Tasks are delivered at least once (``acks_late``, and the reaper sends again): ``evaluate``
  does nothing unless the run is running and it can take the candidate's lease
  (:mod:`searches.services.leases`: pending, or running under a lease that expired), and only
  the holder of the current attempt may tell its result, so no candidate trains twice at once
  and nothing is told twice.  A worker that dies mid-training stops renewing its lease; a
  reaper puts the candidate back in the queue, and after ``NASWEB_MAX_ATTEMPTS`` lost attempts
  tells the strategy it failed, with the reason.
- Starting a run and queueing candidates go through the leases' outbox: a broker that is down
  delays the work (the reaper sends it when the broker is back), it never fails the run.
- Cancelling does not spend budget: the run's unfinished candidates are marked cancelled
  but stay outstanding in the strategy's state, and ``resume_run`` or ``extend_run`` queues
  them again.  Workers notice a cancelled run within
  ``CANCEL_POLL_SECONDS`` and stop training.
- A crashing training is told to the strategy as a failure (it counts against the budget, as
  in the engine) and the run goes on; a run whose every trained candidate failed ends failed
  with the first reason.  An error in this module itself marks the run failed with the
  error's text, so no run stays "running" without a reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from searches import events, queue
from searches.engine.strategies.base import EvalFailure, EvalResult, Proposal, SearchStrategy
from searches.engine.training.train import Fidelity, TrainingStopped
from searches.models import Candidate, SearchRun
from searches.services import deletion, leases
from searches.services.runs import (
    get_dataset,
    load_strategy,
    save_state,
    search_config,
    store_proposal,
    store_result,
    train_proposal,
)

logger = logging.getLogger(__name__)

# How often (at most) a training worker asks the database whether its run was cancelled.
CANCEL_POLL_SECONDS = 2.0

_UNFINISHED = (Candidate.Status.PENDING, Candidate.Status.RUNNING)
_ACTIVE = (SearchRun.Status.PENDING, SearchRun.Status.RUNNING)
_STOPPED = (SearchRun.Status.DONE, SearchRun.Status.CANCELLED, SearchRun.Status.FAILED)


# ---- what the UI calls ---------------------------------------------------------------------


def submit_run(run: SearchRun) -> None:
    """Queue the start of a pending run once the current transaction commits."""
    leases.enqueue_on_commit(START, run.pk)


def start_run(run: SearchRun) -> None:
    """Mark a pending run running and queue its first evaluations; other runs are left alone."""
    with _failing_run_on_error(run.pk), transaction.atomic():
        run = _lock(run.pk)
        if run.status != SearchRun.Status.PENDING:
            return
        run.status = SearchRun.Status.RUNNING
        run.started = run.started or timezone.now()
        run.save(update_fields=["status", "started"])
        _fill_locked(run, load_strategy(run))


def cancel_run(run: SearchRun) -> None:
    """Stop an active run: its unfinished candidates are marked cancelled, workers stop."""
    with transaction.atomic():
        run = _lock(run.pk)
        if not run.is_active:
            return
        _mark_unfinished(run, Candidate.Status.CANCELLED, "cancelled")
        run.status = SearchRun.Status.CANCELLED
        run.finished = timezone.now()
        run.save(update_fields=["status", "finished"])
        events.run_changed(run)


def resume_run(run: SearchRun) -> None:
    """Continue a cancelled or failed run (or a done one with budget left) from its stored state."""
    with _failing_run_on_error(run.pk), transaction.atomic():
        run = _lock(run.pk)
        if run.status in _STOPPED:
            _restart_locked(run, load_strategy(run))


def extend_run(run: SearchRun, extra_budget: int) -> None:
    """Raise the run's budget by ``extra_budget`` evaluations; a stopped run starts again."""
    if extra_budget < 1:
        raise ValueError("extra_budget must be at least 1")
    with _failing_run_on_error(run.pk), transaction.atomic():
        run = _lock(run.pk)
        strategy = load_strategy(run)
        run.budget += extra_budget
        run.config = {**run.config, "budget": run.budget}
        # The strategy asks up to its own config's budget, which lives in the saved state.
        strategy.config = dataclasses.replace(strategy.config, budget=run.budget)
        run.save(update_fields=["budget", "config"])
        if run.status in _STOPPED:
            _restart_locked(run, strategy)
        elif run.status == SearchRun.Status.RUNNING:
            _fill_locked(run, strategy)
        else:
            save_state(run, strategy)
            events.run_changed(run)


def recover_runs() -> int:
    """Queue again everything active runs wait for (after a broker restart lost its queue).

    Duplicate deliveries are harmless (see ``evaluate``); returns the number of runs touched.
    """
    run_ids = list(SearchRun.objects.filter(status__in=_ACTIVE).values_list("pk", flat=True))
    for run_id in run_ids:
        try:
            _recover(run_id)
        except Exception:
            # Already marked failed with its reason; the other runs still deserve their work.
            logger.exception("could not recover run %s", run_id)
    return len(run_ids)


def parallel_evaluations(run: SearchRun) -> int:
    """How many evaluations the run keeps outstanding at once."""
    default = getattr(settings, "NASWEB_PARALLEL_EVALUATIONS", None) or 2
    return max(1, int(run.config.get("parallel") or default))


# ---- what the tasks call ---------------------------------------------------------------------


def fill(run_id: int) -> None:
    """Ask for proposals until ``parallel`` evaluations are outstanding; finish the run when done."""
    with _failing_run_on_error(run_id), transaction.atomic():
        run = _lock(run_id)
        if run.status == SearchRun.Status.RUNNING:
            _fill_locked(run, load_strategy(run))


def evaluate(candidate_id: int) -> None:
    """Train one queued candidate, tell the result and fill the freed slot; safe to call twice."""
    run_id = Candidate.objects.filter(pk=candidate_id).values_list("run_id", flat=True).first()
    if run_id is None:
        logger.warning("candidate %s no longer exists; nothing to evaluate", candidate_id)
        return
    with _failing_run_on_error(run_id):
        try:
            claimed = _claim(run_id, candidate_id)
            if claimed is None:
                return
            run, proposal, attempt = claimed
            with leases.Heartbeat(TRAINING, candidate_id, attempt) as beat:
                try:
                    result = _train(run, proposal, beat.lost.is_set)
                except TrainingStopped:
                    if beat.lost.is_set():
                        # Cancelled, or the lease was taken away: whoever did that owns the row now.
                        logger.info(
                            "candidate %s: attempt %s stopped, its lease is gone", candidate_id, attempt
                        )
                    else:
                        _abandon(candidate_id)
                    return
            _tell(run_id, proposal.id, result, attempt, proposal.rung)
        except ObjectDoesNotExist:
            # The user deleted the run (and so its candidates) while this one queued or trained;
            # what the training saved after the deletion removed the run's files goes too.
            logger.info("run %s is gone; candidate %s dropped", run_id, candidate_id)
            deletion.remove_run_files(run_id)


# ---- the steps -----------------------------------------------------------------------------------


def _lock(run_id: int) -> SearchRun:
    return SearchRun.objects.select_for_update().get(pk=run_id)


def _recover(run_id: int) -> None:
    with _failing_run_on_error(run_id), transaction.atomic():
        run = _lock(run_id)
        if run.status == SearchRun.Status.PENDING:
            leases.enqueue_on_commit(START, run_id)
        elif run.status == SearchRun.Status.RUNNING:
            strategy = load_strategy(run)
            _requeue_outstanding(run, strategy)
            _fill_locked(run, strategy)


def _fill_locked(run: SearchRun, strategy: SearchStrategy) -> None:
    queued: list[int] = []
    while len(strategy.outstanding) < parallel_evaluations(run):
        proposal = strategy.ask()
        if proposal is None:
            break
        candidate = store_proposal(run, proposal)
        if not proposal.rejected:
            queued.append(candidate.pk)
    save_state(run, strategy)
    if strategy.is_done():
        _finish_locked(run, strategy)
        if run.status == SearchRun.Status.DONE and (run.config or {}).get("deploy_top_k"):
            # An outbox row like any other: a lost or unsent task is sent again by the reaper.
            run.deploy_pending = True
            run.save(update_fields=["deploy_pending"])
            leases.enqueue_on_commit(DEPLOY_TOP_K, run.pk)
    events.run_changed(run)
    for candidate_id in queued:
        leases.enqueue_on_commit(TRAINING, candidate_id)


def _finish_locked(run: SearchRun, strategy: SearchStrategy) -> None:
    """The search is over: done, unless every candidate it trained failed (then failed, saying why)."""
    run.status, run.error = SearchRun.Status.DONE, strategy.stop_reason or ""
    candidates = Candidate.objects.filter(run=run)
    failed = candidates.filter(status=Candidate.Status.FAILED).order_by("index")
    if failed.exists() and not candidates.filter(status=Candidate.Status.DONE).exists():
        first = failed.first()
        reason = first.reject_reason if first is not None else ""
        run.status, run.error = SearchRun.Status.FAILED, f"all {failed.count()} candidates failed: {reason}"
    run.finished = timezone.now()
    run.save(update_fields=["status", "error", "finished"])


def _restart_locked(run: SearchRun, strategy: SearchStrategy) -> None:
    run.status = SearchRun.Status.RUNNING
    run.error = ""
    run.finished = None
    run.started = run.started or timezone.now()
    run.save(update_fields=["status", "error", "finished", "started"])
    _requeue_outstanding(run, strategy)
    _fill_locked(run, strategy)


def _requeue_outstanding(run: SearchRun, strategy: SearchStrategy) -> None:
    """Queue every outstanding proposal again, its row back to pending unless a worker has it."""
    rows = Candidate.objects.filter(run=run, index__in=[p.id for p in strategy.outstanding])
    stale = list(rows.exclude(status__in=_UNFINISHED).values_list("pk", flat=True))
    rows.filter(pk__in=stale).update(
        status=Candidate.Status.PENDING, reject_reason="", attempts=0, lease_expires=None
    )
    events.candidates_changed(run.pk, stale)
    for candidate_id in rows.values_list("pk", flat=True):
        leases.enqueue_on_commit(TRAINING, candidate_id)


def _claim(run_id: int, candidate_id: int) -> tuple[SearchRun, Proposal, int] | None:
    """Lease the candidate if its run still wants it; returns what training needs and the attempt."""
    with transaction.atomic():
        run = _lock(run_id)
        candidate = (
            Candidate.objects.select_for_update(of=("self",)).select_related("parent").get(pk=candidate_id)
        )
        if run.status != SearchRun.Status.RUNNING or candidate.status not in _UNFINISHED:
            logger.info("candidate %s is %s, its run %s: skipped", candidate_id, candidate.status, run.status)
            return None
        proposal = _outstanding(load_strategy(run), candidate.index)
        if proposal is None or not leases.take(TRAINING, candidate):
            logger.info(
                "candidate %s is not free to take (attempt %s): skipped", candidate_id, candidate.attempts
            )
            return None
        events.candidate_changed(candidate)
        return run, proposal, candidate.attempts


def _outstanding(strategy: SearchStrategy, proposal_id: int) -> Proposal | None:
    return next((p for p in strategy.outstanding if p.id == proposal_id), None)


def _train(run: SearchRun, proposal: Proposal, lost: Callable[[], bool]) -> EvalResult | EvalFailure:
    """Train outside any lock; a crash becomes a failure to tell; a cancelled run or a lost lease
    raises TrainingStopped."""
    fidelity = Fidelity(**search_config(run).fidelity)
    cancelled = _cancel_poll(run.pk)
    try:
        return train_proposal(
            run, get_dataset(run.dataset), fidelity, proposal, stop=lambda: lost() or cancelled()
        )
    except TrainingStopped:
        raise
    except Exception as exc:
        logger.warning("candidate %s of run %s failed: %s", proposal.id, run.pk, exc, exc_info=True)
        return EvalFailure(f"{type(exc).__name__}: {exc}")


def throttled_stop(cancelled: Callable[[], bool], every: float | None = None) -> Callable[[], bool]:
    """A ``stop`` callable for training that asks ``cancelled`` (a query) at most every ``every`` s."""
    every = CANCEL_POLL_SECONDS if every is None else every
    next_check = time.monotonic() + every

    def stop() -> bool:
        nonlocal next_check
        now = time.monotonic()
        if now < next_check:
            return False
        next_check = now + every
        return cancelled()

    return stop


def _cancel_poll(run_id: int) -> Callable[[], bool]:
    """True once the run is no longer running."""
    return throttled_stop(
        lambda: not SearchRun.objects.filter(pk=run_id, status=SearchRun.Status.RUNNING).exists()
    )


def _tell(
    run_id: int, proposal_id: int, result: EvalResult | EvalFailure, attempt: int, rung: int = 0
) -> None:
    """Tell the result of attempt ``attempt`` at ASHA rung ``rung``, if both are still the current ones."""
    with transaction.atomic():
        run = _lock(run_id)
        candidate = Candidate.objects.select_for_update().get(run=run, index=proposal_id)
        if candidate.status != Candidate.Status.RUNNING or candidate.attempts != attempt:
            # Cancelled meanwhile, or this attempt's lease ran out and the candidate went back
            # to the queue: the current attempt (or nobody) tells.
            logger.info("dropping attempt %s of candidate %s of run %s", attempt, proposal_id, run_id)
            return
        _tell_locked(run, proposal_id, result, rung)


def _tell_locked(
    run: SearchRun, proposal_id: int, result: EvalResult | EvalFailure, rung: int | None = None
) -> None:
    """Tell the outstanding proposal ``proposal_id`` (of ``rung``, when the caller trained one)."""
    if run.status != SearchRun.Status.RUNNING:
        logger.info("dropping the result of candidate %s of run %s", proposal_id, run.pk)
        return
    strategy = load_strategy(run)
    outstanding = _outstanding(strategy, proposal_id)
    if outstanding is None or (rung is not None and outstanding.rung != rung):
        # An attempt at an ASHA rung the candidate has moved past (attempts restart per rung).
        return
    strategy.tell(proposal_id, result)
    store_result(run, strategy, proposal_id, result, outstanding.rung)
    _fill_locked(run, strategy)


def _give_up(candidate: Candidate, reason: str) -> None:
    """The reaper's verdict on a candidate lost too often: a failed evaluation, the run goes on."""
    run = _lock(candidate.run_id)
    if run.status == SearchRun.Status.RUNNING:
        _tell_locked(run, candidate.index, EvalFailure(reason))
    # Whether or not the strategy still waited for it, the row must not stay running.
    rows = Candidate.objects.filter(pk=candidate.pk, status__in=_UNFINISHED)
    if rows.exists():
        _back_to_done(rows)
        rows.update(status=Candidate.Status.FAILED, reject_reason=reason, lease_expires=None)
        events.candidates_changed(run.pk, [candidate.pk])


def _lock_run_of(candidate_id: int) -> None:
    run_id = Candidate.objects.filter(pk=candidate_id).values_list("run_id", flat=True).first()
    if run_id is not None:
        _lock(run_id)


def _requeued(candidate: Candidate) -> None:
    events.candidates_changed(candidate.run_id, [candidate.pk])


# Starting a pending run: one transaction, so it needs the outbox but no lease.
START = leases.register(
    leases.WorkKind(
        name="start",
        model=SearchRun,
        send=lambda pk: queue.start_run(pk),
        queued=SearchRun.Status.PENDING,
        running=None,
    )
)
# Starting deployment training of a finished run's top K (services.deployment.deploy_top_k):
# a single transaction, so an outbox without a lease; the task clears ``deploy_pending``.
DEPLOY_TOP_K = leases.register(
    leases.WorkKind(
        name="deploy_top_k",
        model=SearchRun,
        send=lambda pk: queue.deploy_top_k(pk),
        status_field="deploy_pending",
        queued=True,
        running=None,
        enqueued_field="deploy_enqueued_at",
    )
)
TRAINING = leases.register(
    leases.WorkKind(
        name="training",
        model=Candidate,
        send=lambda pk: queue.evaluate_candidate(pk),
        queued=Candidate.Status.PENDING,
        running=Candidate.Status.RUNNING,
        sendable=Q(run__status=SearchRun.Status.RUNNING),
        give_up=_give_up,
        on_requeued=_requeued,
        lock_first=_lock_run_of,
    )
)


def _abandon(candidate_id: int) -> None:
    """Training stopped because the run stopped: make sure the row does not stay running."""
    with transaction.atomic():
        candidate = Candidate.objects.get(pk=candidate_id)
        _lock(candidate.run_id)
        rows = Candidate.objects.filter(pk=candidate_id, status__in=_UNFINISHED)
        changed = rows.count()
        _back_to_done(rows)
        rows.update(status=Candidate.Status.CANCELLED, reject_reason="cancelled")
        if changed:
            events.candidates_changed(candidate.run_id, [candidate_id])


def _mark_unfinished(run: SearchRun, status: str, reason: str) -> None:
    rows = Candidate.objects.filter(run=run, status__in=_UNFINISHED)
    ids = list(rows.values_list("pk", flat=True))
    _back_to_done(rows)
    rows.update(status=status, reject_reason=reason)
    events.candidates_changed(run.pk, ids)


def _back_to_done(rows: QuerySet[Candidate]) -> None:
    """Unfinished ASHA promotions keep their earlier rung's result: done, not cancelled or failed.

    A resumed run queues the promotion again (it is still outstanding in the strategy).
    """
    rows.filter(val_accuracy__isnull=False).update(status=Candidate.Status.DONE, lease_expires=None)


@contextlib.contextmanager
def _failing_run_on_error(run_id: int) -> Iterator[None]:
    """Any error escaping the service marks the run failed with the error's text, then propagates."""
    try:
        yield
    except Exception as exc:
        logger.exception("run %s failed", run_id)
        _mark_failed(run_id, f"{type(exc).__name__}: {exc}")
        raise


def _mark_failed(run_id: int, error: str) -> None:
    try:
        with transaction.atomic():
            run = SearchRun.objects.select_for_update().filter(pk=run_id).first()
            if run is None or not run.is_active:
                return
            _mark_unfinished(run, Candidate.Status.FAILED, "run failed")
            run.status = SearchRun.Status.FAILED
            run.error = error
            run.finished = timezone.now()
            run.save(update_fields=["status", "error", "finished"])
            events.run_changed(run)
    except Exception:
        # The database itself may be what failed; the original error is what matters.
        logger.exception("could not mark run %s failed", run_id)
