"""Exporting trained candidates: the int8 model, the C header and bundle, ONNX, and verification.

The engine does the work (``searches.engine.deploy``: ``quantize``, ``header``, ``bundle``, ``verify``); this
module decides what it runs on and stores what comes out:

- **int8 model.**  Right after a candidate trains, :func:`int8_metrics` quantises it with
  calibration on up to ``CALIBRATION_SAMPLES`` images drawn (seeded) from its training split,
  measures the int8 accuracy on the same validation and test images as the float accuracy,
  and stores the model next to the weights (``candidate-N.int8.npz``) in the artifact store,
  so deleting the run deletes it too.  Candidates trained before that existed are quantised on demand
  (:func:`quant_model_for`) from their weights, with the same calibration images, so they
  get the very model an evaluation would have stored.
- **downloads.**  The header, the zip bundle, the int8 .tflite file and the float ONNX model
  are built here from the stored models; their C names are ``nasweb_r<run>_c<index>``.
  :mod:`searches.services.downloads` builds each once and serves the stored file after that.
- **verification.**  :func:`request_verification` marks the candidate queued and queues a
  Celery task once the transaction commits (through the outbox of
  :mod:`searches.services.leases`; the worker holds a lease on it while it runs, so a dead
  worker's verification is queued again by the reaper, and failed after three lost
  attempts); :func:`verify` (the task and the ``verify_export`` command) runs
  ``searches.engine.deploy.verify.verify_export`` for the run's target, storing every step's
  progress and the final report on the candidate and announcing each change through
  ``searches.events``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle  # only for its exception: torch.load(weights_only=True) raises it
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from django.db import transaction
from django.utils import timezone

from searches import events, queue
from searches.engine.deploy import toolchain
from searches.engine.deploy.bundle import bundle_zip
from searches.engine.deploy.header import CHeader, c_identifier, generate_header
from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.report import FAILED, UNAVAILABLE, ExportVerification, StepResult
from searches.engine.deploy.tflite import tflite_model
from searches.engine.deploy.toolchain import APT_COMMAND
from searches.engine.deploy.verify import verify_export
from searches.engine.space.arch import Architecture, ArchitectureError, from_json
from searches.engine.training.datasets import Dataset, DatasetError
from searches.engine.training.model import ArchNet
from searches.engine.training.train import Fidelity, load_weights
from searches.models import Candidate, SearchRun
from searches.services import datasets, files, leases
from searches.services.artifacts import (
    evaluation_threads,
    int8_accuracies,
    int8_name,
    load_quant_model,
    load_weights_file,
    quantize_trained,
    save_quant_model,
)
from searches.services.runs import get_dataset, search_config

logger = logging.getLogger(__name__)

# Test inputs whose output bytes are compared one by one (on the host and under QEMU).
VERIFY_INPUTS = 20
# A verification queued or running for longer than this is taken as lost (a worker died):
# asking again is allowed.
STALE_AFTER = timedelta(minutes=30)

ExportStatus = Candidate.ExportStatus


class ExportUnavailable(Exception):
    """This candidate cannot be exported (not trained, weights or dataset gone); says why."""


def check_trained(candidate: Candidate) -> None:
    """ExportUnavailable, saying why, unless the candidate is trained and its weights are stored."""
    check_has_weights(candidate)
    if not files.exists(candidate.weights.name):
        raise ExportUnavailable(f"the weights file {candidate.weights.name} is missing")


def check_has_weights(candidate: Candidate) -> None:
    """ExportUnavailable, saying why, unless the candidate is trained and names its weights file."""
    if candidate.status != Candidate.Status.DONE:
        status = candidate.get_status_display().lower()
        raise ExportUnavailable(
            f"candidate {candidate.index} of run {candidate.run_id} is {status}, not trained: "
            "only trained candidates can be exported"
        )
    if not candidate.weights:
        raise ExportUnavailable(f"candidate {candidate.index} of run {candidate.run_id} has no saved weights")


def _architecture(candidate: Candidate) -> Architecture:
    try:
        return from_json(candidate.architecture)
    except ArchitectureError as exc:
        raise ExportUnavailable(f"the architecture is not valid: {exc}") from exc


def float_model_for(candidate: Candidate) -> tuple[Architecture, ArchNet]:
    """The trained float model of a candidate, from its weights file."""
    check_trained(candidate)
    arch = _architecture(candidate)
    try:
        return arch, load_weights_file(arch, candidate.weights.name)
    except (pickle.UnpicklingError, OSError, RuntimeError, ValueError) as exc:
        raise ExportUnavailable(
            f"the weights file {candidate.weights.name} cannot be read: {_load_error(exc)}"
        ) from exc


def float_model_from(candidate: Candidate, weights: bytes) -> tuple[Architecture, ArchNet]:
    """The candidate's float model with ``weights``, the bytes of its weights file."""
    arch = _architecture(candidate)
    try:
        return arch, load_weights(arch, io.BytesIO(weights))
    except (pickle.UnpicklingError, OSError, RuntimeError, ValueError) as exc:
        raise ExportUnavailable(
            f"the weights file {candidate.weights.name} cannot be read: {_load_error(exc)}"
        ) from exc


def _load_error(exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError):
        # torch's own message suggests loading without weights_only, which nasweb never does.
        return "it is not a tensor file saved by nasweb"
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _dataset_and_fidelity(run: SearchRun) -> tuple[Dataset, Fidelity]:
    try:
        dataset = get_dataset(run.dataset)
    except (DatasetError, OSError, ValueError) as exc:
        raise ExportUnavailable(f"the run's dataset {run.dataset!r} is not available: {exc}") from exc
    return dataset, Fidelity(**search_config(run).fidelity)


def _stored_quant_model(candidate: Candidate) -> QuantModel | None:
    if not candidate.int8_model:
        return None
    try:
        return load_quant_model(candidate.int8_model.name)
    except (OSError, ValueError, KeyError):
        logger.warning("int8 model of candidate %s unreadable; quantising again", candidate.pk, exc_info=True)
        return None


def quant_model_for(candidate: Candidate, *, with_accuracy: bool = False) -> QuantModel:
    """The candidate's int8 model: the stored one, else quantised now from its weights and stored.

    ``with_accuracy`` also fills in missing int8 accuracies (slow on large test sets: the
    verification task asks for it, page downloads do not).
    """
    check_trained(candidate)
    qm = _stored_quant_model(candidate)
    # A stored file that could not be used (damaged, or an older format) had its accuracies
    # measured on a model that is about to be replaced: they go with it.
    replaced = qm is None and bool(candidate.int8_model)
    needs_accuracy = with_accuracy and (candidate.int8_test_accuracy is None or replaced)
    if qm is not None and not needs_accuracy:
        return qm
    dataset, fidelity = _dataset_and_fidelity(candidate.run)
    fields: dict[str, Any] = {}
    if qm is None:
        arch, model = float_model_for(candidate)
        with evaluation_threads():
            qm = quantize_trained(arch, model, dataset, fidelity)
        fields["int8_model"] = save_quant_model(qm, int8_name(candidate.run, candidate.index))
        if replaced and not needs_accuracy:
            fields["int8_val_accuracy"] = fields["int8_test_accuracy"] = None
    if needs_accuracy:
        with evaluation_threads():
            fields["int8_val_accuracy"], fields["int8_test_accuracy"] = int8_accuracies(qm, dataset, fidelity)
    if not _update(candidate, **fields) and "int8_model" in fields:
        # Deleted meanwhile, its run's files with it: leave nothing behind.
        files.delete(fields["int8_model"])
    return qm


# ---- downloads -----------------------------------------------------------------------------


def c_name(candidate: Candidate) -> str:
    """The C identifier of a candidate's export: ``nasweb_r<run id>_c<index>``, ``..._p<job>`` if pruned,
    ``..._d<job>`` if trained for deployment."""
    number = candidate.label.removeprefix("#").lower()
    return c_identifier(f"nasweb_r{candidate.run_id}_{'' if candidate.made_by_job else 'c'}{number}")


@dataclass(frozen=True)
class Target:
    """The board a candidate is exported for: core, clock and memory budget."""

    core: str
    clock_mhz: float
    flash_bytes: int
    sram_bytes: int
    label: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Runs without a hardware profile (e.g. from the command line) build for a generous Cortex-M4F.
DEFAULT_TARGET = Target(
    "cortex-m4f", 80.0, 1024 * 1024, 256 * 1024, "default Cortex-M4F (the run has no profile)"
)


def target_for(run: SearchRun) -> Target:
    """The run's hardware profile; else the limits it searched under; else ``DEFAULT_TARGET``."""
    profile = run.profile
    if profile is not None:
        return Target(profile.core, profile.clock_mhz, profile.flash_bytes, profile.sram_bytes, profile.name)
    limits = (run.config or {}).get("limits") or {}
    if limits.get("core") and limits.get("clock_mhz"):
        return Target(
            core=limits["core"],
            clock_mhz=float(limits["clock_mhz"]),
            flash_bytes=int(limits.get("flash_bytes") or DEFAULT_TARGET.flash_bytes),
            sram_bytes=int(limits.get("sram_bytes") or DEFAULT_TARGET.sram_bytes),
            label="the run's limits (its profile was deleted)",
        )
    return DEFAULT_TARGET


def header_for(candidate: Candidate, qm: QuantModel | None = None) -> CHeader:
    """The candidate's C header (from ``qm``, its int8 model, when the caller has it already)."""
    qm = qm if qm is not None else quant_model_for(candidate)
    return generate_header(qm, c_name(candidate), input_note(candidate.run))


def bundle_for(candidate: Candidate, qm: QuantModel | None = None) -> tuple[str, bytes]:
    """(file name, zip bytes) of the candidate's bundle for its run's target."""
    target = target_for(candidate.run)
    name = c_name(candidate)
    data = bundle_zip(
        qm if qm is not None else quant_model_for(candidate),
        name,
        core=target.core,
        flash_limit_bytes=target.flash_bytes,
        sram_limit_bytes=target.sram_bytes,
        input_note=input_note(candidate.run),
    )
    return f"{name}.zip", data


def tflite_description(candidate: Candidate) -> str:
    """The description written into the candidate's .tflite file."""
    return (
        f"nasweb run {candidate.run_id}, candidate {candidate.index} ({candidate.run.dataset}), full-integer "
        "int8: input (1, H, W, C) int8 NHWC, output (1, classes) int8 logits"
    )


def tflite_for(candidate: Candidate, qm: QuantModel | None = None) -> tuple[str, bytes]:
    """(file name, bytes) of the int8 model as a .tflite file: the header's numbers, for LiteRT."""
    qm = qm if qm is not None else quant_model_for(candidate)
    return f"{c_name(candidate)}.tflite", tflite_model(qm, tflite_description(candidate))


def input_note(run: SearchRun) -> str:
    """What the model's real input x is, from the run's dataset's own scaling ("" if unknown)."""
    try:
        return datasets.input_scaling(run.dataset)
    except DatasetError:
        return ""


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    # The exporter logs a warning per torchvision operator it cannot register (torchvision is
    # not installed, and nasweb models use none of them) and torch.export a FutureWarning about
    # its own internals: noise in a server's log.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        quiet.setLevel(level)


def onnx_description(candidate: Candidate, arch: Architecture) -> str:
    """The doc string written into the candidate's ONNX model."""
    h, w, c = arch.input_shape
    return (
        f"nasweb run {candidate.run_id}, candidate {candidate.index} ({candidate.run.dataset}), float32. "
        f"input: (N, {c}, {h}, {w}) NCHW pixels scaled to [0, 1]; output: (N, {arch.classes}) logits."
    )


def onnx_for(
    candidate: Candidate, float_model: tuple[Architecture, ArchNet] | None = None
) -> tuple[str, bytes]:
    """(file name, bytes) of the float model in ONNX: input ``input`` NCHW float32 in [0, 1]."""
    arch, model = float_model if float_model is not None else float_model_for(candidate)
    h, w, c = arch.input_shape
    example = torch.zeros((1, c, h, w))
    batch = torch.export.Dim("batch", min=1)
    with _quiet_onnx_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    proto.doc_string = onnx_description(candidate, arch)
    return f"{c_name(candidate)}.onnx", proto.SerializeToString()


# ---- verification ---------------------------------------------------------------------------


def _update(candidate: Candidate, **fields: Any) -> bool:
    """Write ``fields`` on the row and announce it; False (nothing written) if it is gone."""
    if not fields:
        return True
    with transaction.atomic():
        if not Candidate.objects.filter(pk=candidate.pk).update(**fields):
            return False
        for name, value in fields.items():
            setattr(candidate, name, value)
        events.candidate_changed(candidate)
    return True


def _busy(candidate: Candidate) -> bool:
    if not candidate.export_busy:
        return False
    now = timezone.now()
    lease = candidate.export_lease_expires
    if candidate.export_status == ExportStatus.RUNNING and lease is not None:
        return lease > now  # a worker renews it while it works
    requested = candidate.export_requested
    return requested is not None and now - requested < STALE_AFTER


def request_verification(candidate: Candidate) -> bool:
    """Queue a verification (after the transaction commits); False if one is already under way."""
    check_trained(candidate)
    with transaction.atomic():
        candidate = Candidate.objects.select_for_update().get(pk=candidate.pk)
        if _busy(candidate):
            return False
        _update(
            candidate,
            export_status=ExportStatus.QUEUED,
            export_report=None,
            export_requested=timezone.now(),
            export_finished=None,
            # A new request: its own lost attempts are counted from zero.
            export_attempts=0,
            export_lease_expires=None,
        )
        leases.enqueue_on_commit(VERIFICATION, candidate.pk)
    return True


@dataclass(frozen=True)
class VerificationOutcome:
    """How a verification ended: the stored status and report, and the engine's result if it ran."""

    status: str
    report: dict[str, Any]
    verification: ExportVerification | None = None

    @property
    def error(self) -> str | None:
        return self.report.get("error")


def status_of(verification: ExportVerification) -> str:
    """passed; failed if any step failed; else unavailable (tools missing, unsupported core)."""
    if verification.passed:
        return ExportStatus.PASSED
    if any(step.status == FAILED for step in verification.steps):
        return ExportStatus.FAILED
    if any(step.status == UNAVAILABLE for step in verification.steps):
        return ExportStatus.UNAVAILABLE
    return ExportStatus.FAILED


def verify(
    candidate: Candidate,
    *,
    workdir: str | Path | None = None,
    progress: Callable[[StepResult], None] | None = None,
    n_inputs: int = VERIFY_INPUTS,
) -> VerificationOutcome:
    """Verify the candidate's export now, storing progress and the result on it (task and command).

    Never raises for a candidate that cannot be verified: the reason becomes a failed (or, for
    missing tools, unavailable) outcome with an ``error`` in its report.
    """
    target = target_for(candidate.run)
    base = {"target": target.to_json(), "name": c_name(candidate)}
    steps: dict[str, dict[str, Any]] = {}

    def on_step(step: StepResult) -> None:
        steps[step.key] = step.to_json()
        _update(candidate, export_report={**base, "steps": list(steps.values())})
        if progress is not None:
            progress(step)

    _update(candidate, export_status=ExportStatus.RUNNING, export_report=base, export_finished=None)
    try:
        outcome = _run_verification(candidate, target, base, workdir, on_step, n_inputs)
    except Exception as exc:
        # Stored rather than raised: a verification must never stay "running".
        logger.exception("verification of candidate %s crashed", candidate.pk)
        outcome = VerificationOutcome(ExportStatus.FAILED, {**base, "error": f"{type(exc).__name__}: {exc}"})
    _update(
        candidate, export_status=outcome.status, export_report=outcome.report, export_finished=timezone.now()
    )
    return outcome


def _run_verification(
    candidate: Candidate,
    target: Target,
    base: dict[str, Any],
    workdir: str | Path | None,
    on_step: Callable[[StepResult], None],
    n_inputs: int,
) -> VerificationOutcome:
    try:
        qm = quant_model_for(candidate, with_accuracy=True)
        dataset, _ = _dataset_and_fidelity(candidate.run)
    except ExportUnavailable as exc:
        return VerificationOutcome(ExportStatus.FAILED, {**base, "error": str(exc)})
    result = verify_export(
        qm,
        c_name(candidate),
        core=target.core,
        flash_limit_bytes=target.flash_bytes,
        sram_limit_bytes=target.sram_bytes,
        clock_mhz=target.clock_mhz,
        test_x=dataset.x_test,
        test_y=dataset.y_test,
        n_inputs=n_inputs,
        workdir=workdir,
        progress=on_step,
    )
    return VerificationOutcome(status_of(result), {**base, **result.to_json()}, result)


def verify_queued(candidate_id: int) -> None:
    """The task's entry: verify a candidate whose verification is queued (or was interrupted).

    Verification is deterministic (same model, same inputs, same report), so the rare
    duplicate after a lease ran out only writes the same report again.
    """
    with transaction.atomic():
        candidate = (
            Candidate.objects.select_for_update(of=("self",))
            .select_related("run", "run__profile")
            .filter(pk=candidate_id)
            .first()
        )
        if candidate is None:
            logger.info("candidate %s is gone; nothing to verify", candidate_id)
            return
        if not leases.take(VERIFICATION, candidate):
            logger.info(
                "candidate %s: verification is %s, not free to take; skipped",
                candidate_id,
                candidate.export_status,
            )
            return
    with leases.Heartbeat(VERIFICATION, candidate.pk, candidate.export_attempts):
        verify(candidate)


def _give_up(candidate: Candidate, reason: str) -> None:
    """The reaper's verdict on a verification whose worker was lost too often."""
    report = {**(candidate.export_report or {}), "error": f"verification stopped: {reason}"}
    _update(
        candidate,
        export_status=ExportStatus.FAILED,
        export_report=report,
        export_finished=timezone.now(),
        export_lease_expires=None,
    )


VERIFICATION = leases.register(
    leases.WorkKind(
        name="verification",
        model=Candidate,
        send=lambda pk: queue.verify_export(pk),
        status_field="export_status",
        queued=ExportStatus.QUEUED,
        running=ExportStatus.RUNNING,
        attempts_field="export_attempts",
        lease_field="export_lease_expires",
        enqueued_field="export_enqueued_at",
        give_up=_give_up,
        on_requeued=lambda c: events.candidate_changed(c),
    )
)


def missing_tools() -> list[str]:
    """The verification's tools missing on this machine (the web server's view)."""
    return toolchain.missing_tools()


INSTALL_COMMAND = APT_COMMAND
