"""The live-update protocol's payloads and sequence numbers (searches.events)."""

from __future__ import annotations

import pytest

from searches import events
from searches.models import Candidate, SearchRun
from tests.web.factories import make_candidate, make_run

pytestmark = pytest.mark.django_db


def test_a_snapshot_row_is_the_candidates_own_payload(user):
    run = make_run(user)
    parent = make_candidate(run, 0, notes="first", on_pareto=True)
    make_candidate(run, 1, parent=parent, mutation="filters +3", int8_val_accuracy=0.87)
    make_candidate(
        run,
        2,
        parent=parent,
        status=Candidate.Status.REJECTED,
        feasible=False,
        val_accuracy=None,
        reject_reason="peak SRAM over the limit",
    )
    make_candidate(run, Candidate.PRUNED_INDEX_BASE + 4, parent=parent)
    make_candidate(run, Candidate.DEPLOY_INDEX_BASE + 2, parent=parent, for_deployment=True)

    rows = events.snapshot(run)["candidates"]

    candidates = Candidate.objects.filter(run=run).select_related("parent").order_by("index")
    assert rows == [events.candidate_payload(c) for c in candidates]
    assert [r["label"] for r in rows] == ["#0", "#1", "#2", "P4", "D2"]
    assert [r["parent"] for r in rows] == [None, 0, 0, 0, 0]
    assert [r["pruned"] for r in rows] == [False, False, False, True, False]
    assert rows[2]["error"] is None and rows[1]["error"] == pytest.approx(0.1)


def test_each_change_gets_the_next_sequence_number(user):
    run = make_run(user)
    first = make_candidate(run, 0)
    second = make_candidate(run, 1)
    before = SearchRun.objects.get(pk=run.pk).seq

    events.candidate_changed(first)
    events.candidate_changed(second)
    events.run_changed(run)

    assert SearchRun.objects.get(pk=run.pk).seq == before + 3
    seqs = dict(Candidate.objects.filter(run=run).values_list("index", "seq"))
    assert seqs == {0: before + 1, 1: before + 2}
    assert [r["index"] for r in events.snapshot(run, since=before + 1)["candidates"]] == [1]


def test_a_change_to_a_deleted_run_fails_clearly(user):
    run = make_run(user)
    candidate = make_candidate(run, 0)
    SearchRun.objects.filter(pk=run.pk).delete()

    with pytest.raises(SearchRun.DoesNotExist, match=f"no run {run.pk}"):
        events.candidate_changed(candidate)
