from __future__ import annotations

import csv
import io
import json

import pytest
from django.urls import reverse

from searches import events
from searches import queue as task_queue
from searches.engine.strategies.options import MEMORY_SCALES, RANKERS, SEED_KINDS, STALL_KINDS, MemNASConfig
from searches.models import Candidate, Dataset, HardwareProfile, SearchRun
from searches.services.runs import default_fidelity
from tests.web.factories import make_candidate, make_profile, make_project, make_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch):
    """The run ids whose start was queued (no broker, no worker in these tests)."""

    calls: list[int] = []
    monkeypatch.setattr(task_queue, "start_run", calls.append)
    return calls


def _digits() -> Dataset:
    return Dataset.objects.get(name="digits", kind=Dataset.Kind.BUILTIN)


def _form_data(profile: HardwareProfile, **fields):
    return {
        "name": "",
        "profile": profile.pk,
        "dataset": _digits().pk,
        "strategy": "aging_evolution",
        "budget": 20,
        "population": 8,
        "sample_size": "",
        "epochs": "",
        "train_subset": "",
        "parallel": 2,
        "seed": 0,
        "sram_kb": "",
        "flash_kb": "",
        "latency_ms": "",
    } | fields


# --- new run ------------------------------------------------------------------------------------


def test_new_run_form_works(client, user):
    project = make_project(user)
    make_profile(user, "My board")
    client.force_login(user)

    response = client.get(reverse("run_create", args=[project.pk]))

    assert response.status_code == 200
    form = response.context["form"]
    assert form["budget"].value() == 20
    assert form["population"].value() == 8
    assert form["dataset"].value() == _digits().pk
    groups = dict(form.fields["profile"].choices)
    assert [name for _, name in groups["My profiles"]] == ["My board"]
    assert len(groups["Board presets"]) == 15
    body = response.content.decode()
    assert 'name="pruning"' in body and "disabled" not in body.split('name="pruning"')[1].split(">")[0]
    assert form["sparsity_low"].value() == 0.05 and form["sparsity_high"].value() == 0.9
    assert 'name="sparsity_low"' in body and 'name="sparsity_high"' in body
    hints = response.context["fidelity_hints"]
    assert hints[str(_digits().pk)]["epochs"] == default_fidelity("digits").epochs


def test_new_run_creates_the_run_and_enqueues_its_start(
    client, user, enqueued, django_capture_on_commit_callbacks
):
    project = make_project(user)
    preset = HardwareProfile.objects.presets().get(name="Arduino Uno R3")
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            reverse("run_create", args=[project.pk]),
            _form_data(preset, name="uno digits", flash_kb="4", parallel=1),
        )

    run = SearchRun.objects.get(owner=user)
    assert response.status_code == 302
    assert response.url == reverse("run_detail", args=[run.pk])
    assert len(callbacks) == 1
    assert enqueued == [run.pk]
    assert (run.project, run.profile, run.name, run.dataset) == (project, preset, "uno digits", "digits")
    assert run.status == SearchRun.Status.PENDING
    assert run.budget == 20
    config = run.config
    assert (config["population"], config["budget"], config["strategy"], config["parallel"]) == (
        8,
        20,
        "aging_evolution",
        1,
    )
    # The profile's SRAM, the overridden flash, and digits' default fidelity.
    assert config["limits"]["sram_bytes"] == 2 * 1024
    assert config["limits"]["flash_bytes"] == 4 * 1024
    assert config["limits"]["core"] == "avr"
    assert config["fidelity"]["epochs"] == default_fidelity("digits").epochs
    assert config["deploy_top_k"] == 3  # the form's default: train the top 3 for deployment


def test_new_run_takes_explicit_fidelity_and_strategy(
    client, user, enqueued, django_capture_on_commit_callbacks
):
    project = make_project(user)
    profile = make_profile(user)
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("run_create", args=[project.pk]),
            _form_data(profile, strategy="random", epochs=2, train_subset=500, seed=7, sample_size=3),
        )

    run = SearchRun.objects.get(owner=user)
    assert run.strategy == "random"
    assert (run.config["fidelity"]["epochs"], run.config["fidelity"]["train_subset"]) == (2, 500)
    assert (run.config["seed"], run.config["sample_size"]) == (7, 3)
    assert enqueued == [run.pk]


def test_new_run_form_offers_memnas(client, user):
    project = make_project(user)
    client.force_login(user)

    response = client.get(reverse("run_create", args=[project.pk]))

    form = response.context["form"]
    assert ("memnas", "MemNAS (grow and trim)") in form.fields["strategy"].choices
    defaults = MemNASConfig()
    assert (form["memnas_lambda"].value(), form["memnas_beta"].value(), form["memnas_top_k"].value()) == (
        defaults.lam,
        defaults.beta,
        defaults.top_k,
    )
    assert (
        form["memnas_seed_backbone"].value(),
        form["memnas_round0_size"].value(),
        form["memnas_ranker"].value(),
        form["memnas_memory_scale"].value(),
        form["memnas_on_stall"].value(),
    ) == (
        defaults.seed_backbone,
        defaults.round0_size,
        defaults.ranker,
        defaults.memory_scale,
        defaults.on_stall,
    )
    assert [value for value, _ in form.fields["memnas_seed_backbone"].choices] == list(SEED_KINDS)
    assert [value for value, _ in form.fields["memnas_ranker"].choices] == list(RANKERS)
    assert [value for value, _ in form.fields["memnas_memory_scale"].choices] == list(MEMORY_SCALES)
    assert [value for value, _ in form.fields["memnas_on_stall"].choices] == list(STALL_KINDS)
    body = response.content.decode()
    assert 'id="memnas-options"' in body and 'id="evolution-options"' in body
    assert 'id="memnas-start-options"' in body and 'id="memnas-round0"' in body
    # Each MemNAS setting explains itself.
    for name in (
        "memnas_top_k",
        "memnas_seed_backbone",
        "memnas_round0_size",
        "memnas_ranker",
        "memnas_memory_scale",
        "memnas_on_stall",
    ):
        assert form.fields[name].help_text and form.fields[name].help_text in body


def test_new_run_takes_memnas_settings(client, user, enqueued, django_capture_on_commit_callbacks):
    project = make_project(user)
    profile = make_profile(user)
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("run_create", args=[project.pk]),
            # The hidden evolution fields still post; a sample size above the population is ignored.
            _form_data(
                profile,
                strategy="memnas",
                memnas_lambda=0.3,
                memnas_beta=0.9,
                memnas_top_k=2,
                memnas_seed_backbone="single_blocks",
                memnas_round0_size=4,
                memnas_ranker="list",
                memnas_memory_scale="backbone",
                memnas_on_stall="raise_lambda",
                sample_size=9,
            ),
        )

    run = SearchRun.objects.get(owner=user)
    assert response.status_code == 302
    assert run.strategy == "memnas"
    expected = MemNASConfig(
        lam=0.3,
        beta=0.9,
        top_k=2,
        seed_backbone="single_blocks",
        round0_size=4,
        ranker="list",
        memory_scale="backbone",
        on_stall="raise_lambda",
    )
    assert run.config["strategy_options"] == expected.to_json()
    assert enqueued == [run.pk]
    # The run page shows what the run was started with.
    page = client.get(reverse("run_detail", args=[run.pk])).content.decode()
    settings = page.split('id="strategy-settings"')[1].split("</p>")[0]
    for text in ("λ <strong>0.3</strong>", "β <strong>0.9</strong>", "top-k <strong>2</strong>"):
        assert text in settings
    assert "start <strong>round 0 of 4</strong>" in settings
    assert "ranking model <strong>list</strong>" in settings
    assert "memory scale <strong>the backbone&#x27;s</strong>" in settings
    assert "at a local optimum <strong>raise λ</strong>" in settings


def test_new_run_records_every_memnas_setting_with_the_defaults(
    client, user, enqueued, django_capture_on_commit_callbacks
):
    project = make_project(user)
    profile = make_profile(user)
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("run_create", args=[project.pk]),
            # Round 0's size is posted from its hidden field but only matters with round 0.
            _form_data(profile, strategy="memnas", memnas_top_k=3, memnas_round0_size=9),
        )

    options = SearchRun.objects.get(owner=user).config["strategy_options"]
    assert options == MemNASConfig(top_k=3).to_json()
    assert options["round0_size"] == MemNASConfig().round0_size


def test_new_run_ignores_memnas_settings_for_evolution(
    client, user, enqueued, django_capture_on_commit_callbacks
):
    project = make_project(user)
    profile = make_profile(user)
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("run_create", args=[project.pk]),
            _form_data(profile, memnas_lambda=0.5, memnas_beta=0.7, memnas_top_k=4),
        )

    assert SearchRun.objects.get(owner=user).config["strategy_options"] == {}


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"budget": 0}, "budget", "greater than or equal to 1"),
        ({"budget": 10**6}, "budget", "less than or equal to 5000"),
        ({"train_subset": 10**12}, "train_subset", "less than or equal to 10000000"),
        ({"train_subset": 9}, "train_subset", "greater than or equal to 10"),
        ({"population": 1}, "population", "greater than or equal to 2"),
        ({"sample_size": 9}, "sample_size", "cannot exceed the population"),
        ({"sram_kb": -1}, "sram_kb", "Must be a positive number."),
        ({"latency_ms": 10**9}, "latency_ms", "Must be at most 60,000 ms."),
        ({"strategy": "grid"}, "strategy", "Select a valid choice."),
        ({"dataset": 999999}, "dataset", "Select a valid choice."),
        ({"strategy": "memnas", "memnas_lambda": 1.5}, "memnas_lambda", "less than or equal to 1"),
        ({"strategy": "memnas", "memnas_beta": -0.1}, "memnas_beta", "greater than or equal to 0"),
        ({"strategy": "memnas", "memnas_top_k": 0}, "memnas_top_k", "greater than or equal to 1"),
        ({"strategy": "memnas", "memnas_top_k": 17}, "memnas_top_k", "less than or equal to 16"),
        ({"strategy": "memnas", "memnas_seed_backbone": "grid"}, "memnas_seed_backbone", "valid choice"),
        ({"strategy": "memnas", "memnas_round0_size": 0}, "memnas_round0_size", "greater than or equal to 1"),
        ({"strategy": "memnas", "memnas_round0_size": 33}, "memnas_round0_size", "less than or equal to 32"),
        ({"strategy": "memnas", "memnas_ranker": "tree"}, "memnas_ranker", "valid choice"),
    ],
)
def test_new_run_shows_field_errors(client, user, enqueued, fields, field, message):
    project = make_project(user)
    client.force_login(user)
    preset = HardwareProfile.objects.presets().first()

    response = client.post(reverse("run_create", args=[project.pk]), _form_data(preset, **fields))

    assert response.status_code == 200
    assert any(message in e for e in response.context["form"].errors[field])
    assert not SearchRun.objects.exists()
    assert enqueued == []


def test_new_run_refuses_another_users_profile(client, user, other_user, enqueued):
    project = make_project(user)
    bobs = make_profile(other_user, "Bob's board")
    client.force_login(user)

    response = client.post(reverse("run_create", args=[project.pk]), _form_data(bobs))

    assert response.status_code == 200
    assert "profile" in response.context["form"].errors
    assert not SearchRun.objects.exists()


def test_new_run_checks_owner(client, user, other_user, enqueued):
    project = make_project(other_user)
    client.force_login(user)
    preset = HardwareProfile.objects.presets().first()

    assert client.get(reverse("run_create", args=[project.pk])).status_code == 404
    assert client.post(reverse("run_create", args=[project.pk]), _form_data(preset)).status_code == 404
    assert not SearchRun.objects.exists()


def test_new_run_requires_login(client, user, enqueued):
    project = make_project(user)
    preset = HardwareProfile.objects.presets().first()

    response = client.post(reverse("run_create", args=[project.pk]), _form_data(preset))

    assert response.status_code == 302
    assert not SearchRun.objects.exists()
    assert enqueued == []


# --- list ---------------------------------------------------------------------------------------


def test_list_works(client, user, other_user):
    mine = make_run(user, make_project(user), name="mine")
    make_run(other_user, name="bobs run")
    client.force_login(user)

    response = client.get(reverse("run_list"))

    assert response.status_code == 200
    assert list(response.context["runs"]) == [mine]
    assert "bobs run" not in response.content.decode()


def test_runs_show_an_uploaded_dataset_by_its_name(client, user):
    upload = Dataset.objects.create(
        owner=user, name="my sensors", input_shape=[8, 8, 1], classes=10, n_train=10, n_test=10
    )
    project = make_project(user)
    run = make_run(user, project, dataset=upload.key)
    gone = make_run(user, project, dataset="upload:999999")
    client.force_login(user)

    pages = ("run_list", None), ("project_detail", project.pk), ("run_detail", run.pk)
    for url in (reverse(name, args=[pk] if pk else []) for name, pk in pages):
        body = client.get(url).content.decode()
        assert "my sensors" in body and f"{upload.key}<" not in body, url
    assert "upload:999999 (deleted)" in client.get(reverse("run_detail", args=[gone.pk])).content.decode()
    api = client.get(f"/api/runs/{run.pk}/").json()
    assert (api["dataset"], api["dataset_name"]) == (upload.key, "my sensors")


def test_list_and_dashboard_count_evaluations_alike(client, user):
    # The run list's "evaluated / budget" and the dashboard's payload both read run.evaluated;
    # pruning jobs' rows are counted apart, not as the search's "done".
    run = make_run(user, budget=3, evaluated=2, status=SearchRun.Status.DONE)
    make_candidate(run, 0)
    make_candidate(run, 1, status=Candidate.Status.FAILED)
    make_candidate(run, Candidate.PRUNED_INDEX_BASE + 7, parent=None)
    client.force_login(user)

    assert "2 / 3" in client.get(reverse("run_list")).content.decode()
    payload = events.run_payload(run)
    assert (payload["evaluated"], payload["budget"], payload["done"], payload["failed"]) == (2, 3, 1, 1)
    assert (payload["pending"], payload["pruned"]) == (0, 1)
    labels = [c["label"] for c in events.snapshot(run)["candidates"]]
    assert labels == ["#0", "#1", "P7"]


def test_a_finished_run_shows_no_cancel_and_no_live_badge(client, user):
    def opening_tag(body: str, element_id: str) -> str:
        return body.split(f'id="{element_id}"')[1].split(">")[0]

    client.force_login(user)
    done = client.get(reverse("run_detail", args=[make_run(user).pk])).content.decode()
    assert " hidden" in opening_tag(done, "cancel-form") and " hidden" in opening_tag(done, "connection")
    running = make_run(user, status=SearchRun.Status.RUNNING)
    body = client.get(reverse("run_detail", args=[running.pk])).content.decode()
    assert "hidden" not in opening_tag(body, "cancel-form") and "hidden" not in opening_tag(
        body, "connection"
    )


def test_list_requires_login(client):
    assert client.get(reverse("run_list")).status_code == 302


# --- detail (the live dashboard) ------------------------------------------------------------------


def test_detail_works(client, user):
    profile = make_profile(user)
    run = make_run(user, profile=profile, status=SearchRun.Status.RUNNING)
    make_candidate(run, 0)
    make_candidate(run, 1)
    client.force_login(user)

    response = client.get(reverse("run_detail", args=[run.pk]))

    assert response.status_code == 200
    assert response.context["run"] == run
    assert response.context["profile"] == profile
    assert response.context["candidate_count"] == 2
    assert response.context["dashboard_config"] == {
        "run_id": run.pk,
        "ws_path": f"/ws/runs/{run.pk}/",
        "limits": {"sram_bytes": 2048, "flash_bytes": 4096, "latency_ms": None, "macs": None},
        "candidate_url": "/candidates/0/",
        "csv_url": f"/runs/{run.pk}/candidates.csv",
        "cancel_url": f"/runs/{run.pk}/cancel/",
        "extend_url": f"/runs/{run.pk}/extend/",
        "status": "running",
        "error_objective": "float",
        "fidelity_schedule": "off",
    }


def test_detail_works_for_a_memnas_run(client, user):
    run = make_run(user, strategy=SearchRun.Strategy.MEMNAS, status=SearchRun.Status.RUNNING)
    make_candidate(run, 0)
    make_candidate(run, 1, parent=None, status=Candidate.Status.PENDING, val_accuracy=None)
    client.force_login(user)

    response = client.get(reverse("run_detail", args=[run.pk]))

    assert response.status_code == 200
    assert response.context["candidate_count"] == 2
    assert response.context["dashboard_config"]["status"] == "running"
    # A run stored with only some MemNAS settings shows the engine's defaults for the rest.
    defaults = MemNASConfig()
    assert response.context["strategy_settings"] == [
        ("λ", f"{MemNASConfig().lam:g}"),
        ("β", f"{MemNASConfig().beta:g}"),
        ("top-k", str(MemNASConfig().top_k)),
        ("start", "minimal seed"),
        ("ranking model", "per candidate"),
        ("memory scale", "the board's budget"),
        ("at a local optimum", {"best_child": "best child", "raise_lambda": "raise λ"}[defaults.on_stall]),
    ]


def test_detail_shows_the_evolution_settings(client, user):
    run = make_run(user)
    client.force_login(user)

    page = client.get(reverse("run_detail", args=[run.pk])).content.decode()

    settings = page.split('id="strategy-settings"')[1].split("</p>")[0]
    assert "Strategy <strong>Aging evolution" in settings
    assert f"population <strong>{run.config['population']}</strong>" in settings


def test_detail_checks_owner(client, user, other_user):
    run = make_run(other_user)
    client.force_login(user)

    assert client.get(reverse("run_detail", args=[run.pk])).status_code == 404


def test_detail_requires_login(client, user):
    run = make_run(user)

    assert client.get(reverse("run_detail", args=[run.pk])).status_code == 302


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_works(client, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)
    make_candidate(run, 0, status=Candidate.Status.RUNNING, val_accuracy=None)
    client.force_login(user)

    response = client.post(reverse("run_cancel", args=[run.pk]), {"confirm": "yes"})

    assert response.status_code == 302
    assert response.url == reverse("run_detail", args=[run.pk])
    run.refresh_from_db()
    assert run.status == SearchRun.Status.CANCELLED
    assert run.candidates.get().status == Candidate.Status.CANCELLED


def test_cancel_asks_for_confirmation_first(client, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)
    make_candidate(run, 0, status=Candidate.Status.RUNNING, val_accuracy=None)
    client.force_login(user)
    url = reverse("run_cancel", args=[run.pk])

    # The dashboard's button without JavaScript: a POST without confirm=yes, and a plain GET.
    for response in (client.post(url), client.get(url)):
        assert response.status_code == 200
        assert "searches/run_cancel.html" in [t.name for t in response.templates]
        page = response.content.decode()
        assert "Cancel this run?" in page and 'name="confirm" value="yes"' in page
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING
    assert run.candidates.get().status == Candidate.Status.RUNNING


def test_the_dashboard_asks_before_cancelling(client, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)
    client.force_login(user)

    page = client.get(reverse("run_detail", args=[run.pk])).content.decode()

    assert 'data-live-action="Cancel"' in page and 'data-confirm="Cancel this run?' in page
    assert 'id="count-cancelled"' in page


def test_cancel_answers_json_to_the_dashboard(client, user):
    run = make_run(user, status=SearchRun.Status.PENDING)
    client.force_login(user)
    url = reverse("run_cancel", args=[run.pk])

    unconfirmed = client.post(url, HTTP_ACCEPT="application/json")
    response = client.post(url, {"confirm": "yes"}, HTTP_ACCEPT="application/json")

    assert unconfirmed.status_code == 400
    assert unconfirmed.json()["message"] == "Cancelling needs confirm=yes."
    assert response.status_code == 200
    assert response.json()["run"]["status"] == "cancelled"
    assert response.json()["message"] == "The run was cancelled."


def test_cancel_of_a_finished_run_says_so(client, user):
    run = make_run(user, status=SearchRun.Status.DONE)
    client.force_login(user)

    response = client.post(
        reverse("run_cancel", args=[run.pk]), {"confirm": "yes"}, HTTP_ACCEPT="application/json"
    )

    assert response.status_code == 400
    assert "already done" in response.json()["message"]


def test_cancelled_candidates_show_as_cancelled_everywhere(client, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)
    make_candidate(run, 0)
    make_candidate(run, 1, status=Candidate.Status.RUNNING, val_accuracy=None)
    client.force_login(user)
    client.post(reverse("run_cancel", args=[run.pk]), {"confirm": "yes"})

    csv_rows = list(
        csv.DictReader(io.StringIO(client.get(reverse("run_csv", args=[run.pk])).content.decode()))
    )
    api_rows = client.get(f"/api/runs/{run.pk}/candidates/", {"status": "cancelled"}).json()["results"]
    dashboard_rows = events.snapshot(run, since=None)["candidates"]

    assert [r["status"] for r in csv_rows] == ["done", "cancelled"]
    assert [(r["index"], r["status"]) for r in api_rows] == [(1, "cancelled")]
    assert sorted(r["status"] for r in dashboard_rows) == ["cancelled", "done"]
    page = client.get(reverse("candidate_detail", args=[run.candidates.get(index=1).pk])).content.decode()
    assert "Cancelled with its run before it finished training" in page


def test_cancel_checks_owner(client, user, other_user):
    run = make_run(other_user, status=SearchRun.Status.RUNNING)
    client.force_login(user)

    assert client.post(reverse("run_cancel", args=[run.pk]), {"confirm": "yes"}).status_code == 404
    assert client.get(reverse("run_cancel", args=[run.pk])).status_code == 404
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING


def test_cancel_requires_login(client, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)

    assert client.post(reverse("run_cancel", args=[run.pk]), {"confirm": "yes"}).status_code == 302
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING


# --- extend -------------------------------------------------------------------------------------


def test_extend_works(client, user):
    # A pending run is only re-budgeted (a done one would be restarted on a worker).
    run = make_run(user, status=SearchRun.Status.PENDING)
    client.force_login(user)

    response = client.post(reverse("run_extend", args=[run.pk]), {"extra_budget": 5})

    assert response.status_code == 302
    run.refresh_from_db()
    assert run.budget == 25
    assert run.config["budget"] == 25


def test_extend_accepts_a_json_body(client, user):
    run = make_run(user, status=SearchRun.Status.PENDING)
    client.force_login(user)

    response = client.post(
        reverse("run_extend", args=[run.pk]),
        json.dumps({"extra_budget": 3}),
        content_type="application/json",
        HTTP_ACCEPT="application/json",
    )

    assert response.status_code == 200
    assert response.json()["run"]["budget"] == 23


@pytest.mark.parametrize("value", ["0", "-2", "abc", "100000"])
def test_extend_rejects_bad_amounts(client, user, value):
    run = make_run(user, status=SearchRun.Status.PENDING)
    client.force_login(user)

    response = client.post(
        reverse("run_extend", args=[run.pk]), {"extra_budget": value}, HTTP_ACCEPT="application/json"
    )

    assert response.status_code == 400
    assert response.json()["message"].startswith("Extra candidates:")
    run.refresh_from_db()
    assert run.budget == 20


def test_extend_checks_owner(client, user, other_user):
    run = make_run(other_user, status=SearchRun.Status.PENDING)
    client.force_login(user)

    assert client.post(reverse("run_extend", args=[run.pk]), {"extra_budget": 5}).status_code == 404
    run.refresh_from_db()
    assert run.budget == 20


def test_extend_requires_login(client, user):
    run = make_run(user, status=SearchRun.Status.PENDING)

    assert client.post(reverse("run_extend", args=[run.pk]), {"extra_budget": 5}).status_code == 302
    run.refresh_from_db()
    assert run.budget == 20


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_works(client, user):
    run = make_run(user)
    parent = make_candidate(run, 0, on_pareto=True, int8_val_accuracy=0.895, int8_test_accuracy=0.87)
    make_candidate(run, 1, parent=parent, mutation="filters +3", val_accuracy=0.75)
    make_candidate(
        run,
        2,
        status=Candidate.Status.REJECTED,
        feasible=False,
        val_accuracy=None,
        test_accuracy=None,
        train_seconds=None,
        reject_reason="peak SRAM 5000 B > limit 2048 B",
    )
    client.force_login(user)

    response = client.get(reverse("run_csv", args=[run.pk]))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert f'filename="run-{run.pk}-candidates.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert list(rows[0]) == [
        "index",
        "label",
        "status",
        "feasible",
        "on_pareto",
        "val_accuracy",
        "test_accuracy",
        "int8_val_accuracy",
        "int8_test_accuracy",
        "peak_sram_bytes",
        "flash_bytes",
        "macs",
        "latency_ms_estimate",
        "params",
        "train_seconds",
        "rung",
        "parent_index",
        "mutation",
        "reject_reason",
        "notes",
    ]
    assert [r["index"] for r in rows] == ["0", "1", "2"]
    assert [r["label"] for r in rows] == ["#0", "#1", "#2"]
    assert (rows[0]["on_pareto"], rows[0]["val_accuracy"], rows[0]["peak_sram_bytes"]) == (
        "True",
        "0.9",
        "320",
    )
    assert (rows[0]["macs"], rows[0]["latency_ms_estimate"], rows[0]["params"]) == ("4864", "0.1824", "2610")
    assert (rows[0]["int8_val_accuracy"], rows[0]["int8_test_accuracy"]) == ("0.895", "0.87")
    assert rows[1]["int8_val_accuracy"] == ""  # trained before int8 export existed
    assert (rows[1]["parent_index"], rows[1]["mutation"], rows[1]["val_accuracy"]) == (
        "0",
        "filters +3",
        "0.75",
    )
    assert (rows[2]["status"], rows[2]["val_accuracy"], rows[2]["feasible"]) == ("rejected", "", "False")
    assert rows[2]["reject_reason"] == "peak SRAM 5000 B > limit 2048 B"
    assert [r["rung"] for r in rows] == ["0", "0", "0"]


def test_csv_checks_owner(client, user, other_user):
    run = make_run(other_user)
    client.force_login(user)

    assert client.get(reverse("run_csv", args=[run.pk])).status_code == 404


def test_csv_requires_login(client, user):
    run = make_run(user)

    assert client.get(reverse("run_csv", args=[run.pk])).status_code == 302


# --- delete -------------------------------------------------------------------------------------


def test_delete_works(client, user):
    project = make_project(user)
    run = make_run(user, project)
    make_candidate(run, 0)
    client.force_login(user)

    response = client.post(reverse("run_delete", args=[run.pk]))

    assert response.status_code == 302
    assert response.url == reverse("project_detail", args=[project.pk])
    assert not SearchRun.objects.filter(pk=run.pk).exists()
    assert not Candidate.objects.exists()


def test_delete_removes_the_weights(client, user, settings, django_capture_on_commit_callbacks):
    run = make_run(user)
    weights = settings.MEDIA_ROOT / "weights" / f"run-{run.pk}"
    weights.mkdir(parents=True)
    (weights / "candidate-0.pt").write_bytes(b"weights")
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("run_delete", args=[run.pk]))

    assert not weights.exists()


def test_delete_refuses_an_active_run(client, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)
    client.force_login(user)

    response = client.post(reverse("run_delete", args=[run.pk]))

    assert response.status_code == 302
    assert SearchRun.objects.filter(pk=run.pk).exists()


def test_delete_checks_owner(client, user, other_user):
    run = make_run(other_user)
    client.force_login(user)

    assert client.post(reverse("run_delete", args=[run.pk])).status_code == 404
    assert SearchRun.objects.filter(pk=run.pk).exists()


def test_delete_rejects_get(client, user):
    run = make_run(user)
    client.force_login(user)

    assert client.get(reverse("run_delete", args=[run.pk])).status_code == 405


def test_delete_requires_login(client, user):
    run = make_run(user)

    assert client.post(reverse("run_delete", args=[run.pk])).status_code == 302
    assert SearchRun.objects.filter(pk=run.pk).exists()


def test_new_run_takes_a_sparsity_range_for_structured_pruning(
    client, user, enqueued, django_capture_on_commit_callbacks
):
    project = make_project(user)
    profile = make_profile(user)
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("run_create", args=[project.pk]),
            _form_data(profile, pruning="on", sparsity_low=0.1, sparsity_high=0.5),
        )

    run = SearchRun.objects.get(owner=user)
    assert response.status_code == 302
    assert run.config["sparsity"] == [0.1, 0.5]


def test_without_pruning_the_range_is_ignored(client, user, enqueued, django_capture_on_commit_callbacks):
    project = make_project(user)
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("run_create", args=[project.pk]), _form_data(make_profile(user), sparsity_low=0.1)
        )

    assert SearchRun.objects.get(owner=user).config["sparsity"] is None


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"sparsity_low": 0.6, "sparsity_high": 0.2}, "sparsity_high", "must not be below"),
        ({"sparsity_low": "", "sparsity_high": 0.2}, "sparsity_low", "Give the sparsity range"),
        ({"sparsity_high": 0.99}, "sparsity_high", "less than or equal to 0.95"),
        ({"strategy": "memnas", "sparsity_low": 0.1, "sparsity_high": 0.2}, "pruning", "not MemNAS"),
    ],
)
def test_pruning_range_errors_name_the_field(client, user, extra, field, message):
    project = make_project(user)
    client.force_login(user)
    data = _form_data(
        make_profile(user), pruning="on", **{"sparsity_low": 0.1, "sparsity_high": 0.5, **extra}
    )

    response = client.post(reverse("run_create", args=[project.pk]), data)

    assert response.status_code == 200
    assert any(message in e for e in response.context["form"].errors[field])
    assert not SearchRun.objects.filter(owner=user).exists()
