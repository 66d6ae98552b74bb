"""Comparing runs: the numbers (fronts, hypervolume, best, settings), the page and the API."""

from __future__ import annotations

import pytest
from django.urls import reverse

from searches.models import Candidate
from searches.services import compare
from tests.web.factories import make_candidate, make_profile, make_run

pytestmark = pytest.mark.django_db


def test_front_keeps_the_non_dominated_points():
    assert compare.front([(3, 0.1), (1, 0.5), (2, 0.5), (2, 0.3), (4, 0.2)]) == [(1, 0.5), (2, 0.3), (3, 0.1)]


def test_hypervolume_grows_with_each_improvement_only():
    # Reference (4, 1), a box of area 4: (2, .5) covers 2 x .5; (3, .9) is dominated; (1, .5)
    # replaces (2, .5): 3 x .5; (4, 0) is outside the box; (2, .25) adds 2 x .25 to that.
    curve = compare.hypervolume_curve([(2, 0.5), (3, 0.9), (1, 0.5), (4, 0.0), (2, 0.25)], (4, 1))
    assert curve == pytest.approx([1 / 4, 1 / 4, 1.5 / 4, 1.5 / 4, 2 / 4])


def _runs(user):
    """Run a: SRAM limit 2048 B, seed 0; run b: a profile, 4096 B, seed 7."""
    a = make_run(user, name="a")
    b = make_run(user, name="b", profile=make_profile(user, name="big board"))
    b.config = {**b.config, "seed": 7, "limits": {**b.config["limits"], "sram_bytes": 4096}}
    b.save()
    make_candidate(a, 0, val_accuracy=0.9, peak_sram_bytes=1000)
    make_candidate(a, 1, val_accuracy=0.8, peak_sram_bytes=500)
    make_candidate(a, 2, status=Candidate.Status.REJECTED, val_accuracy=None, peak_sram_bytes=9000)
    make_candidate(b, 0, val_accuracy=0.97, peak_sram_bytes=3000)
    make_candidate(b, 1, val_accuracy=0.85, peak_sram_bytes=1500)
    return a, b


def test_it_compares_under_the_strictest_limits(user):
    a, b = _runs(user)
    runs = compare.runs_for(user, [a.pk, b.pk])
    data = compare.compare(runs, compare.shown_limits(runs, None, None))

    assert data["limits"]["sram_bytes"] == 2048
    first, second = data["runs"]
    assert [c["label"] for c in first["front"]] == ["#1", "#0"]
    assert first["best"]["label"] == "#0"
    # b's best overall (3000 B) is over the shown limit: its best under it is #1.
    assert second["best"]["label"] == "#1" and [c["label"] for c in second["front"]] == ["#1"]
    assert second["hypervolume"][0] == 0.0 and second["hypervolume"][1] > 0
    differing = {row["label"] for row in data["settings"] if row["differs"]}
    assert differing == {"Profile", "Seed"}

    wide = compare.compare(runs, compare.shown_limits(runs, 8192, None))
    assert wide["runs"][1]["best"]["label"] == "#0"


def test_the_page_works(client, user):
    a, b = _runs(user)
    client.force_login(user)
    response = client.get(reverse("run_compare"), {"runs": [a.pk, b.pk]})
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="compare-fronts"' in body and "js/compare.js" in body and "plotly" in body
    assert "differs" in body and "big board" in body
    assert client.get(reverse("run_compare"), {"runs": f"{a.pk},{b.pk}", "sram_kb": "8"}).status_code == 200
    listing = client.get(reverse("run_list")).content.decode()
    assert 'id="compare-form"' in listing and f'name="runs" value="{a.pk}"' in listing


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"runs": "1"}, "choose between 2 and 8 runs"),
        ({"runs": "1,x"}, "a run id is a number"),
        ({"runs": "1,2", "sram_kb": "lots"}, "sram_kb must be a number"),
    ],
)
def test_the_page_says_what_is_wrong(client, user, query, message):
    client.force_login(user)
    response = client.get(reverse("run_compare"), query, follow=True)
    assert message in response.content.decode()


def test_the_page_checks_owner(client, user, other_user):
    a, _ = _runs(user)
    theirs = make_run(other_user)
    client.force_login(other_user)
    response = client.get(reverse("run_compare"), {"runs": [theirs.pk, a.pk]}, follow=True)
    assert f"no run of yours has the id {a.pk}" in response.content.decode()
    assert "big board" not in response.content.decode()


def test_the_page_requires_login(client, user):
    a, b = _runs(user)
    response = client.get(reverse("run_compare"), {"runs": [a.pk, b.pk]})
    assert response.status_code == 302 and "/login" in response["Location"]


def test_the_page_rejects_post(client, user):
    client.force_login(user)
    assert client.post(reverse("run_compare")).status_code == 405


def test_the_api_compares(client, user, other_user):
    a, b = _runs(user)
    client.force_login(user)
    data = client.get("/api/runs/compare/", {"runs": f"{a.pk},{b.pk}"}).json()
    assert [r["id"] for r in data["runs"]] == [a.pk, b.pk]
    assert data["runs"][0]["best"]["val_accuracy"] == 0.9
    assert client.get("/api/runs/compare/", {"runs": str(a.pk)}).status_code == 400
    client.force_login(other_user)
    response = client.get("/api/runs/compare/", {"runs": f"{a.pk},{b.pk}"})
    assert response.status_code == 400 and "no run of yours" in response.json()["detail"]
    client.logout()
    assert client.get("/api/runs/compare/", {"runs": f"{a.pk},{b.pk}"}).status_code in (401, 403)
