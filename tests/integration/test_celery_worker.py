"""A real Celery worker runs a real search from PostgreSQL, and its events reach us through Redis.

Needs a PostgreSQL ``DATABASE_URL`` (the worker must see the test database, which SQLite's
in-memory test database cannot give another process) and a Redis server (``REDIS_URL``, or
127.0.0.1:6379); scripts/test.sh sets both when this machine has them.  The broker and the
channel layer use Redis database 9, emptied first, so nothing else's queue is touched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from nasweb.celery import app as celery_app
from searches import events, tasks
from searches.engine.training import Fidelity
from searches.models import Candidate, SearchRun
from searches.services import runs
from tests._redis import private_redis_url

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]
REDIS_DB = 9
TIMEOUT_S = 120
WORKER_OPTIONS = ["--pool", "solo", "--loglevel", "info", "--without-gossip", "--without-mingle"]


@pytest.fixture
def redis_url() -> str:
    return private_redis_url(REDIS_DB)


@pytest.fixture
def database_url() -> str:
    """The test database as a URL another process can open."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL=postgres://... (scripts/test.sh does when one runs)")
    db = connection.settings_dict
    credentials = quote(db["USER"] or "")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"])
    return f"postgres://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{quote(db['NAME'])}"


@pytest.fixture
def worker(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``celery -A nasweb worker`` on the test database and Redis database 9; its log in tmp_path."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "NASWEB_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SETTINGS_MODULE": "nasweb.settings",
    }
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "nasweb", "worker", *WORKER_OPTIONS]
    command += ["--hostname", f"nasweb-test-{os.getpid()}@%h"]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process, log_path
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def redis_channel_layer(settings, redis_url: str) -> Any:
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    return get_channel_layer()


def _tiny_run(owner: Any) -> SearchRun:
    dataset = runs.get_dataset("digits")
    limits = runs.limits_for(None, sram_kb=2, flash_kb=4)
    config = runs.make_config(dataset, limits, budget=3, population=2, fidelity=Fidelity(epochs=1))
    run = runs.create_run(owner, "digits", config)
    run.config = {**run.config, "parallel": 2}
    run.save(update_fields=["config"])
    return run


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def test_a_worker_runs_a_search_and_announces_it(
    user, worker: tuple[subprocess.Popen, Path], redis_url: str, redis_channel_layer: Any
) -> None:
    process, log_path = worker
    run = _tiny_run(user)
    layer = redis_channel_layer

    def start() -> None:
        with celery_app.connection_for_write(redis_url) as broker:
            tasks.start_run_task.apply_async(args=[run.pk], connection=broker)

    async def watch() -> list[dict[str, Any]]:
        """Subscribe, start the run, collect its messages until it says it is over."""
        channel = await layer.new_channel()
        await layer.group_add(events.group_name(run.pk), channel)
        await sync_to_async(start)()
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                message = (await asyncio.wait_for(layer.receive(channel), timeout=2))["message"]
            except TimeoutError:
                continue
            messages.append(message)
            if message["type"] == "run" and message["run"]["status"] not in ("pending", "running"):
                break
        return messages

    started = time.monotonic()
    messages = async_to_sync(watch)()
    elapsed = time.monotonic() - started

    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE, (
        f"run is {run.status} {run.error!r} after {elapsed:.0f} s; worker log:\n{_tail(log_path)}"
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
