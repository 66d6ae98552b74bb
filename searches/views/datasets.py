"""Datasets: the built-in ones and the user's validated uploads."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from searches.engine.training.datasets import DatasetError
from searches.forms import DatasetUploadForm
from searches.models import Dataset, SearchRun
from searches.services import datasets as uploads
from searches.services.deletion import ACTIVE
from searches.uploads import upload_limit_bytes


def _get_own_dataset_for_user(request: HttpRequest, pk: int) -> Dataset:
    return get_object_or_404(Dataset.objects.owned_by(request.user), pk=pk)


@login_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    datasets = Dataset.objects.for_user(request.user)
    return render(request, "searches/dataset_list.html", {"datasets": datasets, "limits": _limits()})


def _limits() -> dict[str, int]:
    return {"max_mb": upload_limit_bytes() // 1024**2, "max_samples": uploads.MAX_SAMPLES}


@login_required
def dataset_upload(request: HttpRequest) -> HttpResponse:
    form = DatasetUploadForm(request.POST or None, request.FILES or None, owner=request.user)
    refused = getattr(request, "upload_refused", None)
    if refused:
        # The body was cut off unread: the form's fields and files never arrived.
        form = DatasetUploadForm({"name": request.POST.get("name", "")}, owner=request.user)
        form.cleaned_data = {}
        form._errors = ErrorDict()
        form.add_error(None, f"The dataset was not stored: {refused}")
    elif request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            dataset = uploads.create_uploaded(request.user, data["name"], data.get("npz"), form.idx_files)
        except DatasetError as exc:
            form.add_error(None, f"The dataset was not stored: {exc}")
        else:
            messages.success(
                request, f"Dataset “{dataset.name}” uploaded ({dataset.n_train:,} train images)."
            )
            return redirect("dataset_list")
    return render(request, "searches/dataset_form.html", {"form": form, "limits": _limits()})


@login_required
@require_POST
def dataset_delete(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _get_own_dataset_for_user(request, pk)
    if SearchRun.objects.filter(dataset=dataset.key, status__in=ACTIVE).exists():
        messages.error(request, "An active run uses this dataset: cancel it before deleting the dataset.")
        return redirect("dataset_list")
    uploads.delete_uploaded(dataset)
    messages.success(request, f"Dataset “{dataset.name}” deleted.")
    return redirect("dataset_list")
