"""Training for deployment: start a job from a candidate's page, follow its curves live, cancel it."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from searches.forms import DeployForm
from searches.models import Candidate, DeploymentJob
from searches.services import deployment


def _get_candidate_for_user(request: HttpRequest, pk: int) -> Candidate:
    return get_object_or_404(Candidate.objects.for_user(request.user).select_related("run"), pk=pk)


def _get_job_for_user(request: HttpRequest, pk: int) -> DeploymentJob:
    rows = DeploymentJob.objects.for_user(request.user).select_related(
        "source", "source__run", "source__run__project", "result_candidate"
    )
    return get_object_or_404(rows, pk=pk)


def deploy_form_for(candidate: Candidate) -> DeployForm:
    """The candidate page's form, ticked as the data set's recipe would be (off for uploads)."""
    try:
        augment = deployment.recipe_for(candidate).augment is not None
    except deployment.DeploymentUnavailable:
        augment = False
    return DeployForm(initial={"augment": augment, "qat": True})


@login_required
@require_POST
def candidate_deploy(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a deployment-training job; back to the candidate's page with the reason if it cannot."""
    candidate = _get_candidate_for_user(request, pk)
    form = DeployForm(request.POST)
    back = reverse("candidate_detail", args=[candidate.pk]) + "#deploy"
    if not form.is_valid():
        errors = "; ".join(str(e) for errs in form.errors.values() for e in errs)
        messages.error(request, f"Cannot train for deployment: {errors}")
        return redirect(back)
    data = form.cleaned_data
    try:
        recipe = deployment.recipe_for(
            candidate, epochs=data["epochs"], augment=data["augment"], qat=data["qat"]
        )
        job = deployment.start_deployment(candidate, recipe)
    except deployment.DeploymentUnavailable as exc:
        messages.error(request, f"Cannot train for deployment: {exc}.")
        return redirect(back)
    messages.success(
        request, "Training for deployment queued: its learning curves appear below as epochs finish."
    )
    return redirect("deployment_detail", pk=job.pk)


@login_required
@require_GET
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    ctx = {
        "job": job,
        "candidate": job.source,
        "run": job.source.run,
        "table": result_rows(job),
        "augment": _augment_text(job.config),
        "curves": curves_config(job),
    }
    return render(request, "searches/deployment_detail.html", ctx)


@login_required
@require_POST
def deployment_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    if deployment.cancel_deployment(job):
        messages.success(request, "The deployment training was cancelled.")
    else:
        messages.error(request, f"The job is already {job.get_status_display().lower()}.")
    return redirect("deployment_detail", pk=job.pk)


def curves_config(job: DeploymentJob) -> dict[str, Any]:
    """What deployment.js needs: the epochs so far and, while the job runs, where to listen."""
    return {
        "job_id": job.pk,
        "ws_path": f"/ws/runs/{job.source.run_id}/" if job.is_active else None,
        "progress": job.progress,
        "qat_from": int(job.config.get("epochs", 0)) + 1,
        "status": job.status,
    }


def _augment_text(config: dict[str, Any]) -> str:
    aug = config.get("augment")
    if not aug:
        return "no augmentation"
    parts = [
        f"rotation ±{aug['rotation_rad']:g} rad (p {aug['rotation_p']:g})",
        f"shifts ±{aug['shift_px']} px",
    ]
    if aug.get("hflip"):
        parts.append("horizontal flips")
    return ", ".join(parts)


def result_rows(job: DeploymentJob) -> list[dict[str, Any]]:
    """Source (search fidelity) against deployment-trained, with the gain; empty before it is done."""
    result = job.result
    if not result:
        return []
    labels = (
        ("val_accuracy", "Validation accuracy"),
        ("test_accuracy", "Test accuracy"),
        ("int8_val_accuracy", "Int8 validation accuracy"),
        ("int8_test_accuracy", "Int8 test accuracy"),
    )
    rows = []
    for key, label in labels:
        before, after = result["source"].get(key), result["deployed"].get(key)
        gain = None if before is None or after is None else after - before
        rows.append({"label": label, "before": before, "after": after, "gain": gain})
    return rows
