"""The new-run form shows only the chosen strategy's own settings."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from searches.engine.strategies.options import MemNASConfig
from tests.e2e.conftest import PASSWORD, USERNAME, LiveStack


def test_the_run_form_shows_memnas_settings_for_memnas_only(page: Page, live_stack: LiveStack) -> None:
    base = live_stack.base_url
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    page.goto(f"{base}/projects/new/")
    page.fill("input[name=name]", "Form project")
    page.click("main form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/projects/\d+/$"))
    page.goto(page.url + "runs/new/")

    population, memnas_lambda = (
        page.locator("input[name=population]"),
        page.locator("input[name=memnas_lambda]"),
    )
    expect(population).to_be_visible()
    expect(memnas_lambda).to_be_hidden()
    # Pruning has its own box; its range shows only once pruning is on.
    pruning, sparsity = page.locator("#pruning-options"), page.locator("input[name=sparsity_low]")
    expect(pruning.locator("legend")).to_contain_text("Structured pruning")
    expect(sparsity).to_be_hidden()
    page.check("input[name=pruning]")
    expect(sparsity).to_be_visible()
    label = page.locator("label[for=id_pruning]").bounding_box()
    assert label and label["height"] < 30, f"the pruning label wraps: {label}"

    page.select_option("select[name=strategy]", "memnas")
    expect(pruning).to_be_hidden()
    expect(population).to_be_hidden()
    expect(memnas_lambda).to_be_visible()
    expect(memnas_lambda).to_have_value(f"{MemNASConfig.lam:g}")
    expect(page.locator("input[name=memnas_top_k]")).to_have_value(str(MemNASConfig.top_k))
    # Round 0's size shows only when the search starts with a round 0.
    seed, round0 = (
        page.locator("select[name=memnas_seed_backbone]"),
        page.locator("input[name=memnas_round0_size]"),
    )
    expect(page.locator("select[name=memnas_ranker]")).to_be_visible()
    page.select_option("select[name=memnas_seed_backbone]", "minimal")
    expect(round0).to_be_hidden()
    page.select_option("select[name=memnas_seed_backbone]", "single_blocks")
    expect(seed).to_have_value("single_blocks")
    expect(round0).to_be_visible()
    expect(round0).to_have_value(str(MemNASConfig.round0_size))

    page.select_option("select[name=strategy]", "random")
    expect(population).to_be_visible()
    expect(memnas_lambda).to_be_hidden()


def test_the_run_form_shows_asha_settings_only_for_asha(page: Page, live_stack: LiveStack) -> None:
    base = live_stack.base_url
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    page.goto(f"{base}/projects/new/")
    page.fill("input[name=name]", "ASHA form project")
    page.click("main form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/projects/\d+/$"))
    page.goto(page.url + "runs/new/")

    eta, schedule = page.locator("input[name=asha_eta]"), page.locator("select[name=fidelity_schedule]")
    expect(schedule).to_have_value("off")
    expect(page.locator("select[name=error_objective]")).to_have_value("float")
    expect(eta).to_be_hidden()
    page.select_option("select[name=fidelity_schedule]", "asha")
    expect(eta).to_be_visible()
    expect(eta).to_have_value("3")
    expect(page.locator("input[name=asha_max_rung]")).to_have_value("2")
    # MemNAS takes rungs too: choosing it keeps them and their settings.
    page.select_option("select[name=strategy]", "memnas")
    expect(schedule).to_have_value("asha")
    expect(eta).to_be_visible()
    expect(schedule.locator("option[value=asha]")).to_be_enabled()
    page.select_option("select[name=fidelity_schedule]", "off")
    expect(eta).to_be_hidden()
