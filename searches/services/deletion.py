"""Deleting runs and projects together with every file their candidates stored.

The files live in the artifact store (:mod:`searches.services.files`) in two folders per run:
the weights and int8 models under ``weights/run-<id>/``, the built downloads under
``artifacts/run-<id>/`` (:mod:`searches.services.downloads`), so they go wherever they are: on
this machine's disk or in the shared object storage.
"""

from __future__ import annotations

from django.db import transaction

from searches.models import Project, SearchRun
from searches.services import downloads, files
from searches.services.artifacts import run_folder

ACTIVE = (SearchRun.Status.PENDING, SearchRun.Status.RUNNING)


def remove_run_files(run_id: int) -> None:
    """Remove every file the run's candidates stored (weights, int8 models, built downloads)."""
    files.delete_tree(run_folder(run_id))
    downloads.remove_run_artifacts(run_id)


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
