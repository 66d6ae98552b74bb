"""API requests at the edges: format suffixes on actions, odd filter values, out-of-range numbers.

Each of these answered 500 (or was accepted) before.  With DATABASE_URL set they run on
PostgreSQL, which refuses NUL bytes in text where SQLite does not.
"""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from searches import queue as task_queue
from searches.models import Candidate, HardwareProfile, SearchRun
from tests.web.factories import make_candidate, make_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def enqueued(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(task_queue, "start_run", calls.append)
    return calls


# --- format suffixes --------------------------------------------------------------------------


def test_cancel_takes_the_json_suffix(api, user):
    run = make_run(user, status=SearchRun.Status.RUNNING)

    response = api.post(f"/api/runs/{run.pk}/cancel.json/")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["status"] == "cancelled"


def test_extend_takes_the_json_suffix(api, user):
    run = make_run(user, status=SearchRun.Status.PENDING)

    response = api.post(f"/api/runs/{run.pk}/extend.json/", {"extra_budget": 5}, format="json")

    assert response.status_code == 200
    assert response.json()["budget"] == 25


def test_verify_takes_the_json_suffix(api, user):
    candidate = make_candidate(make_run(user), 0, status=Candidate.Status.FAILED)

    response = api.post(f"/api/candidates/{candidate.pk}/verify.json/")

    # The action itself answered: an untrained candidate cannot be verified.
    assert response.status_code == 409
    assert response.json()["detail"].startswith("Cannot verify")


@pytest.mark.parametrize("download", ["header", "bundle", "onnx", "tflite"])
def test_downloads_refuse_a_suffix_with_a_404(api, user, download):
    candidate = make_candidate(make_run(user), 0)

    response = api.get(f"/api/candidates/{candidate.pk}/{download}.json/")
    other = api.get(f"/api/candidates/{candidate.pk}/{download}.xml/")

    assert response.status_code == 404
    assert response.json()["detail"] == "Downloads take no format suffix: drop the '.json'."
    assert other.status_code == 404


def test_suffixed_actions_check_owner(api, other_user):
    run = make_run(other_user, status=SearchRun.Status.RUNNING)
    candidate = make_candidate(run, 0)

    assert api.post(f"/api/runs/{run.pk}/cancel.json/").status_code == 404
    assert api.post(f"/api/candidates/{candidate.pk}/verify.json/").status_code == 404
    run.refresh_from_db()
    assert run.status == SearchRun.Status.RUNNING


def test_suffixed_actions_require_authentication(user):
    run = make_run(user, status=SearchRun.Status.RUNNING)

    assert APIClient().post(f"/api/runs/{run.pk}/cancel.json/").status_code == 401


# --- filter values ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["\x00", "running\x00", "bogus"])
def test_run_list_refuses_an_unknown_status(api, user, value):
    make_run(user, status=SearchRun.Status.RUNNING)

    response = api.get("/api/runs/", {"status": value})

    assert response.status_code == 400
    assert response.json()["status"] == [
        f"Unknown value {value!r}; expected one of: pending, running, done, failed, cancelled."
    ]


def test_run_list_still_filters_by_status(api, user, other_user):
    running = make_run(user, status=SearchRun.Status.RUNNING)
    make_run(user, status=SearchRun.Status.DONE)
    make_run(other_user, status=SearchRun.Status.RUNNING)

    response = api.get("/api/runs/", {"status": "running"})

    assert response.status_code == 200
    assert [r["id"] for r in response.json()] == [running.pk]


@pytest.mark.parametrize("value", ["\x00", "²", "1x"])
def test_run_list_refuses_a_bad_project(api, user, value):
    response = api.get("/api/runs/", {"project": value})

    assert response.status_code == 400
    assert response.json()["project"] == [f"Invalid value {value!r}; expected an id."]


@pytest.mark.parametrize("name", ["status", "export_status"])
def test_candidate_list_refuses_a_nul_byte(api, user, name):
    run = make_run(user)
    make_candidate(run, 0)

    response = api.get(f"/api/runs/{run.pk}/candidates/", {name: "\x00"})

    assert response.status_code == 400
    assert response.json()[name][0].startswith("Unknown value '\\x00'; expected one of: ")


# --- numbers out of range ---------------------------------------------------------------------


def test_run_create_caps_the_train_subset_as_the_form_does(api, enqueued):
    preset = HardwareProfile.objects.presets().first()
    body = {"profile": preset.pk, "dataset": "digits", "budget": 2, "train_subset": 10**12}

    response = api.post("/api/runs/", body, format="json")

    assert response.status_code == 400
    assert response.json()["train_subset"] == ["Ensure this value is less than or equal to 10000000."]
    assert not SearchRun.objects.exists() and enqueued == []
