"""Cancelling a run from its dashboard in a real browser: it asks first, and says no to a "no"."""

from __future__ import annotations

import re

from playwright.sync_api import Dialog, Page, expect

from tests.e2e.conftest import LiveStack
from tests.e2e.test_dashboard import PROFILE, _choose, _create_profile_from_preset, _create_project, _log_in


def _start_long_run(page: Page) -> None:
    page.goto(page.url + "runs/new/")
    page.select_option("select[name=profile]", label=PROFILE)
    _choose(page, "select[name=dataset]", "igits")
    page.fill("input[name=budget]", "200")
    page.fill("input[name=epochs]", "1")
    page.click("#run-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))


def test_cancel_asks_before_it_cancels(page: Page, live_stack: LiveStack) -> None:
    base = live_stack.base_url
    _log_in(page, base)
    _create_profile_from_preset(page, base)
    _create_project(page, base)
    _start_long_run(page)
    expect(page.locator("#connection")).to_have_text("live", timeout=30_000)
    asked: list[str] = []

    def answer(accept: bool):
        def handle(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handle

    page.once("dialog", answer(False))
    page.click("#cancel-button")
    assert asked and asked[0].startswith("Cancel this run?")
    page.wait_for_timeout(1_000)
    expect(page.locator("#run-status")).to_have_text(re.compile("^(pending|running)$"))
    expect(page.locator("#action-message")).to_have_text("")

    page.once("dialog", answer(True))
    page.click("#cancel-button")
    expect(page.locator("#action-message")).to_have_text("The run was cancelled.")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("#cancel-button")).to_be_disabled()
    # A run that ended has nothing left to cancel: the button goes (it comes back on Extend).
    expect(page.locator("#cancel-button")).to_be_hidden()
    # The page stayed (the form went in the background) and asked exactly twice.
    assert len(asked) == 2 and page.url.endswith("/") and "/cancel/" not in page.url
