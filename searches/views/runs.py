"""Search runs: the new-run form, the list, the live dashboard and the run's actions."""

from __future__ import annotations

import csv
import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from searches import events
from searches.engine.strategies.config import SearchConfig
from searches.forms import DEFAULT_DEPLOY_TOP_K, ExtendRunForm, NewRunForm
from searches.models import Candidate, Project, SearchRun, name_datasets
from searches.services import execution
from searches.services.deletion import ACTIVE, delete_run
from searches.services.launch import RunRequest, launch_run
from searches.services.runs import default_fidelity, strategy_settings

# The CSV's columns, in order: every metric a candidate row has.
CSV_COLUMNS = (
    "index",
    "label",
    "status",
    "feasible",
    "on_pareto",
    "val_accuracy",
    "test_accuracy",
    "int8_val_accuracy",
    "int8_test_accuracy",
    "peak_sram_bytes",
    "flash_bytes",
    "macs",
    "latency_ms_estimate",
    "params",
    "train_seconds",
    "rung",
    "parent_index",
    "mutation",
    "reject_reason",
    "notes",
)


def _get_run_for_user(request: HttpRequest, pk: int) -> SearchRun:
    return get_object_or_404(SearchRun.objects.for_user(request.user), pk=pk)


def _get_project_for_user(request: HttpRequest, pk: int) -> Project:
    return get_object_or_404(Project.objects.for_user(request.user), pk=pk)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _posted(request: HttpRequest) -> Any:
    """Form fields, or a JSON object body (the dashboard's fetch calls send either)."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
    return request.POST


def _action_done(request: HttpRequest, run: SearchRun, message: str, ok: bool = True) -> HttpResponse:
    if _wants_json(request):
        run.refresh_from_db()
        return JsonResponse(
            {"ok": ok, "message": message, "run": events.run_payload(run)}, status=200 if ok else 400
        )
    (messages.success if ok else messages.error)(request, message)
    return redirect("run_detail", pk=run.pk)


# ---- creating ------------------------------------------------------------------------------


def _request_from(form: NewRunForm) -> RunRequest:
    data = form.cleaned_data
    return RunRequest(
        profile=data["profile"],
        dataset=data["dataset"],
        strategy=data["strategy"],
        budget=data["budget"],
        population=data["population"],
        sample_size=data["sample_size"],
        epochs=data["epochs"],
        train_subset=data["train_subset"],
        parallel=data["parallel"],
        seed=data["seed"],
        sram_kb=data["sram_kb"],
        flash_kb=data["flash_kb"],
        latency_ms=data["latency_ms"],
        max_macs=data["max_macs"],
        deploy_top_k=DEFAULT_DEPLOY_TOP_K if data["deploy_top_k"] is None else data["deploy_top_k"],
        name=data["name"].strip(),
        memnas_lambda=data["memnas_lambda"],
        memnas_beta=data["memnas_beta"],
        memnas_top_k=data["memnas_top_k"],
        # A blank choice posts "" (the field is hidden for other strategies): the default.
        memnas_seed_backbone=data["memnas_seed_backbone"] or None,
        # Round 0's size only matters with round 0 (the field is hidden otherwise).
        memnas_round0_size=data["memnas_round0_size"]
        if data["memnas_seed_backbone"] == "single_blocks"
        else None,
        memnas_ranker=data["memnas_ranker"] or None,
        memnas_memory_scale=data["memnas_memory_scale"] or None,
        memnas_on_stall=data["memnas_on_stall"] or None,
        sparsity=(data["sparsity_low"], data["sparsity_high"]) if data["pruning"] else None,
        fidelity_schedule=data["fidelity_schedule"] or SearchConfig.fidelity_schedule,
        asha_eta=data["asha_eta"] or SearchConfig.asha_eta,
        asha_max_rung=data["asha_max_rung"] or SearchConfig.asha_max_rung,
        error_objective=data["error_objective"] or SearchConfig.error_objective,
    )


def _fidelity_hints(form: NewRunForm) -> dict[str, dict[str, Any]]:
    """Default epochs and train subset per dataset choice, shown as the fields' placeholders."""
    hints = {}
    for pk, dataset in form.datasets.items():
        fidelity = default_fidelity(dataset.key)
        hints[str(pk)] = {"epochs": fidelity.epochs, "train_subset": fidelity.train_subset or dataset.n_train}
    return hints


@login_required
def run_create(request: HttpRequest, project_pk: int) -> HttpResponse:
    project = _get_project_for_user(request, project_pk)
    form = NewRunForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            run = launch_run(request.user, project, _request_from(form))
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("run_detail", pk=run.pk)
    ctx = {"project": project, "form": form, "fidelity_hints": _fidelity_hints(form)}
    return render(request, "searches/run_form.html", ctx)


# ---- reading -------------------------------------------------------------------------------


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    runs = name_datasets(SearchRun.objects.for_user(request.user).select_related("project", "profile"))
    return render(request, "searches/run_list.html", {"runs": runs})


def dashboard_config(run: SearchRun) -> dict[str, Any]:
    """What the dashboard's JavaScript needs to start: where to listen and where to act."""
    limits = (run.config or {}).get("limits") or {}
    return {
        "run_id": run.pk,
        "ws_path": f"/ws/runs/{run.pk}/",
        "limits": {key: limits.get(key) for key in ("sram_bytes", "flash_bytes", "latency_ms", "macs")},
        "candidate_url": reverse("candidate_detail", args=[0]),
        "csv_url": reverse("run_csv", args=[run.pk]),
        "cancel_url": reverse("run_cancel", args=[run.pk]),
        "extend_url": reverse("run_extend", args=[run.pk]),
        "status": run.status,
        # The plots' error axis is the error the search minimises; the table shows rungs for ASHA.
        "error_objective": (run.config or {}).get("error_objective", "float"),
        "fidelity_schedule": (run.config or {}).get("fidelity_schedule", "off"),
    }


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    ctx = {
        "run": run,
        "profile": run.profile,
        "candidate_count": run.candidates.count(),
        "dashboard_config": dashboard_config(run),
        "strategy_settings": strategy_settings(run.strategy, run.config or {}),
        "extend_form": ExtendRunForm(),
        "notes_url": reverse("run_notes", args=[run.pk]),
    }
    return render(request, "searches/run_detail.html", ctx)


def _csv_row(c: Candidate) -> list[Any]:
    parent = c.parent.index if c.parent_id and c.parent else ""
    values = {**c.__dict__, "label": c.label, "latency_ms_estimate": c.latency_ms, "parent_index": parent}
    return ["" if values[col] is None else values[col] for col in CSV_COLUMNS]


@login_required
def run_csv(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}-candidates.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for candidate in run.candidates.select_related("parent").order_by("index"):
        writer.writerow(_csv_row(candidate))
    return response


# ---- acting --------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Cancel once confirmed (``confirm=yes``); otherwise show what cancelling does and ask.

    The dashboard asks with ``confirm()`` and sends ``confirm=yes``; without JavaScript its
    Cancel button posts without it and lands on the confirmation page.
    """
    run = _get_run_for_user(request, pk)
    if not run.is_active:
        return _action_done(request, run, f"The run is already {run.get_status_display().lower()}.", ok=False)
    if request.method != "POST" or _posted(request).get("confirm") != "yes":
        if _wants_json(request):
            return _action_done(request, run, "Cancelling needs confirm=yes.", ok=False)
        return render(request, "searches/run_cancel.html", {"run": run})
    execution.cancel_run(run)
    return _action_done(request, run, "The run was cancelled.")


@login_required
@require_POST
def run_extend(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    form = ExtendRunForm(_posted(request))
    if not form.is_valid():
        return _action_done(request, run, _first_error(form), ok=False)
    extra = form.cleaned_data["extra_budget"]
    try:
        execution.extend_run(run, extra)
    except ValueError as exc:
        return _action_done(request, run, str(exc), ok=False)
    return _action_done(request, run, f"The budget grew by {extra} candidates.")


def _first_error(form: ExtendRunForm) -> str:
    errors = form.errors.get("extra_budget") or ["Invalid value."]
    return f"Extra candidates: {errors[0]}"


@login_required
@require_POST
def run_delete(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    if run.status in ACTIVE:
        messages.error(request, "The run is still active: cancel it before deleting it.")
        return redirect("run_detail", pk=run.pk)
    project_id = run.project_id
    delete_run(run)
    messages.success(request, f"Run #{pk} and its candidates were deleted.")
    return redirect("project_detail", pk=project_id) if project_id else redirect("run_list")
