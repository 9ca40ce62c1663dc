"""The Dataset tab in a real browser: open a folder, edit a caption, find it saved on disk; the check report."""

from __future__ import annotations

import time

from playwright.sync_api import expect

from browser.conftest import screenshot


def wait_for_file(path, text, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return True
        time.sleep(0.1)
    return False


def test_edit_a_caption_and_find_it_saved_beside_the_image(page, project):
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-check-resolution input").fill("64")
    folder = page.locator("#ds-folder input")
    folder.fill("datasets/shapes")
    page.locator("#ds-open").click()
    expect(page.locator("#ds-summary")).to_contain_text("6 image(s)")
    expect(page.locator("#ds-report")).to_contain_text("6 of 6")
    expect(page.locator("#ds-report")).to_contain_text("Problems: none")

    page.locator("#ds-gallery button.thumbnail-item").nth(1).click()
    expect(page.locator("#ds-image-name")).to_contain_text("img001.png")
    expect(page.locator("#ds-caption textarea")).to_have_value(
        (project / "datasets" / "shapes" / "img001.txt").read_text().strip())
    page.locator("#ds-caption textarea").fill("sks, a hand-edited caption")
    page.locator("#ds-save").click()
    caption_file = project / "datasets" / "shapes" / "img001.txt"
    assert wait_for_file(caption_file, "sks, a hand-edited caption\n"), caption_file.read_text()
    expect(page.locator("#ds-gallery")).to_contain_text("sks, a hand-edited caption")
    assert not list(caption_file.parent.glob(".*.tmp"))  # the atomic write left no temp file
    screenshot(page, "dataset")


def test_the_check_highlights_problems_and_a_path_outside_is_refused(page, project):
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-check-resolution input").fill("512")
    page.locator("#ds-folder input").fill("datasets/shapes")
    page.locator("#ds-open").click()
    expect(page.locator("#ds-report .problem").first).to_be_visible()
    expect(page.locator("#ds-report")).to_contain_text("too small")
    expect(page.locator("#ds-gallery")).to_contain_text("⚠")
    screenshot(page, "dataset-problems")

    page.locator("#ds-folder input").fill("../../etc")
    page.locator("#ds-open").click()
    expect(page.get_by_text("'..' is not allowed").first).to_be_visible()
