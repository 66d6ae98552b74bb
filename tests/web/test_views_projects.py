from __future__ import annotations

import pytest
from django.urls import reverse

from searches.models import Project, SearchRun
from tests.web.factories import make_project, make_run

pytestmark = pytest.mark.django_db


def test_home_redirects_to_the_projects(client, user):
    client.force_login(user)

    response = client.get("/")

    assert response.status_code == 302
    assert response.url == reverse("project_list")


def test_home_requires_login(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


# --- list ---------------------------------------------------------------------------------------


def test_list_works(client, user, other_user):
    mine = make_project(user, "Wake word")
    make_run(user, mine)
    make_project(other_user, "Bob's secret project")
    client.force_login(user)

    response = client.get(reverse("project_list"))

    assert response.status_code == 200
    assert list(response.context["projects"]) == [mine]
    assert response.context["projects"][0].run_count == 1
    assert "Bob's secret project" not in response.content.decode()


def test_list_requires_login(client):
    assert client.get(reverse("project_list")).status_code == 302


# --- create -------------------------------------------------------------------------------------


def test_create_works(client, user):
    client.force_login(user)

    response = client.post(reverse("project_create"), {"name": "Gestures", "description": "IMU data"})

    project = Project.objects.get(owner=user)
    assert response.status_code == 302
    assert response.url == reverse("project_detail", args=[project.pk])
    assert (project.name, project.description) == ("Gestures", "IMU data")


def test_create_shows_errors(client, user):
    make_project(user, "Gestures")
    client.force_login(user)

    missing = client.post(reverse("project_create"), {"name": ""})
    duplicate = client.post(reverse("project_create"), {"name": "Gestures"})

    assert missing.context["form"].errors["name"] == ["This field is required."]
    assert duplicate.context["form"].errors["name"] == ["You already have a project with this name."]
    assert Project.objects.count() == 1


def test_create_requires_login(client):
    assert client.post(reverse("project_create"), {"name": "Gestures"}).status_code == 302
    assert not Project.objects.exists()


# --- detail -------------------------------------------------------------------------------------


def test_detail_works(client, user):
    project = make_project(user)
    run = make_run(user, project, status=SearchRun.Status.RUNNING, evaluated=5, name="first try")
    make_run(user, None, name="elsewhere")
    client.force_login(user)

    response = client.get(reverse("project_detail", args=[project.pk]))

    assert response.status_code == 200
    assert list(response.context["runs"]) == [run]
    body = response.content.decode()
    assert "first try" in body and "elsewhere" not in body
    assert "Running" in body
    assert "5 / 20" in body
    assert reverse("run_create", args=[project.pk]) in body


def test_detail_checks_owner(client, user, other_user):
    project = make_project(other_user)
    client.force_login(user)

    assert client.get(reverse("project_detail", args=[project.pk])).status_code == 404


def test_detail_requires_login(client, user):
    project = make_project(user)

    assert client.get(reverse("project_detail", args=[project.pk])).status_code == 302


# --- edit ---------------------------------------------------------------------------------------


def test_edit_works(client, user):
    project = make_project(user, "Old")
    client.force_login(user)

    response = client.post(reverse("project_edit", args=[project.pk]), {"name": "New", "description": ""})

    assert response.status_code == 302
    project.refresh_from_db()
    assert project.name == "New"


def test_edit_checks_owner(client, user, other_user):
    project = make_project(other_user, "Old")
    client.force_login(user)

    response = client.post(reverse("project_edit", args=[project.pk]), {"name": "New"})

    assert response.status_code == 404
    project.refresh_from_db()
    assert project.name == "Old"


def test_edit_requires_login(client, user):
    project = make_project(user)

    assert client.get(reverse("project_edit", args=[project.pk])).status_code == 302


# --- delete -------------------------------------------------------------------------------------


def test_delete_works(client, user):
    project = make_project(user)
    run = make_run(user, project)
    client.force_login(user)

    response = client.post(reverse("project_delete", args=[project.pk]))

    assert response.status_code == 302
    assert response.url == reverse("project_list")
    assert not Project.objects.filter(pk=project.pk).exists()
    assert not SearchRun.objects.filter(pk=run.pk).exists()


def test_delete_refuses_a_project_with_active_runs(client, user):
    project = make_project(user)
    make_run(user, project, status=SearchRun.Status.RUNNING)
    client.force_login(user)

    response = client.post(reverse("project_delete", args=[project.pk]), follow=True)

    assert Project.objects.filter(pk=project.pk).exists()
    assert "cancel them before deleting" in response.content.decode()


def test_delete_rejects_get(client, user):
    project = make_project(user)
    client.force_login(user)

    assert client.get(reverse("project_delete", args=[project.pk])).status_code == 405
    assert Project.objects.filter(pk=project.pk).exists()


def test_delete_checks_owner(client, user, other_user):
    project = make_project(other_user)
    client.force_login(user)

    assert client.post(reverse("project_delete", args=[project.pk])).status_code == 404
    assert Project.objects.filter(pk=project.pk).exists()


def test_delete_requires_login(client, user):
    project = make_project(user)

    assert client.post(reverse("project_delete", args=[project.pk])).status_code == 302
    assert Project.objects.filter(pk=project.pk).exists()
