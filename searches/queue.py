"""Sending work to the Celery workers: the one module through which services enqueue tasks.

Tasks (:mod:`searches.tasks`) call services, and services enqueue through here by task *name*,
never by importing the task functions, so the dependency runs one way:
tasks → services → queue.  Every task takes one integer id as its only argument (JSON on the
broker, never objects).
"""

from __future__ import annotations

from nasweb.celery import app

START_RUN = "searches.tasks.start_run_task"
EVALUATE_CANDIDATE = "searches.tasks.evaluate_candidate"
VERIFY_EXPORT = "searches.tasks.verify_export_task"
PRUNE_CANDIDATE = "searches.tasks.prune_candidate"
TRAIN_FOR_DEPLOYMENT = "searches.tasks.train_for_deployment_task"
DEPLOY_TOP_K = "searches.tasks.deploy_top_k_task"


def send(task_name: str, object_id: int) -> None:
    """Queue the task ``task_name`` for one object id."""
    app.send_task(task_name, args=[int(object_id)])


def start_run(run_id: int) -> None:
    """Queue the start of a pending run."""
    send(START_RUN, run_id)


def evaluate_candidate(candidate_id: int) -> None:
    """Queue the training of one candidate."""
    send(EVALUATE_CANDIDATE, candidate_id)


def verify_export(candidate_id: int) -> None:
    """Queue the verification of a candidate's C export."""
    send(VERIFY_EXPORT, candidate_id)


def prune(job_id: int) -> None:
    """Queue a pruning job."""
    send(PRUNE_CANDIDATE, job_id)


def train_for_deployment(job_id: int) -> None:
    """Queue a deployment-training job."""
    send(TRAIN_FOR_DEPLOYMENT, job_id)


def deploy_top_k(run_id: int) -> None:
    """Queue the start of deployment training for a finished run's top Pareto candidates."""
    send(DEPLOY_TOP_K, run_id)
