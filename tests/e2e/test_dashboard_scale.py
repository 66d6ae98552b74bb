"""The dashboard with thousands of candidates and bursts of live events, in a real browser.

Behaviour only (bench/bench_dashboard.py measures the speed): every candidate of a large run
is drawn and reachable in the table, and every event of a burst (which the publisher and the
consumer coalesce into a few messages) reaches the plots and the table, in order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from playwright.sync_api import Page, expect

from tests.e2e.conftest import PASSWORD, REPO, USERNAME, LiveStack
from tests.e2e.seed_scale import STEP

LARGE = 3_000  # about 1.6 MB of snapshot: it arrives in several parts
BURST = 100


def _shell(live_stack: LiveStack, redis_url: str, call: str) -> dict[str, Any]:
    """Run ``tests.e2e.seed_scale.<call>`` in the stack's environment; its printed JSON."""
    env = {**os.environ, "NASWEB_DATA_DIR": str(live_stack.data_dir), "REDIS_URL": redis_url, "DEBUG": "1"}
    env.pop("DATABASE_URL", None)
    code = f"from tests.e2e import seed_scale; seed_scale.{call}"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, check=True, capture_output=True
    )
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator(".topbar")).to_contain_text(USERNAME)


def _trained(count: int) -> int:
    """How many of the first ``count`` seeded candidates were trained (the rest were rejected)."""
    return sum(1 for i in range(count) if i % STEP)


def _open_dashboard(page: Page, live_stack: LiveStack, url: str, count: int) -> None:
    _log_in(page, live_stack.base_url)
    page.goto(live_stack.base_url + url)
    page.wait_for_function(f"window.nasweb.rows().size === {count}", timeout=60_000)
    page.wait_for_function(f"window.nasweb.pointsDrawn('population') === {count}", timeout=60_000)


def test_a_large_run_draws_every_candidate(page: Page, live_stack: LiveStack, e2e_redis_url: str) -> None:
    run = _shell(live_stack, e2e_redis_url, f"large_run({USERNAME!r}, {LARGE})")
    _open_dashboard(page, live_stack, run["url"], LARGE)

    # Every trained candidate on the Pareto plot (rejected ones have no error to plot).
    page.wait_for_function(f"window.nasweb.pointsDrawn('pareto') === {_trained(LARGE)}")
    assert page.evaluate("Object.keys(window.nasweb.drawnAt).length") == LARGE
    expect(page.locator("#count-done")).to_have_text(str(_trained(LARGE)))
    expect(page.locator("#count-rejected")).to_have_text(str(LARGE - _trained(LARGE)))
    # The table pages through all of them: newest first, and the oldest once sorted the other way.
    expect(page.locator("#page-info")).to_have_text(f"1\N{EN DASH}25 of {LARGE}")
    body = page.locator("#candidate-body")
    expect(body.locator("tr")).to_have_count(25)
    expect(body.locator("tr").first).to_contain_text(f"#{LARGE - 1}")
    page.click("th[data-key=index] button")
    expect(body.locator("tr").first).to_contain_text("#0")
    expect(body.locator("tr").first).to_contain_text("rejected: peak SRAM over the limit")
    page.click("#page-next")
    expect(page.locator("#page-info")).to_have_text(f"26\N{EN DASH}50 of {LARGE}")
    expect(body.locator("tr").first).to_contain_text("#25")


def test_every_event_of_a_burst_reaches_the_plots_and_the_table(
    page: Page, live_stack: LiveStack, e2e_redis_url: str
) -> None:
    first = 1_000
    run = _shell(live_stack, e2e_redis_url, f"large_run({USERNAME!r}, {first})")
    _open_dashboard(page, live_stack, run["url"], first)

    ids = _shell(live_stack, e2e_redis_url, f"burst({run['run_id']}, {first}, {BURST})")["ids"]

    total = first + BURST
    page.wait_for_function(f"window.nasweb.rows().size === {total}", timeout=60_000)
    page.wait_for_function(f"window.nasweb.pointsDrawn('population') === {total}", timeout=60_000)
    page.wait_for_function(f"window.nasweb.pointsDrawn('pareto') === {_trained(total)}")
    assert page.evaluate(f"{json.dumps(ids)}.every((id) => window.nasweb.drawnAt[id] !== undefined)")
    # In order and complete: the client never saw a gap it had to ask the database to fill.
    assert page.evaluate("window.nasweb.live.resyncs") == 0
    expect(page.locator("#page-info")).to_have_text(f"1\N{EN DASH}25 of {total}")
    expect(page.locator("#candidate-body tr").first).to_contain_text(f"#{total - 1}")
    expect(page.locator("#count-done")).to_have_text(str(_trained(total)))


def test_a_burst_during_a_slow_redraw_ends_with_every_point_drawn(
    page: Page, live_stack: LiveStack, e2e_redis_url: str
) -> None:
    """A browser that takes long to draw (software WebGL on a busy machine): the events that
    queue behind a redraw, and those that keep coming after it, are all drawn in the end."""
    first = 500
    run = _shell(live_stack, e2e_redis_url, f"large_run({USERNAME!r}, {first})")
    _open_dashboard(page, live_stack, run["url"], first)
    # Every Plotly.react from now on blocks the page for 300 ms, as a slow redraw does.
    page.evaluate(
        """() => {
          const react = Plotly.react;
          window.slowReacts = 0;
          Plotly.react = (...args) => {
            const until = performance.now() + 300;
            while (performance.now() < until) {}
            window.slowReacts += 1;
            return react(...args);
          };
        }"""
    )
    renders = page.evaluate("window.nasweb.renders")

    ids = _shell(live_stack, e2e_redis_url, f"burst({run['run_id']}, {first}, {BURST})")["ids"]

    total = first + BURST
    page.wait_for_function(f"window.nasweb.pointsDrawn('population') === {total}", timeout=60_000)
    page.wait_for_function(f"window.nasweb.pointsDrawn('pareto') === {_trained(total)}")
    assert page.evaluate(f"{json.dumps(ids)}.every((id) => window.nasweb.drawnAt[id] !== undefined)")
    assert page.evaluate("window.slowReacts") > 0  # the slow redraw was the one that drew them
    assert page.evaluate("window.nasweb.renders") > renders
    assert page.evaluate("window.nasweb.live.resyncs") == 0
    expect(page.locator("#page-info")).to_have_text(f"1\N{EN DASH}25 of {total}")
    expect(page.locator("#candidate-body tr").first).to_contain_text(f"#{total - 1}")
    expect(page.locator("#count-done")).to_have_text(str(_trained(total)))
