"""Notes: the user's free text on a run or a candidate, saved from their pages."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from searches.forms import NotesForm
from searches.models import Candidate, SearchRun
from searches.services.notes import set_notes


def _save(request: HttpRequest, row: SearchRun | Candidate) -> None:
    form = NotesForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Notes not saved: {'; '.join(form.errors['notes'])}")
        return
    set_notes(row, form.cleaned_data["notes"])
    messages.success(request, "Notes saved.")


@login_required
@require_POST
def run_notes(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(SearchRun.objects.for_user(request.user), pk=pk)
    _save(request, run)
    return redirect("run_detail", pk=run.pk)


@login_required
@require_POST
def candidate_notes(request: HttpRequest, pk: int) -> HttpResponse:
    candidate = get_object_or_404(Candidate.objects.for_user(request.user), pk=pk)
    _save(request, candidate)
    return redirect("candidate_detail", pk=candidate.pk)
