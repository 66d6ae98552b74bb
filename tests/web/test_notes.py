"""Notes on runs and candidates: saved from their pages, shown in lists, the dashboard and the CSV."""

from __future__ import annotations

import pytest
from django.urls import reverse

from searches import events
from tests.web.factories import make_candidate, make_run

pytestmark = pytest.mark.django_db


def test_run_notes_work(client, user):
    run = make_run(user, name="mine")
    client.force_login(user)
    response = client.post(reverse("run_notes", args=[run.pk]), {"notes": "  best seed so far \n"})
    assert response.status_code == 302 and response["Location"] == reverse("run_detail", args=[run.pk])
    run.refresh_from_db()
    assert run.notes == "best seed so far"
    assert "best seed so far" in client.get(reverse("run_list")).content.decode()
    assert "best seed so far</textarea>" in client.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert client.get(f"/api/runs/{run.pk}/").json()["notes"] == "best seed so far"


def test_candidate_notes_work(client, user):
    run = make_run(user)
    candidate = make_candidate(run)
    client.force_login(user)
    client.post(reverse("candidate_notes", args=[candidate.pk]), {"notes": "try on the Nano"})
    candidate.refresh_from_db()
    assert candidate.notes == "try on the Nano"
    assert events.snapshot(run)["candidates"][0]["notes"] == "try on the Nano"
    csv = client.get(reverse("run_csv", args=[run.pk])).content.decode()
    assert csv.splitlines()[0].endswith(",notes") and csv.splitlines()[1].endswith(",try on the Nano")


def test_notes_say_what_is_wrong(client, user):
    run = make_run(user)
    client.force_login(user)
    response = client.post(reverse("run_notes", args=[run.pk]), {"notes": "x" * 2001}, follow=True)
    assert "Notes not saved: Ensure this value has at most 2000 characters" in response.content.decode()
    run.refresh_from_db()
    assert run.notes == ""


def test_notes_check_owner(client, user, other_user):
    run = make_run(user)
    candidate = make_candidate(run)
    client.force_login(other_user)
    assert client.post(reverse("run_notes", args=[run.pk]), {"notes": "mine now"}).status_code == 404
    assert client.post(reverse("candidate_notes", args=[candidate.pk]), {"notes": "x"}).status_code == 404
    run.refresh_from_db()
    candidate.refresh_from_db()
    assert run.notes == candidate.notes == ""


def test_notes_require_login_and_post(client, user):
    run = make_run(user)
    response = client.post(reverse("run_notes", args=[run.pk]), {"notes": "x"})
    assert response.status_code == 302 and "/login" in response["Location"]
    client.force_login(user)
    assert client.get(reverse("run_notes", args=[run.pk])).status_code == 405
    candidate = make_candidate(run)
    assert client.get(reverse("candidate_notes", args=[candidate.pk])).status_code == 405
