"""One candidate: its metrics, layer table, memory timeline, lineage, board fit and export."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from searches import events
from searches.engine.deploy.header import ExportError
from searches.engine.deploy.int8 import QuantizationError
from searches.engine.deploy.tflite import TFLiteExportError
from searches.engine.resources.latency import CORES, latency_label, latency_ms
from searches.engine.resources.report import ResourceReport
from searches.engine.space.arch import ArchitectureError
from searches.forms import PruneForm
from searches.models import Candidate
from searches.services import downloads, export, pruning, reports
from searches.views.deployment import curves_config, deploy_form_for, result_rows

logger = logging.getLogger(__name__)


def _get_candidate_for_user(request: HttpRequest, pk: int) -> Candidate:
    rows = Candidate.objects.for_user(request.user).select_related(
        "run", "run__profile", "run__project", "parent"
    )
    return get_object_or_404(rows, pk=pk)


def _latency_estimate(candidate: Candidate, report: ResourceReport) -> tuple[float | None, str]:
    """(latency, how it was obtained): the calibrated model at the run's core and clock.

    Without a core and clock the stored value (None for most runs) is all there is."""
    limits = (candidate.run.config or {}).get("limits") or {}
    core, clock = limits.get("core"), limits.get("clock_mhz")
    if core in CORES and clock:
        return latency_ms(report.graph, core, clock), latency_label(core)
    return candidate.latency_ms, "estimated"


@login_required
def candidate_detail(request: HttpRequest, pk: int) -> HttpResponse:
    candidate = _get_candidate_for_user(request, pk)
    ctx = {
        "candidate": candidate,
        "run": candidate.run,
        "children": candidate.children.order_by("index"),
        "export": reports.export_context(candidate),
        "live_config": _live_config(candidate),
        "prune_form": PruneForm(),
        "pruning_jobs": candidate.pruning_jobs.select_related("result_candidate")[:10],
        "deploy_form": deploy_form_for(candidate),
        "deployment_jobs": candidate.deployment_jobs.select_related("result_candidate")[:10],
    }
    made_by = candidate.deployed_from_jobs.first() if candidate.for_deployment else None
    if made_by is not None:
        ctx |= {"made_by": made_by, "curves": curves_config(made_by), "gain_rows": result_rows(made_by)}
    try:
        report = reports.analyze_candidate(candidate)
    except ArchitectureError as exc:
        ctx["analysis_error"] = str(exc)
        return render(request, "searches/candidate_detail.html", ctx)
    ctx["unprunable"] = pruning.unprunable_reason(candidate) if candidate.is_trained else None
    fits = reports.board_fits(report)
    latency, how = _latency_estimate(candidate, report)
    ctx |= {
        "report": report,
        "layers": reports.layer_rows(report),
        "memory": reports.memory_data(report),
        "fits": fits,
        "fits_count": sum(fit.fits for fit in fits),
        "latency_ms": latency,
        "latency_how": how,
    }
    return render(request, "searches/candidate_detail.html", ctx)


@login_required
def candidate_architecture(request: HttpRequest, pk: int) -> HttpResponse:
    """The architecture JSON (docs/architecture-format.md) as a download."""
    candidate = _get_candidate_for_user(request, pk)
    body = json.dumps(candidate.architecture, indent=2) + "\n"
    response = HttpResponse(body, content_type="application/json")
    filename = f"run-{candidate.run_id}-candidate-{candidate.index}.json"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _live_config(candidate: Candidate) -> dict[str, Any]:
    """What candidate.js needs to follow the candidate: the run's stream from the page's seq on."""
    return {
        "candidate_id": candidate.pk,
        "ws_path": f"/ws/runs/{candidate.run_id}/",
        "since": candidate.run.seq,
        "export_url": reverse("candidate_export", args=[candidate.pk]),
        "export_status": candidate.export_status,
        "seq": candidate.seq,
    }


@login_required
@require_GET
def candidate_export(request: HttpRequest, pk: int) -> HttpResponse:
    """The page's Export section alone: the candidate page swaps it in when the status moves."""
    candidate = _get_candidate_for_user(request, pk)
    ctx = {"candidate": candidate, "run": candidate.run, "export": reports.export_context(candidate)}
    return render(request, "searches/_candidate_export.html", ctx)


# ---- downloads -----------------------------------------------------------------------------


def _download(request: HttpRequest, pk: int, format_name: str) -> HttpResponse:
    """The stored export (built first if need be), or back to the candidate page saying why not."""
    candidate = _get_candidate_for_user(request, pk)
    try:
        return downloads.file_response(candidate, format_name)
    except export.ExportUnavailable as exc:
        messages.error(request, f"Cannot export: {exc}.")
    except (QuantizationError, ExportError, TFLiteExportError) as exc:
        logger.exception("export of candidate %s failed", candidate.pk)
        messages.error(request, f"The export failed: {exc}")
    return redirect("candidate_detail", pk=candidate.pk)


@login_required
@require_GET
def candidate_header(request: HttpRequest, pk: int) -> HttpResponse:
    """The int8 C header (``nasweb_r<run>_c<index>.h``)."""
    return _download(request, pk, "header")


@login_required
@require_GET
def candidate_bundle(request: HttpRequest, pk: int) -> HttpResponse:
    """The header with an example, Makefile and README, for the run's target, as a zip."""
    return _download(request, pk, "bundle")


@login_required
@require_GET
def candidate_tflite(request: HttpRequest, pk: int) -> HttpResponse:
    """The int8 model as a .tflite file (LiteRT, TFLite Micro): the header's exact numbers."""
    return _download(request, pk, "tflite")


@login_required
@require_GET
def candidate_onnx(request: HttpRequest, pk: int) -> HttpResponse:
    """The trained float model in ONNX."""
    return _download(request, pk, "onnx")


# ---- verification --------------------------------------------------------------------------


def _verify_done(request: HttpRequest, candidate: Candidate, message: str, ok: bool) -> HttpResponse:
    if "application/json" in request.headers.get("Accept", ""):
        candidate.refresh_from_db()
        payload = {"ok": ok, "message": message, "candidate": events.candidate_payload(candidate)}
        return JsonResponse(payload, status=200 if ok else 409)
    (messages.success if ok else messages.error)(request, message)
    return redirect(reverse("candidate_detail", args=[candidate.pk]) + "#export")


@login_required
@require_POST
def candidate_verify(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue the export verification (host, Cortex-M build, QEMU) on a worker."""
    candidate = _get_candidate_for_user(request, pk)
    try:
        queued = export.request_verification(candidate)
    except export.ExportUnavailable as exc:
        return _verify_done(request, candidate, f"Cannot verify: {exc}.", ok=False)
    if not queued:
        return _verify_done(
            request, candidate, "A verification of this candidate is already under way.", ok=False
        )
    return _verify_done(
        request, candidate, "Verification queued: the steps appear below as they finish.", ok=True
    )
