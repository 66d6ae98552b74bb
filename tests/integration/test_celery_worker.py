"""A real Celery worker runs a real search from PostgreSQL, and its events reach us through Redis.

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
from searches.engine.training.train import Fidelity
from searches.models import Candidate, SearchRun
from searches.services import runs
from tests.integration.conftest import send_task, tail, unpacked

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_S = 120


def _tiny_run(owner: Any) -> SearchRun:
    dataset = runs.get_dataset("digits")
    limits = runs.limits_for(None, sram_kb=2, flash_kb=4)
    config = runs.make_config(dataset, limits, budget=3, population=2, fidelity=Fidelity(epochs=1))
    run = runs.create_run(owner, "digits", config)
    run.config = {**run.config, "parallel": 2}
    run.save(update_fields=["config"])
    return run


def test_a_worker_runs_a_search_and_announces_it(
    user, worker: tuple[subprocess.Popen, Path], redis_url: str, redis_channel_layer: Any
) -> None:
    process, log_path = worker
    run = _tiny_run(user)
    layer = redis_channel_layer

    def start() -> None:
        send_task(redis_url, tasks.start_run_task, run.pk)

    async def watch() -> list[dict[str, Any]]:
        """Subscribe, start the run, collect its messages until it says it is over."""
        channel = await layer.new_channel()
        await layer.group_add(events.group_name(run.pk), channel)
        await sync_to_async(start)()
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
    trained = list(run.candidates.filter(status=Candidate.Status.DONE))
    assert run.evaluated == 3 and len(trained) == 3
    media = Path(log_path.parent / "data" / "media")
    for candidate in trained:
        assert 0.0 <= candidate.val_accuracy <= 1.0 and (media / candidate.weights.name).is_file()

    # The dashboard's view of the run, rebuilt from the messages alone, matches the database.
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs)) and seqs[-1] == run.seq
    runs_seen = [m["run"]["status"] for m in messages if m["type"] == "run"]
    assert runs_seen[0] == "running" and runs_seen[-1] == "done"
    latest: dict[int, dict[str, Any]] = {}
    for message in messages:
        for row in message.get("candidates", [message.get("candidate")]):
            if row is not None:
                latest[row["id"]] = row
    for candidate in run.candidates.all():
        row = latest[candidate.pk]
        assert (row["status"], row["on_pareto"], row["val_accuracy"]) == (
            candidate.status,
            candidate.on_pareto,
            candidate.val_accuracy,
        )


def test_a_worker_runs_an_asha_search_to_its_top_rung(
    user, worker: tuple[subprocess.Popen, Path], redis_url: str
) -> None:
    process, log_path = worker
    dataset = runs.get_dataset("digits")
    config = runs.make_config(
        dataset,
        runs.limits_for(None, sram_kb=2, flash_kb=4),
        budget=4,
        population=2,
        fidelity=Fidelity(epochs=1),
        fidelity_schedule="asha",
        asha_eta=2,
        asha_max_rung=2,
        error_objective="int8",
    )
    run = runs.create_run(user, "digits", config)
    run.config = {**run.config, "parallel": 2}
    run.save(update_fields=["config"])

    send_task(redis_url, tasks.start_run_task, run.pk)
    deadline = time.monotonic() + 2 * TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        run.refresh_from_db()
        if run.status not in ("pending", "running"):
            break
        time.sleep(1)

    assert run.status == SearchRun.Status.DONE, f"run is {run.status} {run.error!r}:\n{tail(log_path)}"
    rows = list(run.candidates.order_by("index"))
    assert run.evaluated == 4 and all(c.status == Candidate.Status.DONE for c in rows)
    # Four results at rung 0, eta 2: at least two promoted, the best of those to rung 2.
    assert sum(c.rung >= 1 for c in rows) >= 2 and any(c.rung == 2 for c in rows)
    media = Path(log_path.parent / "data" / "media")
    for c in rows:
        assert [r["rung"] for r in c.rung_results] == list(range(c.rung + 1))
        assert [r["epochs"] for r in c.rung_results] == [2**k for k in range(c.rung + 1)]
        assert (media / c.weights.name).is_file() and (media / c.int8_model.name).is_file()
