"""Fixtures and settings shared by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._s3 import s3_bucket, s3_server, s3_storage  # noqa: F401 (fixtures)

TESTS_DIR = Path(__file__).resolve().parent

# Tests are marked by where they live, so `-m engine` / `-m "not e2e"` select whole trees.
_MARKER_BY_FOLDER = {
    "engine": "engine",
    "web": "web",
    "integration": "integration",
    "faults": "faults",
    "e2e": "e2e",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.resolve()
        if not path.is_relative_to(TESTS_DIR):
            continue
        parts = path.relative_to(TESTS_DIR).parts
        marker = _MARKER_BY_FOLDER.get(parts[0]) if len(parts) > 1 else None
        if marker is not None:
            item.add_marker(marker)
    # A check that must wait (an idle websocket held for ten minutes) starts first and ends last,
    # so its wait overlaps everything else instead of adding to the suite's time.
    items.sort(key=lambda item: -1 if item.get_closest_marker("session_start") else 0)
    items.sort(key=lambda item: 1 if item.get_closest_marker("session_end") else 0)


@pytest.fixture(autouse=True)
def _web_test_settings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Web tests run without Redis and without writing under var/.

    Events go to an in-memory channel layer (integration tests, in their own tree, use the real
    Redis from REDIS_URL), saved files (trained weights) to a temporary MEDIA_ROOT and cached
    data sets to a temporary NASWEB_CACHE_DIR.
    """
    if request.node.get_closest_marker("web") is None:
        return
    settings = request.getfixturevalue("settings")
    # Hashing the fixtures' passwords with the production hasher costs ~0.35 s per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.MEDIA_ROOT = tmp_path_factory.mktemp("media")
    settings.NASWEB_CACHE_DIR = tmp_path_factory.mktemp("cache")
    # Lease renewals run in a thread, which cannot see a test's open transaction: none happen
    # within a web test (tests/integration and tests/faults renew real leases).
    settings.NASWEB_LEASE_SECONDS = 3600
    # Past a lease, work queued by the same test must not also look lost in the broker: whether
    # it does would depend on the real broker's queue (empty in CI, not always elsewhere).
    settings.NASWEB_RESEND_SECONDS = 4 * 3600


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="alice-password")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="bob-password")
