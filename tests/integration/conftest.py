"""A real Celery worker on the test database, with a private Redis database as broker and channel layer.

Needs a PostgreSQL ``DATABASE_URL`` (the worker must see the test database, which SQLite's
in-memory test database cannot give another process) and a Redis server (``REDIS_URL``, or
127.0.0.1:6379); scripts/test.sh sets both when this machine has them.  The broker and the
channel layer use Redis database 9, emptied first, so nothing else's queue is touched.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from celery import Task
from channels.layers import get_channel_layer
from django.db import connection

from nasweb.celery import app as celery_app
from tests._redis import private_redis_url

REPO = Path(__file__).resolve().parents[2]
REDIS_DB = 9
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


@contextlib.contextmanager
def worker_process(
    redis_url: str, database_url: str, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """``celery -A nasweb worker`` on ``database_url`` and ``redis_url`` with its own data folder."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "NASWEB_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "nasweb.settings",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "celery", "-A", "nasweb", "worker", *WORKER_OPTIONS]
    command += ["--hostname", f"nasweb-test-{os.getpid()}-{data_dir.name}@%h"]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def worker(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``celery -A nasweb worker`` on the test database and Redis database 9; its log in tmp_path.

    Its files (weights, int8 models) go under ``tmp_path / "data" / "media"``.
    """
    log_path = tmp_path / "worker.log"
    with worker_process(redis_url, database_url, tmp_path / "data", log_path) as process:
        yield process, log_path


@pytest.fixture
def redis_channel_layer(settings, redis_url: str) -> Any:
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    return get_channel_layer()


def send_task(redis_url: str, task: Task, *args: Any) -> None:
    """Queue ``task`` on the private broker (the test process's own broker setting may differ)."""
    with celery_app.connection_for_write(redis_url) as broker:
        task.apply_async(args=list(args), connection=broker)


def unpacked(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``searches.events`` messages in one group message (the publisher coalesces bursts)."""
    return list(event["messages"]) if "messages" in event else [event["message"]]


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
