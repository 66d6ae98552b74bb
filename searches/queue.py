"""Sending work to the Celery workers: the one module through which services enqueue tasks.

Tasks (:mod:`searches.tasks`) call services, and services enqueue through here by task *name*,
never by importing the task functions, so the dependency runs one way:
tasks → services → queue.  Every task takes one integer id as its only argument (JSON on the
broker, never objects).

Sending never raises: a broker that is down (Redis restarting) makes :func:`send` log and
return False, and the caller's row stays queued and unsent, for the reaper to send again
(see :mod:`searches.services.leases`).  Nothing that matters lives only in the broker.
"""

from __future__ import annotations

import logging

from nasweb.celery import app

logger = logging.getLogger(__name__)

START_RUN = "searches.tasks.start_run_task"
EVALUATE_CANDIDATE = "searches.tasks.evaluate_candidate"
VERIFY_EXPORT = "searches.tasks.verify_export_task"
PRUNE_CANDIDATE = "searches.tasks.prune_candidate"
TRAIN_FOR_DEPLOYMENT = "searches.tasks.train_for_deployment_task"
DEPLOY_TOP_K = "searches.tasks.deploy_top_k_task"


# Retries of one publish while the broker does not answer: short, because the caller is often a
# web request, and the reaper sends again anyway.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.3, "interval_max": 0.5}


def send(task_name: str, object_id: int) -> bool:
    """Queue the task ``task_name`` for one object id; False (logged) if the broker is unreachable."""
    try:
        app.send_task(task_name, args=[int(object_id)], retry=True, retry_policy=RETRY_POLICY)
    except Exception as exc:
        logger.warning("could not queue %s(%s), the reaper will send it again: %s", task_name, object_id, exc)
        return False
    return True


def waiting() -> int | None:
    """How many messages wait in the default queue; None if the broker cannot tell (or is down)."""
    try:
        with app.connection_for_write() as connection:
            declared = connection.default_channel.queue_declare(
                queue=app.conf.task_default_queue, passive=False
            )
            return int(declared.message_count)
    except Exception as exc:
        logger.info("could not count the waiting tasks: %s", exc)
        return None


def start_run(run_id: int) -> bool:
    """Queue the start of a pending run."""
    return send(START_RUN, run_id)


def evaluate_candidate(candidate_id: int) -> bool:
    """Queue the training of one candidate."""
    return send(EVALUATE_CANDIDATE, candidate_id)


def verify_export(candidate_id: int) -> bool:
    """Queue the verification of a candidate's C export."""
    return send(VERIFY_EXPORT, candidate_id)


def prune(job_id: int) -> bool:
    """Queue a pruning job."""
    return send(PRUNE_CANDIDATE, job_id)


def train_for_deployment(job_id: int) -> bool:
    """Queue a deployment-training job."""
    return send(TRAIN_FOR_DEPLOYMENT, job_id)


def deploy_top_k(run_id: int) -> bool:
    """Queue the start of deployment training for a finished run's top Pareto candidates."""
    return send(DEPLOY_TOP_K, run_id)
