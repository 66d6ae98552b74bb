"""Training for deployment: the service (real, short trainings on digits), pages, API and CLI."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from searches import events
from searches import queue as task_queue
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.training.deployment import Recipe
from searches.models import Candidate, DeploymentJob
from searches.services import artifacts, deployment, files, leases, runs
from tests.web.exports import make_trained_candidate
from tests.web.factories import make_candidate, make_run

pytestmark = pytest.mark.django_db

# Two float epochs and one quantisation-aware: seconds on digits.
SHORT = Recipe(epochs=2, qat_epochs=1, batch_size=64)


def _start(candidate: Candidate, recipe: Recipe = SHORT) -> DeploymentJob:
    # The task is queued on commit; these tests run it themselves.
    with mock.patch.object(task_queue, "train_for_deployment"):
        return deployment.start_deployment(candidate, recipe)


class WorkerDied(BaseException):
    """Raised from a progress callback: the process stops as a killed worker would, mid-job."""


# ---- the service ---------------------------------------------------------------------------


def test_it_trains_into_a_new_candidate(user, client):
    run = make_run(user)
    source = make_trained_candidate(run, int8_test_accuracy=0.5)
    job = deployment.run_deployment(_start(source).pk)

    assert job is not None and job.status == DeploymentJob.Status.DONE, job and job.error
    assert [p["epoch"] for p in job.progress] == [1, 2, 3]
    assert [p["phase"] for p in job.progress] == ["float", "float", "qat"]
    made = job.result_candidate
    assert made.index == deployment.DEPLOY_INDEX_BASE + job.pk
    assert made.parent_id == source.pk and made.for_deployment
    assert made.mutation == "trained for deployment from #0"
    # Same architecture, same resources.
    assert made.architecture == source.architecture
    for name in ("peak_sram_bytes", "flash_bytes", "macs"):
        assert getattr(made, name) == getattr(source, name)
    # The stored int8 accuracy is the integer reference's on the saved int8 model.
    qm = artifacts.load_quant_model(made.int8_model.name)
    digits = runs.get_dataset("digits")
    assert made.int8_test_accuracy == int8_accuracy(qm, digits.x_test, digits.y_test)
    assert job.result["int8_val_accuracy_simulated"] == made.int8_val_accuracy
    assert job.result["source"]["int8_test_accuracy"] == 0.5
    assert not deployment.checkpoint_path(job).exists()
    assert not files.exists(deployment.checkpoint_name(job))

    client.force_login(user)
    assert client.get(reverse("candidate_header", args=[made.pk])).status_code == 200
    page = client.get(reverse("candidate_detail", args=[made.pk])).content.decode()
    assert "Trained for deployment from" in page and 'id="deployment-curves"' in page
    detail = client.get(reverse("deployment_detail", args=[job.pk])).content.decode()
    assert 'id="deployment-table"' in detail and reverse("candidate_detail", args=[made.pk]) in detail
    payload = next(c for c in events.snapshot(run)["candidates"] if c["id"] == made.pk)
    assert payload["for_deployment"] is True


def test_a_lost_job_is_queued_again_and_resumes_from_the_last_epoch(user, django_capture_on_commit_callbacks):
    source = make_trained_candidate(make_run(user))
    job = _start(source)
    finished: list[int] = []

    def die_after_the_first_epoch(stats):
        finished.append(stats.epoch)
        raise WorkerDied

    with pytest.raises(WorkerDied):
        deployment.run_deployment(job.pk, on_epoch=die_after_the_first_epoch)
    job.refresh_from_db()
    assert job.status == DeploymentJob.Status.RUNNING and [p["epoch"] for p in job.progress] == [1]
    assert files.exists(deployment.checkpoint_name(job))  # also where another machine finds it
    deployment.checkpoint_path(job).unlink()  # the task comes back on another machine

    assert deployment.run_deployment(job.pk) is None  # refused while the dead worker's lease holds
    # Its lease runs out: the reaper queues it again, keeping its finished epoch.
    later = timezone.now() + timedelta(seconds=leases.lease_seconds() + 1)
    with (
        mock.patch.object(task_queue, "train_for_deployment") as send,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert leases.reap(later)["deployment_lost"] == 1
    job.refresh_from_db()
    assert send.call_args_list == [mock.call(job.pk)]
    assert job.status == DeploymentJob.Status.QUEUED and [p["epoch"] for p in job.progress] == [1]

    job = deployment.run_deployment(job.pk)  # the broker delivers the task again
    assert job is not None and job.status == DeploymentJob.Status.DONE, job and job.error
    assert job.attempts == 2 and job.result["resumed_from"] == 1
    assert [p["epoch"] for p in job.progress] == [1, 2, 3]


def test_cancelling_stops_the_job_and_keeps_nothing(user):
    source = make_trained_candidate(make_run(user))
    job = _start(source)

    def cancel_after_the_first_epoch(stats):
        deployment.cancel_deployment(DeploymentJob.objects.get(pk=job.pk))

    deployment.run_deployment(job.pk, on_epoch=cancel_after_the_first_epoch)
    job.refresh_from_db()
    assert job.status == DeploymentJob.Status.CANCELLED and job.result_candidate is None
    assert not Candidate.objects.filter(for_deployment=True).exists()
    assert not deployment.checkpoint_path(job).exists()
    assert deployment.run_deployment(job.pk) is None  # a late delivery does nothing
    assert not deployment.cancel_deployment(job)


def test_only_trained_candidates_can_be_trained(user):
    untrained = make_candidate(make_run(user), 3)
    with pytest.raises(deployment.DeploymentUnavailable, match="only a trained candidate"):
        deployment.start_deployment(untrained, SHORT)


def test_the_recipe_follows_the_data_set(user):
    source = make_trained_candidate(make_run(user))
    assert deployment.recipe_for(source).augment is None  # 8x8 digits: measured to hurt
    recipe = deployment.recipe_for(source, augment=True)
    assert recipe.augment is not None and not recipe.augment.hflip  # digits are never flipped
    assert deployment.recipe_for(source, augment=False).augment is None
    assert deployment.recipe_for(source, qat=False).qat_epochs == 0
    assert deployment.recipe_for(source, epochs=7).epochs == 7
    upload = make_trained_candidate(make_run(user, dataset="upload:1"), 1)
    assert deployment.recipe_for(upload).augment is None
    assert deployment.recipe_for(upload, augment=True).augment is not None
    with pytest.raises(deployment.DeploymentUnavailable, match="epochs"):
        deployment.recipe_for(source, epochs=0)
    assert deployment.recipe_for(source, epochs=7, average_last=3).average_last == 3
    with pytest.raises(
        deployment.DeploymentUnavailable, match=r"average_last must lie in 0..epochs \(7\), not 8"
    ):
        deployment.recipe_for(source, epochs=7, average_last=8)


def test_the_top_k_pareto_candidates_get_jobs_once(user):
    run = make_run(user)
    run.config = {**run.config, "deploy_top_k": 2}
    run.save()
    best = [make_trained_candidate(run, i, on_pareto=True, val_accuracy=0.9 - i / 10) for i in range(3)]
    make_trained_candidate(run, 5, on_pareto=False, val_accuracy=0.99)
    with mock.patch.object(task_queue, "train_for_deployment") as send:
        jobs = deployment.deploy_top_k(run.pk)
        again = deployment.deploy_top_k(run.pk)
    assert [j.source_id for j in jobs] == [best[0].pk, best[1].pk]
    assert again == []
    assert send.call_count == 0  # queued on commit only


# ---- pages ---------------------------------------------------------------------------------


def test_the_candidate_page_starts_a_job(client, user, django_capture_on_commit_callbacks):
    source = make_trained_candidate(make_run(user))
    client.force_login(user)
    page = client.get(reverse("candidate_detail", args=[source.pk])).content.decode()
    assert 'id="deploy-form"' in page

    with (
        mock.patch.object(task_queue, "train_for_deployment") as send,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = client.post(reverse("candidate_deploy", args=[source.pk]), {"epochs": 3, "qat": "on"})
    job = DeploymentJob.objects.get()
    assert response.status_code == 302 and response.url == reverse("deployment_detail", args=[job.pk])
    assert send.call_args.args == (job.pk,)
    assert job.config["epochs"] == 3 and job.config["augment"] is None  # the box was left unticked
    assert client.get(response.url).status_code == 200
    cancel = client.post(reverse("deployment_cancel", args=[job.pk]))
    assert cancel.status_code == 302
    job.refresh_from_db()
    assert job.status == DeploymentJob.Status.CANCELLED


def test_it_checks_owner(client, user, other_user):
    source = make_trained_candidate(make_run(user))
    job = _start(source)
    client.force_login(other_user)
    assert client.post(reverse("candidate_deploy", args=[source.pk])).status_code == 404
    assert client.get(reverse("deployment_detail", args=[job.pk])).status_code == 404
    assert client.post(reverse("deployment_cancel", args=[job.pk])).status_code == 404
    client.logout()
    assert client.get(reverse("deployment_detail", args=[job.pk])).status_code == 302


def test_it_rejects_get(client, user):
    source = make_trained_candidate(make_run(user))
    client.force_login(user)
    assert client.get(reverse("candidate_deploy", args=[source.pk])).status_code == 405


# ---- API and CLI -----------------------------------------------------------------------------


def test_api_starts_lists_and_cancels(user, other_user):
    source = make_trained_candidate(make_run(user))
    api = APIClient()
    api.force_authenticate(user)
    with mock.patch.object(task_queue, "train_for_deployment"):
        created = api.post("/api/deployment-jobs/", {"candidate": source.pk, "epochs": 4}, format="json")
    assert created.status_code == 202, created.json()
    assert created.json()["config"]["epochs"] == 4
    assert [j["id"] for j in api.get("/api/deployment-jobs/").json()] == [created.json()["id"]]
    cancel = api.post(f"/api/deployment-jobs/{created.json()['id']}/cancel/")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert api.post(f"/api/deployment-jobs/{created.json()['id']}/cancel/").status_code == 409

    api.force_authenticate(other_user)
    assert api.post("/api/deployment-jobs/", {"candidate": source.pk}, format="json").status_code == 400
    assert api.get("/api/deployment-jobs/").json() == []


def test_train_final_prints_the_result_as_json(user, tmp_path: Path):
    source = make_trained_candidate(make_run(user))
    out = io.StringIO()
    call_command("train_final", str(source.pk), "--epochs", "1", "--no-augment", "--json", stdout=out)
    data = json.loads(out.getvalue())
    made = Candidate.objects.get(pk=data["candidate_id"])
    assert data["source_id"] == source.pk and made.for_deployment
    assert (data["peak_sram_bytes"], data["flash_bytes"], data["macs"]) == (320, 2_722, 4_864)
    assert data["test_accuracy"] == made.test_accuracy
    assert data["int8_test_accuracy"] == made.int8_test_accuracy
    assert data["epochs"] == 1 + deployment.DEFAULT_RECIPES["digits"].qat_epochs
    assert data["seconds"] > 0 and data["recipe"]["augment"] is None


def test_train_final_averages_weights_when_asked(user):
    source = make_trained_candidate(make_run(user))
    out = io.StringIO()
    call_command(
        "train_final",
        str(source.pk),
        "--epochs",
        "2",
        "--average-last",
        "2",
        "--no-qat",
        "--json",
        stdout=out,
    )
    data = json.loads(out.getvalue())
    assert data["recipe"]["average_last"] == 2 and data["epochs"] == 2
    # Same architecture: the resources are the source's.
    assert (data["peak_sram_bytes"], data["flash_bytes"], data["macs"]) == (320, 2_722, 4_864)
    with pytest.raises(CommandError, match=r"average_last must lie in 0\.\.epochs"):
        call_command(
            "train_final", str(source.pk), "--epochs", "2", "--average-last", "3", stdout=io.StringIO()
        )
