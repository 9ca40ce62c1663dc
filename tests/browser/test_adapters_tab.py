"""The Adapters tab in a real browser: inspect an adapter (per-layer chart), resize it, convert it, merge it into
the base model, and find each result on disk as the library reads it."""

from __future__ import annotations

from playwright.sync_api import expect

from browser.conftest import screenshot
from browser.fixtures import make_adapters, type_into


def test_inspect_resize_convert_and_merge_from_the_browser(page, project):
    from sdlora.lora.io import read_adapter_file

    make_adapters(project / "adapters")
    source = read_adapter_file(project / "adapters" / "red.safetensors")
    page.get_by_role("tab", name="Adapters").click()
    page.locator("#ad-refresh").click()
    page.locator("#ad-file input").first.click()
    page.get_by_role("option", name="adapters/red.safetensors").click()

    page.locator("#ad-inspect").click()
    expect(page.locator("#ad-chart svg")).to_have_attribute("data-rows", str(len(source.adapter.layers)))
    expect(page.locator("#ad-summary")).to_contain_text("kohya")
    expect(page.locator("#ad-summary")).to_contain_text(f"{source.adapter.num_parameters():,}")
    screenshot(page, "adapters")

    page.get_by_role("tab", name="Resize").click()
    type_into(page, "#ad-rank input, #ad-rank textarea", "2")  # Tab, then a check that the field took it
    type_into(page, "#ad-resize-out input, #ad-resize-out textarea", "red-r2")
    page.locator("#ad-resize").click()
    expect(page.locator("#ad-resize-note")).to_contain_text("adapters/red-r2.safetensors")
    resized = read_adapter_file(project / "adapters" / "red-r2.safetensors")
    assert resized.adapter.ranks == {2} and source.adapter.ranks == {4}

    page.get_by_role("tab", name="Convert").click()
    type_into(page, "#ad-convert-out input, #ad-convert-out textarea", "red-diffusers")
    page.locator("#ad-convert").click()
    expect(page.locator("#ad-convert-note")).to_contain_text("kohya → diffusers")
    converted = read_adapter_file(project / "adapters" / "red-diffusers.safetensors")
    assert converted.format == "diffusers" and set(converted.adapter.layers) == set(source.adapter.layers)

    page.get_by_role("tab", name="Merge into a model").click()
    type_into(page, "#ad-weight input, #ad-weight textarea", "0.5")
    type_into(page, "#ad-merge-out input, #ad-merge-out textarea", "tiny-red")
    page.locator("#ad-merge").click()
    expect(page.locator("#ad-merge-note")).to_contain_text("models/tiny-red", timeout=120_000)
    assert (project / "models" / "tiny-red" / "model_index.json").is_file()
