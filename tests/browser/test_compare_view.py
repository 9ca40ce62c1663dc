"""The Preview tab's Compare view in a real browser: pick a run, its checkpoints are listed, the grid fills in with
a progress bar, and clicking a cell shows its settings."""

from __future__ import annotations

from playwright.sync_api import expect

from browser.conftest import screenshot
from browser.fixtures import make_run


def test_compare_a_runs_checkpoints_and_open_a_cell(page, project):
    make_run(project / "outputs" / "cmprun")
    page.get_by_role("tab", name="Preview").click()
    page.locator("#pv-compare").get_by_text("Compare: checkpoints").click()
    page.locator("#cmp-refresh").click()
    page.locator("#cmp-run input").first.click()
    page.get_by_role("option", name="outputs/cmprun").click()
    expect(page.locator("#cmp-checkpoints")).to_contain_text("step 10 · val loss 0.1000", timeout=60_000)
    expect(page.locator("#cmp-checkpoints")).to_contain_text("step 20 (final)")
    page.locator("#cmp-weights textarea, #cmp-weights input").first.fill("0,1")
    page.locator("#cmp-steps input[type=number]").fill("3")
    page.locator("#cmp-start").click()
    expect(page.locator("#cmp-progress")).to_contain_text("4/4 cells · done", timeout=180_000)
    expect(page.locator("#cmp-grid img")).to_have_count(4)
    page.locator("#cmp-grid img").nth(3).click()
    expect(page.locator("#cmp-details")).to_contain_text("sdlora generate", timeout=30_000)
    expect(page.locator("#cmp-details")).to_contain_text("weight 1")
    screenshot(page, "compare")
    page.keyboard.press("Escape")  # the gallery's preview of the clicked cell
    page.locator("#cmp-to-generate").click()
    expect(page.locator("#cmp-details")).to_contain_text("set its weight slider to 1", timeout=30_000)
    expect(page.locator("#pv-adapters")).to_contain_text("outputs/cmprun/cmprun.safetensors")
    expect(page.locator("#pv-steps input[type=number]")).to_have_value("3")
