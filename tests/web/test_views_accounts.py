from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db

# The only pages an anonymous visitor may see; everything else sends them to log in (the API
# answers 401 instead, see test_api.py).
PUBLIC = {"login", "signup", "logout", "favicon"}  # the icon is for every page, signed in or not


def _named_patterns(resolver: URLResolver, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            found += _named_patterns(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern) and entry.name:
            found.append((entry.name, prefix + str(entry.pattern)))
    return found


def _ui_urls() -> list[str]:
    """Every named page of the web UI, with 1 for each id."""
    urls = []
    for name, pattern in _named_patterns(get_resolver()):
        if name in PUBLIC or pattern.startswith(("admin/", "api/")):
            continue
        urls.append("/" + pattern.replace("<int:pk>", "1").replace("<int:project_pk>", "1"))
    return urls


def test_every_page_requires_login(client):
    urls = _ui_urls()

    assert len(urls) >= 20
    assert not [url for url in urls if "<" in url]
    for url in urls:
        response = client.get(url)
        assert response.status_code in (302, 405), url
        if response.status_code == 302:
            assert response.url.startswith(reverse("login")), url


def test_signup_works(client):
    response = client.post(
        reverse("signup"),
        {"username": "carol", "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"},
    )

    assert response.status_code == 302
    assert response.url == reverse("project_list")
    assert get_user_model().objects.filter(username="carol").exists()
    assert client.get(reverse("project_list")).status_code == 200  # logged in


def test_signup_shows_errors(client, user):
    response = client.post(
        reverse("signup"), {"username": "alice", "password1": "short", "password2": "different"}
    )

    errors = response.context["form"].errors
    assert "A user with that username already exists." in errors["username"]
    assert any("password fields didn" in e for e in errors["password2"])
    assert get_user_model().objects.count() == 1


def test_signup_redirects_signed_in_users(client, user):
    client.force_login(user)

    assert client.get(reverse("signup")).status_code == 302


def test_login_works(client, user):
    page = client.get(reverse("login"))
    response = client.post(reverse("login"), {"username": "alice", "password": "alice-password"})

    assert page.status_code == 200
    assert reverse("signup") in page.content.decode()
    assert response.status_code == 302
    assert client.get(reverse("project_list")).status_code == 200


def test_logout_needs_post(client, user):
    client.force_login(user)

    assert client.get(reverse("logout")).status_code == 405
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("project_list")).status_code == 302


def test_pages_are_csrf_protected(user):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post(reverse("project_create"), {"name": "x"})

    assert response.status_code == 403


def test_token_page_works(client, user):
    client.force_login(user)

    empty = client.get(reverse("api_token"))
    created = client.post(reverse("api_token"), follow=True)
    first = Token.objects.get(user=user).key
    replaced = client.post(reverse("api_token"), follow=True)
    shown = client.get(reverse("api_token"))
    # Only a replaced token has a predecessor that stops working.
    assert "Your API token was created." in created.content.decode()
    assert "no longer works" not in created.content.decode()
    assert "the previous one no longer works" in replaced.content.decode()

    assert empty.context["token"] is None
    assert created.redirect_chain[0][1] == replaced.redirect_chain[0][1] == 302
    assert Token.objects.get(user=user).key != first
    assert Token.objects.get(user=user).key in shown.content.decode()


def test_token_page_requires_login(client):
    assert client.post(reverse("api_token")).status_code == 302
    assert not Token.objects.exists()
