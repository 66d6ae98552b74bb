"""A standalone pruning job runs on the real Celery worker and yields a smaller, downloadable candidate.

The worker, broker and channel layer come from tests/integration/conftest.py.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from searches import queue as task_queue
from searches import tasks
from searches.engine.space.arch import from_json
from searches.engine.training.train import Fidelity
from searches.models import Candidate, PruningJob
from searches.services import pruning, runs
from tests.integration.conftest import send_task, tail

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_S = 120


def _trained_candidate(owner: Any) -> Candidate:
    dataset = runs.get_dataset("digits")
    config = runs.make_config(
        dataset,
        runs.limits_for(None, sram_kb=8, flash_kb=32),
        budget=1,
        population=2,
        fidelity=Fidelity(epochs=2, train_subset=600),
    )
    run = runs.create_run(owner, "digits", config)
    runs.run_in_process(run)
    return run.candidates.get(status=Candidate.Status.DONE)


def test_a_pruning_job_runs_on_the_worker(
    user,
    worker: tuple[subprocess.Popen, Path],
    redis_url: str,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    process, log_path = worker
    settings.MEDIA_ROOT = log_path.parent / "data" / "media"  # the worker's media folder
    source = _trained_candidate(user)
    # Queue on the worker's private broker rather than the test process's own setting.
    monkeypatch.setattr(task_queue, "prune", lambda job_id: None)
    job = pruning.start_pruning(source, target_sparsity=0.5, epochs=2)

    send_task(redis_url, tasks.prune_candidate, job.pk)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        job.refresh_from_db()
        if not job.is_active:
            break
        time.sleep(0.5)

    assert job.status == PruningJob.Status.DONE, (
        f"job is {job.status} {job.error!r}; worker log:\n{tail(log_path)}"
    )
    assert [p["epoch"] for p in job.progress][-1] == 2  # progress was stored epoch by epoch
    pruned = job.result_candidate
    assert pruned is not None and pruned.parent_id == source.pk and pruned.run_id == source.run_id
    assert "pruned from" in pruned.mutation
    for field in ("peak_sram_bytes", "flash_bytes", "macs", "params"):
        assert getattr(pruned, field) <= getattr(source, field), field
    assert from_json(pruned.architecture) != from_json(source.architecture)
    assert pruned.int8_model and pruned.int8_test_accuracy is not None
