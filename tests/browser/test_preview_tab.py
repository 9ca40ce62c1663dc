"""The Preview tab in a real browser: blend two adapters, see the image appear and change with the weight."""

from __future__ import annotations

from playwright.sync_api import expect

from browser.conftest import screenshot
from browser.fixtures import make_adapters


def blend_src(page) -> str:
    return page.locator("#pv-blend img").first.get_attribute("src") or ""


def set_weight(page, index: int, value: float) -> None:
    box = page.locator(".pv-weight").nth(index).locator("input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_blend_two_adapters_and_change_a_weight(page, project):
    make_adapters(project / "adapters")
    page.get_by_role("tab", name="Preview").click()
    page.locator("#pv-refresh").click()
    picker = page.locator("#pv-adapters input").first
    for name in ("adapters/blue.safetensors", "adapters/red.safetensors"):
        picker.click()
        page.get_by_role("option", name=name).click()
    page.keyboard.press("Escape")
    expect(page.locator(".pv-weight")).to_have_count(2)
    page.locator("#pv-steps input[type=number]").fill("4")
    page.locator("#pv-generate").click()
    expect(page.locator("#pv-base img").first).to_be_visible(timeout=150_000)
    expect(page.locator("#pv-blend img").first).to_be_visible(timeout=150_000)
    first = blend_src(page)

    set_weight(page, 0, -1)
    page.locator("#pv-generate").click()
    expect(page.locator("#pv-note")).to_contain_text("-1.00", timeout=150_000)
    page.wait_for_function("s => (document.querySelector('#pv-blend img') || {}).src !== s", arg=first,
                           timeout=150_000)
    assert blend_src(page) != first

    page.locator("#pv-row-on input").check()
    page.locator("#pv-generate").click()
    expect(page.locator("#pv-row img")).to_have_count(5, timeout=150_000)
    screenshot(page, "preview")
