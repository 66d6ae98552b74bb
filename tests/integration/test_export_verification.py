"""A digits candidate trained by a real worker is verified by that worker, QEMU included.

The worker trains a two-candidate search (storing each int8 model), then runs the
``verify_export_task`` queued by the same service the Verify button calls; the open page's
view of it arrives as candidate events on the run's channel group.  A candidate whose weights
cannot be read ends failed with the reason, writing nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from searches import events, tasks
from searches import queue as task_queue
from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.toolchain import APT_COMMAND, missing_tools
from searches.engine.training.train import Fidelity
from searches.models import Candidate, SearchRun
from searches.services import export, runs
from tests.integration.conftest import send_task, tail, unpacked
from tests.web.factories import make_profile

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        bool(missing_tools()),
        reason=f"needs the Cortex-M toolchain and QEMU: {APT_COMMAND}",
    ),
]

TIMEOUT_S = 180
FINISHED = {"passed", "failed", "unavailable"}


def _trained_run(owner: Any, redis_url: str, process: subprocess.Popen, log_path: Path) -> SearchRun:
    """A digits search of two candidates on an M4F board, run to the end by the worker."""
    profile = make_profile(owner, core="cortex-m4f", clock_mhz=80, sram_kb=64, flash_kb=256)
    dataset = runs.get_dataset("digits")
    config = runs.make_config(
        dataset, runs.limits_for(profile), budget=2, population=2, fidelity=Fidelity(epochs=2)
    )
    run = runs.create_run(owner, "digits", config, profile=profile)
    run.config = {**run.config, "parallel": 1}
    run.save(update_fields=["config"])
    send_task(redis_url, tasks.start_run_task, run.pk)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        run.refresh_from_db()
        if not run.is_active:
            break
        time.sleep(0.5)
    assert run.status == SearchRun.Status.DONE, (
        f"run is {run.status} {run.error!r}; worker log:\n{tail(log_path)}"
    )
    return run


def _verify_on_worker(
    candidate: Candidate,
    redis_url: str,
    layer: Any,
    process: subprocess.Popen,
    monkeypatch: pytest.MonkeyPatch,
) -> list[dict[str, Any]]:
    """Ask for a verification as the page does; collect the candidate's events until it finishes."""
    monkeypatch.setattr(
        task_queue, "verify_export", lambda pk: send_task(redis_url, tasks.verify_export_task, pk)
    )

    async def watch() -> list[dict[str, Any]]:
        channel = await layer.new_channel()
        await layer.group_add(events.group_name(candidate.run_id), channel)
        # A task for a candidate that no longer exists first: the worker must shrug it off.
        await sync_to_async(send_task)(redis_url, tasks.verify_export_task, 987654321)
        assert await sync_to_async(export.request_verification)(candidate)
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                event = await asyncio.wait_for(layer.receive(channel), timeout=2)
            except TimeoutError:
                continue
            for message in unpacked(event):
                if message["type"] == "candidate" and message["candidate"]["id"] == candidate.pk:
                    seen.append(message["candidate"])
            if seen and seen[-1]["export_status"] in FINISHED:
                break
        return seen

    return async_to_sync(watch)()


def test_a_worker_verifies_a_trained_candidate_under_qemu(
    user, worker, redis_url: str, redis_channel_layer: Any, monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    process, log_path = worker
    media = settings.MEDIA_ROOT = log_path.parent / "data" / "media"
    run = _trained_run(user, redis_url, process, log_path)
    candidate = run.candidates.filter(status=Candidate.Status.DONE).order_by("-val_accuracy").first()
    assert candidate is not None
    # The worker quantised it right after training.
    assert candidate.int8_model and (media / candidate.int8_model.name).is_file()
    assert candidate.int8_val_accuracy is not None and candidate.int8_test_accuracy is not None
    QuantModel.load(media / candidate.int8_model.name)

    started = time.monotonic()
    seen = _verify_on_worker(candidate, redis_url, redis_channel_layer, process, monkeypatch)
    elapsed = time.monotonic() - started

    candidate.refresh_from_db()
    report = candidate.export_report or {}
    assert candidate.export_status == "passed", (
        f"{candidate.export_status} after {elapsed:.0f} s: {report.get('summary') or report.get('error')}\n"
        f"worker log:\n{tail(log_path)}"
    )
    statuses = [row["export_status"] for row in seen]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "passed"
    steps = {step["key"]: step for step in report["steps"]}
    assert [s["status"] for s in steps.values()] == ["passed"] * 4
    host, arm, qemu, insn = (steps[k]["numbers"] for k in ("host", "arm_build", "qemu", "instructions"))
    assert host["output_bytes_differing"] == 0 and host["c_accuracy"] == host["python_int8_accuracy"]
    assert host["c_accuracy"] == candidate.int8_test_accuracy  # the same test split, the same model
    # The downloaded numbers are the dashboard's numbers.
    assert arm["model_array_bytes"] == arm["predicted_flash_bytes"] == candidate.flash_bytes
    assert arm["arena_bytes"] == candidate.peak_sram_bytes
    assert arm["flash_limit_bytes"] == 256 * 1024 and arm["sram_limit_bytes"] == 64 * 1024
    assert arm["flash_bytes"] <= arm["flash_limit_bytes"] and arm["ram_bytes"] <= arm["sram_limit_bytes"]
    assert qemu["machine"] == "mps2-an386" and qemu["inputs"] == export.VERIFY_INPUTS
    assert insn["instructions_per_inference"] > candidate.macs and insn["estimated_latency_ms"] > 0
    assert "ERROR" not in log_path.read_text()
    print(f"verification on the worker: {elapsed:.1f} s (engine {report['seconds']:.1f} s)")


def test_a_candidate_with_unreadable_weights_fails_with_the_reason(
    user, worker, redis_url: str, redis_channel_layer: Any, monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    process, log_path = worker
    settings.MEDIA_ROOT = log_path.parent / "data" / "media"
    run = _trained_run(user, redis_url, process, log_path)
    candidate = run.candidates.filter(status=Candidate.Status.DONE).first()
    assert candidate is not None
    # Trained before int8 export existed, and its weights file damaged since.
    int8 = settings.MEDIA_ROOT / candidate.int8_model.name
    int8.unlink()
    Candidate.objects.filter(pk=candidate.pk).update(
        int8_model="", int8_val_accuracy=None, int8_test_accuracy=None
    )
    (settings.MEDIA_ROOT / candidate.weights.name).write_bytes(b"not a torch file")
    candidate.refresh_from_db()

    seen = _verify_on_worker(candidate, redis_url, redis_channel_layer, process, monkeypatch)

    candidate.refresh_from_db()
    assert seen[-1]["export_status"] == candidate.export_status == "failed"
    error = candidate.export_report["error"]
    assert error.startswith(f"the weights file {candidate.weights.name} cannot be read"), error
    assert not candidate.int8_model and not int8.exists()  # nothing half-written
    assert not list(int8.parent.glob(f".{int8.name}.*"))
