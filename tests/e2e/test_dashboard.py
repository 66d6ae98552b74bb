"""The whole product in a real browser: log in, make a profile and a run, watch it fill in live."""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import PASSWORD, USERNAME, LiveStack

PROFILE = "E2E Nano"
# A real search has to train its candidates on the worker: allow for torch starting up.
TRAINING_TIMEOUT_MS = 240_000
# Set to a folder to keep screenshots of the pages the test visits (for looking at the layout).
SCREENSHOTS = os.environ.get("NASWEB_E2E_SCREENSHOTS", "")


def _screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def _choose(page: Page, select: str, text: str) -> None:
    """Select the first option of ``select`` whose label contains ``text``."""
    value = page.locator(f"{select} option", has_text=text).first.get_attribute("value")
    assert value, f"no option with {text!r} in {select}"
    page.select_option(select, value)


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator(".topbar")).to_contain_text(USERNAME)


def _create_profile_from_preset(page: Page, base: str) -> None:
    page.goto(f"{base}/profiles/new/")
    _choose(page, "#preset-picker", "Arduino Nano 33 BLE Sense")
    expect(page.locator("input[name=sram_kb]")).to_have_value("256")
    page.fill("input[name=name]", PROFILE)
    page.click("main form button[type=submit]")
    expect(page.locator("main")).to_contain_text(PROFILE)


def _create_project(page: Page, base: str) -> None:
    page.goto(f"{base}/projects/new/")
    page.fill("input[name=name]", "E2E project")
    page.click("main form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/projects/\d+/$"))


def _start_tiny_run(page: Page) -> None:
    page.goto(page.url + "runs/new/")
    page.select_option("select[name=profile]", label=PROFILE)
    _choose(page, "select[name=dataset]", "igits")
    page.fill("input[name=budget]", "4")
    page.fill("input[name=population]", "2")
    page.fill("input[name=epochs]", "1")
    page.click("#run-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))


def test_a_run_fills_the_dashboard_live(page: Page, live_stack: LiveStack) -> None:
    base = live_stack.base_url
    plotly = []
    page.on("response", lambda r: plotly.append(r.status) if r.url.endswith("/js/plotly.min.js") else None)
    _log_in(page, base)
    _create_profile_from_preset(page, base)
    _create_project(page, base)
    _start_tiny_run(page)

    # Marks this document: it must still be there when the points arrive (no reload).
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("#connection")).to_have_text("live", timeout=30_000)
    try:
        page.wait_for_function("window.nasweb.pointsDrawn() > 0", timeout=TRAINING_TIMEOUT_MS)
    except Exception as exc:
        raise AssertionError(f"no point was drawn: {exc}\n{live_stack.log_tail()}") from exc
    assert page.evaluate("window.__sameDocument === true")
    assert plotly == [200]
    assert page.evaluate("Object.keys(window.nasweb.drawnAt).length") > 0
    expect(page.locator("#candidate-body tr").first).to_be_visible()
    expect(page.locator("#count-done")).not_to_have_text("0")
    _screenshot(page, "dashboard")

    page.locator("#candidate-body a[href*='/candidates/']").first.click()
    expect(page).to_have_url(re.compile(r"/candidates/\d+/$"))
    expect(page.locator("#memory-chart .js-plotly-plot").first).to_be_visible()
    # Live bytes per step, then tensor lifetimes under the optimal and the default order.
    expect(page.locator("#memory-chart .js-plotly-plot")).to_have_count(3)
    expect(page.locator("#memory-chart")).to_contain_text("Tensor lifetimes (default order)")
    _screenshot(page, "candidate")
