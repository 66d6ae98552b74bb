"""Training a chosen candidate for deployment, on a worker or in the foreground.

:func:`start_deployment` stores a queued :class:`DeploymentJob` and queues its task once the
transaction commits; :func:`run_deployment` (the task, or ``manage.py train_final``) trains
the source's architecture with ``searches.engine.training.deployment`` (whole training split,
augmentation, quantisation-aware fine-tuning), storing and announcing every epoch, and on
success adds the model to the source's run as a new candidate "trained for deployment from
#N" (weights, int8 model quantised with the QAT ranges, resources), downloadable and
verifiable like any other.

The job is leased work (:mod:`searches.services.leases`): its worker holds a lease renewed by a
heartbeat, only the current attempt writes progress or a result, and when the worker dies the
reaper queues the job again (or, after ``NASWEB_MAX_ATTEMPTS`` lost attempts, fails it with the
reason).  It checkpoints every epoch to a local file and copies it to the artifact store (so a
worker on another machine finds it too): the next attempt resumes after the last finished
epoch; it never starts over.
:func:`deploy_top_k` starts jobs for the best Pareto candidates of a finished run (the run
form's "train the top K for deployment").

The new candidate's index is ``DEPLOY_INDEX_BASE + job id``, apart from the strategy's own
numbering and from pruned candidates' (see :mod:`searches.services.pruning`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from searches import events, queue
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture, ArchitectureError, from_json
from searches.engine.training.augment import for_dataset
from searches.engine.training.datasets import Dataset
from searches.engine.training.deployment import (
    DeployEpoch,
    DeployResult,
    Recipe,
    calibration_indices,
    train_for_deployment,
)
from searches.engine.training.model import build_model
from searches.engine.training.train import TrainingStopped, split_indices
from searches.models import UPLOAD_PREFIX, Candidate, DeploymentJob, SearchRun
from searches.services import artifacts, files, leases
from searches.services.execution import throttled_stop
from searches.services.runs import get_dataset

logger = logging.getLogger(__name__)

DEPLOY_INDEX_BASE = Candidate.DEPLOY_INDEX_BASE
DEFAULT_TOP_K = 3
MAX_EPOCHS = 200
CANCEL_POLL_SECONDS = 2.0

# Per data set, from the measurements in docs/benchmarks.md (bench/bench_deploy.py).
DEFAULT_RECIPES: dict[str, Recipe] = {
    "digits": Recipe(epochs=60, qat_epochs=3, batch_size=32, lr=1e-2, qat_lr=5e-4),
    "fashion-mnist": Recipe(epochs=15, qat_epochs=3, batch_size=128, lr=1e-2, qat_lr=5e-4),
}
GENERIC_RECIPE = Recipe(epochs=15, qat_epochs=3, batch_size=64, lr=1e-2, qat_lr=5e-4)

Status = DeploymentJob.Status


class DeploymentUnavailable(Exception):
    """This training cannot start (candidate not trained, bad settings); says why."""


# ---- what the UI calls ---------------------------------------------------------------------


def recipe_for(
    candidate: Candidate,
    *,
    epochs: int | None = None,
    augment: bool | None = None,
    qat: bool = True,
    average_last: int | None = None,
) -> Recipe:
    """The recipe for ``candidate``'s data set; augmentation is off for uploads unless asked for.

    ``average_last`` averages the weights of that many last float epochs (0: off).
    """
    run = candidate.run
    base = DEFAULT_RECIPES.get(run.dataset, GENERIC_RECIPE)
    if epochs is not None and not 1 <= epochs <= MAX_EPOCHS:
        raise DeploymentUnavailable(f"epochs must lie in 1..{MAX_EPOCHS}")
    shape = tuple(candidate.architecture.get("input_shape") or (1, 1, 1))
    uploaded = run.dataset.startswith(UPLOAD_PREFIX)
    aug = None
    if augment is not False:
        aug = for_dataset(
            "upload" if uploaded else run.dataset,
            (int(shape[0]), int(shape[1]), int(shape[2])),
            user_enabled=bool(augment),
        )
    fields = base.to_json() | {"augment": None if aug is None else aug.to_json()}
    if epochs is not None:
        fields["epochs"] = epochs
    if not qat:
        fields["qat_epochs"] = 0
    if average_last is not None:
        fields["average_last"] = average_last
    try:
        return Recipe.from_json(fields)
    except ValueError as exc:
        raise DeploymentUnavailable(str(exc)) from exc


def start_deployment(candidate: Candidate, recipe: Recipe, *, enqueue: bool = True) -> DeploymentJob:
    """Store a queued job for ``candidate``; its task is queued on commit unless ``enqueue`` is False."""
    _check_trained(candidate)
    _architecture(candidate)
    with transaction.atomic():
        if enqueue:
            job = DeploymentJob.objects.create(source=candidate, config=recipe.to_json())
            leases.enqueue_on_commit(DEPLOYMENT, job.pk)
        else:
            # Run in the foreground by the caller: stamped as sent, so the reaper leaves it to
            # the caller (unless it is lost: then its lease runs out and a worker resumes it).
            job = DeploymentJob.objects.create(
                source=candidate, config=recipe.to_json(), enqueued_at=timezone.now()
            )
    return job


def cancel_deployment(job: DeploymentJob) -> bool:
    """Stop a queued or running job (its worker notices within seconds); False if it had ended."""
    with transaction.atomic():
        changed = DeploymentJob.objects.filter(pk=job.pk, status__in=[Status.QUEUED, Status.RUNNING]).update(
            status=Status.CANCELLED, error="cancelled", finished=timezone.now()
        )
        job.refresh_from_db()
        if changed:
            events.deployment_changed(job, job.source.run_id)
    if changed:
        _drop_checkpoint(job)
    return bool(changed)


def deploy_top_k(run_id: int, *, enqueue: bool = True) -> list[DeploymentJob]:
    """Start deployment training of the run's top K Pareto candidates (K from its config).

    Safe to call twice: a candidate with a job already gets none.  The jobs and the cleared
    ``deploy_pending`` (the run's outbox row, see services.execution) commit together.
    """
    with transaction.atomic():
        run = SearchRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status != SearchRun.Status.DONE:
            return []
        k = int((run.config or {}).get("deploy_top_k") or 0)
        already = set(DeploymentJob.objects.filter(source__run=run).values_list("source_id", flat=True))
        front = run.candidates.filter(on_pareto=True, status=Candidate.Status.DONE, for_deployment=False)
        chosen = [c for c in front.order_by("-val_accuracy", "index")[:k] if c.pk not in already]
        jobs = []
        for candidate in chosen:
            try:
                jobs.append(start_deployment(candidate, recipe_for(candidate), enqueue=enqueue))
            except DeploymentUnavailable as exc:
                logger.warning(
                    "run %s: candidate %s not trained for deployment: %s", run.pk, candidate.index, exc
                )
        if run.deploy_pending:
            SearchRun.objects.filter(pk=run.pk).update(deploy_pending=False)
    return jobs


def _architecture(candidate: Candidate) -> Architecture:
    try:
        return from_json(candidate.architecture)
    except ArchitectureError as exc:
        raise DeploymentUnavailable(f"the architecture is not valid: {exc}") from exc


def _check_trained(candidate: Candidate) -> None:
    if candidate.status != Candidate.Status.DONE or not candidate.weights:
        raise DeploymentUnavailable("only a trained candidate can be trained for deployment")


# ---- what the task calls -------------------------------------------------------------------


def _checkpoint_file(job: DeploymentJob) -> str:
    # The creation time too: ids are reused after a database is reset, checkpoints must not be.
    return f"deployment-job-{job.pk}-{job.created:%Y%m%d%H%M%S%f}.pt"


def checkpoint_path(job: DeploymentJob) -> Path:
    """The worker's local checkpoint file (the engine writes it after every epoch)."""
    return Path(settings.NASWEB_DATA_DIR) / "checkpoints" / _checkpoint_file(job)


def checkpoint_name(job: DeploymentJob) -> str:
    """The checkpoint's copy in the artifact store, for a worker on another machine."""
    return f"checkpoints/{_checkpoint_file(job)}"


def _fetch_checkpoint(job: DeploymentJob) -> None:
    """Bring the stored checkpoint to this machine unless it is already here."""
    path = checkpoint_path(job)
    if not path.exists() and files.exists(checkpoint_name(job)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files.read_bytes(checkpoint_name(job)))


def _drop_checkpoint(job: DeploymentJob) -> None:
    checkpoint_path(job).unlink(missing_ok=True)
    files.delete(checkpoint_name(job))


def run_deployment(
    job_id: int, on_epoch: Callable[[DeployEpoch], None] | None = None
) -> DeploymentJob | None:
    """Run a queued job to its end, or resume one whose lease ran out; safe to deliver twice.

    The job's lease is renewed until its result is stored (services.leases): a worker that dies
    leaves it to the reaper, which queues it again; the next attempt resumes from the checkpoint.
    """
    job = _claim(job_id)
    if job is None:
        return None
    with leases.Heartbeat(DEPLOYMENT, job.pk, job.attempts) as beat:
        try:
            result = _train(job, on_epoch, beat.lost.is_set)
            _store_result(job, result)
        except TrainingStopped:
            logger.info("deployment job %s stopped: cancelled, or its lease was taken away", job_id)
        except Exception as exc:
            logger.exception("deployment job %s failed", job_id)
            _finish(job, Status.FAILED, error=f"{type(exc).__name__}: {exc}")
    job.refresh_from_db()
    if not job.is_active:
        _drop_checkpoint(job)
    return job


def _claim(job_id: int) -> DeploymentJob | None:
    with transaction.atomic():
        rows = DeploymentJob.objects.select_for_update().select_related("source__run")
        job = rows.filter(pk=job_id).first()
        if job is None or not leases.take(DEPLOYMENT, job):
            logger.info("deployment job %s is %s: skipped", job_id, job and job.status)
            return None
        if job.attempts > 1:
            logger.info("deployment job %s, attempt %d: resuming from its checkpoint", job_id, job.attempts)
        job.started = job.started or timezone.now()
        job.save(update_fields=["started"])
        events.deployment_changed(job, job.source.run_id)
    return job


def _train(
    job: DeploymentJob, on_epoch: Callable[[DeployEpoch], None] | None, lost: Callable[[], bool]
) -> DeployResult:
    arch = _architecture(job.source)
    dataset = get_dataset(job.source.run.dataset)

    path = checkpoint_path(job)
    _fetch_checkpoint(job)
    cancelled = _cancel_poll(job.pk)

    def record(stats: DeployEpoch) -> None:
        if path.exists():
            files.save_bytes(checkpoint_name(job), path.read_bytes())
        _record_progress(job, stats)
        if on_epoch is not None:
            on_epoch(stats)

    with artifacts.evaluation_threads():
        return train_for_deployment(
            arch,
            dataset,
            Recipe.from_json(job.config),
            path,
            callback=record,
            stop=lambda: lost() or cancelled(),
        )


def _record_progress(job: DeploymentJob, stats: DeployEpoch) -> None:
    # By epoch number: a resumed job replays its finished epochs and must not repeat them.
    by_epoch = {int(p["epoch"]): p for p in job.progress} | {stats.epoch: stats.to_json()}
    job.progress = [by_epoch[e] for e in sorted(by_epoch)]
    with transaction.atomic():
        DeploymentJob.objects.filter(leases.holds(DEPLOYMENT, job.pk, job.attempts)).update(
            progress=job.progress
        )
        events.deployment_changed(job, job.source.run_id)


def _cancel_poll(job_id: int) -> Callable[[], bool]:
    return throttled_stop(
        lambda: not DeploymentJob.objects.filter(pk=job_id, status=Status.RUNNING).exists(),
        CANCEL_POLL_SECONDS,
    )


def _finish(job: DeploymentJob, status: str, **fields: Any) -> bool:
    """End a running job; False if it was cancelled (or deleted, or its lease taken away) meanwhile."""
    fields |= {"status": status, "finished": timezone.now(), "lease_expires": None}
    with transaction.atomic():
        if not DeploymentJob.objects.filter(leases.holds(DEPLOYMENT, job.pk, job.attempts)).update(**fields):
            return False
        for name, value in fields.items():
            setattr(job, name, value)
        events.deployment_changed(job, job.source.run_id)
    return True


# ---- the new candidate ---------------------------------------------------------------------


def deployed_index(job: DeploymentJob) -> int:
    return DEPLOY_INDEX_BASE + job.pk


def _store_result(job: DeploymentJob, result: DeployResult) -> None:
    """Save the model's files, then its candidate row and the job's result, or nothing."""
    source, run = job.source, job.source.run
    arch = _architecture(source)
    resources = _same_resources(arch, source)
    index = deployed_index(job)
    dataset = get_dataset(run.dataset)
    recipe = Recipe.from_json(job.config)
    weights = artifacts.save_weights_file(result.state_dict, artifacts.weights_name(run, index))
    stored = [weights]
    try:
        int8 = _save_int8(run, index, arch, result, dataset, recipe)
        stored.append(int8["int8_model"])
        with transaction.atomic():
            candidate = _create_candidate(job, result, resources, index, weights, int8)
            table = _result_table(source, candidate, result)
            if not _finish(job, Status.DONE, result=table, result_candidate=candidate):
                raise _Cancelled
            events.candidate_changed(candidate)
            events.run_changed(run)
    except BaseException as exc:
        for name in stored:
            files.delete(name)
        if not isinstance(exc, _Cancelled):
            raise


class _Cancelled(Exception):
    """The job was cancelled while its result was being saved: nothing is kept."""


def _give_up(job: DeploymentJob, reason: str) -> None:
    """The reaper's verdict on a job whose worker was lost too often (its checkpoint goes too)."""
    DeploymentJob.objects.filter(pk=job.pk).update(
        status=Status.FAILED, error=reason, finished=timezone.now(), lease_expires=None
    )
    job.status, job.error = Status.FAILED, reason
    events.deployment_changed(job, job.source.run_id)
    transaction.on_commit(functools.partial(_drop_stored_checkpoint, job))


def _drop_stored_checkpoint(job: DeploymentJob) -> None:
    try:
        _drop_checkpoint(job)
    except Exception:
        logger.warning("could not delete the checkpoint of deployment job %s", job.pk, exc_info=True)


def _requeued(job: DeploymentJob) -> None:
    events.deployment_changed(job, job.source.run_id)


DEPLOYMENT = leases.register(
    leases.WorkKind(
        name="deployment",
        model=DeploymentJob,
        send=lambda pk: queue.train_for_deployment(pk),
        queued=Status.QUEUED,
        running=Status.RUNNING,
        # Nothing is reset: lost work resumes from its checkpoint, its finished epochs kept.
        give_up=_give_up,
        on_requeued=_requeued,
    )
)


def _same_resources(arch: Architecture, source: Candidate) -> dict[str, int]:
    """The architecture's resources, which training must not change (checked against the source)."""
    report = analyze(arch)
    resources = {
        "peak_sram_bytes": report.peak_sram_bytes,
        "flash_bytes": report.flash_bytes,
        "macs": report.macs,
        "params": report.params,
    }
    stored = (source.peak_sram_bytes, source.flash_bytes, source.macs)
    if stored != (resources["peak_sram_bytes"], resources["flash_bytes"], resources["macs"]):
        raise RuntimeError(
            f"the trained model's resources {resources} differ from candidate #{source.index}'s {stored}"
        )
    return resources


def _save_int8(
    run: SearchRun, index: int, arch: Architecture, result: DeployResult, dataset: Dataset, recipe: Recipe
) -> dict[str, Any]:
    """Quantise with the ranges training selected and measure with the integer reference."""
    model = build_model(arch)
    model.load_state_dict(result.state_dict)
    train_idx, val_idx = split_indices(dataset.y_train, recipe.split)
    with artifacts.evaluation_threads():
        calibration = dataset.x_train[calibration_indices(train_idx)]
        qm = quantize(arch, model.eval(), calibration, ranges=result.ranges)
        val = int8_accuracy(qm, dataset.x_train[val_idx], dataset.y_train[val_idx])
        test = int8_accuracy(qm, dataset.x_test, dataset.y_test)
    name = artifacts.save_quant_model(qm, artifacts.int8_name(run, index))
    return {"int8_model": name, "int8_val_accuracy": val, "int8_test_accuracy": test}


def _create_candidate(
    job: DeploymentJob,
    result: DeployResult,
    resources: dict[str, int],
    index: int,
    weights: str,
    int8: dict[str, Any],
) -> Candidate:
    source, run = job.source, job.source.run
    return Candidate.objects.create(
        run=run,
        index=index,
        architecture=source.architecture,
        parent=source,
        mutation=f"trained for deployment from {source.label}",
        status=Candidate.Status.DONE,
        feasible=source.feasible,
        for_deployment=True,
        val_accuracy=result.val_accuracy,
        test_accuracy=result.test_accuracy,
        peak_sram_bytes=resources["peak_sram_bytes"],
        flash_bytes=resources["flash_bytes"],
        macs=resources["macs"],
        params=resources["params"],
        latency_ms=source.latency_ms,
        train_seconds=result.seconds,
        weights=weights,
        **int8,
    )


def _result_table(source: Candidate, candidate: Candidate, result: DeployResult) -> dict[str, Any]:
    """What the job's page shows: the selected epoch, the time, and the gain over the source."""
    return {
        "best_epoch": result.best_epoch,
        # The training's own int8 validation accuracy (its QAT model computes what the
        # integer reference does; the stored accuracies are the reference's).
        "int8_val_accuracy_simulated": result.int8_val_accuracy,
        "epochs": len(result.history),
        "resumed_from": result.resumed_from,
        "seconds": result.seconds,
        "train_samples": result.train_samples,
        "val_samples": result.val_samples,
        "source": {
            "val_accuracy": source.val_accuracy,
            "test_accuracy": source.test_accuracy,
            "int8_val_accuracy": source.int8_val_accuracy,
            "int8_test_accuracy": source.int8_test_accuracy,
            "train_seconds": source.train_seconds,
        },
        "deployed": {
            "val_accuracy": candidate.val_accuracy,
            "test_accuracy": candidate.test_accuracy,
            "int8_val_accuracy": candidate.int8_val_accuracy,
            "int8_test_accuracy": candidate.int8_test_accuracy,
            "train_seconds": candidate.train_seconds,
        },
    }
