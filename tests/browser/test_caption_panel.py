"""The Dataset tab's Caption panel in a real browser: a preview of the first captions writes nothing, then the
run writes one caption per image and the caption editor shows them."""

from __future__ import annotations

import shutil

from playwright.sync_api import expect

from browser.conftest import screenshot
from caption_fixtures import make_blip


def test_preview_then_write_captions_with_a_model(page, project):
    make_blip(project / "models" / "tiny-blip")
    folder = project / "datasets" / "uncaptioned"
    shutil.copytree(project / "datasets" / "shapes", folder, ignore=shutil.ignore_patterns("*.txt"))
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-folder input").fill("datasets/uncaptioned")
    page.locator("#ds-open").click()
    expect(page.locator("#ds-summary")).to_contain_text("6 without a caption")

    page.locator("#ds-caption-panel").get_by_text("Caption with a model").click()
    page.locator("#ds-cap-model input, #ds-cap-model textarea").first.fill("models/tiny-blip")
    page.locator("#ds-cap-prefix input, #ds-cap-prefix textarea").first.fill("sks")
    page.locator("#ds-cap-preview").click()
    expect(page.locator("#ds-cap-shown button.thumbnail-item")).to_have_count(4, timeout=60_000)
    expect(page.locator("#ds-cap-shown")).to_contain_text("sks, ")
    assert not list(folder.glob("*.txt"))  # the preview wrote nothing

    page.locator("#ds-cap-write").click()
    expect(page.locator("#ds-cap-progress")).to_contain_text("6 caption(s) written", timeout=60_000)
    expect(page.locator("#ds-summary")).not_to_contain_text("without a caption")
    written = (folder / "img002.txt").read_text(encoding="utf-8").strip()
    assert written.startswith("sks, ") and len(list(folder.glob("*.txt"))) == 6
    page.locator("#ds-gallery button.thumbnail-item").nth(2).click()
    expect(page.locator("#ds-caption textarea")).to_have_value(written)
    screenshot(page, "caption")
