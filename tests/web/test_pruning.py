"""Pruning jobs: the service (a real, short prune on digits) and the pages that start and show them."""

from __future__ import annotations

import dataclasses
import functools
import re
from unittest import mock

import pytest
from django.urls import reverse

from searches import events
from searches import queue as task_queue
from searches.engine.space.arch import from_json
from searches.engine.training.train import TrainResult, train_and_evaluate
from searches.models import Candidate, PruningJob
from searches.services import artifacts, files, pruning, runs
from tests.web.exports import FIDELITY, make_trained_candidate, media
from tests.web.factories import architecture, conv, make_candidate, make_profile, make_run

pytestmark = pytest.mark.django_db

# Two convs: the second one's filters are prunable (the first reads the image and stays).
PRUNABLE_ARCH = architecture(layers=[conv(4), conv(8)])


@functools.cache
def _trained() -> TrainResult:
    return train_and_evaluate(from_json(PRUNABLE_ARCH), runs.get_dataset("digits"), FIDELITY)


def _trained_candidate(run, index: int = 0) -> Candidate:
    result = _trained()
    weights = artifacts.save_weights_file(result.state_dict, artifacts.weights_name(run, index))
    return make_candidate(
        run,
        index,
        architecture=PRUNABLE_ARCH,
        weights=weights,
        val_accuracy=result.val_accuracy,
        test_accuracy=result.test_accuracy,
        peak_sram_bytes=None,
        flash_bytes=None,
        macs=None,
        params=None,
    )


def _start(candidate: Candidate, **kwargs) -> PruningJob:
    # The task is queued on commit; these tests run it themselves.
    with mock.patch.object(task_queue, "prune"):
        return pruning.start_pruning(candidate, epochs=2, **kwargs)


# ---- the service ---------------------------------------------------------------------------


def test_it_prunes_into_a_new_candidate(user, client):
    run = make_run(user)
    source = _trained_candidate(run)
    job = _start(source, target_sparsity=0.5)
    pruning.run_pruning(job.pk)

    job.refresh_from_db()
    assert job.status == PruningJob.Status.DONE, job.error
    assert [p["epoch"] for p in job.progress] == [0, 1, 2]
    pruned = job.result_candidate
    assert pruned.index == pruning.PRUNED_INDEX_BASE + job.pk
    assert pruned.label == f"P{job.pk}" and pruned.is_pruned and not source.is_pruned
    assert pruned.run_id == run.pk and pruned.parent_id == source.pk
    assert pruned.mutation == f"pruned from #0 (sparsity {job.result['sparsity']:.2f})"
    assert pruned.is_trained and media(pruned.weights.name).is_file()
    assert pruned.int8_model and pruned.int8_val_accuracy is not None
    before, after = job.result["before"]["resources"], job.result["after"]["resources"]
    for name in ("peak_sram_bytes", "flash_bytes", "macs", "params"):
        assert after[name] <= before[name]
        assert getattr(pruned, name) == after[name]
    assert after["params"] < before["params"]

    client.force_login(user)
    response = client.get(reverse("candidate_header", args=[pruned.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"].endswith(f'nasweb_r{run.pk}_p{job.pk}.h"')
    page = client.get(reverse("pruning_detail", args=[job.pk]))
    assert page.status_code == 200
    assert reverse("candidate_detail", args=[pruned.pk]) in page.content.decode()
    assert f"candidate P{job.pk}</a>" in page.content.decode()
    assert "1000" not in client.get(reverse("candidate_detail", args=[pruned.pk])).content.decode()
    # Shown with the run's other candidates, and the strategy's rows are untouched.
    assert client.get(reverse("run_detail", args=[run.pk])).status_code == 200
    assert f"\n{pruned.index}," in client.get(reverse("run_csv", args=[run.pk])).content.decode()
    assert pruned.pk in [c["id"] for c in events.snapshot(run)["candidates"]]
    assert not pruned.on_pareto


def test_it_fits_the_profile(user):
    run = make_run(user, profile=make_profile(user, sram_kb=1, flash_kb=4))
    job = _start(_trained_candidate(run), fit_profile=True)
    pruning.run_pruning(job.pk)
    job.refresh_from_db()
    assert job.status == PruningJob.Status.DONE, job.error
    assert job.config["fit"] == {"peak_sram_bytes": 1024, "flash_bytes": 4096, "macs": None}
    assert job.result_candidate.flash_bytes <= 4096
    assert job.result_candidate.peak_sram_bytes <= 1024


def test_it_fails_when_the_profile_cannot_fit(user):
    # No profile: the run's own limits; the first conv's 256 B output cannot be pruned.
    run = make_run(user)
    run.config = {**run.config, "limits": {**run.config["limits"], "sram_bytes": 100}}
    run.save()
    job = _start(_trained_candidate(run), fit_profile=True)
    pruning.run_pruning(job.pk)
    job.refresh_from_db()
    assert job.status == PruningJob.Status.FAILED
    assert "cannot fit the profile" in job.error
    assert job.result_candidate is None
    assert run.candidates.count() == 1
    assert not files.exists(artifacts.weights_name(run, pruning.pruned_index(job)))


# The network: the conv reads the image, a depthwise conv and the classifier always stay.
UNPRUNABLE_ARCH = architecture(
    layers=[conv(4), conv(None, op="dwconv2d")], pooling={"type": "avg", "size": 2}, dense=[10]
)


def test_it_finds_no_prunable_channel_in_a_depthwise_network(user):
    run = make_run(user)
    reason = pruning.unprunable_reason(make_candidate(run, 1, architecture=UNPRUNABLE_ARCH))
    assert "already at its layer's minimum" in reason
    assert "no prunable channels" in pruning.unprunable_reason(make_candidate(run, 2))
    assert pruning.unprunable_reason(make_candidate(run, 3, architecture=PRUNABLE_ARCH)) is None


@pytest.mark.parametrize("kwargs", [{"target_sparsity": 0.5}, {"fit_profile": True}])
def test_it_refuses_a_network_with_no_prunable_channels(user, kwargs):
    # SMALL_ARCH: the only conv reads the image, then the logits.
    run = make_run(user, profile=make_profile(user, sram_kb=1, flash_kb=1))
    candidate = make_trained_candidate(run)
    with pytest.raises(pruning.PruningUnavailable, match="no prunable channels"):
        _start(candidate, **kwargs)
    assert not PruningJob.objects.exists()


def test_it_refuses_a_sparsity_that_removes_nothing(user):
    # PRUNABLE_ARCH has 8 prunable channels: 0.05 of them rounds to none.
    candidate = _trained_candidate(make_run(user))
    with pytest.raises(pruning.PruningUnavailable, match="removes none of the 8 prunable channels"):
        _start(candidate, target_sparsity=0.05)
    assert _start(candidate, target_sparsity=0.1).config["target_sparsity"] == 0.1


def test_it_refuses_to_fit_a_model_that_already_fits(user):
    run = make_run(user, profile=make_profile(user, sram_kb=64, flash_kb=256))
    with pytest.raises(pruning.PruningUnavailable, match="already fits the run's profile"):
        _start(_trained_candidate(run), fit_profile=True)
    assert not PruningJob.objects.exists()


def test_it_adds_no_candidate_when_nothing_was_removed(user):
    run = make_run(user)
    job = _start(_trained_candidate(run), target_sparsity=0.5)

    def prune_nothing(*args, **kwargs):
        result = original(*args, **kwargs)
        return dataclasses.replace(result, channels_after=result.channels_before, after=result.before)

    original = pruning.prune
    with mock.patch.object(pruning, "prune", prune_nothing):
        pruning.run_pruning(job.pk)
    job.refresh_from_db()
    assert job.status == PruningJob.Status.FAILED
    assert job.error == pruning.NOT_SMALLER
    assert job.result_candidate is None and run.candidates.count() == 1
    assert not files.exists(artifacts.weights_name(run, pruning.pruned_index(job)))


def test_it_skips_a_cancelled_job(user):
    run = make_run(user)
    job = _start(_trained_candidate(run), target_sparsity=0.5)
    assert pruning.cancel_pruning(job)
    pruning.run_pruning(job.pk)
    job.refresh_from_db()
    assert job.status == PruningJob.Status.CANCELLED
    assert run.candidates.count() == 1


def test_it_stops_when_cancelled_while_running(user):
    run = make_run(user)
    job = _start(_trained_candidate(run), target_sparsity=0.5)

    def cancel_on_first_epoch(job_, progress):
        original(job_, progress)
        if progress.epoch == 1:
            pruning.cancel_pruning(job_)

    original = pruning._record_progress
    with (
        mock.patch.object(pruning, "_record_progress", cancel_on_first_epoch),
        mock.patch.object(pruning, "CANCEL_POLL_SECONDS", 0.0),
    ):
        pruning.run_pruning(job.pk)
    job.refresh_from_db()
    assert job.status == PruningJob.Status.CANCELLED
    assert run.candidates.count() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sparsity": 0.0}, "must lie in (0, 0.95]"),
        ({"target_sparsity": 0.96}, "must lie in (0, 0.95]"),
        ({}, "choose either"),
        ({"target_sparsity": 0.5, "fit_profile": True}, "choose either"),
    ],
)
def test_it_rejects_bad_requests(user, kwargs, message):
    candidate = _trained_candidate(make_run(user))
    with pytest.raises(pruning.PruningUnavailable, match=re.escape(message)):
        pruning.start_pruning(candidate, **kwargs)
    assert not PruningJob.objects.exists()


def test_it_rejects_untrained_candidates(user):
    run = make_run(user)
    candidate = make_candidate(run, status=Candidate.Status.FAILED)
    with pytest.raises(pruning.PruningUnavailable, match="not trained"):
        pruning.start_pruning(candidate, target_sparsity=0.5)
    assert not PruningJob.objects.exists()


def test_fit_needs_limits(user):
    run = make_run(user, config={**make_run(user).config, "limits": {}})
    with pytest.raises(pruning.PruningUnavailable, match="no hardware profile"):
        pruning.profile_limits(run)


# ---- the pages -----------------------------------------------------------------------------


def _post_prune(client, candidate, **data):
    values = {"mode": "sparsity", "target_sparsity": "0.5", "epochs": "2"} | data
    with mock.patch.object(task_queue, "prune") as enqueue:
        response = client.post(reverse("candidate_prune", args=[candidate.pk]), values)
    return response, enqueue


def test_prune_view_works(user, client, django_capture_on_commit_callbacks):
    candidate = _trained_candidate(make_run(user))
    client.force_login(user)
    values = {"mode": "sparsity", "target_sparsity": "0.5", "epochs": "2"}
    with mock.patch.object(task_queue, "prune") as enqueue, django_capture_on_commit_callbacks(execute=True):
        # The task is sent once the job is committed, by the leases' outbox.
        response = client.post(reverse("candidate_prune", args=[candidate.pk]), values)
    job = PruningJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("pruning_detail", args=[job.pk])
    enqueue.assert_called_once_with(job.pk)
    assert job.config["target_sparsity"] == 0.5 and job.config["epochs"] == 2
    page = client.get(reverse("candidate_detail", args=[candidate.pk]))
    assert reverse("pruning_detail", args=[job.pk]) in page.content.decode()
    assert client.get(reverse("pruning_detail", args=[job.pk])).status_code == 200


def test_pruning_page_says_what_the_job_is_doing(user, client):
    candidate = _trained_candidate(make_run(user))
    job = _start(candidate, target_sparsity=0.5)
    client.force_login(user)
    page = client.get(reverse("pruning_detail", args=[job.pk])).content.decode()
    assert "Queued: waiting for a worker" in page and "Pruning queued" not in page
    assert '<section class="card table-wrap">' in page and 'class="data" id="pruning-progress"' in page

    PruningJob.objects.filter(pk=job.pk).update(status="running", progress=[{"epoch": 0}, {"epoch": 1}])
    page = client.get(reverse("pruning_detail", args=[job.pk])).content.decode()
    assert "Running: 1 of 2 fine-tuning epochs finished." in page and "Queued" not in page

    form = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()
    form = form.split('id="prune-form"')[1].split("</form>")[0]
    assert form.count("Target sparsity") == 0
    assert "To a target sparsity" in form and "Sparsity (fraction of channels removed)" in form


def test_prune_view_checks_owner(user, other_user, client):
    candidate = _trained_candidate(make_run(user))
    client.force_login(other_user)
    response, _ = _post_prune(client, candidate)
    assert response.status_code == 404
    assert not PruningJob.objects.exists()


def test_prune_view_requires_login(user, client):
    candidate = _trained_candidate(make_run(user))
    response, _ = _post_prune(client, candidate)
    assert response.status_code == 302 and "/login" in response["Location"]
    assert not PruningJob.objects.exists()


def test_prune_view_rejects_get(user, client):
    candidate = _trained_candidate(make_run(user))
    client.force_login(user)
    assert client.get(reverse("candidate_prune", args=[candidate.pk])).status_code == 405


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"target_sparsity": "0.99"}, "less than or equal to 0.95"),
        ({"target_sparsity": ""}, "Give a target sparsity"),
        ({"mode": "bogus"}, "Select a valid choice"),
    ],
)
def test_prune_view_reports_invalid_input(user, client, data, message):
    candidate = _trained_candidate(make_run(user))
    client.force_login(user)
    response, enqueue = _post_prune(client, candidate, **data)
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert message in page
    assert not PruningJob.objects.exists()
    enqueue.assert_not_called()


def test_prune_view_says_why_nothing_can_be_pruned(user, client):
    candidate = make_trained_candidate(make_run(user))
    client.force_login(user)
    page = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()
    assert "Pruning cannot make this model smaller: this network has no prunable channels" in page
    assert 'id="prune-form"' not in page
    response, enqueue = _post_prune(client, candidate)
    page = client.get(response["Location"]).content.decode()
    assert "Cannot prune: this network has no prunable channels" in page
    assert not PruningJob.objects.exists()
    enqueue.assert_not_called()


def test_prune_view_reports_untrained_candidate(user, client):
    candidate = make_candidate(make_run(user))
    client.force_login(user)
    response, _ = _post_prune(client, candidate)
    assert "Cannot prune" in client.get(response["Location"]).content.decode()
    assert not PruningJob.objects.exists()


def test_pruning_pages_check_owner(user, other_user, client):
    job = _start(_trained_candidate(make_run(user)), target_sparsity=0.5)
    client.force_login(other_user)
    assert client.get(reverse("pruning_detail", args=[job.pk])).status_code == 404
    assert client.post(reverse("pruning_cancel", args=[job.pk])).status_code == 404
    job.refresh_from_db()
    assert job.status == PruningJob.Status.QUEUED


def test_pruning_pages_require_login(user, client):
    job = _start(_trained_candidate(make_run(user)), target_sparsity=0.5)
    for url in (reverse("pruning_detail", args=[job.pk]), reverse("pruning_cancel", args=[job.pk])):
        response = client.post(url) if url.endswith("cancel/") else client.get(url)
        assert response.status_code == 302 and "/login" in response["Location"]


def test_pruning_cancel_works_and_rejects_get(user, client):
    job = _start(_trained_candidate(make_run(user)), target_sparsity=0.5)
    client.force_login(user)
    assert client.get(reverse("pruning_cancel", args=[job.pk])).status_code == 405
    response = client.post(reverse("pruning_cancel", args=[job.pk]))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == PruningJob.Status.CANCELLED


# ---- the API -------------------------------------------------------------------------------


def test_api_starts_and_lists_jobs(user, other_user, client):
    candidate = _trained_candidate(make_run(user))
    client.force_login(user)
    with mock.patch.object(task_queue, "prune"):
        response = client.post(
            "/api/pruning-jobs/",
            {"candidate": candidate.pk, "target_sparsity": 0.5},
            content_type="application/json",
        )
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    assert client.get(f"/api/pruning-jobs/{job_id}/").json()["source"] == candidate.pk
    client.force_login(other_user)
    assert client.get(f"/api/pruning-jobs/{job_id}/").status_code == 404
    assert client.get("/api/pruning-jobs/").json() == []
    response = client.post("/api/pruning-jobs/", {"candidate": candidate.pk, "target_sparsity": 0.5})
    assert response.status_code == 400
    assert PruningJob.objects.count() == 1


def test_api_refuses_a_prune_that_cannot_shrink(user, client):
    candidate = make_trained_candidate(make_run(user))
    client.force_login(user)
    body = {"candidate": candidate.pk, "target_sparsity": 0.5}
    response = client.post("/api/pruning-jobs/", body, content_type="application/json")
    assert response.status_code == 400
    assert "no prunable channels" in response.json()["detail"]
    assert not PruningJob.objects.exists()


def test_api_rejects_bad_requests(user, client):
    candidate = _trained_candidate(make_run(user))
    client.force_login(user)
    for body in ({"candidate": candidate.pk}, {"candidate": candidate.pk, "target_sparsity": 0.99}):
        assert client.post("/api/pruning-jobs/", body, content_type="application/json").status_code == 400
    assert client.post("/api/pruning-jobs/", {"candidate": candidate.pk}).status_code == 400
    client.logout()
    assert client.get("/api/pruning-jobs/").status_code in (401, 403)
    assert not PruningJob.objects.exists()
