"""Live-update latency: from a candidate's database commit to its point drawn in Chromium.

Usage::

    python bench/bench_live_latency.py [--updates 200] [--existing 100,2000,5000] [--no-docs] [--redis-db 13]

A real stack: daphne on a scratch SQLite database, the Redis channel layer (database 13 or
``--redis-db``, emptied first), a
headless Chromium logged in on the run's dashboard.  For each update this process inserts a
trained candidate and notes ``time.time()`` just before ``events.candidate_changed`` commits
the event's sequence number and sends it; the dashboard records when the point was drawn
(``window.nasweb.drawnAt``, epoch ms: ``performance.timeOrigin + performance.now()`` after the
Plotly promise resolved).  Same machine, same clock.  One update at a time, each waiting for
its point, so every number is one full trip: commit, Redis, daphne, websocket, redraw.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _live
from bench._report import replace_section

REDIS_DB = 13
GOAL_P95_MS = 250.0


def _insert_and_announce(run_id: int, index: int, rng: random.Random) -> tuple[int, float]:
    """Insert one trained candidate, announce it; return its id and the epoch ms before the commit."""
    from searches import events
    from searches.models import Candidate

    fields = _live.candidate_fields(rng, index)
    fields |= {
        "status": "done",
        "feasible": True,
        "val_accuracy": 0.9,
        "test_accuracy": 0.89,
        "reject_reason": "",
    }
    candidate = Candidate.objects.create(run_id=run_id, **fields)
    started = time.time() * 1000
    events.candidate_changed(candidate)
    return candidate.pk, started


def measure(base: str, existing: int, updates: int) -> tuple[list[float], list[float]]:
    run = _live.in_writer(_live.create_run, budget=existing + updates)
    _live.in_writer(_live.seed_candidates, run, existing)
    rng = random.Random(1)
    latencies: list[float] = []
    arrivals: list[float] = []
    with _live.browser_page(base) as page:
        page.goto(f"{base}/runs/{run.pk}/")
        page.wait_for_function(f"Object.keys(window.nasweb.drawnAt).length >= {existing}", timeout=60_000)
        page.wait_for_function("window.nasweb.live.state === 'live'")
        for i in range(updates):
            pk, started = _live.in_writer(_insert_and_announce, run.pk, existing + i, rng)
            page.wait_for_function(f"window.nasweb.drawnAt[{pk}] !== undefined", timeout=10_000, polling=5)
            drawn, received = page.evaluate(f"[window.nasweb.drawnAt[{pk}], window.nasweb.receivedAt[{pk}]]")
            latencies.append(drawn - started)
            arrivals.append(received - started)
            time.sleep(rng.uniform(0.01, 0.05))  # workers finish at irregular moments
    return latencies, arrivals


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": _live.percentile(latencies, 0.50),
        "p95": _live.percentile(latencies, 0.95),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument(
        "--existing", default="100,2000,5000", help="candidates already on the dashboard, per case"
    )
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--redis-db", type=int, default=REDIS_DB, help=f"Redis database to empty and use (default {REDIS_DB})"
    )
    args = parser.parse_args()

    redis_url = _live.redis_url(args.redis_db)
    data_dir = _live.setup_django(redis_url)
    rows = []
    try:
        with _live.daphne(data_dir, redis_url) as base:
            for existing in [int(n) for n in args.existing.split(",")]:
                latencies, arrivals = measure(base, existing, args.updates)
                stats, arrived = summary(latencies), summary(arrivals)
                rows.append((existing, stats, arrived))
                print(
                    f"{existing} existing: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stats.items()),
                    flush=True,
                )
                print(
                    "  of which commit -> websocket: "
                    + ", ".join(f"{k} {v:.1f} ms" for k, v in arrived.items())
                )
    finally:
        _live.cleanup(data_dir)

    table = [
        "| candidates already drawn | updates | p50 ms | p95 ms | max ms | mean ms | p95 ≤ 250 ms"
        " | of which commit → websocket p50 / p95 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for existing, s, arrived in rows:
        ok = "met" if s["p95"] <= GOAL_P95_MS else "**missed**"
        cells = [existing, args.updates, *(f"{s[k]:.1f}" for k in ("p50", "p95", "max", "mean")), ok]
        cells.append(f"{arrived['p50']:.1f} / {arrived['p95']:.1f}")
        table.append("| " + " | ".join(str(c) for c in cells) + " |")
    body = "\n".join(
        [
            "Command: `python bench/bench_live_latency.py"
            f" --updates {args.updates} --existing {args.existing}`",
            f"on {_live.machine()}; {_live.load_note()}.",
            "",
            "From the commit of a candidate's event (`events.candidate_changed`, timestamp taken just",
            "before it) to the candidate's point drawn on the dashboard (`window.nasweb.drawnAt`, after",
            "`Plotly.react` resolved): daphne, Redis channel layer, websocket, requestAnimationFrame",
            "redraw of both plots, table and progress.  One update at a time, 10-50 ms apart.",
            "The plots are `scattergl` (WebGL, software-rendered in headless Chromium).",
            "",
            *table,
        ]
    )
    print(body)
    if not args.no_docs:
        replace_section(ROOT / "docs" / "benchmarks.md", "Dashboard live-update latency", body)


if __name__ == "__main__":
    main()
