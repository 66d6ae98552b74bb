"""Deleting runs and projects together with every file their candidates stored (weights, int8 models).

The files live in the artifact store (:mod:`searches.services.files`), under one folder per run,
so they go wherever they are: on this machine's disk or in the shared object storage.
"""

from __future__ import annotations

from django.db import transaction

from searches.models import Project, SearchRun
from searches.services import files
from searches.services.artifacts import run_folder

ACTIVE = (SearchRun.Status.PENDING, SearchRun.Status.RUNNING)


def remove_run_files(run_id: int) -> None:
    """Remove every file the run's candidates stored (weights, int8 models)."""
    files.delete_tree(run_folder(run_id))


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
