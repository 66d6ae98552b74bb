"""Notes through the API: GET shows them, PUT and PATCH change them (and nothing else)."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from searches import events
from searches.models import Candidate, SearchRun
from tests.web.factories import make_candidate, make_run

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    return _client(user)


@pytest.fixture
def run(user) -> SearchRun:
    return make_run(user, name="mine")


@pytest.fixture
def candidate(run) -> Candidate:
    return make_candidate(run)


def _url(row: SearchRun | Candidate) -> str:
    return f"/api/{'runs' if isinstance(row, SearchRun) else 'candidates'}/{row.pk}/"


@pytest.fixture(params=["run", "candidate"])
def row(request) -> SearchRun | Candidate:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("method", ["patch", "put"])
def test_it_works(api, row, method):
    response = getattr(api, method)(_url(row), {"notes": "  try on the Nano \n"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["notes"] == "try on the Nano"
    row.refresh_from_db()
    assert row.notes == "try on the Nano"
    assert api.get(_url(row)).json()["notes"] == "try on the Nano"


def test_a_candidate_note_reaches_open_dashboards(api, run, candidate):
    seq = candidate.seq
    api.patch(_url(candidate), {"notes": "best so far"}, format="json")
    candidate.refresh_from_db()
    assert candidate.seq > seq
    assert events.snapshot(run)["candidates"][0]["notes"] == "best so far"


def test_notes_show_in_the_run_list_and_the_candidate_list(api, run, candidate):
    api.patch(_url(run), {"notes": "seed 4"}, format="json")
    api.patch(_url(candidate), {"notes": "keep"}, format="json")
    assert api.get("/api/runs/").json()[0]["notes"] == "seed 4"
    assert api.get(f"/api/runs/{run.pk}/candidates/").json()["results"][0]["notes"] == "keep"


def test_an_empty_patch_changes_nothing(api, row):
    row.notes = "kept"
    row.save(update_fields=["notes"])
    response = api.patch(_url(row), {}, format="json")
    assert response.status_code == 200 and response.json()["notes"] == "kept"


def test_blank_notes_clear_them(api, row):
    row.notes = "old"
    row.save(update_fields=["notes"])
    assert api.put(_url(row), {"notes": ""}, format="json").json()["notes"] == ""
    row.refresh_from_db()
    assert row.notes == ""


def test_put_needs_the_notes(api, row):
    response = api.put(_url(row), {}, format="json")
    assert response.status_code == 400
    assert response.json() == {"notes": ["This field is required."]}


def test_too_long_notes_are_refused(api, row):
    response = api.patch(_url(row), {"notes": "x" * 2001}, format="json")
    assert response.status_code == 400
    assert response.json() == {"notes": ["Ensure this field has no more than 2000 characters."]}
    row.refresh_from_db()
    assert row.notes == ""
    assert api.patch(_url(row), {"notes": "x" * 2000}, format="json").status_code == 200


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "This field may not be null."), (["a"], "Not a valid string."), ("a\x00b", "Null characters")],
)
def test_bad_notes_say_what_is_wrong(api, row, value, message):
    response = api.patch(_url(row), {"notes": value}, format="json")
    assert response.status_code == 400
    assert message in response.json()["notes"][0]


def test_other_fields_cannot_be_changed(api, row):
    response = api.patch(_url(row), {"notes": "x", "status": "failed", "id": 7}, format="json")
    assert response.status_code == 400
    message = "Cannot be changed through the API: only notes can."
    assert response.json() == {"id": [message], "status": [message]}
    before = row.status
    row.refresh_from_db()
    assert row.notes == "" and row.status == before


def test_a_body_that_is_not_an_object_is_refused(api, row):
    response = api.patch(_url(row), ["notes"], format="json")
    assert response.status_code == 400
    assert "Expected a dictionary" in response.json()["non_field_errors"][0]


def test_it_checks_owner(row, other_user):
    other = _client(other_user)
    assert other.get(_url(row)).status_code == 404
    assert other.patch(_url(row), {"notes": "mine now"}, format="json").status_code == 404
    assert other.put(_url(row), {"notes": "mine now"}, format="json").status_code == 404
    row.refresh_from_db()
    assert row.notes == ""


def test_it_requires_login(row):
    response = APIClient().patch(_url(row), {"notes": "x"}, format="json")
    assert response.status_code in (401, 403)
    row.refresh_from_db()
    assert row.notes == ""


def test_editing_notes_opens_no_other_method(api, run, candidate):
    assert api.delete(_url(run)).status_code == 405
    assert api.delete(_url(candidate)).status_code == 405
    assert api.post("/api/candidates/", {"notes": "x"}, format="json").status_code == 404  # no list route
