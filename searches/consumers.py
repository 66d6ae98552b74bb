"""The run dashboard's websocket: one connection per open dashboard, relaying ``searches.events``.

A connection is only ever for the run's owner.  The user comes from the session cookie at
connect time, and permission is checked again on every resync and every ``RECHECK_SECONDS``
(a logout, a password change or a deleted run ends the stream), not only on connect.

A refused or revoked connection is accepted and then closed with code 4403: a browser sees a
handshake refusal only as code 1006, which a client cannot tell from a network error, so it
would keep reconnecting.  The Origin header is checked before this consumer runs
(``SameOriginValidator``, wrapped around the routes in ``nasweb.asgi``).

daphne refuses websocket messages over 1 MiB (its ``--websocket_max_message_size``), and a
snapshot of a few thousand candidates is bigger.  A snapshot therefore goes out in parts of at
most ``MAX_MESSAGE_BYTES``: the first keeps ``full``, the others are ``full: false`` snapshots
of the same ``seq``, and ``more`` says whether another part follows.  A delta too big for one
message is replaced by the snapshot of the changes since the sequence number before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import import_module
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from searches import events
from searches.models import SearchRun

logger = logging.getLogger(__name__)

# Close code for "not allowed" (4000-4999 are free for applications; 4403 mirrors HTTP 403).
CLOSE_FORBIDDEN = 4403
# Half of daphne's default limit, leaving room for the run and the message's other fields.
MAX_MESSAGE_BYTES = 512 * 1024


# ---- the Origin check ------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(parts: SplitResult) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if malformed."""
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname, port


def _served_scheme(scope: dict[str, Any], headers: dict[bytes, bytes]) -> str:
    """http or https, as Django's ``request.scheme`` decides it (SECURE_PROXY_SSL_HEADER included)."""
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, secure_value = proxy_header
        value = headers.get(name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if value is not None:
            return "https" if value.decode("latin-1").split(",")[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def _allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    # As Django's request.get_host(): a DEBUG site without ALLOWED_HOSTS serves localhost.
    return hosts or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the socket's Origin is the page's own (scheme, host and port) or a trusted one.

    The page's own origin is the scheme it was served with and the Host header, which must be in
    ALLOWED_HOSTS; the trusted ones are CSRF_TRUSTED_ORIGINS (``https://*.example.org`` too),
    the same rule Django applies to a form's POST.
    """
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    domain, _ = split_domain_port(host)
    if not origin or not domain or not validate_host(domain, _allowed_hosts()):
        return False
    served = urlsplit(f"//{host}")
    parsed = urlsplit(origin)
    key = _origin_key(parsed)
    if key is None:
        return False
    if key == _origin_key(served._replace(scheme=_served_scheme(scope, headers))):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        allowed = urlsplit(trusted)
        if allowed.netloc.startswith("*"):
            if allowed.scheme == parsed.scheme and is_same_domain(parsed.netloc, allowed.netloc[1:]):
                return True
        elif key == _origin_key(allowed):
            return True
    return False


class SameOriginValidator:
    """ASGI middleware: refuses a websocket whose Origin is not the site's own (see ``origin_allowed``).

    channels' ``AllowedHostsOriginValidator`` compares only the host name with ALLOWED_HOSTS, so
    any port and scheme passed (``http://localhost:9999`` for a site on localhost:8000).
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def _get_run_for_user(user: Any, run_id: int) -> SearchRun | None:
    return SearchRun.objects.for_user(user).filter(pk=run_id).first()


def _parse_since(value: Any) -> int | None:
    """A non-negative sequence number, or None for anything else (a full snapshot)."""
    try:
        since = int(value)
    except (TypeError, ValueError):
        return None
    return since if since >= 0 else None


def snapshot_messages(snapshot: dict[str, Any], limit: int | None = None) -> list[str]:
    """``snapshot`` as JSON texts of at most about ``limit`` bytes each (see the module docstring)."""
    limit = limit or MAX_MESSAGE_BYTES
    head = {key: value for key, value in snapshot.items() if key != "candidates"}
    head_bytes = len(json.dumps(head).encode()) + 64
    parts: list[list[str]] = [[]]
    size = head_bytes
    for row in snapshot["candidates"]:
        text = json.dumps(row)
        if parts[-1] and size + len(text.encode()) + 1 > limit:
            parts.append([])
            size = head_bytes
        parts[-1].append(text)
        size += len(text.encode()) + 1
    texts = []
    for i, part in enumerate(parts):
        fields = json.dumps(head | {"full": bool(snapshot["full"]) and i == 0, "more": i < len(parts) - 1})
        # The rows are encoded once, above; splice them into the part's object.
        texts.append(f'{fields[:-1]}, "candidates": [{",".join(part)}]}}')
    return texts


@database_sync_to_async
def _snapshot_messages(run: SearchRun, since: int | None) -> list[str]:
    return snapshot_messages(events.snapshot(run, since=since))


async def _session_user_owns(session_key: str | None, run_id: int) -> bool:
    """Whether the session, as it is in the store *now*, belongs to the run's owner."""
    if not session_key:
        return False
    # A fresh store: the one in the scope cached the session's contents at connect time.
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = await get_user({"session": store})
    return await database_sync_to_async(_get_run_for_user)(user, run_id) is not None


class RunConsumer(AsyncJsonWebsocketConsumer):
    """Snapshot on connect, then the run's deltas; ``{"type": "resync", "since": N}`` on request."""

    RECHECK_SECONDS = 30.0

    run: SearchRun | None = None
    _recheck_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        self.group = events.group_name(self.run_id)
        self.run = await database_sync_to_async(_get_run_for_user)(self.scope.get("user"), self.run_id)
        await self.accept()
        if self.run is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        # Join before reading the snapshot: an event committed in between is then both in the
        # snapshot and queued, and the client drops the copy by its sequence number.
        await self.channel_layer.group_add(self.group, self.channel_name)
        since = _parse_since(parse_qs(self.scope.get("query_string", b"").decode()).get("since", [None])[0])
        await self._send_snapshot(since)
        self._recheck_task = asyncio.create_task(self._recheck_periodically())

    async def disconnect(self, code: int) -> None:
        if self._recheck_task is not None:
            self._recheck_task.cancel()
        if self.run is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "resync" or self.run is None:
            return
        if not await self._still_allowed():
            await self._revoke()
            return
        await self._send_snapshot(_parse_since(content.get("since")))

    async def run_event(self, event: dict[str, Any]) -> None:
        """A ``searches.events`` delta from the group: pass it on unchanged (if it fits)."""
        await self._relay(event["message"])

    async def run_events(self, event: dict[str, Any]) -> None:
        """Several deltas the publisher coalesced: relayed in order as few ``events`` messages,
        so that the browser parses and draws a burst once, not once per delta."""
        limit = MAX_MESSAGE_BYTES  # read at call time: tests lower it
        pending: list[str] = []
        size = 64
        for message in event["messages"]:
            text = json.dumps(message)
            length = len(text.encode())
            if pending and (size + length + 1 > limit or length + 64 > limit):
                await self._send_events(pending)
                pending, size = [], 64
            if length + 64 > limit:
                await self._relay(message)  # alone (or, too big even alone, as a snapshot)
                continue
            pending.append(text)
            size += length + 1
        await self._send_events(pending)

    async def _send_events(self, texts: list[str]) -> None:
        if self.run is None or not texts:
            return
        if len(texts) == 1:
            await self.send(text_data=texts[0])
        else:
            await self.send(text_data=f'{{"type": "events", "messages": [{",".join(texts)}]}}')

    async def _relay(self, message: dict[str, Any]) -> None:
        if self.run is None:
            return
        text = json.dumps(message)
        if len(text.encode()) <= MAX_MESSAGE_BYTES:  # read at call time: tests lower it
            await self.send(text_data=text)
        else:
            await self._send_snapshot(max(int(message["seq"]) - 1, 0))

    async def _send_snapshot(self, since: int | None) -> None:
        run = self.run
        if run is None:
            return
        for text in await _snapshot_messages(run, since):
            if self.run is None:  # revoked while the snapshot was read
                return
            await self.send(text_data=text)

    async def _still_allowed(self) -> bool:
        session = self.scope.get("session")
        return await _session_user_owns(getattr(session, "session_key", None), self.run_id)

    async def _revoke(self) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)
        self.run = None
        await self.close(code=CLOSE_FORBIDDEN)

    async def _recheck_periodically(self) -> None:
        while self.run is not None:
            await asyncio.sleep(self.RECHECK_SECONDS)
            try:
                allowed = await self._still_allowed()
            except Exception:
                # A database hiccup must not end a dashboard: the next check decides.
                logger.exception("re-checking access to run %s failed", self.run_id)
                continue
            if not allowed and self.run is not None:
                await self._revoke()
