"""A real nasweb for browser tests: daphne and a Celery worker on a scratch SQLite database and Redis.

Nothing is shared with the developer's data: the stack gets its own NASWEB_DATA_DIR (database,
weights) and Redis database ``REDIS_DB`` (broker and channel layer), emptied first.  Set
``NASWEB_E2E_REDIS_DB`` to another database number so that two checkouts can run their browser
tests at the same time without emptying each other's queues.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._redis import private_redis_url

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
REDIS_DB = 11  # unless NASWEB_E2E_REDIS_DB says otherwise
USERNAME = "e2e"
PASSWORD = "e2e-password-123"


@dataclass
class LiveStack:
    base_url: str
    data_dir: Path
    logs: dict[str, Path]

    def log_tail(self, chars: int = 3000) -> str:
        """The end of every server log, for assertion messages."""
        return "\n".join(f"--- {name} ---\n{path.read_text()[-chars:]}" for name, path in self.logs.items())


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does)")
    return CHROMIUM


@pytest.fixture(scope="session")
def e2e_redis_url() -> str:
    return private_redis_url(e2e_redis_db(os.environ.get("NASWEB_E2E_REDIS_DB", "")))


def e2e_redis_db(setting: str) -> int:
    """The Redis database for the browser tests: ``setting`` (NASWEB_E2E_REDIS_DB) or REDIS_DB."""
    if not setting.strip():
        return REDIS_DB
    try:
        db = int(setting)
    except ValueError:
        raise pytest.UsageError(
            f"NASWEB_E2E_REDIS_DB must be a Redis database number, not {setting!r}"
        ) from None
    if db < 0:
        raise pytest.UsageError(f"NASWEB_E2E_REDIS_DB must not be negative, not {db}")
    return db


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def live_stack(chromium: Path, e2e_redis_url: str, tmp_path: Path) -> Iterator[LiveStack]:
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "NASWEB_DATA_DIR": str(data_dir),
        "REDIS_URL": e2e_redis_url,
        "DJANGO_SETTINGS_MODULE": "nasweb.settings",
        "DEBUG": "1",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }
    env.pop("DATABASE_URL", None)  # always the scratch SQLite database
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True)
    subprocess.run(
        [*manage, "createsuperuser", "--noinput", "--username", USERNAME, "--email", "e2e@example.com"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    port = _free_port()
    logs = {"daphne": tmp_path / "daphne.log", "worker": tmp_path / "worker.log"}
    worker_options = ["--pool", "solo", "--loglevel", "info", "--without-gossip", "--without-mingle"]
    commands = {
        "daphne": ["daphne", "-b", "127.0.0.1", "-p", str(port), "nasweb.asgi:application"],
        "worker": [
            "celery",
            "-A",
            "nasweb",
            "worker",
            *worker_options,
            "--hostname",
            f"e2e-{os.getpid()}@%h",
        ],
    }
    processes = []
    try:
        for name, command in commands.items():
            log = logs[name].open("wb")
            command = [sys.executable, "-m", *command]
            processes.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
            log.close()  # the child holds its own descriptor
        stack = LiveStack(f"http://127.0.0.1:{port}", data_dir, logs)
        _wait_for_http(stack.base_url + "/accounts/login/", processes[0])
        yield stack
    finally:
        for process in processes:
            _stop(process)


@pytest.fixture
def page(chromium: Path, live_stack: LiveStack):
    """A headless Chromium page that fails the test on any JavaScript error."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            browser.close()
    assert not errors, f"JavaScript errors: {errors}"
