"""live.js, the dashboard's websocket client, in a real Chromium against a scripted fake socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

LIVE_JS = Path(__file__).resolve().parents[2] / "frontend" / "static" / "js" / "live.js"

# A WebSocket stand-in: records what the client sends and lets the test deliver messages.
FAKE_SOCKET = """
window.sockets = [];
class FakeSocket {
  constructor(url) { this.url = url; this.sent = []; this.readyState = 0; window.sockets.push(this); }
  send(text) { this.sent.push(JSON.parse(text)); }
  open() { this.readyState = 1; this.onopen && this.onopen({}); }
  deliver(message) { this.onmessage({ data: JSON.stringify(message) }); }
  drop(code) { this.readyState = 3; this.onclose({ code }); }
}
FakeSocket.OPEN = 1;
window.WebSocket = FakeSocket;
window.changes = [];
window.states = [];
"""


@pytest.fixture
def client_page(chromium: Path) -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True)
        page = browser.new_page()
        page.add_script_tag(content=FAKE_SOCKET)
        page.add_script_tag(content=LIVE_JS.read_text())
        page.evaluate(
            """() => {
              window.live = new LiveRun("/ws/runs/1/",
                (c) => changes.push({ids: [...c.ids], run: c.run, full: c.full}),
                (s) => states.push(s)).start();
              sockets[0].open();
            }"""
        )
        yield page
        browser.close()


def _row(id_: int, seq: int, status: str = "done") -> dict:
    return {"id": id_, "index": id_, "seq": seq, "status": status}


def _snapshot(seq: int, rows: list[dict], full: bool = True, more: bool = False) -> dict:
    return {"type": "snapshot", "seq": seq, "full": full, "more": more, "run": {"id": 1}, "candidates": rows}


def _deliver(page: Page, message: dict, socket: int = 0) -> None:
    page.evaluate("([i, m]) => sockets[i].deliver(m)", [socket, message])


def test_it_applies_a_snapshot_then_deltas(client_page):
    _deliver(client_page, _snapshot(2, [_row(1, 1), _row(2, 2)]))
    _deliver(client_page, {"type": "candidate", "seq": 3, "candidate": _row(2, 3, "failed")})

    assert client_page.evaluate("live.seq") == 3
    assert client_page.evaluate("live.rows.get(2).status") == "failed"
    assert client_page.evaluate("changes") == [
        {"ids": [1, 2], "run": True, "full": True},
        {"ids": [2], "run": False, "full": False},
    ]
    assert client_page.evaluate("sockets[0].url").endswith("/ws/runs/1/")


def test_it_drops_what_the_snapshot_already_had(client_page):
    _deliver(client_page, _snapshot(5, [_row(1, 5, "done")]))
    _deliver(client_page, {"type": "candidate", "seq": 4, "candidate": _row(1, 4, "running")})

    assert client_page.evaluate("live.rows.get(1).status") == "done"
    assert client_page.evaluate("changes.length") == 1


def test_a_gap_that_stays_open_asks_for_a_resync(client_page):
    _deliver(client_page, _snapshot(5, []))
    _deliver(client_page, {"type": "candidate", "seq": 7, "candidate": _row(3, 7)})

    assert client_page.evaluate("live.rows.has(3)")  # applied at once, gap or not
    client_page.wait_for_function("sockets[0].sent.length > 0", timeout=2000)
    assert client_page.evaluate("sockets[0].sent") == [{"type": "resync", "since": 5}]

    _deliver(client_page, _snapshot(7, [_row(2, 6), _row(3, 7)], full=False))
    assert client_page.evaluate("live.seq") == 7
    assert client_page.evaluate("live.ahead.size") == 0


def test_a_late_message_fills_the_gap_without_a_resync(client_page):
    _deliver(client_page, _snapshot(5, []))
    _deliver(client_page, {"type": "candidate", "seq": 7, "candidate": _row(3, 7)})
    _deliver(client_page, {"type": "candidate", "seq": 6, "candidate": _row(2, 6)})

    client_page.wait_for_timeout(500)
    assert client_page.evaluate("live.seq") == 7
    assert client_page.evaluate("sockets[0].sent") == []


def test_a_snapshot_in_parts_is_one_change(client_page):
    _deliver(client_page, _snapshot(9, [_row(1, 1)], full=True, more=True))
    _deliver(client_page, _snapshot(9, [_row(2, 9)], full=False, more=False))

    assert client_page.evaluate("changes") == [{"ids": [1, 2], "run": True, "full": True}]
    assert client_page.evaluate("live.rows.size") == 2


def test_it_reconnects_asking_only_for_newer_rows(client_page):
    _deliver(client_page, _snapshot(4, [_row(1, 4)]))
    client_page.evaluate("sockets[0].drop(1006)")

    client_page.wait_for_function("sockets.length === 2", timeout=5000)
    assert client_page.evaluate("sockets[1].url").endswith("/ws/runs/1/?since=4")
    assert "reconnecting" in client_page.evaluate("states")


def test_it_stops_when_access_is_revoked(client_page):
    _deliver(client_page, _snapshot(4, []))
    client_page.evaluate("sockets[0].drop(4403)")

    client_page.wait_for_timeout(1500)
    assert client_page.evaluate("sockets.length") == 1
    assert client_page.evaluate("live.state") == "forbidden"


def test_a_coalesced_burst_is_applied_in_order_as_one_change(client_page):
    _deliver(client_page, _snapshot(2, [_row(1, 2)]))
    burst = {
        "type": "events",
        "messages": [
            {"type": "candidate", "seq": 3, "candidate": _row(2, 3, "running")},
            {"type": "candidate", "seq": 4, "candidate": _row(2, 4, "done")},
            {"type": "pruning", "seq": 4, "job": {"id": 9}},  # not the dashboard's: skipped
            {"type": "candidates", "seq": 5, "candidates": [_row(1, 5, "failed"), _row(3, 5)]},
            {"type": "run", "seq": 6, "run": {"id": 1, "status": "done"}},
        ],
    }
    _deliver(client_page, burst)

    assert client_page.evaluate("changes.slice(1)") == [{"ids": [2, 1, 3], "run": True, "full": False}]
    assert client_page.evaluate("live.seq") == 6
    assert client_page.evaluate("[...live.rows.values()].map((r) => [r.id, r.status])") == [
        [1, "failed"],
        [2, "done"],
        [3, "done"],
    ]
    assert client_page.evaluate("live.run.status") == "done"


def test_a_burst_of_old_messages_changes_nothing(client_page):
    _deliver(client_page, _snapshot(5, [_row(1, 5)]))
    old = [{"type": "candidate", "seq": s, "candidate": _row(1, s, "running")} for s in (3, 4)]
    _deliver(client_page, {"type": "events", "messages": old})

    assert client_page.evaluate("changes.length") == 1
    assert client_page.evaluate("live.rows.get(1).status") == "done"


def test_a_stream_started_before_its_page_keeps_what_arrived_for_the_listener(chromium: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True)
        page = browser.new_page()
        page.add_script_tag(content=FAKE_SOCKET)
        page.add_script_tag(content=LIVE_JS.read_text())
        page.evaluate("window.live = new LiveRun('/ws/runs/1/', null).start(); sockets[0].open();")
        _deliver(page, _snapshot(2, [_row(1, 1)], more=True))
        _deliver(page, _snapshot(2, [_row(2, 2)], full=False))
        _deliver(page, {"type": "candidate", "seq": 3, "candidate": _row(3, 3)})

        page.evaluate(
            "live.listen((c) => changes.push({ids: [...c.ids], run: c.run, full: c.full}),"
            " (s) => states.push(s))"
        )
        _deliver(page, {"type": "candidate", "seq": 4, "candidate": _row(4, 4)})

        assert page.evaluate("changes") == [
            {"ids": [1, 2, 3], "run": True, "full": True},  # everything before, as one change
            {"ids": [4], "run": False, "full": False},
        ]
        assert page.evaluate("states") == ["live"]  # told the state it is already in
        browser.close()
