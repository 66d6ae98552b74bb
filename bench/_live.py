"""Shared by the dashboard benchmarks: a real daphne + Redis server, a seeded run, a logged-in Chromium.

Call :func:`setup_django` first: it points this process at a scratch data directory and at the
same Redis database as the server, so that rows written here and events sent from here reach
the server's websocket consumers exactly as a Celery worker's would.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
USERNAME = "bench"
PASSWORD = "bench-password-123"
LIMITS = {"sram_bytes": 64 * 1024, "flash_bytes": 128 * 1024, "latency_ms": 50.0}


def setup_django(redis_url: str) -> Path:
    """Configure this process for a fresh scratch database; return the data directory."""
    data_dir = Path(tempfile.mkdtemp(prefix="nasweb-bench-"))
    os.environ.pop("DATABASE_URL", None)  # always the scratch SQLite database
    os.environ.update(
        DJANGO_SETTINGS_MODULE="nasweb.settings", NASWEB_DATA_DIR=str(data_dir), REDIS_URL=redis_url
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    get_user_model().objects.create_user(USERNAME, password=PASSWORD)
    return data_dir


# Playwright's sync API runs an event loop in the main thread, where Django refuses ORM calls
# and async_to_sync (events.py) refuses to run: database writes go through this one thread,
# like a Celery worker's.
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")


def in_writer(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in the database-writer thread and return its result."""
    return _writer.submit(fn, *args, **kwargs).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def daphne(data_dir: Path, redis_url: str) -> Iterator[str]:
    """A daphne server on a free port; yields its base URL."""
    port = free_port()
    env = os.environ | {
        "NASWEB_DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "NASWEB_LOG_LEVEL": "WARNING",
    }
    log = open(data_dir / "daphne.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "nasweb.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(base + "/accounts/login/", process)
        except RuntimeError:
            print((data_dir / "daphne.log").read_text()[-3000:], file=sys.stderr)
            raise
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def create_run(budget: int) -> Any:
    from django.contrib.auth import get_user_model

    from searches.models import SearchRun

    owner = get_user_model().objects.get(username=USERNAME)
    return SearchRun.objects.create(
        owner=owner,
        dataset="digits",
        budget=budget,
        status=SearchRun.Status.RUNNING,
        config={"limits": LIMITS},
        name="benchmark run",
    )


def candidate_fields(rng: random.Random, index: int) -> dict[str, Any]:
    """Plausible metrics: accuracy grows with memory, a few candidates over a limit."""
    sram = int(2048 * 2 ** rng.uniform(0, 5.5))
    flash = int(sram * rng.uniform(1.2, 3.0))
    macs = int(sram * rng.uniform(20, 120))
    over = sram > LIMITS["sram_bytes"] or flash > LIMITS["flash_bytes"]
    accuracy = min(0.99, 0.55 + 0.08 * (sram / 2048) ** 0.5 + rng.gauss(0, 0.03))
    fields: dict[str, Any] = {
        "index": index,
        "architecture": {},
        "mutation": f"conv block {rng.randrange(5)}: filters +{rng.choice([1, 3, 5])}",
        "peak_sram_bytes": sram,
        "flash_bytes": flash,
        "macs": macs,
        "params": flash,
        "latency_ms": macs / 80_000,
        "feasible": not over,
    }
    if over:
        fields |= {"status": "rejected", "reject_reason": "peak SRAM over the limit"}
    else:
        fields |= {"status": "done", "val_accuracy": accuracy, "test_accuracy": accuracy - 0.01}
    return fields


def seed_candidates(run: Any, n: int, seed: int = 0) -> None:
    from searches.engine.space.sampling import SpaceConfig, random_architecture
    from searches.models import Candidate

    rng = random.Random(seed)
    # Real (branchy) architectures, so that candidate pages have a memory plan to draw.
    space = SpaceConfig((8, 8, 1), 10, p_branch=0.5)
    archs = [random_architecture(rng, space).to_json() for _ in range(20)]
    rows = [
        Candidate(run=run, seq=0, **candidate_fields(rng, i) | {"architecture": archs[i % len(archs)]})
        for i in range(n)
    ]
    Candidate.objects.bulk_create(rows, batch_size=1000)


@contextmanager
def browser_page(base: str, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium page, logged in as the benchmark user."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(base + "/accounts/login/")
        page.fill("input[name=username]", USERNAME)
        page.fill("input[name=password]", PASSWORD)
        page.click("main form [type=submit]")
        page.wait_for_load_state()
        try:
            yield page
        finally:
            browser.close()


def cleanup(data_dir: Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def chromium_version() -> str:
    try:
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=20).stdout
    except OSError:
        return "Chromium (unknown version)"
    return out.strip() or "Chromium"


def machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores usable, CPython {platform.python_version()}, {chromium_version()} headless"


def load_note() -> str:
    """The machine's load when a benchmark ends: other work on the 2 cores skews every timing."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"1-minute load average {load:.1f} at the end of the run"


def redis_url(db: int) -> str:
    """REDIS_URL (or the local server) with database ``db``, emptied."""
    from urllib.parse import urlsplit, urlunsplit

    import redis

    base = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    url = urlunsplit(base._replace(path=f"/{db}"))
    redis.Redis.from_url(url).flushdb()
    return url
