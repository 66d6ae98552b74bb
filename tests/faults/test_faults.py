"""Fault injection against real processes: each run ends complete, with exactly its candidates,
and nobody lifts a finger.

A worker SIGKILLed mid-training (a supervisor starts a new one), one pool child SIGKILLed (what
the OOM killer does), Redis killed and started again mid-run (its queue lost), and the broker
down while a run is created.  Needs PostgreSQL (``DATABASE_URL``); see conftest.py.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from django.db import transaction

from searches.engine.training.train import Fidelity
from searches.models import Candidate, SearchRun
from searches.services import execution, runs
from tests.faults.conftest import Cluster, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults, pytest.mark.slow]

BUDGET = 3
# Long enough (a few seconds a candidate) to be caught mid-training.
EPOCHS = 5
RUN_TIMEOUT_S = 150


def _tiny_run(owner: Any) -> SearchRun:
    dataset = runs.get_dataset("digits")
    limits = runs.limits_for(None, sram_kb=2, flash_kb=4)
    fidelity = Fidelity(epochs=EPOCHS)
    config = runs.make_config(dataset, limits, budget=BUDGET, population=2, fidelity=fidelity)
    run = runs.create_run(owner, "digits", config)
    run.config = {**run.config, "parallel": 2}
    run.save(update_fields=["config"])
    return run


def _launch(run: SearchRun) -> None:
    """What launch_run does once the row exists: queue the start through the outbox."""
    with transaction.atomic():
        execution.submit_run(run)


def _training(run: SearchRun) -> Candidate | None:
    return Candidate.objects.filter(run=run, status=Candidate.Status.RUNNING).first()


def _wait_until_over(run: SearchRun, cluster: Cluster) -> float:
    started = time.monotonic()
    try:
        wait_for(
            lambda: SearchRun.objects.get(pk=run.pk).status not in ("pending", "running"),
            RUN_TIMEOUT_S,
            "the run",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from None
    return time.monotonic() - started


def _assert_complete(run: SearchRun, cluster: Cluster) -> list[Candidate]:
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE, f"{run.status} {run.error!r}\n{cluster.logs()}"
    rows = list(run.candidates.order_by("index"))
    indexes = [c.index for c in rows]
    assert len(indexes) == len(set(indexes)) == BUDGET, f"a candidate lost or duplicated: {indexes}"
    assert all(c.status == Candidate.Status.DONE and c.weights for c in rows), [
        (c.index, c.status, c.reject_reason) for c in rows
    ]
    assert run.evaluated == BUDGET
    return rows


def _ready(cluster: Cluster) -> None:
    wait_for(lambda: all(" ready." in w.log(400) for w in cluster.workers), 90, "the workers to be ready")


def test_a_killed_worker_loses_nothing(user, cluster: Cluster) -> None:
    worker = cluster.start_worker()
    run = _tiny_run(user)
    _launch(run)
    victim = wait_for(lambda: _training(run), 90, "a candidate in training")
    worker.kill()
    cluster.start_worker()  # what systemd's Restart=always does

    # Back in the queue (or already taken again) once a worker runs: within the lease plus a
    # reaper pass (the timeout also covers starting the new worker on a busy machine).
    requeued = lambda: Candidate.objects.filter(pk=victim.pk).exclude(status="running", attempts=1).exists()  # noqa: E731
    wait_for(requeued, 90, "the lost candidate to be queued again")
    _wait_until_over(run, cluster)
    rows = _assert_complete(run, cluster)
    attempts = {c.index: c.attempts for c in rows}
    assert attempts[victim.index] == 2 and all(n == 1 for i, n in attempts.items() if i != victim.index)


def test_a_killed_pool_child_loses_nothing(user, cluster: Cluster) -> None:
    worker = cluster.start_worker(pool="prefork")
    run = _tiny_run(user)
    _launch(run)
    victim = wait_for(lambda: _training(run), 90, "a candidate in training")
    (child,) = worker.children()
    os.kill(child, signal.SIGKILL)  # the OOM killer's choice: the main worker process lives on

    _wait_until_over(run, cluster)
    rows = _assert_complete(run, cluster)
    assert {c.index: c.attempts for c in rows}[victim.index] == 2
    assert worker.process.poll() is None


def test_redis_restarting_mid_run_is_not_a_failure(user, cluster: Cluster) -> None:
    cluster.start_worker()
    run = _tiny_run(user)
    _launch(run)
    wait_for(lambda: _training(run), 90, "a candidate in training")
    cluster.redis.kill()  # the queue and every live event in flight are gone
    time.sleep(10)
    cluster.redis.start()

    _wait_until_over(run, cluster)
    rows = _assert_complete(run, cluster)
    assert all(c.attempts == 1 for c in rows)


def test_a_run_created_while_the_broker_is_down_starts_when_it_is_back(user, cluster: Cluster) -> None:
    cluster.start_worker()
    _ready(cluster)
    cluster.redis.kill()
    run = _tiny_run(user)
    _launch(run)  # nothing raised
    run.refresh_from_db()
    assert run.status == SearchRun.Status.PENDING and run.enqueued_at is None  # recorded, not sent
    time.sleep(3)
    cluster.redis.start()

    _wait_until_over(run, cluster)
    _assert_complete(run, cluster)
