"""Request-size limits that apply while a body streams in, before anything is decoded.

Two layers, so that neither the ASGI server's process nor Django ever holds more than the limit:

- :class:`BodyLimit` wraps the ASGI application: a request whose ``Content-Length`` is over the
  limit is answered 413 without reading its body, and one without a length (chunked) is cut off
  as soon as the bytes received pass the limit;
- :class:`LimitedUploadHandler`, the first of Django's upload handlers, does the same inside the
  multipart parser (for WSGI and the test client) and tells the view why the files are missing
  (``request.upload_refused``), so the upload form can say so.

Upload files themselves go to temporary files on disk (``TemporaryFileUploadHandler``), never
to memory, and are decoded only in a bounded child process (``searches.services.datasets``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict

# Room for the form's other fields and the multipart boundaries around the files.
MULTIPART_SLACK = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def upload_limit_bytes() -> int:
    """The largest upload accepted (all files of one request together)."""
    return int(settings.NASWEB_UPLOAD_MAX_MB) * 1024**2


def body_limit_bytes() -> int:
    return upload_limit_bytes() + MULTIPART_SLACK


def refusal(size: int) -> str:
    return (
        f"the upload is over {upload_limit_bytes() // 1024**2} MB (at least {size / 1024**2:.1f} MB "
        "were sent); it was refused before it was read"
    )


class LimitedUploadHandler(FileUploadHandler):
    """Stops a multipart upload once its body passes the limit, and records why on the request."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.received = 0

    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: bytes,
        encoding: str | None = None,
    ) -> tuple[QueryDict, MultiValueDict] | None:
        if content_length > body_limit_bytes():
            self._record(content_length)
            # "Handled": no field and no file is parsed, and the body is never read.
            return QueryDict(mutable=True), MultiValueDict()
        return None

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > upload_limit_bytes():
            self._record(self.received)
            # The parser drops what it has and discards the rest of the body unread.
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None

    def _record(self, size: int) -> None:
        if self.request is not None:
            self.request.upload_refused = refusal(size)  # type: ignore[attr-defined]


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over the limit, before (or while) it arrives."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int] = body_limit_bytes) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        length = _content_length(scope)
        if length is not None and length > limit:
            await _too_large(send, length, limit)
            return
        received = 0
        started = False
        cut_off = False

        async def counting_receive() -> Message:
            nonlocal received, cut_off
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Django stops reading and answers nothing; the 413 goes out below.
                    cut_off = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if cut_off and not started:
            await _too_large(send, received, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, size: int, limit: int) -> None:
    body = (
        f"Request body too large: {size:,} bytes or more, the limit is {limit:,} bytes "
        f"(uploads up to {upload_limit_bytes() // 1024**2} MB).\n"
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
