"""The run dashboard's websocket, driven through the whole ASGI stack (origin check, session auth)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import Client

from nasweb.asgi import application
from searches import consumers, events
from searches.consumers import CLOSE_FORBIDDEN, RunConsumer
from searches.models import Candidate, SearchRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ORIGIN = b"http://localhost"


@pytest.fixture
def run(user) -> SearchRun:
    run = SearchRun.objects.create(owner=user, dataset="digits", budget=10, status=SearchRun.Status.RUNNING)
    for index in range(2):
        candidate = Candidate.objects.create(
            run=run, index=index, architecture={}, status=Candidate.Status.RUNNING, peak_sram_bytes=1000
        )
        events.candidate_changed(candidate)
    return run


def _cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
def owner_cookie(user) -> bytes:
    return _cookie(user)


def _socket(
    run_id: int,
    cookie: bytes | None,
    origin: bytes | None = ORIGIN,
    query: str = "",
    host: bytes = b"localhost",
):
    headers = [(b"host", host)]
    if origin is not None:
        headers.append((b"origin", origin))
    if cookie is not None:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, f"/ws/runs/{run_id}/{query}", headers=headers)


async def _connected(run_id: int, cookie: bytes | None, query: str = "") -> tuple[Any, dict]:
    """An open socket and the snapshot it got first."""
    socket = _socket(run_id, cookie, query=query)
    connected, _ = await socket.connect()
    assert connected
    return socket, await socket.receive_json_from()


async def _assert_refused(socket: WebsocketCommunicator) -> None:
    connected, _ = await socket.connect()
    assert connected  # accepted only to tell the client why (4403), see searches.consumers
    assert await socket.receive_output() == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}


@database_sync_to_async
def _finish(run: SearchRun, index: int, val_accuracy: float) -> None:
    candidate = Candidate.objects.get(run=run, index=index)
    candidate.status = Candidate.Status.DONE
    candidate.val_accuracy = val_accuracy
    candidate.save()
    events.candidate_changed(candidate)


async def test_it_works(run, owner_cookie):
    socket, snapshot = await _connected(run.pk, owner_cookie)

    assert snapshot["type"] == "snapshot" and snapshot["full"] is True
    assert snapshot["seq"] == 2
    assert [c["index"] for c in snapshot["candidates"]] == [0, 1]
    assert snapshot["run"]["running"] == 2

    await _finish(run, 1, 0.9)
    delta = await socket.receive_json_from()
    assert delta["type"] == "candidate" and delta["seq"] == 3
    assert delta["candidate"]["index"] == 1
    assert delta["candidate"]["status"] == "done"
    assert delta["candidate"]["error"] == pytest.approx(0.1)
    await socket.disconnect()


async def test_it_relays_run_events(run, owner_cookie):
    socket, _ = await _connected(run.pk, owner_cookie)

    run.status = SearchRun.Status.DONE
    await database_sync_to_async(run.save)(update_fields=["status"])
    await database_sync_to_async(events.run_changed)(run)

    message = await socket.receive_json_from()
    assert message["type"] == "run" and message["seq"] == 3
    assert message["run"]["status"] == "done"
    await socket.disconnect()


async def test_it_checks_owner(run, other_user):
    cookie = await database_sync_to_async(_cookie)(other_user)
    await _assert_refused(_socket(run.pk, cookie))


async def test_it_requires_login(run):
    await _assert_refused(_socket(run.pk, None))


async def test_it_refuses_missing_run(run, owner_cookie):
    await _assert_refused(_socket(run.pk + 1000, owner_cookie))


async def test_it_rejects_foreign_origin(run, owner_cookie):
    socket = _socket(run.pk, owner_cookie, origin=b"http://evil.example")
    connected, _ = await socket.connect()
    assert not connected


async def test_it_rejects_the_same_host_on_another_port(run, owner_cookie):
    socket = _socket(run.pk, owner_cookie, origin=b"http://localhost:9999", host=b"localhost:8000")
    connected, _ = await socket.connect()
    assert not connected


async def test_it_accepts_the_served_origin_with_its_port(run, owner_cookie):
    socket = _socket(run.pk, owner_cookie, origin=b"http://localhost:8000", host=b"localhost:8000")
    connected, _ = await socket.connect()
    assert connected
    await socket.disconnect()


async def test_it_rejects_missing_origin(run, owner_cookie):
    connected, _ = await _socket(run.pk, owner_cookie, origin=None).connect()
    assert not connected


async def test_resync_returns_only_newer_rows(run, owner_cookie):
    socket, snapshot = await _connected(run.pk, owner_cookie)
    await _finish(run, 0, 0.8)
    await socket.receive_json_from()  # the delta, which a real client might have missed

    await socket.send_json_to({"type": "resync", "since": snapshot["seq"]})
    resync = await socket.receive_json_from()

    assert resync["type"] == "snapshot" and resync["full"] is False
    assert resync["seq"] == snapshot["seq"] + 1
    assert [c["index"] for c in resync["candidates"]] == [0]
    await socket.disconnect()


async def test_resync_without_a_number_sends_everything(run, owner_cookie):
    socket, _ = await _connected(run.pk, owner_cookie)

    await socket.send_json_to({"type": "resync", "since": "nonsense"})
    resync = await socket.receive_json_from()

    assert resync["full"] is True and len(resync["candidates"]) == 2
    await socket.disconnect()


async def test_it_ignores_unknown_messages(run, owner_cookie):
    socket, _ = await _connected(run.pk, owner_cookie)

    await socket.send_json_to({"type": "delete-everything"})

    assert await socket.receive_nothing()
    await socket.disconnect()


async def test_reconnect_with_since_gets_only_newer_rows(run, owner_cookie):
    await _finish(run, 1, 0.7)

    socket, snapshot = await _connected(run.pk, owner_cookie, query="?since=2")

    assert snapshot["full"] is False
    assert [c["index"] for c in snapshot["candidates"]] == [1]
    await socket.disconnect()


async def test_it_rechecks_permission_on_resync(run, owner_cookie):
    socket, snapshot = await _connected(run.pk, owner_cookie)
    await database_sync_to_async(Session.objects.all().delete)()  # logged out elsewhere

    await socket.send_json_to({"type": "resync", "since": snapshot["seq"]})

    assert await socket.receive_output() == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}


async def test_it_rechecks_permission_periodically(run, owner_cookie, other_user, monkeypatch):
    monkeypatch.setattr(RunConsumer, "RECHECK_SECONDS", 0.05)
    socket, _ = await _connected(run.pk, owner_cookie)

    await database_sync_to_async(SearchRun.objects.filter(pk=run.pk).update)(owner=other_user)

    assert await socket.receive_output(timeout=2) == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}


async def test_revoked_socket_gets_no_more_events(run, owner_cookie, other_user, monkeypatch):
    monkeypatch.setattr(RunConsumer, "RECHECK_SECONDS", 0.05)
    socket, _ = await _connected(run.pk, owner_cookie)
    await database_sync_to_async(SearchRun.objects.filter(pk=run.pk).update)(owner=other_user)
    await socket.receive_output(timeout=2)  # the close

    await _finish(run, 0, 0.5)

    assert await socket.receive_nothing(timeout=0.3)


async def test_big_snapshot_comes_in_parts(run, owner_cookie, monkeypatch):
    for index in range(2, 12):
        await database_sync_to_async(Candidate.objects.create)(run=run, index=index, architecture={})
    monkeypatch.setattr(consumers, "MAX_MESSAGE_BYTES", 2000)
    socket, first = await _connected(run.pk, owner_cookie)

    parts = [first]
    while parts[-1]["more"]:
        parts.append(await socket.receive_json_from())

    assert len(parts) > 2
    assert first["full"] is True and all(p["full"] is False for p in parts[1:])
    assert {p["seq"] for p in parts} == {first["seq"]}
    assert [c["index"] for p in parts for c in p["candidates"]] == list(range(12))
    await socket.disconnect()


async def test_snapshot_parts_stay_under_the_limit():  # async only to share the module mark
    rows = [{"id": i, "mutation": "x" * 100} for i in range(50)]
    snapshot = {"type": "snapshot", "seq": 7, "full": True, "run": {"id": 1}, "candidates": rows}

    texts = consumers.snapshot_messages(snapshot, limit=1000)

    assert all(len(text.encode()) <= 1000 for text in texts)
    parts = [json.loads(text) for text in texts]
    assert [c for p in parts for c in p["candidates"]] == rows
    assert [p["more"] for p in parts] == [True] * (len(parts) - 1) + [False]


async def test_a_delta_too_big_for_one_message_arrives_as_a_snapshot(run, owner_cookie, monkeypatch):
    socket, snapshot = await _connected(run.pk, owner_cookie)
    monkeypatch.setattr(consumers, "MAX_MESSAGE_BYTES", 500)
    ids = await database_sync_to_async(lambda: list(run.candidates.values_list("pk", flat=True)))()

    await database_sync_to_async(events.candidates_changed)(run.pk, ids)
    replacement = await socket.receive_json_from()

    assert replacement["type"] == "snapshot" and replacement["full"] is False
    assert replacement["seq"] == snapshot["seq"] + 1
    await socket.disconnect()


async def _group_send(run: SearchRun, event: dict[str, Any]) -> None:
    from channels.layers import get_channel_layer

    await get_channel_layer().group_send(events.group_name(run.pk), event)


def _delta(seq: int, index: int) -> dict[str, Any]:
    return {"type": "candidate", "seq": seq, "candidate": {"id": index, "index": index, "seq": seq}}


async def test_a_coalesced_burst_reaches_the_browser_as_one_message(run, owner_cookie):
    socket, snapshot = await _connected(run.pk, owner_cookie)
    deltas = [_delta(snapshot["seq"] + i, i) for i in range(1, 6)]

    await _group_send(run, {"type": "run.events", "messages": deltas})
    message = await socket.receive_json_from()

    assert message == {"type": "events", "messages": deltas}
    assert await socket.receive_nothing()
    await socket.disconnect()


async def test_a_burst_too_big_for_one_message_is_split_in_order(run, owner_cookie, monkeypatch):
    socket, snapshot = await _connected(run.pk, owner_cookie)
    monkeypatch.setattr(consumers, "MAX_MESSAGE_BYTES", 400)
    deltas = [_delta(snapshot["seq"] + i, i) for i in range(1, 21)]

    await _group_send(run, {"type": "run.events", "messages": deltas})
    received = []
    while sum(len(m.get("messages", [m])) for m in received) < len(deltas):
        text = await socket.receive_from()
        assert len(text.encode()) <= 400
        received.append(json.loads(text))

    assert len(received) > 1
    assert [d for m in received for d in m.get("messages", [m])] == deltas
    await socket.disconnect()


async def test_a_delta_too_big_within_a_burst_becomes_a_snapshot_in_its_place(run, owner_cookie, monkeypatch):
    socket, snapshot = await _connected(run.pk, owner_cookie)
    seq = snapshot["seq"]
    small = _delta(seq + 1, 0)
    big = _delta(seq + 2, 1) | {"padding": "x" * 2000}
    monkeypatch.setattr(consumers, "MAX_MESSAGE_BYTES", 1000)

    await _group_send(run, {"type": "run.events", "messages": [small, big]})

    assert await socket.receive_json_from() == small
    replacement = await socket.receive_json_from()
    assert replacement["type"] == "snapshot" and replacement["full"] is False
    await socket.disconnect()
