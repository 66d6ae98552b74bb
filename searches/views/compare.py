"""Compare runs: the runs ticked on the run list (or a project's page) side by side."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from searches.services import compare

KB = compare.KB


@login_required
@require_GET
def run_compare(request: HttpRequest) -> HttpResponse:
    try:
        runs, limits = compare.parse_request(request.user, request.GET)
    except compare.CompareError as exc:
        messages.error(request, f"Cannot compare: {exc}.")
        return redirect("run_list")
    data = compare.compare(runs, limits)
    ctx = {
        "runs": runs,
        "data": data,
        "sram_kb": limits.sram_bytes / KB if limits.sram_bytes else "",
        "flash_kb": limits.flash_bytes / KB if limits.flash_bytes else "",
    }
    return render(request, "searches/run_compare.html", ctx)
