"""Projects: a user's folders of search runs."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from searches.forms import ProjectForm
from searches.models import Project, SearchRun, name_datasets
from searches.services.deletion import delete_project, has_active_runs


def _get_project_for_user(request: HttpRequest, pk: int) -> Project:
    return get_object_or_404(Project.objects.for_user(request.user), pk=pk)


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    projects = Project.objects.for_user(request.user).annotate(run_count=Count("runs"))
    return render(request, "searches/project_list.html", {"projects": projects})


@login_required
def project_create(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        project = form.save()
        return redirect("project_detail", pk=project.pk)
    return render(request, "searches/project_form.html", {"form": form, "project": None})


@login_required
def project_edit(request: HttpRequest, pk: int) -> HttpResponse:
    project = _get_project_for_user(request, pk)
    form = ProjectForm(request.POST or None, instance=project, owner=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("project_detail", pk=project.pk)
    return render(request, "searches/project_form.html", {"form": form, "project": project})


@login_required
def project_detail(request: HttpRequest, pk: int) -> HttpResponse:
    project = _get_project_for_user(request, pk)
    runs = SearchRun.objects.for_user(request.user).filter(project=project).select_related("profile")
    runs = name_datasets(runs)
    return render(request, "searches/project_detail.html", {"project": project, "runs": runs})


@login_required
@require_POST
def project_delete(request: HttpRequest, pk: int) -> HttpResponse:
    project = _get_project_for_user(request, pk)
    if has_active_runs(project):
        messages.error(request, "This project has active runs: cancel them before deleting it.")
        return redirect("project_detail", pk=project.pk)
    delete_project(project)
    messages.success(request, f"Project “{project.name}” and its runs were deleted.")
    return redirect("project_list")
