"""The ASGI body limit: bodies over the upload limit are refused before or while they stream in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.core.asgi import get_asgi_application

from searches.uploads import BodyLimit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

MB = 1024**2


def _scope(headers: list[tuple[bytes, bytes]], path: str = "/datasets/upload/") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }


class Client:
    """Feeds the body in 1 MB chunks, counting how many the application asked for."""

    def __init__(self, chunks: int) -> None:
        self.chunks, self.asked, self.sent = chunks, 0, []

    async def receive(self) -> dict[str, Any]:
        self.asked += 1
        if self.asked > self.chunks:
            await asyncio.sleep(3600)  # a client that stays connected, waiting for the answer
        return {"type": "http.request", "body": b"\0" * MB, "more_body": self.asked < self.chunks}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")


async def test_a_declared_length_over_the_limit_is_refused_unread(settings):
    settings.NASWEB_UPLOAD_MAX_MB = 2
    client = Client(chunks=210)

    await BodyLimit(get_asgi_application())(
        _scope([(b"content-length", str(210 * MB).encode())]), client.receive, client.send
    )

    assert client.status == 413
    assert client.asked == 0
    assert b"uploads up to 2 MB" in client.sent[-1]["body"]


async def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(settings):
    settings.NASWEB_UPLOAD_MAX_MB = 2
    client = Client(chunks=210)

    await BodyLimit(get_asgi_application())(_scope([]), client.receive, client.send)

    assert client.status == 413
    assert client.asked == 3  # 3 MB read of 210, then refused


async def test_bodies_under_the_limit_reach_django(settings):
    settings.NASWEB_UPLOAD_MAX_MB = 2
    client = Client(chunks=1)

    await BodyLimit(get_asgi_application())(
        _scope([(b"content-length", str(MB).encode())], path="/accounts/login/"), client.receive, client.send
    )

    # Django read the whole body and answered (a CSRF failure for this bare POST), not the limit.
    assert client.status == 403
    assert client.asked >= 1
