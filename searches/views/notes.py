"""Notes: the user's free text on a run or a candidate, saved from their pages."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from searches import events
from searches.forms import NotesForm
from searches.models import Candidate, SearchRun


def _save(request: HttpRequest, row: Model) -> bool:
    form = NotesForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Notes not saved: {'; '.join(form.errors['notes'])}")
        return False
    row.notes = form.cleaned_data["notes"].strip()  # type: ignore[attr-defined]
    row.save(update_fields=["notes"])
    messages.success(request, "Notes saved.")
    return True


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
    if _save(request, candidate):
        # Open dashboards show the note in the candidate's row.
        events.candidate_changed(candidate)
    return redirect("candidate_detail", pk=candidate.pk)
