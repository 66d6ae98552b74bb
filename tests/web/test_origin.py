"""The websocket Origin check: the page's own scheme, host and port, or a trusted origin."""

from __future__ import annotations

import pytest

from searches.consumers import origin_allowed


def _scope(origin: str | None, host: str = "localhost:8000", scheme: str = "ws", **headers: str) -> dict:
    pairs = [(b"host", host.encode())] + [
        (k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()
    ]
    if origin is not None:
        pairs.append((b"origin", origin.encode()))
    return {"type": "websocket", "scheme": scheme, "headers": pairs}


@pytest.fixture(autouse=True)
def _hosts(settings):
    settings.ALLOWED_HOSTS = ["localhost", "example.org", "[::1]"]
    settings.CSRF_TRUSTED_ORIGINS = []


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://localhost:8000", "localhost:8000", "ws"),
        ("http://LOCALHOST:8000", "localhost:8000", "ws"),
        ("https://example.org", "example.org", "wss"),
        ("https://example.org:443", "example.org", "wss"),
        ("http://[::1]:8000", "[::1]:8000", "ws"),
    ],
)
def test_it_accepts_the_served_origin(origin, host, scheme):
    assert origin_allowed(_scope(origin, host, scheme))


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://localhost:9999", "localhost:8000", "ws"),  # another port
        ("http://localhost", "localhost:8000", "ws"),  # the default port is another port
        ("https://localhost:8000", "localhost:8000", "ws"),  # another scheme
        ("http://example.org", "example.org", "wss"),  # a plain-HTTP page on an HTTPS site
        ("http://evil.example:8000", "localhost:8000", "ws"),
        ("http://evil.example", "evil.example", "ws"),  # a host outside ALLOWED_HOSTS
        ("http://localhost:notaport", "localhost:8000", "ws"),
        ("null", "localhost:8000", "ws"),
        (None, "localhost:8000", "ws"),
        ("http://localhost:8000", "", "ws"),  # no Host header
    ],
)
def test_it_rejects_any_other_origin(origin, host, scheme):
    assert not origin_allowed(_scope(origin, host, scheme))


def test_it_takes_the_scheme_from_the_proxy_only_when_told_to(settings):
    scope = _scope("https://example.org", "example.org", "ws", x_forwarded_proto="https")
    assert not origin_allowed(scope)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert origin_allowed(scope)
    assert not origin_allowed(_scope("https://example.org", "example.org", "ws", x_forwarded_proto="http"))


def test_it_accepts_csrf_trusted_origins(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://nas.example.org:8443", "https://*.example.net"]
    assert origin_allowed(_scope("https://nas.example.org:8443", "localhost:8000"))
    assert origin_allowed(_scope("https://lab.example.net", "localhost:8000"))
    assert not origin_allowed(_scope("https://nas.example.org", "localhost:8000"))
    assert not origin_allowed(_scope("http://lab.example.net", "localhost:8000"))
    # The Host must still be one of ours.
    assert not origin_allowed(_scope("https://nas.example.org:8443", "evil.example"))
