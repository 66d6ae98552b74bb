"""Deleting runs together with the files their candidates left under MEDIA_ROOT (weights, int8 models)."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction

from searches.models import Project, SearchRun

ACTIVE = (SearchRun.Status.PENDING, SearchRun.Status.RUNNING)


def _weights_dir(run_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "weights" / f"run-{run_id}"


def remove_run_files(run_id: int) -> None:
    """Remove every file the run's candidates saved (weights, int8 models)."""
    shutil.rmtree(_weights_dir(run_id), ignore_errors=True)


def _remove_after_commit(run_ids: list[int]) -> None:
    def remove() -> None:
        for run_id in run_ids:
            remove_run_files(run_id)

    transaction.on_commit(remove)


def delete_run(run: SearchRun) -> None:
    with transaction.atomic():
        _remove_after_commit([run.pk])
        run.delete()


def delete_project(project: Project) -> None:
    with transaction.atomic():
        _remove_after_commit(list(project.runs.values_list("pk", flat=True)))
        project.delete()


def has_active_runs(project: Project) -> bool:
    return project.runs.filter(status__in=ACTIVE).exists()
