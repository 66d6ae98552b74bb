"""Rows for the page-layout browser tests, written straight into the live stack's database.

Run inside the stack's environment (``manage.py shell -c``): no training, no worker.  Prints
the URLs of every main page as JSON.  A finished run has two trained candidates (one of them
rejected before training, one pruned by a pruning job), a running run, an uploaded dataset.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.urls import reverse

from searches.models import Candidate, Dataset, PruningJob, SearchRun
from tests.web.factories import architecture, conv, make_candidate, make_profile, make_project, make_run


def _result(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    def side(c: dict[str, Any]) -> dict[str, Any]:
        resources = {k: c[k] for k in ("peak_sram_bytes", "flash_bytes", "macs", "params")}
        accuracies = {k: c[k] for k in ("val_accuracy", "test_accuracy")}
        return accuracies | {"resources": resources}

    return {
        "sparsity": 0.5,
        "channels_before": 8,
        "channels_after": 4,
        "before": side(before),
        "after": side(after),
        "int8_before": [0.9, 0.88],
        "int8_after": [0.85, 0.84],
        "notes": [],
    }


def seed(username: str) -> dict[str, str]:
    user = get_user_model().objects.get(username=username)
    upload = Dataset.objects.create(
        owner=user, name="my sensor images", input_shape=[8, 8, 1], classes=10, n_train=100, n_test=20
    )
    profile = make_profile(user, name="A board with a rather long profile name")
    project = make_project(user, name="Layout project")
    run = make_run(user, project, profile=profile, budget=3, evaluated=3, dataset=upload.key)
    arch = architecture(layers=[conv(4), conv(8)])
    best = make_candidate(run, 0, architecture=arch, val_accuracy=0.95, on_pareto=True)
    make_candidate(run, 1, parent=best, mutation="filters +3 in block 0 layer 1", val_accuracy=0.6)
    make_candidate(
        run,
        2,
        parent=best,
        mutation="insert a layer",
        status=Candidate.Status.REJECTED,
        feasible=False,
        val_accuracy=None,
        test_accuracy=None,
        reject_reason="peak SRAM 5,000 B exceeds the limit 2,048 B",
    )
    make_candidate(
        run,
        3,
        parent=best,
        val_accuracy=0.8,
        status=Candidate.Status.FAILED,
        reject_reason="training diverged",
    )
    job = PruningJob.objects.create(source=best, config={"target_sparsity": 0.5, "epochs": 2})
    pruned = make_candidate(
        run,
        Candidate.PRUNED_INDEX_BASE + job.pk,
        parent=best,
        val_accuracy=0.7,
        mutation="pruned from #0 (sparsity 0.50)",
        peak_sram_bytes=200,
        flash_bytes=1500,
    )
    before = {
        "val_accuracy": 0.95,
        "test_accuracy": 0.9,
        "peak_sram_bytes": 320,
        "flash_bytes": 2722,
        "macs": 4864,
        "params": 2610,
    }
    after = before | {"val_accuracy": 0.7, "peak_sram_bytes": 200, "flash_bytes": 1500}
    PruningJob.objects.filter(pk=job.pk).update(
        status=PruningJob.Status.DONE,
        result=_result(before, after),
        result_candidate=pruned,
        progress=[{"epoch": 0, "epochs": 2, "sparsity": 0.0, "val_accuracy": 0.95, "loss": None}],
    )
    running = make_run(user, project, status=SearchRun.Status.RUNNING, name="still running")
    make_candidate(running, 0, status=Candidate.Status.RUNNING, val_accuracy=None)
    return {
        "projects": reverse("project_list"),
        "project": reverse("project_detail", args=[project.pk]),
        "run_form": reverse("run_create", args=[project.pk]),
        "runs": reverse("run_list"),
        "run": reverse("run_detail", args=[run.pk]),
        "running_run": reverse("run_detail", args=[running.pk]),
        "candidate": reverse("candidate_detail", args=[best.pk]),
        "pruned_candidate": reverse("candidate_detail", args=[pruned.pk]),
        "pruning": reverse("pruning_detail", args=[job.pk]),
        "profiles": reverse("profile_list"),
        "profile_form": reverse("profile_create"),
        "datasets": reverse("dataset_list"),
        "dataset_form": reverse("dataset_upload"),
        "token": reverse("api_token"),
        "compare": f"{reverse('run_compare')}?runs={run.pk}&runs={running.pk}",
        "job_id": str(job.pk),
    }


def main(username: str) -> None:
    print(json.dumps(seed(username)))
