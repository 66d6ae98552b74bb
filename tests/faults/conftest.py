"""Real processes to break: a private redis-server on a free port and Celery workers of our own.

Each test starts its own ``redis-server`` (no persistence: a stop loses the queue, the worst
case) and its own workers on the test database (PostgreSQL: ``DATABASE_URL``, as for
tests/integration), kills only those PIDs, and restarts them as a supervisor would.  Leases,
the reaper and resends run on short intervals set through the workers' environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nasweb.celery import app as celery_app
from tests._processes import REDIS_SERVER, RedisServer, Worker, free_port, wait_for
from tests.integration.conftest import database_url  # noqa: F401 - a fixture used here

__all__ = ["Cluster", "free_port", "wait_for"]

# Short intervals so that a fault costs seconds, not the production 30 s lease.
LIVENESS_ENV = {
    "NASWEB_LEASE_SECONDS": "4",
    "NASWEB_REAP_SECONDS": "1",
    "NASWEB_RESEND_SECONDS": "60",
    "NASWEB_MAX_ATTEMPTS": "3",
}


class Cluster:
    """The private Redis, the workers started so far, and the environment they share."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.skip(f"needs {REDIS_SERVER}")
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path)
        self.env = {
            **os.environ,
            **LIVENESS_ENV,
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": db_url,
            "NASWEB_DATA_DIR": str(tmp_path / "data"),
            "DJANGO_SETTINGS_MODULE": "nasweb.settings",
        }
        self.workers: list[Worker] = []

    def start_worker(self, pool: str = "solo") -> Worker:
        name = f"worker{len(self.workers)}"
        worker = Worker(name, self.env, self.tmp_path / f"{name}.log", pool)
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log()}" for w in self.workers)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path, settings: Any) -> Iterator[Cluster]:
    """A running private Redis (this process's broker too) and no worker yet."""
    cluster = Cluster(tmp_path, request.getfixturevalue("database_url"))
    cluster.redis.start()
    settings.NASWEB_LEASE_SECONDS = int(LIVENESS_ENV["NASWEB_LEASE_SECONDS"])
    previous = celery_app.conf.broker_url
    _use_broker(cluster.redis.url)
    try:
        yield cluster
    finally:
        for worker in cluster.workers:
            worker.stop()
        cluster.redis.kill()
        _use_broker(previous)


def _use_broker(url: str) -> None:
    """Point this process's Celery app (searches.queue sends with it) at ``url``."""
    celery_app.conf.broker_url = url
    # Both pools hold connections to the previous broker.
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
