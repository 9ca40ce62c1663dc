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
    # The check trains as the selected preset does: uitest's 64 px, without typing it.
    expect(page.locator("#ds-check-preset input")).to_have_value("uitest")
    expect(page.locator("#ds-check-resolution textarea, #ds-check-resolution input").first).to_have_value("64")
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
    page.locator("#ds-check-resolution textarea, #ds-check-resolution input").first.fill("512")
    page.locator("#ds-folder input").fill("datasets/shapes")
    page.locator("#ds-open").click()
    expect(page.locator("#ds-report .problem").first).to_be_visible()
    expect(page.locator("#ds-report")).to_contain_text("too small")
    expect(page.locator("#ds-gallery")).to_contain_text("⚠")
    screenshot(page, "dataset-problems")

    page.locator("#ds-folder input").fill("../../etc")
    page.locator("#ds-open").click()
    expect(page.get_by_text("'..' is not allowed").first).to_be_visible()
    page.wait_for_timeout(1500)
    expect(page.get_by_text("'..' is not allowed")).to_have_count(1)  # shown once, not by two handlers

    # A malformed resolution is an error on that field, not 512.
    page.locator("#ds-check-resolution textarea, #ds-check-resolution input").first.fill("6x4")
    page.locator("#ds-folder input").fill("datasets/shapes")
    page.locator("#ds-open").click()
    expect(page.get_by_text("Training resolution: '6x4' is not a whole number").first).to_be_visible()


def test_add_to_all_shows_what_it_would_write_and_undo_puts_it_back(page, project):
    folder = project / "datasets" / "shapes"
    before = {p.name: p.read_bytes() for p in folder.glob("*.txt")}
    would = sum(not p.read_text().startswith("zzq,") for p in folder.glob("*.txt"))
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-folder input").fill("datasets/shapes")
    page.locator("#ds-open").click()
    expect(page.locator("#ds-summary")).to_contain_text("6 image(s)")
    page.locator("#ds-trigger input, #ds-trigger textarea").first.fill("zzq")
    page.locator("#ds-add-trigger").click()
    expect(page.locator("#ds-bulk-preview")).to_contain_text(f"{would} caption file(s) would change")
    expect(page.locator("#ds-bulk-preview")).to_contain_text("zzq, ")
    assert {p.name: p.read_bytes() for p in folder.glob("*.txt")} == before  # nothing written yet
    page.locator("#ds-bulk-apply").click()
    expect(page.locator("#ds-summary")).to_contain_text(f"{would} caption file(s) changed")
    assert all(p.read_text().startswith("zzq, ") for p in folder.glob("*.txt"))
    screenshot(page, "dataset-bulk")
    page.locator("#ds-bulk-undo").click()
    expect(page.locator("#ds-summary")).to_contain_text(f"{would} caption file(s) restored")
    assert {p.name: p.read_bytes() for p in folder.glob("*.txt")} == before
