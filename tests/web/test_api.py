from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from searches import queue as task_queue
from searches.engine.strategies.options import MemNASConfig
from searches.models import Candidate, HardwareProfile, Project, SearchRun
from tests.web.factories import SMALL_ARCH, make_candidate, make_profile, make_project, make_run

pytestmark = pytest.mark.django_db

PROFILE = {"name": "Sensor node", "core": "cortex-m4f", "clock_mhz": 80, "sram_kb": 48, "flash_kb": 200}


@pytest.fixture
def api(user) -> APIClient:
    """A client authenticated with the user's API token."""
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture
def enqueued(monkeypatch):

    calls: list[int] = []
    monkeypatch.setattr(task_queue, "start_run", calls.append)
    return calls


def _preset() -> HardwareProfile:
    return HardwareProfile.objects.presets().get(name="NUCLEO-L476RG")


# --- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/",
        "/api/profiles/",
        "/api/projects/",
        "/api/datasets/",
        "/api/runs/",
        "/api/runs/1/candidates/",
        "/api/candidates/1/",
        "/api/schema/",
    ],
)
def test_it_requires_authentication(anonymous, url):
    response = anonymous.get(url)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_it_requires_authentication_to_write(anonymous, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)

    assert anonymous.post("/api/projects/", {"name": "x"}).status_code == 401
    assert anonymous.post(f"/api/runs/{run.pk}/cancel/").status_code == 401
    assert not Project.objects.exists()
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING


def test_a_bad_token_is_refused(anonymous):
    anonymous.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert anonymous.get("/api/projects/").status_code == 401


def test_session_authentication_works(client, user):
    make_project(user, "Mine")
    client.force_login(user)

    response = client.get("/api/projects/")

    assert response.status_code == 200
    assert [p["name"] for p in response.json()] == ["Mine"]


def test_session_writes_need_csrf(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post("/api/projects/", {"name": "x"}, format="json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


# --- profiles -----------------------------------------------------------------------------------


def test_profiles_list_own_and_presets(api, user, other_user):
    make_profile(user, "Mine")
    make_profile(other_user, "Bob's")

    names = [p["name"] for p in api.get("/api/profiles/").json()]

    assert "Mine" in names and "Bob's" not in names
    assert len(names) == 16


def test_profiles_crud_works(api, user):
    created = api.post("/api/profiles/", PROFILE, format="json")
    pk = created.json()["id"]
    updated = api.patch(f"/api/profiles/{pk}/", {"sram_kb": 32}, format="json")
    fetched = api.get(f"/api/profiles/{pk}/")
    deleted = api.delete(f"/api/profiles/{pk}/")

    assert created.status_code == 201
    assert created.json()["is_preset"] is False
    assert updated.status_code == 200
    assert fetched.json()["sram_kb"] == 32
    assert deleted.status_code == 204
    assert not HardwareProfile.objects.owned_by(user).exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sram_kb", 0, "greater than or equal to 1"),
        ("sram_kb", 10**7, "Must be at most 65,536 KB."),
        ("clock_mhz", -5, "greater than or equal to 0.001"),
        ("latency_ms", 10**9, "Must be at most 60,000 ms."),
        ("core", "pentium", "is not a valid choice"),
    ],
)
def test_profiles_validate_fields(api, field, value, message):
    response = api.post("/api/profiles/", {**PROFILE, field: value}, format="json")

    assert response.status_code == 400
    assert any(message in e for e in response.json()[field])


def test_profiles_reject_a_duplicate_name(api, user):
    make_profile(user, "Sensor node")

    response = api.post("/api/profiles/", PROFILE, format="json")

    assert response.status_code == 400
    assert response.json()["name"] == ["You already have a profile with this name."]


def test_presets_are_read_only(api):
    preset = _preset()

    assert api.get(f"/api/profiles/{preset.pk}/").json()["is_preset"] is True
    assert api.patch(f"/api/profiles/{preset.pk}/", {"sram_kb": 1}, format="json").status_code == 403
    assert api.delete(f"/api/profiles/{preset.pk}/").status_code == 403
    assert _preset().sram_kb == 128


def test_profiles_check_owner(api, other_user):
    bobs = make_profile(other_user, "Bob's")

    assert api.get(f"/api/profiles/{bobs.pk}/").status_code == 404
    assert api.patch(f"/api/profiles/{bobs.pk}/", {"sram_kb": 1}, format="json").status_code == 404
    assert api.delete(f"/api/profiles/{bobs.pk}/").status_code == 404
    assert HardwareProfile.objects.filter(pk=bobs.pk).exists()


# --- projects -----------------------------------------------------------------------------------


def test_projects_crud_works(api, user):
    created = api.post("/api/projects/", {"name": "Gestures", "description": "IMU"}, format="json")
    pk = created.json()["id"]
    updated = api.put(f"/api/projects/{pk}/", {"name": "Gestures 2", "description": ""}, format="json")
    listed = api.get("/api/projects/")
    deleted = api.delete(f"/api/projects/{pk}/")

    assert created.status_code == 201
    assert updated.json()["name"] == "Gestures 2"
    assert [p["id"] for p in listed.json()] == [pk]
    assert deleted.status_code == 204
    assert not Project.objects.exists()


def test_projects_check_owner(api, other_user):
    bobs = make_project(other_user, "Bob's")

    assert api.get("/api/projects/").json() == []
    assert api.get(f"/api/projects/{bobs.pk}/").status_code == 404
    assert api.put(f"/api/projects/{bobs.pk}/", {"name": "mine now"}, format="json").status_code == 404
    assert api.delete(f"/api/projects/{bobs.pk}/").status_code == 404
    assert Project.objects.filter(pk=bobs.pk, name="Bob's").exists()


# --- datasets -----------------------------------------------------------------------------------


def test_datasets_list_the_builtins(api):
    rows = api.get("/api/datasets/").json()

    assert {(d["key"], tuple(d["input_shape"])) for d in rows} == {
        ("digits", (8, 8, 1)),
        ("fashion-mnist", (28, 28, 1)),
    }


# --- runs ---------------------------------------------------------------------------------------


def test_runs_list_works(api, user, other_user):
    project = make_project(user)
    in_project = make_run(user, project, status=SearchRun.Status.RUNNING)
    make_run(user, None, status=SearchRun.Status.DONE)
    make_run(other_user)

    everything = api.get("/api/runs/").json()
    filtered = api.get("/api/runs/", {"project": project.pk}).json()
    running = api.get("/api/runs/", {"status": "running"}).json()

    assert len(everything) == 2
    assert [r["id"] for r in filtered] == [in_project.pk]
    assert [r["id"] for r in running] == [in_project.pk]


def test_run_create_works(api, user, enqueued, django_capture_on_commit_callbacks):
    project = make_project(user)
    body = {"project": project.pk, "profile": _preset().pk, "dataset": "digits", "budget": 6, "parallel": 1}

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/runs/", body, format="json")

    assert response.status_code == 201
    run = SearchRun.objects.get(owner=user)
    assert response.json()["id"] == run.pk
    assert response.json()["status"] == "pending"
    assert (run.project, run.profile, run.dataset, run.budget) == (project, _preset(), "digits", 6)
    assert run.config["population"] == 8
    assert run.config["limits"]["sram_bytes"] == 128 * 1024
    assert enqueued == [run.pk]


def test_run_create_takes_a_macs_limit(api, user, enqueued, django_capture_on_commit_callbacks):
    body = {"profile": _preset().pk, "dataset": "digits", "budget": 6, "max_macs": 30_000_000}

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/runs/", body, format="json")
    bad = api.post("/api/runs/", {**body, "max_macs": 0}, format="json")

    assert response.status_code == 201
    run = SearchRun.objects.get(owner=user)
    assert run.config["limits"]["macs"] == 30_000_000
    assert run.config["bounds"]["macs"] == 30_000_000
    assert run.config["deploy_top_k"] == 3  # default: train the top 3 for deployment
    assert bad.status_code == 400 and "max_macs" in bad.json()


def test_run_create_takes_deploy_top_k(api, user, enqueued, django_capture_on_commit_callbacks):
    body = {"profile": _preset().pk, "dataset": "digits", "budget": 6, "deploy_top_k": 0}

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/runs/", body, format="json")
    bad = api.post("/api/runs/", {**body, "deploy_top_k": -1}, format="json")

    assert response.status_code == 201
    assert SearchRun.objects.get(owner=user).config["deploy_top_k"] == 0
    assert bad.status_code == 400 and "deploy_top_k" in bad.json()


def test_profile_api_keeps_a_macs_limit(api, user):
    response = api.post("/api/profiles/", {**PROFILE, "max_macs": 1_000_000}, format="json")

    assert response.status_code == 201
    assert response.json()["max_macs"] == 1_000_000
    assert HardwareProfile.objects.get(owner=user).max_macs == 1_000_000


def test_run_create_validates(api, user, other_user, enqueued):
    bobs_project = make_project(other_user)
    bobs_profile = make_profile(other_user)

    response = api.post(
        "/api/runs/",
        {"project": bobs_project.pk, "profile": bobs_profile.pk, "dataset": "mnist", "budget": 0},
        format="json",
    )

    assert response.status_code == 400
    assert set(response.json()) == {"project", "profile", "dataset", "budget"}
    assert not SearchRun.objects.exists()
    assert enqueued == []


def test_run_create_takes_memnas_settings(api, user, enqueued, django_capture_on_commit_callbacks):
    body = {
        "profile": _preset().pk,
        "dataset": "digits",
        "strategy": "memnas",
        "budget": 6,
        "memnas_lambda": 0.2,
        "memnas_top_k": 2,
        "memnas_seed_backbone": "single_blocks",
        "memnas_round0_size": 3,
        "memnas_ranker": "list",
        "memnas_memory_scale": "backbone",
        "memnas_on_stall": "raise_lambda",
    }

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/runs/", body, format="json")

    assert response.status_code == 201
    run = SearchRun.objects.get(owner=user)
    assert run.strategy == "memnas"
    # Every MemNAS setting is recorded with the run, the defaults (here β) filled in.
    expected = MemNASConfig(
        lam=0.2,
        top_k=2,
        seed_backbone="single_blocks",
        round0_size=3,
        ranker="list",
        memory_scale="backbone",
        on_stall="raise_lambda",
    )
    assert run.config["strategy_options"] == expected.to_json()
    assert enqueued == [run.pk]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"strategy": "memnas", "memnas_lambda": 1.5}, "memnas_lambda", "less than or equal to 1"),
        ({"strategy": "memnas", "memnas_beta": -1}, "memnas_beta", "greater than or equal to 0"),
        ({"strategy": "memnas", "memnas_top_k": 17}, "memnas_top_k", "less than or equal to 16"),
        ({"strategy": "memnas", "memnas_top_k": "many"}, "memnas_top_k", "valid integer"),
        ({"memnas_lambda": 0.5}, "memnas_lambda", "Only MemNAS runs take this setting."),
        ({"strategy": "random", "memnas_top_k": 2}, "memnas_top_k", "Only MemNAS runs take this setting."),
        ({"strategy": "memnas", "memnas_seed_backbone": "big"}, "memnas_seed_backbone", "not a valid choice"),
        ({"strategy": "memnas", "memnas_ranker": "tree"}, "memnas_ranker", "not a valid choice"),
        ({"strategy": "memnas", "memnas_memory_scale": "flash"}, "memnas_memory_scale", "not a valid choice"),
        ({"strategy": "random", "memnas_memory_scale": "budget"}, "memnas_memory_scale", "Only MemNAS runs"),
        ({"strategy": "memnas", "memnas_on_stall": "restart"}, "memnas_on_stall", "not a valid choice"),
        ({"strategy": "random", "memnas_on_stall": "best_child"}, "memnas_on_stall", "Only MemNAS runs"),
        (
            {"strategy": "memnas", "memnas_seed_backbone": "single_blocks", "memnas_round0_size": 0},
            "memnas_round0_size",
            "greater than or equal to 1",
        ),
        (
            {"strategy": "memnas", "memnas_seed_backbone": "single_blocks", "memnas_round0_size": 33},
            "memnas_round0_size",
            "less than or equal to 32",
        ),
        ({"strategy": "memnas", "memnas_round0_size": 4}, "memnas_round0_size", '"single_blocks"'),
        ({"strategy": "aging_evolution", "memnas_ranker": "list"}, "memnas_ranker", "Only MemNAS runs"),
    ],
)
def test_run_create_validates_memnas_settings(api, user, enqueued, fields, field, message):
    body = {"profile": _preset().pk, "dataset": "digits", "budget": 6} | fields

    response = api.post("/api/runs/", body, format="json")

    assert response.status_code == 400
    assert any(message in error for error in response.json()[field])
    assert not SearchRun.objects.exists()
    assert enqueued == []


def test_run_create_takes_a_sparsity_range(api, user, enqueued, django_capture_on_commit_callbacks):
    body = {"profile": _preset().pk, "dataset": "digits", "budget": 6, "sparsity": [0.2, 0.7]}

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/runs/", body, format="json")

    assert response.status_code == 201
    assert SearchRun.objects.get(owner=user).config["sparsity"] == [0.2, 0.7]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sparsity": [0.7, 0.2]}, "low <= high"),
        ({"sparsity": [0.1]}, "at least 2 elements"),
        ({"sparsity": [0.1, 0.99]}, "less than or equal to 0.95"),
        ({"strategy": "memnas", "sparsity": [0.1, 0.2]}, "MemNAS runs do not take a sparsity gene."),
    ],
)
def test_run_create_validates_the_sparsity_range(api, user, enqueued, fields, message):
    body = {"profile": _preset().pk, "dataset": "digits", "budget": 6} | fields

    response = api.post("/api/runs/", body, format="json")

    assert response.status_code == 400
    assert message in str(response.json()["sparsity"])
    assert not SearchRun.objects.exists()


def test_run_retrieve_checks_owner(api, other_user):
    bobs = make_run(other_user)

    assert api.get(f"/api/runs/{bobs.pk}/").status_code == 404
    assert api.post(f"/api/runs/{bobs.pk}/cancel/").status_code == 404
    assert api.post(f"/api/runs/{bobs.pk}/extend/", {"extra_budget": 5}, format="json").status_code == 404
    bobs.refresh_from_db()
    assert bobs.budget == 20


def test_run_retrieve_works(api, user):
    run = make_run(user)

    data = api.get(f"/api/runs/{run.pk}/").json()

    assert (data["id"], data["dataset"], data["status"], data["budget"]) == (run.pk, "digits", "done", 20)
    assert data["config"]["limits"]["sram_bytes"] == 2048


def test_run_cancel_works(api, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)
    make_candidate(run, 0, status=Candidate.Status.RUNNING)

    response = api.post(f"/api/runs/{run.pk}/cancel/")
    again = api.post(f"/api/runs/{run.pk}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert again.status_code == 409


def test_run_extend_works(api, user):
    run = make_run(user, status=SearchRun.Status.PENDING)

    response = api.post(f"/api/runs/{run.pk}/extend/", {"extra_budget": 5}, format="json")
    bad = api.post(f"/api/runs/{run.pk}/extend/", {"extra_budget": 0}, format="json")

    assert response.status_code == 200
    assert response.json()["budget"] == 25
    assert bad.status_code == 400


# --- candidates ---------------------------------------------------------------------------------


def _run_with_candidates(owner):
    run = make_run(owner)
    first = make_candidate(run, 0, val_accuracy=0.80, peak_sram_bytes=900, on_pareto=True)
    make_candidate(run, 1, parent=first, val_accuracy=0.95, peak_sram_bytes=1500, on_pareto=True)
    make_candidate(run, 2, parent=first, val_accuracy=0.70, peak_sram_bytes=1200)
    make_candidate(
        run, 3, status=Candidate.Status.REJECTED, feasible=False, val_accuracy=None, peak_sram_bytes=9000
    )
    return run


def test_candidates_list_works(api, user):
    run = _run_with_candidates(user)

    data = api.get(f"/api/runs/{run.pk}/candidates/").json()

    assert data["count"] == 4
    rows = data["results"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["parent_index"] == 0 and rows[0]["parent_index"] is None
    assert rows[1]["parent"] == rows[0]["id"]
    assert "architecture" not in rows[0]


@pytest.mark.parametrize(
    ("params", "indexes"),
    [
        ({"ordering": "-val_accuracy"}, [1, 0, 2, 3]),
        ({"ordering": "peak_sram_bytes"}, [0, 2, 1, 3]),
        ({"status": "rejected"}, [3]),
        ({"feasible": "true"}, [0, 1, 2]),
        ({"on_pareto": "true"}, [0, 1]),
        ({"min_val_accuracy": "0.75"}, [0, 1]),
        ({"max_peak_sram_bytes": "1200"}, [0, 2]),
        ({"page_size": "2", "page": "2"}, [2, 3]),
    ],
)
def test_candidates_list_filters_and_orders(api, user, params, indexes):
    run = _run_with_candidates(user)

    data = api.get(f"/api/runs/{run.pk}/candidates/", params).json()

    assert [r["index"] for r in data["results"]] == indexes


def test_candidates_list_rejects_bad_filters(api, user):
    run = _run_with_candidates(user)

    response = api.get(f"/api/runs/{run.pk}/candidates/", {"max_macs": "lots"})

    assert response.status_code == 400


def test_candidates_list_checks_owner(api, other_user):
    run = _run_with_candidates(other_user)

    assert api.get(f"/api/runs/{run.pk}/candidates/").status_code == 404


def test_candidate_detail_works(api, user):
    run = make_run(user)
    parent = make_candidate(run, 0)
    candidate = make_candidate(run, 1, parent=parent)
    child = make_candidate(run, 2, parent=candidate)

    data = api.get(f"/api/candidates/{candidate.pk}/").json()

    assert data["architecture"] == SMALL_ARCH
    assert (data["run"], data["parent"], data["children"]) == (run.pk, parent.pk, [child.pk])
    resources = data["resources"]
    assert (resources["peak_sram_bytes"], resources["flash_bytes"], resources["macs"]) == (320, 2722, 4864)
    assert [layer["name"] for layer in resources["layers"]] == ["b0l0_conv2d", "logits"]
    assert resources["layers"][0]["output_shape"] == [8, 8, 4]
    assert resources["memory"]["timeline"] and resources["memory"]["order"]


def test_candidate_detail_checks_owner(api, other_user):
    candidate = make_candidate(make_run(other_user))

    assert api.get(f"/api/candidates/{candidate.pk}/").status_code == 404


# --- schema and docs --------------------------------------------------------------------------------


def test_schema_works(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/profiles/", "/api/projects/", "/api/runs/", "/api/runs/{id}/cancel/"):
        assert path in paths
    assert "/api/runs/{run_pk}/candidates/" in paths


def test_docs_are_served_without_a_cdn(client, user):
    client.force_login(user)

    swagger = client.get("/api/docs/").content.decode()
    redoc = client.get("/api/redoc/").content.decode()

    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in swagger
    assert "/static/drf_spectacular_sidecar/redoc/" in redoc
    assert "cdn" not in swagger.lower() and "cdn" not in redoc.lower()
    # A way back to the app, and nasweb's icon.
    assert 'id="app-bar"' in swagger and 'href="/projects/"' in swagger
    assert "img/favicon.svg" in swagger


def test_every_page_has_an_icon(client, user):
    client.force_login(user)
    assert "img/favicon.svg" in client.get("/projects/").content.decode()
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response.url.endswith("img/favicon.svg")


def test_docs_require_login(client):
    response = client.get("/api/docs/")

    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")
