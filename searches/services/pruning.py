"""Standalone pruning jobs: DPF structured pruning of one trained candidate, on a worker.

:func:`start_pruning` checks the request, stores a queued :class:`PruningJob` and queues the
Celery task once the transaction commits; :func:`run_pruning` (the task) fine-tunes the source
with ``searches.engine.training.pruning.prune``, storing and announcing every epoch, and on success
adds the pruned model to the source's run as a new, trained candidate (weights, int8 model,
resources), so it shows in the run's table and downloads like any other.

A job is refused before it starts when its result could not be smaller than the source (no
prunable channel, a sparsity that removes none, a model that already fits the profile), and a
finished job that removed nothing adds no candidate.

The new candidate's index is ``PRUNED_INDEX_BASE + job id``: the run's strategy numbers its
proposals from 0 with its own counter, so a high base keeps the two apart even after the run
is extended, and the strategy never learns of these rows (they are not in its state).  Users
see it as "P<job id>" (``Candidate.label``), the number of the job that made it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from searches import events, queue
from searches.engine.resources.graph import build_graph
from searches.engine.resources.latency import latency_ms
from searches.engine.space import arch as arch_format
from searches.engine.space.arch import Architecture
from searches.engine.space.sparsity import MAX_SPARSITY
from searches.engine.training.dpf import ChannelMap, PruneError, channel_map, channels_to_remove
from searches.engine.training.pruning import PruneConfig, PruneProgress, PruneResult, prune
from searches.engine.training.shrink import ResourceLimits, resource_counts
from searches.engine.training.train import Fidelity, TrainingStopped
from searches.models import Candidate, PruningJob, SearchRun
from searches.services import export, files, leases
from searches.services.artifacts import save_trained
from searches.services.execution import throttled_stop
from searches.services.runs import get_dataset, search_config

logger = logging.getLogger(__name__)

PRUNED_INDEX_BASE = Candidate.PRUNED_INDEX_BASE
DEFAULT_EPOCHS = 4
# How often (at most) a pruning worker asks the database whether its job was cancelled.
CANCEL_POLL_SECONDS = 2.0

Status = PruningJob.Status


class PruningUnavailable(Exception):
    """This pruning cannot start (candidate not trained, bad sparsity, no profile); says why."""


# ---- what the UI calls ---------------------------------------------------------------------


def start_pruning(
    candidate: Candidate,
    *,
    target_sparsity: float | None = None,
    fit_profile: bool = False,
    epochs: int = DEFAULT_EPOCHS,
) -> PruningJob:
    """Store a queued job pruning ``candidate`` to a sparsity or to fit its run's profile."""
    if (target_sparsity is None) == (not fit_profile):
        raise PruningUnavailable("choose either a target sparsity or fitting the run's profile")
    _check_trained(candidate)
    config = prune_config(candidate.run, target_sparsity, fit_profile, epochs)
    _check_shrinks(candidate, config)
    with transaction.atomic():
        job = PruningJob.objects.create(source=candidate, config=config.to_json())
        leases.enqueue_on_commit(PRUNING, job.pk)
    return job


def cancel_pruning(job: PruningJob) -> bool:
    """Stop a queued or running job (its worker notices within seconds); False if it had ended."""
    with transaction.atomic():
        changed = PruningJob.objects.filter(pk=job.pk, status__in=[Status.QUEUED, Status.RUNNING]).update(
            status=Status.CANCELLED, error="cancelled", finished=timezone.now()
        )
        job.refresh_from_db()
        if changed:
            events.pruning_changed(job, job.source.run_id)
    return bool(changed)


def prune_config(
    run: SearchRun, target_sparsity: float | None, fit_profile: bool, epochs: int
) -> PruneConfig:
    """The engine's config: the run's data split and batch size, a short schedule."""
    if target_sparsity is not None and not 0.0 < target_sparsity <= MAX_SPARSITY:
        raise PruningUnavailable(f"the target sparsity must lie in (0, {MAX_SPARSITY}]")
    if epochs < 1:
        raise PruningUnavailable("pruning needs at least one epoch")
    fidelity = Fidelity(**search_config(run).fidelity)
    return PruneConfig(
        target_sparsity=target_sparsity,
        fit=profile_limits(run) if fit_profile else None,
        epochs=epochs,
        finish_epoch=epochs / 2,
        batch_size=fidelity.batch_size,
        train_subset=fidelity.train_subset,
        val_fraction=fidelity.val_fraction,
        seed=fidelity.seed,
    )


def profile_limits(run: SearchRun) -> ResourceLimits:
    """The run's hardware profile's SRAM and flash, else the limits it searched under."""
    if run.profile is not None:
        return ResourceLimits(peak_sram_bytes=run.profile.sram_bytes, flash_bytes=run.profile.flash_bytes)
    limits = (run.config or {}).get("limits") or {}
    sram, flash = limits.get("sram_bytes"), limits.get("flash_bytes")
    if not sram and not flash:
        raise PruningUnavailable("the run has no hardware profile (nor SRAM or flash limits) to fit")
    return ResourceLimits(peak_sram_bytes=sram or None, flash_bytes=flash or None)


def unprunable_reason(candidate: Candidate) -> str | None:
    """Why no pruning of ``candidate`` could make it smaller, or None when some channel can go."""
    cmap = channel_map(arch_format.from_json(candidate.architecture))
    if cmap.removable:
        return None
    if not cmap.total:
        return (
            "this network has no prunable channels: the layers reading the input, depthwise "
            "convolutions and the classifier always stay"
        )
    return f"every one of its {cmap.total} prunable channels is already at its layer's minimum"


def _check_shrinks(candidate: Candidate, config: PruneConfig) -> None:
    """Refuse a job whose result could not be smaller than ``candidate``: it would add a worse copy."""
    reason = unprunable_reason(candidate)
    if reason:
        raise PruningUnavailable(reason)
    arch = arch_format.from_json(candidate.architecture)
    if config.target_sparsity is not None:
        _check_sparsity_removes(channel_map(arch), config.target_sparsity)
    if config.fit is not None:
        _check_does_not_fit(arch, config.fit)


def _check_sparsity_removes(cmap: ChannelMap, sparsity: float) -> None:
    if channels_to_remove(cmap, sparsity) == 0:
        least = 0.5 / cmap.total
        raise PruningUnavailable(
            f"a target sparsity of {sparsity:.2f} removes none of the {cmap.total} prunable channels; "
            f"choose more than {least:.2f}"
        )


def _check_does_not_fit(arch: Architecture, limits: ResourceLimits) -> None:
    resources = resource_counts(arch)
    if not limits.violations(resources):
        raise PruningUnavailable(
            f"the model already fits the run's profile (peak SRAM {resources['peak_sram_bytes']:,} B, "
            f"flash {resources['flash_bytes']:,} B): there is nothing to prune for; choose a target sparsity"
        )


def _check_trained(candidate: Candidate) -> None:
    try:
        export.float_model_for(candidate)
    except export.ExportUnavailable as exc:
        raise PruningUnavailable(str(exc).replace("exported", "pruned")) from exc


# ---- what the task calls -------------------------------------------------------------------


def run_pruning(job_id: int) -> None:
    """Run a queued job to its end (done, failed or cancelled); safe to deliver twice.

    The job's lease is renewed until its result is stored (services.leases): a worker that dies
    leaves it to the reaper, which queues it again.
    """
    job = _claim(job_id)
    if job is None:
        return
    with leases.Heartbeat(PRUNING, job.pk, job.attempts) as beat:
        try:
            result = _prune(job, beat.lost.is_set)
        except TrainingStopped:
            logger.info("pruning job %s stopped: cancelled, or its lease was taken away", job_id)
            return
        except (PruneError, export.ExportUnavailable) as exc:
            _finish(job, Status.FAILED, error=str(exc))
            return
        except Exception as exc:
            logger.exception("pruning job %s failed", job_id)
            _finish(job, Status.FAILED, error=f"{type(exc).__name__}: {exc}")
            return
        _store_result(job, result)


def _claim(job_id: int) -> PruningJob | None:
    with transaction.atomic():
        job = PruningJob.objects.select_for_update().select_related("source__run").filter(pk=job_id).first()
        if job is None or not leases.take(PRUNING, job):
            logger.info("pruning job %s is %s: skipped", job_id, job and job.status)
            return None
        job.started = timezone.now()
        job.save(update_fields=["started"])
        events.pruning_changed(job, job.source.run_id)
    return job


def _prune(job: PruningJob, lost: Callable[[], bool]) -> PruneResult:
    arch, model = export.float_model_for(job.source)
    cancelled = _cancel_poll(job.pk)
    return prune(
        arch,
        model,
        get_dataset(job.source.run.dataset),
        PruneConfig.from_json(job.config),
        stop=lambda: lost() or cancelled(),
        progress=functools.partial(_record_progress, job),
    )


def _record_progress(job: PruningJob, p: PruneProgress) -> None:
    job.progress = [*job.progress, dict(p.__dict__)]
    with transaction.atomic():
        PruningJob.objects.filter(leases.holds(PRUNING, job.pk, job.attempts)).update(progress=job.progress)
        events.pruning_changed(job, job.source.run_id)


def _cancel_poll(job_id: int) -> Callable[[], bool]:
    """True once the job is no longer running."""
    return throttled_stop(
        lambda: not PruningJob.objects.filter(pk=job_id, status=Status.RUNNING).exists(), CANCEL_POLL_SECONDS
    )


def _finish(job: PruningJob, status: str, **fields: Any) -> bool:
    """End a running job; False if it was cancelled (or deleted, or its lease taken away) meanwhile."""
    fields |= {"status": status, "finished": timezone.now(), "lease_expires": None}
    with transaction.atomic():
        if not PruningJob.objects.filter(leases.holds(PRUNING, job.pk, job.attempts)).update(**fields):
            return False
        for name, value in fields.items():
            setattr(job, name, value)
        events.pruning_changed(job, job.source.run_id)
    return True


# ---- the new candidate ---------------------------------------------------------------------


NOT_SMALLER = "pruning removed no channel, so the model is no smaller than its source: no candidate was added"


def _smaller(result: PruneResult) -> bool:
    before, after = result.before.resources, result.after.resources
    return result.channels_after < result.channels_before and any(
        after[name] < before[name] for name in ("params", "flash_bytes", "peak_sram_bytes", "macs")
    )


def pruned_index(job: PruningJob) -> int:
    return PRUNED_INDEX_BASE + job.pk


def _store_result(job: PruningJob, result: PruneResult) -> None:
    """Save the pruned model's files, then its candidate row and the job's table, or nothing."""
    source, run = job.source, job.source.run
    if not _smaller(result):
        # A copy no smaller than its source, only fine-tuned, is not a pruning result worth a row.
        _finish(job, Status.FAILED, error=NOT_SMALLER)
        return
    index = pruned_index(job)
    dataset = get_dataset(run.dataset)
    fidelity = Fidelity(**search_config(run).fidelity)
    weights, int8 = save_trained(
        run, index, result.architecture, result.model.state_dict(), dataset, fidelity
    )
    try:
        with transaction.atomic():
            candidate = _create_candidate(job, result, index, weights, int8)
            table = result.to_json() | {
                "int8_before": [source.int8_val_accuracy, source.int8_test_accuracy],
                "int8_after": [int8.get("int8_val_accuracy"), int8.get("int8_test_accuracy")],
            }
            if not _finish(job, Status.DONE, result=table, result_candidate=candidate):
                raise _Cancelled
            events.candidate_changed(candidate)
            events.run_changed(run)
    except BaseException as exc:
        for name in (weights, int8.get("int8_model", "")):
            files.delete(name)
        if not isinstance(exc, _Cancelled):
            raise


def _give_up(job: PruningJob, reason: str) -> None:
    """The reaper's verdict on a job whose worker was lost too often."""
    PruningJob.objects.filter(pk=job.pk).update(
        status=Status.FAILED, error=reason, finished=timezone.now(), lease_expires=None
    )
    job.status, job.error = Status.FAILED, reason
    events.pruning_changed(job, job.source.run_id)


def _requeued(job: PruningJob) -> None:
    events.pruning_changed(job, job.source.run_id)


PRUNING = leases.register(
    leases.WorkKind(
        name="pruning",
        model=PruningJob,
        send=lambda pk: queue.prune(pk),
        queued=Status.QUEUED,
        running=Status.RUNNING,
        # Lost work starts again from the source's weights.
        reset={"progress": [], "started": None},
        give_up=_give_up,
        on_requeued=_requeued,
    )
)


class _Cancelled(Exception):
    """The job was cancelled while its result was being saved: nothing is kept."""


def _create_candidate(
    job: PruningJob, result: PruneResult, index: int, weights: str, int8: dict[str, Any]
) -> Candidate:
    source, run = job.source, job.source.run
    resources = result.after.resources
    return Candidate.objects.create(
        run=run,
        index=index,
        architecture=result.architecture.to_json(),
        parent=source,
        mutation=f"pruned from {source.label} (sparsity {result.sparsity:.2f})"[:200],
        status=Candidate.Status.DONE,
        feasible=_feasible(run, resources),
        val_accuracy=result.after.val_accuracy,
        test_accuracy=result.after.test_accuracy,
        peak_sram_bytes=resources["peak_sram_bytes"],
        flash_bytes=resources["flash_bytes"],
        macs=resources["macs"],
        params=resources["params"],
        latency_ms=_latency(run, result.architecture),
        train_seconds=result.seconds,
        weights=weights,
        **int8,
    )


def _run_limits(run: SearchRun) -> dict[str, Any]:
    return (run.config or {}).get("limits") or {}


def _feasible(run: SearchRun, resources: dict[str, int]) -> bool:
    limits = _run_limits(run)
    return all(
        not limits.get(key) or resources[name] <= limits[key]
        for key, name in (("sram_bytes", "peak_sram_bytes"), ("flash_bytes", "flash_bytes"))
    )


def _latency(run: SearchRun, arch: Architecture) -> float | None:
    """The calibrated model's latency of the pruned architecture at the run's core and clock."""
    limits = _run_limits(run)
    if limits.get("core") and limits.get("clock_mhz"):
        return latency_ms(build_graph(arch)[0], limits["core"], limits["clock_mhz"])
    return None
