"""The events publisher against a real redis-server of its own: order, coalescing, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels_redis.core import RedisChannelLayer

from searches import events
from tests._processes import REDIS_SERVER, RedisServer

if not Path(REDIS_SERVER).exists():
    pytest.skip(f"needs {REDIS_SERVER}", allow_module_level=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _collect(layer: RedisChannelLayer, channel: str, seconds: float) -> list[dict[str, Any]]:
    """Group messages received on ``channel`` until ``seconds`` pass without one."""
    received = []
    while True:
        try:
            received.append(await asyncio.wait_for(layer.receive(channel), timeout=seconds))
        except TimeoutError:
            return received


def _subscribe(layer: RedisChannelLayer) -> str:
    async def join() -> str:
        channel = await layer.new_channel()
        await layer.group_add("run-1", channel)
        return channel

    return async_to_sync(join)()


def test_a_burst_arrives_in_order_in_few_group_messages(server: RedisServer) -> None:
    publisher = events.Publisher(lambda: RedisChannelLayer(hosts=[server.url]))
    reader = RedisChannelLayer(hosts=[server.url])
    channel = _subscribe(reader)
    for seq in range(1, 101):
        publisher.publish("run-1", {"type": "candidate", "seq": seq})
    assert publisher.flush(timeout=10)

    received = async_to_sync(_collect)(reader, channel, 1.0)
    seqs = []
    for message in received:
        seqs += [m["seq"] for m in message.get("messages", [message.get("message")])]
    assert seqs == list(range(1, 101))  # none lost, none reordered
    assert len(received) < 100  # coalesced while a send was in flight


def test_messages_published_while_redis_is_down_are_delivered_when_it_returns(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "RETRY_SECONDS", 30.0)
    publisher = events.Publisher(lambda: RedisChannelLayer(hosts=[server.url]))
    reader = RedisChannelLayer(hosts=[server.url])
    channel = _subscribe(reader)
    server.shutdown_saving()  # the group's membership survives the restart
    publisher.publish("run-1", {"type": "run", "seq": 1})  # returns at once, never raises
    time.sleep(1)
    server.start()
    assert publisher.flush(timeout=30)
    received = async_to_sync(_collect)(reader, channel, 1.0)
    assert [m["message"]["seq"] for m in received] == [1]  # retried until Redis was back
