"""Leases, the reaper and the outbox (searches.services.leases), played step by step.

Each test plays the workers itself, as tests/web/test_execution.py does: a worker "dies" by
taking a candidate and never coming back, and the reaper is called with a clock past the lease.
tests/faults does the same with real SIGKILLs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from nasweb.celery import app as celery_app
from searches import events
from searches import queue as task_queue
from searches.engine.strategies.base import EvalFailure
from searches.middleware import ServiceUnavailableMiddleware
from searches.models import Candidate, Dataset, PruningJob, SearchRun
from searches.services import execution, leases
from tests.faults.conftest import free_port
from tests.web.factories import make_candidate, make_project, make_run
from tests.web.test_execution import Queue, _run

pytestmark = pytest.mark.django_db


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any) -> Queue:
    recorder = Queue(django_capture_on_commit_callbacks)
    monkeypatch.setattr(task_queue, "evaluate_candidate", recorder.evaluations.append)
    monkeypatch.setattr(task_queue, "start_run", recorder.starts.append)
    return recorder


def _after_lease() -> Any:
    return timezone.now() + timedelta(seconds=leases.lease_seconds() + 1)


def _started(owner: Any, queue: Queue, **kwargs: Any) -> tuple[SearchRun, int]:
    run = _run(owner, **kwargs)
    queue.call(execution.start_run, run)
    return run, queue.evaluations.pop(0)


def _take_and_die(run: SearchRun, candidate_id: int) -> int:
    """A worker takes the candidate, then is SIGKILLed: returns its attempt."""
    claimed = execution._claim(run.pk, candidate_id)
    assert claimed is not None
    return claimed[2]


def test_a_lost_candidate_is_queued_again_and_trained_once(user, queue: Queue) -> None:
    run, candidate_id = _started(user, queue)
    assert _take_and_die(run, candidate_id) == 1
    assert Candidate.objects.get(pk=candidate_id).status == Candidate.Status.RUNNING

    with queue.capture(execute=True):
        assert leases.reap(timezone.now())["training_lost"] == 0  # the lease still holds
        assert leases.reap(_after_lease())["training_lost"] == 1
    candidate = Candidate.objects.get(pk=candidate_id)
    assert candidate.status == Candidate.Status.PENDING and candidate.lease_expires is None
    assert queue.evaluations.count(candidate_id) == 1

    queue.call(execution.evaluate, candidate_id)
    candidate.refresh_from_db()
    assert candidate.status == Candidate.Status.DONE and candidate.attempts == 2


def test_a_candidate_lost_three_times_fails_with_the_reason_and_the_run_goes_on(user, queue: Queue) -> None:
    run, candidate_id = _started(user, queue, budget=3)
    for _ in range(3):
        _take_and_die(run, candidate_id)
        with queue.capture(execute=True):
            leases.reap(_after_lease())
    candidate = Candidate.objects.get(pk=candidate_id)
    assert candidate.status == Candidate.Status.FAILED and candidate.attempts == 3
    assert "worker was lost 3 times" in candidate.reject_reason
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING and run.evaluated == 1  # told as a failure
    # Queued again twice; then its slot went to a new proposal.
    assert queue.evaluations.count(candidate_id) == 2 and len(set(queue.evaluations)) == 3
    queue.drain()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE
    assert not run.candidates.filter(status__in=["pending", "running"]).exists()


def test_a_held_lease_is_not_taken_twice(user, queue: Queue) -> None:
    run, candidate_id = _started(user, queue)
    _take_and_die(run, candidate_id)
    assert execution._claim(run.pk, candidate_id) is None  # a duplicate delivery meanwhile
    queue.call(execution.evaluate, candidate_id)  # nothing trained, nothing told
    assert Candidate.objects.get(pk=candidate_id).attempts == 1


def test_only_the_current_attempt_tells_its_result(user, queue: Queue) -> None:
    run, candidate_id = _started(user, queue)
    index = Candidate.objects.get(pk=candidate_id).index
    first = _take_and_die(run, candidate_id)  # alive after all, but cut off past its lease
    with queue.capture(execute=True):
        leases.reap(_after_lease())
    second = _take_and_die(run, candidate_id)

    execution._tell(run.pk, index, EvalFailure("late"), first)
    candidate = Candidate.objects.get(pk=candidate_id)
    assert candidate.status == Candidate.Status.RUNNING and candidate.attempts == second == 2
    run.refresh_from_db()
    assert run.evaluated == 0


def test_an_unsent_start_is_sent_by_the_reaper(user, monkeypatch: pytest.MonkeyPatch, queue: Queue) -> None:
    sent: list[int] = []
    monkeypatch.setattr(task_queue, "start_run", lambda pk: False)  # the broker refuses
    run = _run(user)
    with queue.capture(execute=True):
        execution.submit_run(run)
    run.refresh_from_db()
    assert run.status == SearchRun.Status.PENDING and run.enqueued_at is None

    monkeypatch.setattr(task_queue, "start_run", sent.append)  # the broker is back
    assert leases.reap()["start_sent"] == 1
    assert sent == [run.pk]
    assert leases.reap()["start_sent"] == 0  # sent once, not every pass


def test_queue_send_reports_a_broker_that_is_down() -> None:
    previous = celery_app.conf.broker_url
    celery_app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    celery_app._pool = celery_app.amqp._producer_pool = None
    try:
        assert task_queue.start_run(1) is False  # logged, not raised
        assert task_queue.waiting() is None
    finally:
        celery_app.conf.broker_url = previous
        celery_app._pool = celery_app.amqp._producer_pool = None


def test_a_run_created_while_the_broker_is_down_is_saved_not_a_500(
    client, user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    monkeypatch.setattr(task_queue, "start_run", lambda pk: False)  # the broker refuses
    project = make_project(user)
    client.force_login(user)
    digits = Dataset.objects.get(name="digits", kind=Dataset.Kind.BUILTIN)
    from searches.models import HardwareProfile

    preset = HardwareProfile.objects.presets().first()
    data = {"profile": preset.pk, "dataset": digits.pk, "strategy": "aging_evolution", "budget": 4}
    data |= {"population": 2, "parallel": 1, "seed": 0}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run_create", args=[project.pk]), data)
    run = SearchRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("run_detail", args=[run.pk])
    assert run.status == SearchRun.Status.PENDING and run.enqueued_at is None


def test_a_lost_pruning_job_is_queued_again_then_failed(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from searches.services import pruning

    sent: list[int] = []
    monkeypatch.setattr(task_queue, "prune", sent.append)
    source = make_candidate(make_run(user), status=Candidate.Status.DONE)
    job = PruningJob.objects.create(source=source, config={})
    for attempt in (1, 2, 3):
        assert pruning._claim(job.pk) is not None
        job.refresh_from_db()
        assert job.attempts == attempt and job.status == PruningJob.Status.RUNNING
        PruningJob.objects.filter(pk=job.pk).update(progress=[{"epoch": 0}])
        with django_capture_on_commit_callbacks(execute=True):
            leases.reap(_after_lease())
        job.refresh_from_db()
    assert job.status == PruningJob.Status.FAILED and "lost 3 times" in job.error
    assert sent == [job.pk, job.pk]  # queued again twice
    assert pruning._claim(job.pk) is None


def test_a_lost_verification_is_queued_again(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from searches.services import export

    sent: list[int] = []
    monkeypatch.setattr(task_queue, "verify_export", sent.append)
    candidate = make_candidate(make_run(user), status=Candidate.Status.DONE, export_status="queued")
    assert leases.take(export.VERIFICATION, candidate)
    with django_capture_on_commit_callbacks(execute=True):
        leases.reap(_after_lease())
    candidate.refresh_from_db()
    assert candidate.export_status == "queued" and candidate.export_attempts == 1 and sent == [candidate.pk]


def test_publishing_to_an_unreachable_channel_layer_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from channels_redis.core import RedisChannelLayer

    monkeypatch.setattr(events, "RETRY_SECONDS", 0.5)
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"])
    publisher = events.Publisher(lambda: layer)
    publisher.publish("run-1", {"type": "run", "seq": 1})  # returns at once
    assert publisher.flush(timeout=10)  # retried, then dropped with a warning


def test_a_run_goes_on_when_its_events_cannot_be_sent(user, queue: Queue, settings) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    run = _run(user, budget=2, parallel=1)
    queue.call(execution.start_run, run)
    queue.drain()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE and run.evaluated == 2


@pytest.mark.parametrize(
    ("path", "accept", "kind"), [("/runs/", "text/html", "text/html"), ("/api/runs/", "", "json")]
)
def test_a_database_outage_answers_503(path: str, accept: str, kind: str) -> None:
    request = RequestFactory().get(path, HTTP_ACCEPT=accept)
    middleware = ServiceUnavailableMiddleware(lambda r: None)  # type: ignore[arg-type,return-value]
    response = middleware.process_exception(request, OperationalError("connection refused"))
    assert response is not None and response.status_code == 503 and response["Retry-After"]
    assert kind in response["Content-Type"]
    assert middleware.process_exception(request, ValueError("a bug")) is None  # still a 500


def test_queued_work_lost_with_the_broker_is_sent_again(
    user, monkeypatch: pytest.MonkeyPatch, queue: Queue
) -> None:
    _started(user, queue)  # both candidates sent, then the broker lost them
    queue.evaluations.clear()
    monkeypatch.setattr(task_queue, "waiting", lambda: 0)  # its queue is empty
    assert leases.reap()["training_sent"] == 0  # sent a moment ago: not lost yet
    assert leases.reap(broker_back=True)["training_sent"] == 2  # it restarted: lost
    later = timezone.now() + timedelta(seconds=leases.resend_seconds() + 1)
    queue.evaluations.clear()
    assert leases.reap(later)["training_sent"] == 2  # or, failing that, after the resend delay
    monkeypatch.setattr(task_queue, "waiting", lambda: 5)  # a backlog: nothing is lost
    later += timedelta(seconds=leases.resend_seconds() + 1)
    assert leases.reap(later)["training_sent"] == 0
