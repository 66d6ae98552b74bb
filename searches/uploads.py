"""Request-size limits that apply while a body streams in, before anything is decoded.

Three layers, so that neither the ASGI server's process nor Django ever holds more than the limit:

- :func:`limit_daphne_bodies` teaches daphne's request (a Twisted ``Request``, which otherwise
  receives the whole body and queues all of it for the application before the application sees
  a byte: 2.6 GB of memory for a 210 MB upload) to answer 413 and close the connection as soon as
  the declared length, or the bytes received, pass the limit;
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

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict

logger = logging.getLogger(__name__)

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
    body = _too_large_text(size, limit)
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


def _too_large_text(size: int, limit: int) -> bytes:
    return (
        f"Request body too large: {size:,} bytes or more, the limit is {limit:,} bytes "
        f"(uploads up to {upload_limit_bytes() // 1024**2} MB).\n"
    ).encode()


def limit_daphne_bodies() -> None:
    """Make daphne refuse a body over the limit while it streams in (a no-op outside daphne).

    daphne (pinned in requirements.txt) builds every HTTP request from
    ``daphne.http_protocol.WebRequest``; a subclass that checks the declared length and counts
    the body's chunks takes its place.  Past the limit it writes a 413 and closes the connection,
    so the rest of the body is never received, stored or queued.
    """
    try:
        from daphne import http_protocol
    except ImportError:
        return
    base: Any = http_protocol.WebRequest
    if getattr(base, "nasweb_body_limit", False):
        return

    class LimitedWebRequest(base):  # type: ignore[misc, valid-type]
        nasweb_body_limit = True
        _received = 0
        _refused = False

        def gotLength(self, length: int | None) -> None:
            limit = body_limit_bytes()
            if length is not None and length > limit:
                self._refuse(length, limit)
                length = 0  # nothing of it is kept
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._received += len(data)
            limit = body_limit_bytes()
            if self._received > limit:
                self._refuse(self._received, limit)
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if not self._refused:
                super().requestReceived(command, path, version)

        def _refuse(self, size: int, limit: int) -> None:
            self._refused = True
            body = _too_large_text(size, limit)
            logger.warning("refused a request body of %s bytes or more (limit %s)", size, limit)
            transport = self.channel.transport
            transport.write(
                b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            transport.loseConnection()

    http_protocol.WebRequest = LimitedWebRequest
