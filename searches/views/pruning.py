"""Pruning jobs: start one from a candidate's page, follow it live, cancel it."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from searches.forms import PruneForm
from searches.models import Candidate, PruningJob
from searches.services import pruning

RESOURCE_ROWS = (
    ("peak_sram_bytes", "Peak SRAM (B)"),
    ("flash_bytes", "Flash (B)"),
    ("macs", "MACs"),
    ("params", "Parameters"),
)


def _get_candidate_for_user(request: HttpRequest, pk: int) -> Candidate:
    return get_object_or_404(Candidate.objects.for_user(request.user).select_related("run"), pk=pk)


def _get_job_for_user(request: HttpRequest, pk: int) -> PruningJob:
    rows = PruningJob.objects.for_user(request.user).select_related(
        "source", "source__run", "source__run__project", "result_candidate"
    )
    return get_object_or_404(rows, pk=pk)


@login_required
@require_POST
def candidate_prune(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a pruning job of the candidate; back to its page with the reason if it cannot start."""
    candidate = _get_candidate_for_user(request, pk)
    form = PruneForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(str(e) for errs in form.errors.values() for e in errs)
        messages.error(request, f"Cannot prune: {errors}")
        return redirect(reverse("candidate_detail", args=[candidate.pk]) + "#prune")
    data = form.cleaned_data
    fit = data["mode"] == "fit"
    try:
        job = pruning.start_pruning(
            candidate,
            target_sparsity=None if fit else data["target_sparsity"],
            fit_profile=fit,
            epochs=data["epochs"],
        )
    except pruning.PruningUnavailable as exc:
        messages.error(request, f"Cannot prune: {exc}.")
        return redirect(reverse("candidate_detail", args=[candidate.pk]) + "#prune")
    return redirect("pruning_detail", pk=job.pk)


@login_required
@require_GET
def pruning_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    ctx = {
        "job": job,
        "candidate": job.source,
        "run": job.source.run,
        "table": _table(job),
        "state_text": state_text(job.status, len(job.progress), job.config.get("epochs")),
        "live_config": {
            "job_id": job.pk,
            "ws_path": f"/ws/runs/{job.source.run_id}/",
            "epochs": job.config.get("epochs"),
        },
    }
    return render(request, "searches/pruning_detail.html", ctx)


@login_required
@require_POST
def pruning_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    if pruning.cancel_pruning(job):
        messages.success(request, "The pruning job was cancelled.")
    else:
        messages.error(request, f"The pruning job is already {job.get_status_display().lower()}.")
    return redirect("pruning_detail", pk=job.pk)


STATE_TEXT = {
    PruningJob.Status.QUEUED: "Queued: waiting for a worker. Its epochs appear below as they finish.",
    PruningJob.Status.DONE: "Done.",
    PruningJob.Status.FAILED: "Failed: nothing was added to the run.",
    PruningJob.Status.CANCELLED: "Cancelled: nothing was added to the run.",
}


def state_text(status: str, progress_rows: int, epochs: int | None) -> str:
    """The line under the title: what the job is doing now (pruning.js writes the same live)."""
    if status == PruningJob.Status.RUNNING:
        # Row 0 is the unpruned model, measured before the first epoch starts.
        finished = max(progress_rows - 1, 0)
        return f"Running: {finished} of {epochs} fine-tuning epochs finished."
    return STATE_TEXT.get(status, status)


def _table(job: PruningJob) -> list[dict[str, Any]]:
    """The before/after rows of a finished job (empty before it is done)."""
    result = job.result
    if not result:
        return []
    before, after = result["before"], result["after"]
    rows: list[dict[str, Any]] = [
        {
            "label": "Validation accuracy",
            "pct": True,
            "before": before["val_accuracy"],
            "after": after["val_accuracy"],
        },
        {
            "label": "Test accuracy",
            "pct": True,
            "before": before["test_accuracy"],
            "after": after["test_accuracy"],
        },
        {
            "label": "Int8 validation accuracy",
            "pct": True,
            "before": result["int8_before"][0],
            "after": result["int8_after"][0],
        },
        {
            "label": "Int8 test accuracy",
            "pct": True,
            "before": result["int8_before"][1],
            "after": result["int8_after"][1],
        },
    ]
    for name, label in RESOURCE_ROWS:
        rows.append(
            {
                "label": label,
                "pct": False,
                "before": before["resources"][name],
                "after": after["resources"][name],
            }
        )
    return rows
