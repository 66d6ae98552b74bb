"""Every main page in a real browser at a laptop's and a phone's width: nothing sideways; and
what a user reads on the dashboard (counts, labels, sorting, a finished run's state) is right."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from playwright.sync_api import Page, expect

from tests.e2e.conftest import PASSWORD, REPO, USERNAME, LiveStack

WIDTHS = (1366, 390)
# Pages whose content arrives over the websocket: measured once their rows are drawn.
LIVE_PAGES = ("run", "running_run")


def _seed(live_stack: LiveStack, redis_url: str) -> dict[str, str]:
    env = {**os.environ, "NASWEB_DATA_DIR": str(live_stack.data_dir), "REDIS_URL": redis_url, "DEBUG": "1"}
    env.pop("DATABASE_URL", None)
    code = f"from tests.e2e.seed_pages import main; main({USERNAME!r})"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, check=True, capture_output=True
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator(".topbar")).to_contain_text(USERNAME)


def _overflow(page: Page) -> str:
    """The elements sticking out on the right, or "" when the page is no wider than the window."""
    return page.evaluate(
        """() => {
          const w = window.innerWidth;
          if (document.documentElement.scrollWidth <= w) return "";
          const wide = [...document.querySelectorAll("body *")]
            .filter((e) => e.getBoundingClientRect().right > w + 1);
          return `${document.documentElement.scrollWidth} px > ${w} px: ` +
            wide.slice(0, 5).map((e) => `${e.tagName}#${e.id}.${e.className}`).join(", ");
        }"""
    )


def test_pages_fit_a_laptop_and_a_phone(page: Page, live_stack: LiveStack, e2e_redis_url: str) -> None:
    urls = _seed(live_stack, e2e_redis_url)
    base = live_stack.base_url
    _log_in(page, base)
    pages = {name: url for name, url in urls.items() if name != "job_id"}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, url in pages.items():
            page.goto(base + url)
            if name in LIVE_PAGES:
                page.wait_for_function("window.nasweb && window.nasweb.rows().size > 0")
                page.wait_for_function("window.nasweb.renders > 0")
            assert not _overflow(page), f"{name} at {width} px: {_overflow(page)}"
    page.goto(base + urls["compare"])
    expect(page.locator("#compare-fronts .main-svg").first).to_be_visible()
    expect(page.locator("#compare-best")).to_contain_text("#0")
    page.goto(base + "/api/docs/")
    expect(page.locator("#app-bar a", has_text="nasweb")).to_have_attribute("href", "/projects/")
    _check_the_dashboard(page, base, urls)


def _check_the_dashboard(page: Page, base: str, urls: dict[str, str]) -> None:
    """One live stack for both tests: starting one costs more than the checks."""
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(base + urls["run"])
    page.wait_for_function("window.nasweb.rows().size === 5")
    # One count of evaluations (as on the run list); the pruning job's row is counted apart.
    expect(page.locator("#progress-budget")).to_have_text("3 of 3 evaluated")
    expect(page.locator("#count-done")).to_have_text("2")
    expect(page.locator("#count-pending")).to_have_text("0")
    expect(page.locator("#count-pruned")).to_have_text("1")
    expect(page.locator(".run-meta").first).to_contain_text("my sensor images")
    # A finished run: nothing to cancel, nothing live.
    expect(page.locator("#cancel-button")).to_be_hidden()
    expect(page.locator("#connection")).to_be_hidden()
    body = page.locator("#candidate-body")
    expect(body.locator("a", has_text="P" + urls["job_id"])).to_be_visible()
    expect(body.locator("tr", has_text="rejected")).to_contain_text(
        "rejected: peak SRAM 5,000 B exceeds the limit 2,048 B"
    )
    # Sorting by validation accuracy puts the best first.
    page.click("th[data-key=val_accuracy] button")
    expect(body.locator("tr").first).to_contain_text("95.00 %")
    expect(page.locator("th[data-key=val_accuracy]")).to_have_attribute("aria-sort", "descending")

    page.goto(base + urls["running_run"])
    expect(page.locator("#cancel-button")).to_be_visible()
    expect(page.locator("#connection")).to_be_visible()

    page.goto(base + urls["runs"])
    expect(page.locator("table.runs")).to_contain_text("my sensor images")
    expect(page.locator("table.runs")).not_to_contain_text("upload:")
    expect(page.locator("table.runs")).to_contain_text("3 / 3")
