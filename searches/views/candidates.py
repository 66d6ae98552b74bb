"""One candidate: its metrics, layer table, memory timeline, lineage and which boards it fits."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from searches.engine.arch import ArchitectureError
from searches.engine.resources import latency_ms
from searches.models import Candidate
from searches.services import reports


def _get_candidate_for_user(request: HttpRequest, pk: int) -> Candidate:
    rows = Candidate.objects.for_user(request.user).select_related(
        "run", "run__profile", "run__project", "parent"
    )
    return get_object_or_404(rows, pk=pk)


def _latency_estimate(candidate: Candidate, macs: int) -> float | None:
    """The stored estimate, else one at the run's core and clock (None without either)."""
    if candidate.latency_ms is not None:
        return candidate.latency_ms
    limits = (candidate.run.config or {}).get("limits") or {}
    if limits.get("core") and limits.get("clock_mhz"):
        return latency_ms(macs, limits["core"], limits["clock_mhz"])
    return None


@login_required
def candidate_detail(request: HttpRequest, pk: int) -> HttpResponse:
    candidate = _get_candidate_for_user(request, pk)
    ctx = {"candidate": candidate, "run": candidate.run, "children": candidate.children.order_by("index")}
    try:
        report = reports.analyze_candidate(candidate)
    except ArchitectureError as exc:
        ctx["analysis_error"] = str(exc)
        return render(request, "searches/candidate_detail.html", ctx)
    fits = reports.board_fits(report.peak_sram_bytes, report.flash_bytes, report.macs)
    ctx |= {
        "report": report,
        "layers": reports.layer_rows(report),
        "memory": reports.memory_data(report),
        "fits": fits,
        "fits_count": sum(fit.fits for fit in fits),
        "latency_ms": _latency_estimate(candidate, report.macs),
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
