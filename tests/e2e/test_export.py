"""The candidate page in a real browser: a worker's verification fills its Export section live."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from playwright.sync_api import Page, expect

from searches.engine.deploy.toolchain import APT_COMMAND, missing_tools
from tests.e2e.conftest import PASSWORD, REPO, USERNAME, LiveStack

pytestmark = pytest.mark.skipif(
    bool(missing_tools()), reason=f"needs the Cortex-M toolchain and QEMU: {APT_COMMAND}"
)

VERIFY_TIMEOUT_MS = 120_000


def _trained_candidate(live_stack: LiveStack, redis_url: str) -> int:
    """Train a two-candidate digits search for the e2e user; the id of its best candidate."""
    env = {
        **os.environ,
        "NASWEB_DATA_DIR": str(live_stack.data_dir),
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "nasweb.settings",
    }
    env.pop("DATABASE_URL", None)
    command = [sys.executable, "manage.py", "search", "--dataset", "digits", "--profile", "NUCLEO-L476RG"]
    command += ["--budget", "2", "--population", "2", "--epochs", "2", "--user", USERNAME, "--verbosity", "0"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    match = re.search(r"verify_export (\d+)", done.stdout)
    assert done.returncode == 0 and match, done.stdout + done.stderr
    return int(match.group(1))


def test_a_verification_fills_the_candidate_page_live(page: Page, live_stack: LiveStack, e2e_redis_url: str):
    base = live_stack.base_url
    candidate_id = _trained_candidate(live_stack, e2e_redis_url)
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    page.goto(f"{base}/candidates/{candidate_id}/")

    expect(page.locator("#int8-test .value")).to_have_text(re.compile(r"\d+\.\d%"))
    expect(page.locator("#export-status")).to_have_text("Not verified")
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function("window.naswebCandidate.live.state === 'live'", timeout=30_000)

    # Someone (here: this same user's session, as another tab would) asks for a verification.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        f"{base}/candidates/{candidate_id}/verify/",
        headers={"X-CSRFToken": token, "Accept": "application/json", "Referer": page.url},
    )
    assert response.status == 200, response.text()

    try:
        expect(page.locator("#export-status")).to_have_text("Passed", timeout=VERIFY_TIMEOUT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{live_stack.log_tail()}") from exc
    assert page.evaluate("window.__sameDocument === true")  # no reload: the section was swapped in
    expect(page.locator(".export-step[data-status=passed]")).to_have_count(4)
    section = page.locator("#export-section")
    expect(section).to_contain_text("Model arrays vs predicted flash")
    expect(section).to_contain_text("mps2-an386")
    expect(section.locator(".badge.warn", has_text="estimate")).to_be_visible()
    expect(page.locator("#verify-export")).to_have_text("Verify again")

    header = page.request.get(base + (page.locator("#c-header").get_attribute("href") or ""))
    assert header.ok and "_run(const int8_t *input, int8_t *output)" in header.text()
    if os.environ.get("NASWEB_E2E_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["NASWEB_E2E_SCREENSHOTS"], "export.png"), full_page=True)
