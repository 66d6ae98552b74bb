"""A large run, and bursts of live events on it, written straight into the live stack's database.

Run inside the stack's environment (``manage.py shell -c``), like seed_pages: events go out
through the real publisher and Redis channel layer, as a Celery worker's would.  Each function
prints what the test needs as JSON.
"""

from __future__ import annotations

import copy
import json

from django.contrib.auth import get_user_model
from django.urls import reverse

from searches import events
from searches.models import Candidate, SearchRun
from tests.web.factories import SMALL_ARCH, make_run

# Every STEP-th candidate is over the SRAM limit (rejected, never trained); the rest are trained.
STEP = 7


def _fields(index: int) -> dict[str, object]:
    """Distinct resources and accuracies, so that every candidate is its own point."""
    fields: dict[str, object] = {
        "index": index,
        "architecture": copy.deepcopy(SMALL_ARCH),
        "mutation": f"filters +{index % 5 + 1} in block 0",
        "peak_sram_bytes": 1_000 + 3 * index,
        "flash_bytes": 4_000 + 5 * index,
        "macs": 10_000 + 11 * index,
        "params": 4_000 + 5 * index,
        "latency_ms": 0.5 + index / 1_000,
    }
    if index % STEP == 0:
        return fields | {
            "status": Candidate.Status.REJECTED,
            "feasible": False,
            "reject_reason": "peak SRAM over the limit",
        }
    accuracy = 0.5 + 0.4 * ((index * 37) % 1_000) / 1_000
    return fields | {
        "status": Candidate.Status.DONE,
        "feasible": True,
        "val_accuracy": accuracy,
        "test_accuracy": accuracy - 0.01,
    }


def large_run(username: str, count: int) -> None:
    """A finished run of ``count`` candidates; prints its id and dashboard URL."""
    user = get_user_model().objects.get(username=username)
    run = make_run(user, name="large run", budget=count, evaluated=count, status=SearchRun.Status.DONE)
    rows = [Candidate(run=run, **_fields(i)) for i in range(count)]
    Candidate.objects.bulk_create(rows, batch_size=1_000)
    print(json.dumps({"run_id": run.pk, "url": reverse("run_detail", args=[run.pk])}))


def burst(run_id: int, first_index: int, count: int) -> None:
    """``count`` new candidates, each announced by its own event in its own transaction."""
    rows = [Candidate.objects.create(run_id=run_id, **_fields(first_index + i)) for i in range(count)]
    for candidate in rows:
        events.candidate_changed(candidate)
    assert events.publisher.flush(timeout=30), "the publisher did not hand every event to Redis"
    print(json.dumps({"ids": [c.pk for c in rows]}))
