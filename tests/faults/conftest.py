"""Real processes to break: a private redis-server on a free port and Celery workers of our own.

Each test starts its own ``redis-server`` (no persistence: a stop loses the queue, the worst
case) and its own workers on the test database (PostgreSQL: ``DATABASE_URL``, as for
tests/integration), kills only those PIDs, and restarts them as a supervisor would.  Leases,
the reaper and resends run on short intervals set through the workers' environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from nasweb.celery import app as celery_app
from tests.integration.conftest import database_url  # noqa: F401 - a fixture used here

REPO = Path(__file__).resolve().parents[2]
REDIS_SERVER = "/usr/bin/redis-server"
# Short intervals so that a fault costs seconds, not the production 30 s lease.
LIVENESS_ENV = {
    "NASWEB_LEASE_SECONDS": "4",
    "NASWEB_REAP_SECONDS": "1",
    "NASWEB_RESEND_SECONDS": "8",
    "NASWEB_MAX_ATTEMPTS": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """A redis-server of our own on a fixed port, stopped and started again by the test."""

    def __init__(self, workdir: Path) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.skip(f"needs {REDIS_SERVER}")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.workdir)]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, "redis-server to answer")

    def kill(self) -> None:
        """SIGKILL: the server and everything in it (the queue) are gone."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class Worker:
    """``celery -A nasweb worker`` of our own; ``kill`` SIGKILLs it (and only it)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, pool: str = "solo") -> None:
        command = [sys.executable, "-m", "celery", "-A", "nasweb", "worker", "--loglevel", "info"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--pool", pool]
        if pool == "prefork":
            command += ["--concurrency", "1"]
        command += ["--hostname", f"{name}-{os.getpid()}@%h"]
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """The pool's child processes (prefork)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def kill(self) -> None:
        for child in self.children():
            os.kill(child, signal.SIGKILL)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Cluster:
    """The private Redis, the workers started so far, and the environment they share."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
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
