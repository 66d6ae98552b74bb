"""A dashboard left open on an idle run keeps one websocket for ten minutes (real daphne, real Redis).

redis-py 8 gives connections a 5 s socket timeout, the same as channels_redis's blocking read:
with the library defaults an idle consumer died every 5-15 s and daphne closed the socket with
1011.  This runs nasweb's own settings in a real daphne process against a private redis-server,
opens one socket early in the session and, in the last test of the session, checks that it is
still the same open connection after ``HOLD_SECONDS`` and that it still receives events.

The waiting overlaps the rest of the suite: ``test_an_idle_dashboard_connects`` runs first and
``test_an_idle_dashboard_keeps_its_connection`` last (markers ``session_start`` and
``session_end``, ordered by tests/conftest.py); run alone, the module takes ten minutes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from channels_redis.core import RedisChannelLayer

REPO = Path(__file__).resolve().parents[2]
HOLD_SECONDS = 600.0

pytestmark = pytest.mark.slow

SETUP_SCRIPT = """
from django.contrib.auth.models import User
from django.test import Client
from searches.models import SearchRun
user = User.objects.create_user("idle", password="idle-password")
run = SearchRun.objects.create(owner=user, dataset="digits", budget=5, status="running")
client = Client()
client.force_login(user)
print(run.pk, client.cookies["sessionid"].value)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(
        f"nothing listens on port {port} after {seconds} s:\n{log.read_text(errors='replace')}"
    )


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class SocketLog:
    """What the client saw: every open, every close (code) and every message."""

    opens: list[float] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, what: list[Any], value: Any) -> None:
        with self.changed:
            what.append(value)
            self.changed.notify_all()

    def wait_for(self, predicate: Any, seconds: float) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout=seconds)


def _frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    if len(payload) < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    elif len(payload) < 2**16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class BrowserSocket:
    """A websocket client that behaves like a browser tab: it answers pings and never sends on its own.

    (daphne's own autobahn cannot be used here: txaio is already bound to Twisted in this process.)
    """

    def __init__(self, log: SocketLog) -> None:
        self.log = log
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None

    async def open(self, port: int, path: str, origin: str, cookie: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {origin}\r\nCookie: {cookie}\r\n\r\n"
        )
        writer.write(request.encode())
        response = await reader.readuntil(b"\r\n\r\n")
        if not response.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"no websocket: {response!r}")
        self.writer = writer
        self.log.record(self.log.opens, time.monotonic())
        self.reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def close(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
        if self.writer is not None:
            self.writer.close()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(_frame(0x1, json.dumps(message).encode()))
        await self.writer.drain()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        assert self.writer is not None
        data = b""
        try:
            while True:
                first, second = await reader.readexactly(2)
                size = second & 0x7F
                if size >= 126:
                    size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
                payload = await reader.readexactly(size)
                opcode = first & 0x0F
                if opcode == 0x9:  # ping
                    self.writer.write(_frame(0xA, payload))
                elif opcode == 0x8:  # close
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    self.log.record(self.log.closes, code)
                    self.writer.write(_frame(0x8, payload[:2]))
                    return
                elif opcode in (0x0, 0x1):  # a text message, possibly in fragments
                    data += payload
                    if first & 0x80:
                        self.log.record(self.log.messages, json.loads(data))
                        data = b""
        except (asyncio.IncompleteReadError, ConnectionError):
            self.log.record(self.log.closes, None)


@dataclass
class IdleDashboard:
    log: SocketLog
    socket: BrowserSocket
    loop: asyncio.AbstractEventLoop
    run_id: int
    redis_url: str
    daphne_log: Path

    def send(self, message: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(self.socket.send(message), self.loop).result(10)

    def publish(self, message: dict[str, Any]) -> None:
        """Send ``message`` to the run's group as ``searches.events`` does, from another client."""
        layer = RedisChannelLayer(hosts=[self.redis_url])

        async def send() -> None:
            await layer.group_send(f"run-{self.run_id}", {"type": "run.event", "message": message})
            await layer.close_pools()

        asyncio.run(send())


@pytest.fixture(scope="session")
def idle_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdleDashboard]:
    """A private redis-server, daphne with nasweb's settings on SQLite, and one open dashboard socket."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("needs redis-server (scripts/test.sh installs it)")
    tmp = tmp_path_factory.mktemp("idle-websocket")
    redis_port, web_port = _free_port(), _free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env |= {"REDIS_URL": redis_url, "NASWEB_DATA_DIR": str(tmp / "data"), "DEBUG": "true"}
    env["DJANGO_SETTINGS_MODULE"] = "nasweb.settings"
    redis_log, daphne_log = tmp / "redis.log", tmp / "daphne.log"
    processes: list[subprocess.Popen] = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    try:
        with redis_log.open("w") as out:
            command = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
            processes.append(subprocess.Popen([*command, "--appendonly", "no"], stdout=out, stderr=out))
        _wait_for_port(redis_port, processes[-1], redis_log)
        redis.Redis.from_url(redis_url).ping()
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput"], cwd=REPO, env=env, check=True, capture_output=True)
        setup = subprocess.run(
            [*manage, "shell", "-c", SETUP_SCRIPT],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        run_id, session_key = setup.stdout.split()[-2:]
        with daphne_log.open("w") as out:
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port)]
            command.append("nasweb.asgi:application")
            processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out))
        _wait_for_port(web_port, processes[-1], daphne_log)

        log = SocketLog()
        client = BrowserSocket(log)
        thread.start()
        origin, cookie = f"http://127.0.0.1:{web_port}", f"sessionid={session_key}"
        opening = client.open(web_port, f"/ws/runs/{run_id}/", origin, cookie)
        asyncio.run_coroutine_threadsafe(opening, loop).result(30)
        yield IdleDashboard(log, client, loop, int(run_id), redis_url, daphne_log)
    finally:
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        for process in reversed(processes):
            _stop(process)


@pytest.mark.session_start
def test_an_idle_dashboard_connects(idle_dashboard: IdleDashboard) -> None:
    log = idle_dashboard.log
    assert log.wait_for(lambda: log.messages or log.closes, 30), idle_dashboard.daphne_log.read_text()
    assert not log.closes and len(log.opens) == 1
    assert log.messages[0]["type"] == "snapshot" and log.messages[0]["run"]["id"] == idle_dashboard.run_id


@pytest.mark.session_end
@pytest.mark.timeout(HOLD_SECONDS + 300)
def test_an_idle_dashboard_keeps_its_connection(idle_dashboard: IdleDashboard) -> None:
    log = idle_dashboard.log
    assert log.wait_for(lambda: log.opens, 30)
    held = time.monotonic() - log.opens[0]
    # Any close ends the wait at once: the assertion below then says how it ended.
    log.wait_for(lambda: log.closes, max(HOLD_SECONDS - held, 0.0))
    held = time.monotonic() - log.opens[0]
    daphne = idle_dashboard.daphne_log.read_text(errors="replace")
    assert not log.closes, f"closed after {held:.0f} s with {log.closes}; daphne said:\n{daphne[-3000:]}"
    assert held >= HOLD_SECONDS and len(log.opens) == 1
    assert "Timeout reading from" not in daphne

    # Still the same live connection, both ways: it answers a resync and relays a group event.
    seen = len(log.messages)
    idle_dashboard.send({"type": "resync"})
    assert log.wait_for(lambda: len(log.messages) > seen, 30)
    assert log.messages[seen]["type"] == "snapshot"
    idle_dashboard.publish({"type": "candidates", "seq": 10**6, "candidates": []})
    assert log.wait_for(lambda: any(m.get("seq") == 10**6 for m in log.messages[seen:]), 30)
    assert not log.closes and len(log.opens) == 1
