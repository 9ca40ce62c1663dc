"""The Preview tab in a real browser: every field takes typed input and is used; blend two adapters, see the image
appear and change with the weight; the row over the adapter picked in the row field."""

from __future__ import annotations

from playwright.sync_api import expect

from browser.conftest import screenshot
from browser.fixtures import make_adapters, type_into

GEN_TIMEOUT = 150_000


def blend_src(page) -> str:
    return page.locator("#pv-blend img").first.get_attribute("src") or ""


def set_weight(page, index: int, value: float) -> None:
    box = page.locator(".pv-weight").nth(index).locator("input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option).click()


def test_every_field_takes_input_blend_two_adapters_and_change_a_weight(page, project):
    make_adapters(project / "adapters")
    page.get_by_role("tab", name="Preview").click()
    page.locator("#pv-refresh").click()
    for name in ("adapters/blue.safetensors", "adapters/red.safetensors"):
        pick(page, "pv-adapters", name)
    page.keyboard.press("Escape")
    expect(page.locator(".pv-weight")).to_have_count(2)

    model = page.locator("#pv-model input").first
    model.fill("tiny")
    model.press("Enter")  # takes the typed name and closes the list
    expect(model).to_have_value("tiny")
    type_into(page, "#pv-prompt textarea", "a blue square on a white background")
    type_into(page, "#pv-negative input, #pv-negative textarea", "blurry")
    type_into(page, "#pv-steps input[type=number]", "4")
    type_into(page, "#pv-guidance input[type=number]", "3")
    type_into(page, "#pv-width input[type=number]", "128")
    type_into(page, "#pv-height input[type=number]", "64")

    # A malformed seed is an error on that field, not a silent 0.
    type_into(page, "#pv-seed input, #pv-seed textarea", "4x")
    page.locator("#pv-generate").click()
    expect(page.get_by_text("Seed: '4x' is not a whole number").first).to_be_visible()
    type_into(page, "#pv-seed input, #pv-seed textarea", "3")
    # So is a VAE path that is not there: the typed text reaches the handler.
    type_into(page, "#pv-vae input, #pv-vae textarea", "vaes/none")
    page.locator("#pv-generate").click()
    expect(page.get_by_text("vaes/none: no such path").first).to_be_visible()
    type_into(page, "#pv-vae input, #pv-vae textarea", "")

    page.locator("#pv-generate").click()
    note = page.locator("#pv-note")
    expect(note).to_contain_text("a blue square on a white background", timeout=GEN_TIMEOUT)
    expect(note).to_contain_text("128x64")
    expect(note).to_contain_text("4 steps, guidance 3, seed 3")
    expect(page.locator("#pv-blend img").first).to_be_visible(timeout=GEN_TIMEOUT)
    # 128x64 is shown at twice its size, nearest-neighbour (the image is small).
    size = page.locator("#pv-base img").first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert size == [256, 128], size
    first = blend_src(page)

    set_weight(page, 0, -1)
    page.locator("#pv-generate").click()
    expect(note).to_contain_text("-1.00", timeout=GEN_TIMEOUT)
    page.wait_for_function("s => (document.querySelector('#pv-blend img') || {}).src !== s", arg=first,
                           timeout=GEN_TIMEOUT)
    assert blend_src(page) != first

    page.locator("#pv-row-on input").check()
    pick(page, "pv-row-adapter", "adapters/red.safetensors")
    page.locator("#pv-generate").click()
    expect(page.locator("#pv-row img")).to_have_count(5, timeout=GEN_TIMEOUT)
    expect(page.locator("#pv-row")).to_contain_text("red 0.25")
    screenshot(page, "preview")
