"""ASHA rungs and the int8 objective on the web side: workers, rows, resume, form, API and CLI.

Training is real (digits, one epoch at rung 0); the queue is played by the test as in
test_execution.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from django.core.management import CommandError, call_command
from django.urls import reverse

from searches import queue as task_queue
from searches.engine.strategies.base import EvalResult
from searches.engine.strategies.objectives import pareto_front
from searches.engine.training.train import Fidelity, train_and_evaluate
from searches.models import Candidate, SearchRun
from searches.services import artifacts, execution, files, runs
from tests.web.factories import make_profile, make_project
from tests.web.test_execution import Queue, _strategy
from tests.web.test_execution import queue as queue
from tests.web.test_views_runs import _form_data

pytestmark = pytest.mark.django_db


def _asha_run(owner: Any, *, budget: int = 6, parallel: int = 2, **overrides: Any) -> SearchRun:
    dataset = runs.get_dataset("digits")
    config = runs.make_config(
        dataset,
        runs.limits_for(None, sram_kb=2, flash_kb=4),
        budget=budget,
        seed=0,
        fidelity=Fidelity(epochs=1),
        **({"population": 3, "fidelity_schedule": "asha", "asha_eta": 3, "asha_max_rung": 1} | overrides),
    )
    run = runs.create_run(owner, "digits", config)
    run.config = {**run.config, "parallel": parallel}
    run.save(update_fields=["config"])
    return run


def _promoted(run: SearchRun) -> list[Candidate]:
    return list(run.candidates.filter(rung=1).order_by("index"))


def test_an_asha_run_promotes_the_best_and_keeps_every_rung(user, queue: Queue) -> None:
    run = _asha_run(user, budget=6)
    queue.call(execution.start_run, run)
    queue.drain()
    run.refresh_from_db()
    strategy = _strategy(run)
    assert run.status == SearchRun.Status.DONE and run.evaluated == 6
    assert strategy.rungs is not None
    promoted = _promoted(run)
    assert {c.index for c in promoted} == strategy.rungs.promoted[0] and len(promoted) >= 2
    for c in promoted:
        first, second = c.rung_results
        assert (first["rung"], first["epochs"], second["rung"], second["epochs"]) == (0, 1, 1, 3)
        # The row shows the highest rung; the rung below stays, with its own files.
        assert c.val_accuracy == second["val_accuracy"] and c.int8_val_accuracy == second["int8_val_accuracy"]
        assert c.weights.name == artifacts.weights_name(run, c.index, 1)
        assert files.exists(artifacts.weights_name(run, c.index, 0))
        assert c.train_seconds == pytest.approx(first["train_seconds"] + second["train_seconds"])
        assert c.status == Candidate.Status.DONE and c.mutation != "promoted to rung 1"
    on_front = set(run.candidates.filter(on_pareto=True).values_list("index", flat=True))
    assert on_front == {m.id for m in strategy.archive}


def test_a_memnas_run_with_rungs_trains_promotions_and_moves_on_rung_0_results(user, queue: Queue) -> None:
    run = _asha_run(user, budget=9, strategy="memnas", population=None, strategy_options={"top_k": 2})
    queue.call(execution.start_run, run)
    queue.drain()
    run.refresh_from_db()
    strategy = _strategy(run)
    assert run.status == SearchRun.Status.DONE and run.evaluated == 9
    assert strategy.rungs is not None and strategy.rungs.promoted[0]
    promoted = _promoted(run)
    assert {c.index for c in promoted} == strategy.rungs.promoted[0]
    for c in promoted:
        assert [r["rung"] for r in c.rung_results] == [0, 1] and c.weights.name == artifacts.weights_name(
            run, c.index, 1
        )
    # The backbone is compared with its children at rung 0, whatever its own promotion gave.
    backbone = strategy.backbone  # type: ignore[attr-defined]
    assert backbone is not None and backbone.rung == 0
    row = Candidate.objects.get(run=run, index=backbone.id)
    rung0 = row.rung_results[0]["val_accuracy"] if row.rung_results else row.val_accuracy
    assert backbone.result.val_accuracy == rung0
    on_front = set(run.candidates.filter(on_pareto=True).values_list("index", flat=True))
    assert on_front == {m.id for m in strategy.archive}


def test_a_promotion_continues_from_the_stored_weights(user, queue: Queue) -> None:
    run = _asha_run(user, budget=3, parallel=1)
    queue.call(execution.start_run, run)
    queue.drain()
    (promoted,) = _promoted(run)
    model = artifacts.load_weights_file(
        _strategy(run)._members[promoted.index].architecture, artifacts.weights_name(run, promoted.index, 0)
    )
    again = train_and_evaluate(
        _strategy(run)._members[promoted.index].architecture,
        runs.get_dataset("digits"),
        Fidelity(**{**runs.search_config(run).fidelity, "epochs": 2}),
        initial_state=model.state_dict(),
    )
    stored = torch.load(
        io.BytesIO(files.read_bytes(promoted.weights.name)), map_location="cpu", weights_only=True
    )
    assert promoted.val_accuracy == again.val_accuracy
    assert all(torch.equal(stored[k], again.state_dict[k]) for k in stored)


def test_cancelling_during_a_promotion_keeps_the_result_and_resume_trains_it(user, queue: Queue) -> None:
    run = _asha_run(user, budget=3, parallel=1)
    queue.call(execution.start_run, run)
    for _ in range(3):
        queue.evaluate_next()
    (queued,) = [Candidate.objects.get(pk=pk) for pk in queue.evaluations]
    assert queued.status == Candidate.Status.PENDING and queued.rung == 0 and queued.val_accuracy is not None

    queue.call(execution.cancel_run, run)
    queued.refresh_from_db()
    assert queued.status == Candidate.Status.DONE and queued.rung == 0

    queue.evaluations.clear()
    queue.call(execution.resume_run, run)
    queued.refresh_from_db()
    assert queued.status == Candidate.Status.PENDING and queue.evaluations == [queued.pk]
    queue.drain()
    queued.refresh_from_db()
    run.refresh_from_db()
    assert queued.rung == 1 and run.status == SearchRun.Status.DONE


def test_an_attempt_at_the_rung_below_cannot_tell_the_promotion(user, queue: Queue) -> None:
    run = _asha_run(user, budget=3, parallel=1)
    queue.call(execution.start_run, run)
    for _ in range(3):
        queue.evaluate_next()
    candidate = Candidate.objects.get(pk=queue.evaluations[0])
    claimed = execution._claim(run.pk, candidate.pk)
    assert claimed is not None
    _, promotion, attempt = claimed
    assert promotion.rung == 1 and attempt == 1
    # A rung-0 attempt of this candidate with the same attempt number (counts restart per rung).
    execution._tell(run.pk, promotion.id, EvalResult(0.01, 0.01), attempt, rung=0)
    candidate.refresh_from_db()
    assert candidate.status == Candidate.Status.RUNNING and candidate.rung == 0
    assert [p.rung for p in _strategy(run).outstanding] == [1]


def test_the_int8_objective_flags_the_int8_front(user, queue: Queue) -> None:
    run = _asha_run(user, budget=4, fidelity_schedule="off", error_objective="int8")
    queue.call(execution.start_run, run)
    queue.drain()
    rows = list(run.candidates.filter(status=Candidate.Status.DONE).order_by("index"))
    points = [(1 - c.int8_val_accuracy, c.peak_sram_bytes, c.flash_bytes, c.macs) for c in rows]
    expected = {rows[i].index for i in pareto_front(points)}
    assert set(run.candidates.filter(on_pareto=True).values_list("index", flat=True)) == expected


# ---- form, API, CLI, pages ---------------------------------------------------------------------


def test_the_run_form_takes_asha_and_the_int8_objective(
    client, user, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(task_queue, "start_run", lambda pk: None)
    project, profile = make_project(user), make_profile(user)
    client.force_login(user)
    fields = {"fidelity_schedule": "asha", "asha_eta": 4, "asha_max_rung": 3, "error_objective": "int8"}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run_create", args=[project.pk]), _form_data(profile, **fields))
    assert response.status_code == 302
    config = SearchRun.objects.get(owner=user).config
    assert {k: config[k] for k in fields} == fields


def test_the_run_form_takes_asha_for_memnas(client, user, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(task_queue, "start_run", lambda pk: None)
    project, profile = make_project(user), make_profile(user)
    client.force_login(user)
    data = _form_data(profile, strategy="memnas", fidelity_schedule="asha")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run_create", args=[project.pk]), data)
    assert response.status_code == 302
    config = SearchRun.objects.get(owner=user).config
    assert (config["strategy"], config["fidelity_schedule"]) == ("memnas", "asha")


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"fidelity_schedule": "hyperband"}, "fidelity_schedule", "not a valid choice"),
        ({"fidelity_schedule": "asha", "asha_eta": 1}, "asha_eta", "greater than or equal to 2"),
        ({"fidelity_schedule": "asha", "asha_max_rung": 9}, "asha_max_rung", "less than or equal to 4"),
        ({"error_objective": "int4"}, "error_objective", "not a valid choice"),
    ],
)
def test_the_api_validates_the_new_settings(client, user, fields, field, message):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    body = {"profile": make_profile(user).pk, "dataset": "digits", "budget": 6} | fields
    response = api.post("/api/runs/", body, format="json")
    assert response.status_code == 400
    assert message in str(response.json()[field])


def test_the_api_refuses_a_top_rung_too_long(user):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    body = {"profile": make_profile(user).pk, "dataset": "digits", "fidelity_schedule": "asha"}
    response = api.post(
        "/api/runs/", body | {"epochs": 100, "asha_eta": 5, "asha_max_rung": 3}, format="json"
    )
    assert response.status_code == 400
    assert "100 x 5^3 = 12,500 epochs per candidate; at most 2,000" in str(response.json())
    assert not SearchRun.objects.exists()


def test_the_api_creates_an_asha_run_and_shows_rungs(user, monkeypatch, django_capture_on_commit_callbacks):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    monkeypatch.setattr(task_queue, "start_run", lambda pk: None)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    body = {"profile": make_profile(user).pk, "dataset": "digits", "budget": 6, "fidelity_schedule": "asha"}
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/runs/", body, format="json")
    assert response.status_code == 201
    config = response.json()["config"]
    assert (config["fidelity_schedule"], config["asha_eta"], config["asha_max_rung"]) == ("asha", 3, 2)
    run = SearchRun.objects.get(pk=response.json()["id"])
    Candidate.objects.create(run=run, index=1, architecture={}, rung=1, rung_results=[{"rung": 0}])
    (row,) = api.get(f"/api/runs/{run.pk}/candidates/").json()["results"]
    assert (row["rung"], row["rung_results"]) == (1, [{"rung": 0}])


def test_the_search_command_runs_asha_with_the_int8_objective(user) -> None:
    out = io.StringIO()
    call_command(
        "search", "--budget", "3", "--epochs", "1", "--sram-kb", "2", "--flash-kb", "4",
        "--asha", "--eta", "3", "--max-rung", "1", "--error-objective", "int8", "--user", user.username,
        stdout=out,
    )  # fmt: skip
    run = SearchRun.objects.get(owner=user)
    assert run.status == SearchRun.Status.DONE and run.config["error_objective"] == "int8"
    assert run.candidates.filter(rung=1).count() == 1
    assert "Pareto front (int8 val error, peak SRAM, flash, MACs)" in out.getvalue()


def test_the_search_command_refuses_a_bad_eta(user) -> None:
    with pytest.raises(CommandError, match="eta must be an integer from 2 to 10, got 1"):
        call_command("search", "--asha", "--eta", "1", "--user", user.username, stdout=io.StringIO())


def test_the_dashboard_and_candidate_page_show_rungs_and_the_objective(client, user, queue: Queue) -> None:
    run = _asha_run(user, budget=3, parallel=1, error_objective="int8")
    queue.call(execution.start_run, run)
    queue.drain()
    client.force_login(user)
    page = client.get(reverse("run_detail", args=[run.pk]))
    text = page.content.decode()
    assert "ASHA rungs: η 3, max rung 1" in text and "objective: int8 validation error" in text
    assert page.context["dashboard_config"]["error_objective"] == "int8"
    (promoted,) = _promoted(run)
    detail = client.get(reverse("candidate_detail", args=[promoted.pk])).content.decode()
    assert 'id="rung-table"' in detail and "results above are rung 1" in detail
