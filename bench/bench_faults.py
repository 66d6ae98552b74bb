"""Faults against a live search: how long until it makes progress again, and until it ends.

Usage::

    python bench/bench_faults.py [--budget 4] [--epochs 5] [--outage 10] [--no-docs]

Real processes on this machine: a private ``redis-server`` on a free port, Celery workers on a
scratch SQLite database (WAL; the workers and this process share it), a digits search run of
``--budget`` candidates, two at a time.  Liveness runs on the production defaults
(``NASWEB_LEASE_SECONDS`` 30, ``NASWEB_REAP_SECONDS`` 10, ``NASWEB_RESEND_SECONDS`` 60) unless
they are set in the environment.  For each fault:

- *worker SIGKILL*: the worker and its pool are SIGKILLed while a candidate trains; a new
  worker is started at once (what a supervisor does), its start-up included;
- *pool child SIGKILL*: only the prefork pool's child (what the OOM killer picks);
- *Redis restart*: Redis SIGKILLed (no persistence: its queue is lost) while a candidate
  trains, started again after ``--outage`` seconds;
- *broker down at creation*: Redis is down when the run is created, back after ``--outage``.

Measured from the fault (for the last one, from the run's creation): the killed candidate
back in the queue, the next evaluation finished ("progress again") and the run's end, against
the same run without a fault measured from the same moment (a candidate starting to train, or
the creation).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _live
from bench._report import replace_section
from tests._processes import RedisServer, Worker, wait_for

RUN_TIMEOUT_S = 900


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data_dir = Path(tempfile.mkdtemp(prefix="nasweb-faults-"))
        self.redis = RedisServer(self.data_dir)
        self.redis.start()
        os.environ.pop("DATABASE_URL", None)
        os.environ.update(
            DJANGO_SETTINGS_MODULE="nasweb.settings",
            NASWEB_DATA_DIR=str(self.data_dir),
            REDIS_URL=self.redis.url,
            NASWEB_LOG_LEVEL="INFO",
        )
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.owner = get_user_model().objects.create_user("faults", password="faults-password-1")
        self.workers: list[Worker] = []

    def worker(self, pool: str = "solo") -> Worker:
        name = f"w{len(self.workers)}"
        worker = Worker(name, dict(os.environ), self.data_dir / f"{name}.log", pool)
        self.workers.append(worker)
        wait_for(lambda: " ready." in worker.log(400), 180, "a worker to be ready", every=0.2)
        return worker

    def run(self) -> Any:
        from searches.engine.training.train import Fidelity
        from searches.services import runs

        dataset = runs.get_dataset("digits")
        limits = runs.limits_for(None, sram_kb=2, flash_kb=4)
        fidelity = Fidelity(epochs=self.args.epochs)
        config = runs.make_config(dataset, limits, budget=self.args.budget, population=2, fidelity=fidelity)
        run = runs.create_run(self.owner, "digits", config)
        run.config = {**run.config, "parallel": 2}
        run.save(update_fields=["config"])
        return run

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def close(self) -> None:
        self.stop_workers()
        self.redis.kill()
        _live.cleanup(self.data_dir)


def _launch(run: Any) -> None:
    from django.db import transaction

    from searches.services import execution

    with transaction.atomic():
        execution.submit_run(run)


def _evaluated(run: Any) -> int:
    from searches.models import SearchRun

    return int(SearchRun.objects.values_list("evaluated", flat=True).get(pk=run.pk))


def _training(run: Any) -> bool:
    return run.candidates.filter(status="running").exists()


def _over(run: Any) -> bool:
    from searches.models import SearchRun

    return not SearchRun.objects.get(pk=run.pk).is_active


def _watch(t0: float, conditions: dict[str, Any]) -> dict[str, float]:
    """Seconds from ``t0`` until each condition first held; returns once all have."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(seen) < len(conditions):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; so far {seen}")
        for name, condition in conditions.items():
            if name not in seen and condition():
                seen[name] = time.monotonic() - t0
        time.sleep(0.05)
    return seen


def _measure(bench: Bench, fault: str) -> dict[str, Any]:
    from searches.models import Candidate, SearchRun

    pool = "prefork" if fault == "child" else "solo"
    worker = bench.worker(pool)
    run = bench.run()
    victim = None
    if fault == "at_create":
        bench.redis.kill()
        t0 = time.monotonic()
        _launch(run)
        time.sleep(bench.args.outage)
        bench.redis.start()
    else:
        _launch(run)
        if fault == "none_at_create":
            t0 = time.monotonic()
        wait_for(lambda: _training(run), 180, "a candidate in training", every=0.05)
        if fault != "none_at_create":
            t0 = time.monotonic()
        victim = run.candidates.filter(status="running").first()
        if fault == "worker":
            worker.kill()
            bench.worker(pool)
        elif fault == "child":
            (child,) = worker.children()
            os.kill(child, signal.SIGKILL)
        elif fault == "redis":
            bench.redis.kill()
            time.sleep(bench.args.outage)
            bench.redis.start()
    before = _evaluated(run) if fault not in ("at_create", "none_at_create") else 0
    conditions = {"progress": lambda: _evaluated(run) > before, "end": lambda: _over(run)}
    if fault in ("worker", "child") and victim is not None:
        # The lost candidate back in the queue (or already taken again).
        lost = Candidate.objects.filter(pk=victim.pk)
        conditions["requeued"] = lambda: lost.exclude(status="running", attempts=1).exists()
    times = _watch(t0, conditions)
    run.refresh_from_db()
    indexes = list(run.candidates.values_list("index", flat=True))
    done = run.candidates.filter(status="done").count()
    ok = run.status == SearchRun.Status.DONE and done == len(set(indexes)) == len(indexes) == run.budget
    bench.stop_workers()
    attempts = max(run.candidates.values_list("attempts", flat=True))
    return {**times, "ok": ok, "attempts": attempts}


FAULTS = [
    ("none", "no fault (from a candidate starting to train)"),
    ("worker", "worker SIGKILL (supervisor starts a new one)"),
    ("child", "pool child SIGKILL (prefork, concurrency 1)"),
    ("redis", "Redis SIGKILLed, back after the outage"),
    ("none_at_create", "no fault (from the run's creation)"),
    ("at_create", "broker down at creation, back after the outage"),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    bench = Bench(args)
    from django.conf import settings

    results: dict[str, dict[str, float]] = {}
    try:
        for key, label in FAULTS:
            results[key] = _measure(bench, key)
            print(label, results[key], flush=True)
    finally:
        bench.close()

    def row(key: str, label: str, base: str) -> str:
        r, b = results[key], results[base]
        verdict = "complete, exactly its candidates" if r["ok"] else "**NOT complete**"
        requeued = f"{r['requeued']:.1f} s" if "requeued" in r else "-"
        return (
            f"| {label} | {requeued} | {r['progress']:.1f} s ({r['progress'] - b['progress']:+.1f}) |"
            f" {r['end']:.1f} s ({r['end'] - b['end']:+.1f}) | {int(r['attempts'])} | {verdict} |"
        )

    body = "\n".join(
        [
            f"Command: `python bench/bench_faults.py --budget {args.budget} --epochs {args.epochs}"
            f" --outage {args.outage:g}`",
            f"on {_live.machine()}; {_live.load_note()}.",
            f"Liveness settings: lease {settings.NASWEB_LEASE_SECONDS} s (renewed every third),"
            f" reaper every {settings.NASWEB_REAP_SECONDS} s,"
            f" resend after {settings.NASWEB_RESEND_SECONDS} s;"
            f" a digits run of {args.budget} candidates ({args.epochs} epochs), two at a time, one worker.",
            "",
            "| fault | lost candidate back in the queue | to progress again (vs no fault) |"
            " to the run's end (vs no fault) | most attempts of a candidate | outcome |",
            "|---|---|---|---|---|---|",
            row("none", FAULTS[0][1], "none"),
            row("worker", FAULTS[1][1], "none"),
            row("child", FAULTS[2][1], "none"),
            row("redis", FAULTS[3][1], "none"),
            row("none_at_create", FAULTS[4][1], "none_at_create"),
            row("at_create", FAULTS[5][1], "none_at_create"),
            "",
            "Progress = the next evaluation finished after the fault.  A killed worker's candidate",
            "waits for its lease to run out (up to the lease, plus up to one reaper pass) and trains",
            "again from scratch, on the new worker (whose start-up, importing torch, is included).",
            "Killing Redis loses its queue: the training in flight finishes and is told (its live",
            "events are retried, then dropped; dashboards resync), the next candidates are sent once",
            "Redis is back, and messages lost with the queue are sent again by the reaper after the",
            "resend delay.  A run created while the broker is down is saved (no 500) and started by",
            "the reaper's next pass after the broker is back.",
        ]
    )
    print(body)
    if not args.no_docs:
        replace_section(ROOT / "docs" / "benchmarks.md", "Faults during a search", body)


if __name__ == "__main__":
    main()
