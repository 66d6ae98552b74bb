"""Celery tasks: ids in, one service call each (the work and its state live in searches.services)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready

from searches.models import SearchRun
from searches.services import deployment, execution, export, leases, pruning

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, ignore_result=True)
def start_run_task(self: Task, run_id: int) -> None:
    """Start a pending run: mark it running and queue its first evaluations."""
    run = SearchRun.objects.filter(pk=int(run_id)).first()
    if run is None:
        logger.warning("task %s: run %s no longer exists", self.request.id, run_id)
        return
    execution.start_run(run)


@shared_task(bind=True, acks_late=True, ignore_result=True)
def evaluate_candidate(self: Task, candidate_id: int) -> None:
    """Train one candidate, tell its run and queue what comes next (safe to deliver twice)."""
    logger.info("task %s: evaluating candidate %s", self.request.id, candidate_id)
    execution.evaluate(int(candidate_id))


@shared_task(bind=True, acks_late=True, ignore_result=True)
def verify_export_task(self: Task, candidate_id: int) -> None:
    """Verify a candidate's C export (host, Cortex-M build, QEMU) and store the report on it."""
    logger.info("task %s: verifying the export of candidate %s", self.request.id, candidate_id)
    export.verify_queued(int(candidate_id))


@shared_task(bind=True, acks_late=True, ignore_result=True)
def prune_candidate(self: Task, job_id: int) -> None:
    """Run a queued pruning job (DPF) and store the pruned candidate (safe to deliver twice)."""
    logger.info("task %s: pruning job %s", self.request.id, job_id)
    pruning.run_pruning(int(job_id))


@shared_task(bind=True, acks_late=True, ignore_result=True)
def train_for_deployment_task(self: Task, job_id: int) -> None:
    """Run a deployment-training job; delivered again after a worker died, it resumes its checkpoint."""
    logger.info("task %s: deployment job %s", self.request.id, job_id)
    deployment.run_deployment(int(job_id))


@shared_task(bind=True, acks_late=True, ignore_result=True)
def deploy_top_k_task(self: Task, run_id: int) -> None:
    """Start deployment training of a finished run's top K Pareto candidates (its config's K)."""
    logger.info("task %s: deployment jobs for run %s", self.request.id, run_id)
    deployment.deploy_top_k(int(run_id))


@worker_ready.connect
def start_reaper(**kwargs: Any) -> None:
    """Every worker runs the reaper (lost and unsent work, see searches.services.leases) in a thread."""
    leases.start_reaper()
