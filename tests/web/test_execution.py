"""Runs on Celery, tested through the service functions: each test plays the workers itself.

The tasks' ``delay`` is replaced by a recorder, so a test decides which queued candidate is
evaluated when (tests/integration runs the same code on a real worker and broker).  Training
is real: digits at one epoch, under a 2 KB SRAM / 4 KB flash budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from searches import events, tasks
from searches import queue as task_queue
from searches.engine.strategies.registry import from_state_json
from searches.engine.training import train
from searches.engine.training.train import Fidelity
from searches.models import Candidate, SearchRun
from searches.models import Dataset as DatasetRow
from searches.services import execution, runs
from searches.services.datasets import config_dataset

pytestmark = pytest.mark.django_db


class Queue:
    """Stands in for the broker: records what the services queue; ``drain`` plays the workers."""

    def __init__(self, capture: Callable[..., Any]) -> None:
        self.capture = capture
        self.evaluations: list[int] = []
        self.starts: list[int] = []

    def call(self, service: Callable[..., Any], *args: Any) -> None:
        """Call a service as a task would: outside any transaction, so its on_commit hooks run."""
        with self.capture(execute=True):
            service(*args)

    def evaluate_next(self, last: bool = False) -> int:
        candidate_id = self.evaluations.pop(-1 if last else 0)
        self.call(execution.evaluate, candidate_id)
        return candidate_id

    def drain(self, last_first: bool = False) -> None:
        for _ in range(100):
            if not self.evaluations:
                return
            self.evaluate_next(last=last_first)
        raise AssertionError("the run never stopped queueing evaluations")


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any) -> Queue:
    recorder = Queue(django_capture_on_commit_callbacks)
    monkeypatch.setattr(task_queue, "evaluate_candidate", recorder.evaluations.append)
    monkeypatch.setattr(task_queue, "start_run", recorder.starts.append)
    return recorder


def _run(
    owner: Any,
    *,
    budget: int = 3,
    population: int = 2,
    parallel: int | None = 2,
    seed: int = 0,
    strategy: str = "aging_evolution",
    strategy_options: dict[str, Any] | None = None,
):
    dataset = runs.get_dataset("digits")
    limits = runs.limits_for(None, sram_kb=2, flash_kb=4)
    config = runs.make_config(
        dataset,
        limits,
        budget=budget,
        population=population,
        seed=seed,
        fidelity=Fidelity(epochs=1),
        strategy=strategy,
        strategy_options=strategy_options,
    )
    run = runs.create_run(owner, "digits", config)
    if parallel is not None:
        run.config = {**run.config, "parallel": parallel}
        run.save(update_fields=["config"])
    return run


def _rows(run: SearchRun, status: str) -> list[Candidate]:
    return list(run.candidates.filter(status=status).order_by("index"))


def _strategy(run: SearchRun):
    run.refresh_from_db()
    return from_state_json(run.state)


def test_start_fills_the_parallel_slots(user, queue: Queue) -> None:
    run = _run(user, budget=5, parallel=2)
    queue.call(execution.start_run, run)
    run.refresh_from_db()
    pending = _rows(run, Candidate.Status.PENDING)
    assert run.status == SearchRun.Status.RUNNING and run.started is not None
    assert len(pending) == 2 and queue.evaluations == [c.pk for c in pending]
    assert [p.id for p in _strategy(run).outstanding] == [c.index for c in pending]
    assert all(c.peak_sram_bytes <= 2048 and c.flash_bytes <= 4096 for c in pending)


def test_parallel_defaults_to_the_setting(user, queue: Queue, settings) -> None:
    settings.NASWEB_PARALLEL_EVALUATIONS = 3
    run = _run(user, budget=5, parallel=None)
    queue.call(execution.start_run, run)
    assert len(queue.evaluations) == 3 == len(_rows(run, Candidate.Status.PENDING))


def test_start_announces_the_run_and_its_candidates(user, queue: Queue) -> None:
    run = _run(user, budget=5, parallel=2)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.group_name(run.pk), channel)
    queue.call(execution.start_run, run)
    messages = async_to_sync(_received)(layer, channel)
    kinds = [m["type"] for m in messages]
    assert kinds.count("candidate") >= 2 and kinds[-1] == "run"
    assert messages[-1]["run"]["status"] == "running" and messages[-1]["run"]["pending"] == 2
    assert [m["seq"] for m in messages] == sorted({m["seq"] for m in messages})


async def _received(layer: Any, channel: str) -> list[dict[str, Any]]:
    """Every message already sent to ``channel``."""
    messages = []
    while True:
        try:
            messages.append((await asyncio.wait_for(layer.receive(channel), timeout=0.5))["message"])
        except TimeoutError:
            return messages


def test_start_leaves_a_started_run_alone(user, queue: Queue) -> None:
    run = _run(user)
    queue.call(execution.start_run, run)
    queue.call(execution.start_run, run)
    assert len(queue.evaluations) == 2 == run.candidates.count() - len(_rows(run, Candidate.Status.REJECTED))


def test_evaluate_trains_tells_and_refills(user, queue: Queue) -> None:
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    first = queue.evaluate_next()
    candidate = Candidate.objects.get(pk=first)
    run.refresh_from_db()
    assert candidate.status == Candidate.Status.DONE and 0.0 <= candidate.val_accuracy <= 1.0
    assert candidate.weights.name and candidate.on_pareto
    assert run.evaluated == 1 and len(queue.evaluations) == 2  # one waiting, one new


def test_evaluate_is_idempotent(user, queue: Queue) -> None:
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    first = queue.evaluations[0]
    queue.call(execution.evaluate, first)
    queued = list(queue.evaluations)
    state = _strategy(run).state_to_json()
    queue.call(execution.evaluate, first)  # the broker delivered it again
    run.refresh_from_db()
    assert run.evaluated == 1 and _strategy(run).told == 1
    assert queue.evaluations == queued and run.state == state


def test_a_redelivered_running_candidate_is_trained_once(user, queue: Queue) -> None:
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    lost = queue.evaluations[0]
    # A worker claimed it and died: the row says running, the strategy still waits for it.
    Candidate.objects.filter(pk=lost).update(status=Candidate.Status.RUNNING)
    queue.drain()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE and run.evaluated == 3
    assert Candidate.objects.get(pk=lost).status == Candidate.Status.DONE


def test_results_may_arrive_in_any_order(user, queue: Queue) -> None:
    fifo, lifo = _run(user, budget=2, parallel=2), _run(user, budget=2, parallel=2)
    queue.call(execution.start_run, fifo)
    queue.drain()
    queue.call(execution.start_run, lifo)
    queue.drain(last_first=True)

    def outcome(run: SearchRun) -> dict[int, tuple]:
        run.refresh_from_db()
        assert run.status == SearchRun.Status.DONE and run.evaluated == 2
        return {
            c.index: (c.architecture, c.status, c.val_accuracy, c.on_pareto)
            for c in run.candidates.exclude(status=Candidate.Status.REJECTED)
        }

    assert outcome(fifo) == outcome(lifo)
    assert {m.id for m in _strategy(fifo).archive} == {m.id for m in _strategy(lifo).archive}


def test_a_run_finishes_with_its_budget(user, queue: Queue) -> None:
    run = _run(user, budget=4, population=2, parallel=2)
    queue.call(execution.start_run, run)
    queue.drain()
    run.refresh_from_db()
    done = _rows(run, Candidate.Status.DONE)
    assert run.status == SearchRun.Status.DONE and run.finished is not None
    assert run.evaluated == 4 and len(done) == 4
    assert any(c.parent_id is not None for c in done)  # past the warm-up, children are mutations
    front = {m.id for m in _strategy(run).archive}
    assert {c.index for c in run.candidates.filter(on_pareto=True)} == front


def test_a_memnas_run_waits_for_each_round_and_finishes(user, queue: Queue) -> None:
    # More slots than a round has children: ask() answers None while the round trains.
    run = _run(user, budget=4, parallel=4, strategy="memnas", strategy_options={"top_k": 2})
    queue.call(execution.start_run, run)
    assert len(queue.evaluations) == 1  # the seed backbone, alone

    queue.evaluate_next()
    assert len(queue.evaluations) == 2  # the first round: its top two children

    queue.evaluate_next()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING and len(queue.evaluations) == 1  # the round's other child

    queue.drain()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE and run.evaluated == 4
    assert len(_rows(run, Candidate.Status.DONE)) == 4
    front = {m.id for m in _strategy(run).archive}
    assert {c.index for c in run.candidates.filter(on_pareto=True)} == front


def test_cancel_stops_the_run(user, queue: Queue) -> None:
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    queue.call(execution.cancel_run, run)
    run.refresh_from_db()
    assert run.status == SearchRun.Status.CANCELLED and run.finished is not None
    cancelled = _rows(run, Candidate.Status.CANCELLED)
    assert len(cancelled) == 2 and not _rows(run, Candidate.Status.FAILED)
    queue.drain()  # the queued tasks arrive anyway
    queue.call(execution.fill, run.pk)
    run.refresh_from_db()
    assert run.status == SearchRun.Status.CANCELLED and run.evaluated == 0
    assert not run.candidates.filter(status=Candidate.Status.DONE).exists()


def _while_training(monkeypatch: pytest.MonkeyPatch, action: Callable[[int], None]) -> list[int]:
    """Call ``action(run_id)`` from the third stop poll of the next training (as a user would click)."""
    polls: list[int] = []
    real_poll = execution._cancel_poll

    def poll_with_action(run_id: int) -> Callable[[], bool]:
        stop = real_poll(run_id)

        def wrapped() -> bool:
            polls.append(1)
            if len(polls) == 3:
                action(run_id)
            return stop()

        return wrapped

    monkeypatch.setattr(train, "STOP_POLL_SECONDS", 0.0)
    monkeypatch.setattr(execution, "CANCEL_POLL_SECONDS", 0.0)
    monkeypatch.setattr(execution, "_cancel_poll", poll_with_action)
    return polls


def test_cancel_stops_a_training_in_progress(user, queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(user, budget=3, parallel=1)
    queue.call(execution.start_run, run)
    polls = _while_training(
        monkeypatch, lambda run_id: execution.cancel_run(SearchRun.objects.get(pk=run_id))
    )
    candidate_id = queue.evaluate_next()
    candidate = Candidate.objects.get(pk=candidate_id)
    run.refresh_from_db()
    assert len(polls) == 3  # the poll right after the cancel stopped it
    assert candidate.status == Candidate.Status.CANCELLED
    assert candidate.val_accuracy is None and not candidate.weights.name
    assert run.status == SearchRun.Status.CANCELLED and run.evaluated == 0 and not queue.evaluations


def test_deleting_a_run_stops_its_training(user, queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    polls = _while_training(monkeypatch, lambda run_id: SearchRun.objects.filter(pk=run_id).delete())
    queue.evaluate_next()  # nothing raised, nothing queued
    queue.evaluate_next()  # its row is gone too
    assert len(polls) == 3 and not queue.evaluations and not SearchRun.objects.exists()


def test_a_cancelled_run_resumes_without_spending_budget(user, queue: Queue) -> None:
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    queue.evaluations.clear()
    queue.call(execution.cancel_run, run)
    queue.call(execution.resume_run, run)
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING and run.finished is None
    assert len(queue.evaluations) == 2 == len(_rows(run, Candidate.Status.PENDING))
    queue.drain()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE and run.evaluated == 3
    assert len(_rows(run, Candidate.Status.DONE)) == 3


def test_extend_adds_budget_and_restarts_a_done_run(user, queue: Queue) -> None:
    run = _run(user, budget=2, parallel=2)
    queue.call(execution.start_run, run)
    queue.drain()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE and run.evaluated == 2
    queue.call(execution.extend_run, run, 2)
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING and run.budget == 4 and run.config["budget"] == 4
    assert _strategy(run).config.budget == 4 and len(queue.evaluations) == 2
    queue.drain()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.DONE and run.evaluated == 4
    assert len(_rows(run, Candidate.Status.DONE)) == 4


def test_extend_rejects_nothing_to_add(user) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        execution.extend_run(_run(user), 0)


def test_a_crashing_training_fails_its_candidate_and_the_run_goes_on(
    user, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train = runs.train_and_evaluate
    calls = []

    def crash_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train_and_evaluate", crash_once)
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    queue.drain()
    run.refresh_from_db()
    failed = _rows(run, Candidate.Status.FAILED)
    assert run.status == SearchRun.Status.DONE and run.evaluated == 3 and run.error == ""
    assert len(failed) == 1 and failed[0].reject_reason == "RuntimeError: CUDA out of memory (simulated)"
    assert len(_rows(run, Candidate.Status.DONE)) == 2


def test_a_run_whose_every_candidate_failed_ends_failed_saying_why(user, queue: Queue) -> None:
    # An uploaded data set whose file is gone (a worker that cannot see the web server's disk).
    upload = DatasetRow.objects.create(
        owner=user,
        name="gone",
        file="datasets/gone.npz",
        input_shape=[8, 8, 1],
        classes=10,
        n_train=40,
        n_test=10,
    )
    config = runs.make_config(
        config_dataset(upload),
        runs.limits_for(None, sram_kb=2, flash_kb=4),
        budget=3,
        population=2,
        fidelity=Fidelity(epochs=1),
    )
    run = runs.create_run(user, upload.key, config)
    queue.call(execution.start_run, run)
    queue.drain()
    run.refresh_from_db()
    failed = _rows(run, Candidate.Status.FAILED)
    assert run.status == SearchRun.Status.FAILED and run.finished is not None and len(failed) == 3
    assert run.error.startswith("all 3 candidates failed: DatasetError: ")
    assert run.error.endswith(failed[0].reject_reason.removeprefix("DatasetError: "))


def test_an_error_in_the_service_fails_the_run_with_its_reason(user, queue: Queue) -> None:
    run = _run(user, budget=3, parallel=2)
    queue.call(execution.start_run, run)
    SearchRun.objects.filter(pk=run.pk).update(state={"format": "something else"})
    with pytest.raises(ValueError, match=r"not a nasweb\.search-state"):
        queue.evaluate_next()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.FAILED and "not a nasweb.search-state" in run.error
    assert {c.reject_reason for c in _rows(run, Candidate.Status.FAILED)} == {"run failed"}
    assert not run.candidates.filter(status__in=["pending", "running"]).exists()


def test_recover_queues_again_what_active_runs_wait_for(user, queue: Queue) -> None:
    run, broken, waiting = _run(user), _run(user), _run(user)
    queue.call(execution.start_run, run)
    pending = list(queue.evaluations)
    queue.call(execution.start_run, broken)
    SearchRun.objects.filter(pk=broken.pk).update(state={"format": "something else"})
    queue.evaluations.clear()  # the broker lost its queue
    with queue.capture(execute=True):
        assert execution.recover_runs() == 3
    assert queue.evaluations == pending and queue.starts == [waiting.pk]
    broken.refresh_from_db()
    assert broken.status == SearchRun.Status.FAILED and "search-state" in broken.error


def test_a_finished_run_queues_deployment_training_of_its_top_k(
    user, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy: list[int] = []
    monkeypatch.setattr(task_queue, "deploy_top_k", deploy.append)
    run = _run(user, budget=2, population=2, parallel=2)
    run.config = {**run.config, "deploy_top_k": 1}
    run.save(update_fields=["config"])
    quiet = _run(user, budget=2, population=2, parallel=2)
    for r in (run, quiet):
        queue.call(execution.start_run, r)
        queue.drain()
    assert deploy == [run.pk]  # once, when it finished; not for the run without K
    with mock.patch.object(task_queue, "train_for_deployment") as send, queue.capture(execute=True):
        tasks.deploy_top_k_task.apply(args=[run.pk])
    best = run.candidates.filter(on_pareto=True).order_by("-val_accuracy", "index").first()
    assert best is not None and send.call_args.args == (best.deployment_jobs.get().pk,)


def test_tasks_take_ids(user, queue: Queue) -> None:
    run = _run(user, budget=3, parallel=2)
    with queue.capture(execute=True):
        tasks.start_run_task.apply(args=[run.pk])
    assert len(queue.evaluations) == 2
    with queue.capture(execute=True):
        tasks.evaluate_candidate.apply(args=[queue.evaluations.pop(0)])
        tasks.start_run_task.apply(args=[10**9])  # a deleted run is skipped
    run.refresh_from_db()
    assert run.evaluated == 1
