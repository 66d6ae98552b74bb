"""A MemNAS loop on digits completes through Celery, shown by the same dashboard events as evolution.

The worker, broker and channel layer come from tests/integration/conftest.py.
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
from searches.engine.strategies.registry import from_state_json
from searches.engine.training.train import Fidelity
from searches.models import Candidate, SearchRun
from searches.services import runs
from tests.integration.conftest import send_task, tail, unpacked

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_S = 120


def _memnas_run(owner: Any) -> SearchRun:
    dataset = runs.get_dataset("digits")
    limits = runs.limits_for(None, sram_kb=2, flash_kb=4)
    config = runs.make_config(
        dataset,
        limits,
        budget=6,
        strategy="memnas",
        strategy_options={"lambda": 0.5, "top_k": 2},
        fidelity=Fidelity(epochs=1, train_subset=300),
    )
    run = runs.create_run(owner, "digits", config)
    # Two slots for rounds of two children: between rounds the run waits with nothing queued.
    run.config = {**run.config, "parallel": 2}
    run.save(update_fields=["config"])
    return run


def test_a_memnas_loop_on_digits_completes_through_celery(
    user, worker: tuple[subprocess.Popen, Path], redis_url: str, redis_channel_layer: Any
) -> None:
    process, log_path = worker
    run = _memnas_run(user)
    layer = redis_channel_layer

    async def watch() -> list[dict[str, Any]]:
        channel = await layer.new_channel()
        await layer.group_add(events.group_name(run.pk), channel)
        await sync_to_async(send_task)(redis_url, tasks.start_run_task, run.pk)
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                event = await asyncio.wait_for(layer.receive(channel), timeout=2)
            except TimeoutError:
                continue
            messages.extend(unpacked(event))
            if any(m["type"] == "run" and m["run"]["status"] not in ("pending", "running") for m in messages):
                break
        return messages

    started = time.monotonic()
    messages = async_to_sync(watch)()
    elapsed = time.monotonic() - started

    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE, (
        f"run is {run.status} {run.error!r} after {elapsed:.0f} s; worker log:\n{tail(log_path)}"
    )
    trained = list(run.candidates.filter(status=Candidate.Status.DONE).order_by("index"))
    assert run.strategy == "memnas" and run.evaluated == 6 and len(trained) == 6
    assert all(0.0 <= c.val_accuracy <= 1.0 for c in trained)
    # Past the seed backbone, every trained candidate grows or trims a backbone evaluated before it.
    assert trained[0].parent_id is None
    assert all(c.parent_id is not None and c.parent.index < c.index for c in trained[1:])
    strategy = from_state_json(run.state)
    assert strategy.rounds >= 2 and strategy.backbone is not None
    assert {c.index for c in run.candidates.filter(on_pareto=True)} == {m.id for m in strategy.archive}

    # The dashboard's messages end with the run done and every candidate in its final state.
    runs_seen = [m["run"]["status"] for m in messages if m["type"] == "run"]
    assert runs_seen[0] == "running" and runs_seen[-1] == "done"
    latest: dict[int, dict[str, Any]] = {}
    for message in messages:
        for row in message.get("candidates", [message.get("candidate")]):
            if row is not None:
                latest[row["id"]] = row
    for candidate in run.candidates.all():
        assert (latest[candidate.pk]["status"], latest[candidate.pk]["val_accuracy"]) == (
            candidate.status,
            candidate.val_accuracy,
        )
