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
from searches.models import Candidate, Dataset, DeploymentJob, PruningJob, SearchRun
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


def test_a_lost_deployment_job_is_queued_again_keeping_its_epochs_then_failed(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from searches.services import deployment

    sent: list[int] = []
    monkeypatch.setattr(task_queue, "train_for_deployment", sent.append)
    source = make_candidate(make_run(user), status=Candidate.Status.DONE)
    job = DeploymentJob.objects.create(source=source, config={})
    for attempt in (1, 2, 3):
        assert deployment._claim(job.pk) is not None
        job.refresh_from_db()
        assert job.attempts == attempt and job.status == DeploymentJob.Status.RUNNING
        DeploymentJob.objects.filter(pk=job.pk).update(progress=[{"epoch": 1}])
        with django_capture_on_commit_callbacks(execute=True):
            counts = leases.reap(_after_lease())
        assert counts["deployment_lost"] == 1
        job.refresh_from_db()
        if attempt < 3:
            # Queued again, its finished epochs kept: the next attempt resumes from the checkpoint.
            assert job.status == DeploymentJob.Status.QUEUED and job.lease_expires is None
            assert job.progress == [{"epoch": 1}] and job.attempts == attempt
    assert job.status == DeploymentJob.Status.FAILED and "lost 3 times" in job.error
    assert job.finished is not None
    assert sent == [job.pk, job.pk]  # queued again twice
    assert deployment._claim(job.pk) is None


def test_a_held_deployment_lease_is_not_taken_twice_and_fences_the_old_attempt(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from searches.engine.training.deployment import DeployEpoch
    from searches.services import deployment

    monkeypatch.setattr(task_queue, "train_for_deployment", lambda pk: True)
    source = make_candidate(make_run(user), status=Candidate.Status.DONE)
    job = DeploymentJob.objects.create(source=source, config={})
    first = deployment._claim(job.pk)
    assert first is not None and first.attempts == 1
    assert deployment._claim(job.pk) is None  # a duplicate delivery while the lease is valid
    assert not leases.take(deployment.DEPLOYMENT, DeploymentJob.objects.get(pk=job.pk))
    assert leases.reap()["deployment_lost"] == 0

    with django_capture_on_commit_callbacks(execute=True):
        leases.reap(_after_lease())
    second = deployment._claim(job.pk)
    assert second is not None and second.attempts == 2
    # The lost attempt, still going somewhere, can neither record an epoch nor finish.
    stats = DeployEpoch(
        epoch=5, phase="float", loss=0.0, val_accuracy=0.0, int8_val_accuracy=0.0, seconds=0.0
    )
    deployment._record_progress(first, stats)
    assert not deployment._finish(first, DeploymentJob.Status.FAILED, error="late")
    job.refresh_from_db()
    assert job.progress == [] and job.status == DeploymentJob.Status.RUNNING and job.attempts == 2
    assert deployment._finish(second, DeploymentJob.Status.FAILED, error="x")


def test_unsent_deployment_jobs_are_sent_by_the_reaper(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from searches.engine.training.deployment import Recipe
    from searches.services import deployment

    sent: list[int] = []
    monkeypatch.setattr(task_queue, "train_for_deployment", lambda pk: False)  # the broker refuses
    source = make_candidate(make_run(user), status=Candidate.Status.DONE, weights="w.pt")
    with django_capture_on_commit_callbacks(execute=True):
        job = deployment.start_deployment(source, Recipe(epochs=1, qat_epochs=0))
    job.refresh_from_db()
    assert job.status == DeploymentJob.Status.QUEUED and job.enqueued_at is None

    monkeypatch.setattr(task_queue, "train_for_deployment", sent.append)  # the broker is back
    assert leases.reap()["deployment_sent"] == 1
    assert sent == [job.pk]
    assert leases.reap()["deployment_sent"] == 0  # sent once, not every pass


def test_a_finished_runs_top_k_goes_through_the_outbox(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from searches.services import deployment

    monkeypatch.setattr(task_queue, "deploy_top_k", lambda pk: False)  # the broker refuses
    jobs_sent: list[int] = []
    monkeypatch.setattr(task_queue, "train_for_deployment", jobs_sent.append)
    run = make_run(user, status=SearchRun.Status.DONE)
    run.config = {**run.config, "deploy_top_k": 1}
    run.save()
    make_candidate(run, status=Candidate.Status.DONE, weights="w.pt", on_pareto=True)
    with django_capture_on_commit_callbacks(execute=True):
        SearchRun.objects.filter(pk=run.pk).update(deploy_pending=True)
        leases.enqueue_on_commit(execution.DEPLOY_TOP_K, run.pk)
    run.refresh_from_db()
    assert run.deploy_pending and run.deploy_enqueued_at is None  # unsent

    top_k: list[int] = []
    monkeypatch.setattr(task_queue, "deploy_top_k", top_k.append)  # the broker is back
    assert leases.reap()["deploy_top_k_sent"] == 1 and top_k == [run.pk]
    with django_capture_on_commit_callbacks(execute=True):
        jobs = deployment.deploy_top_k(run.pk)  # the task
    run.refresh_from_db()
    assert len(jobs) == 1 and not run.deploy_pending and jobs_sent == [jobs[0].pk]
    assert leases.reap(timezone.now() + timedelta(days=1))["deploy_top_k_sent"] == 0


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
