"""The Dataset tab's Concepts panel in a real browser: add a second data folder with its own repeats, trigger and
loss weight, check it, remove one, then train a short run that uses both folders."""

from __future__ import annotations

import json

import pytest
import yaml
from playwright.sync_api import expect

from browser.conftest import screenshot
from browser.test_train_tab import RUN_TIMEOUT, field, pick_preset, set_number


@pytest.mark.slow  # ~85 s on a busy 2-core machine: a short training run
def test_add_check_and_train_a_second_subset(page, project):
    from conftest import make_shape_folder

    make_shape_folder(project / "datasets" / "more", count=4, seed=5)
    pick_preset(page)  # first: picking a preset fills the form, data.subsets included
    page.get_by_role("button", name="Advanced", exact=False).first.click()
    page.get_by_role("button", name="data: ", exact=False).first.click()
    expect(field(page, "cfg-data-subsets")).to_have_value("")

    page.get_by_role("tab", name="Dataset").click()
    page.locator("#sub-box").click()
    expect(page.locator("#sub-table")).to_contain_text("No subsets")
    # A folder with bad numbers first: the error names the field and nothing is added.
    page.locator("#sub-dir input").fill("datasets/more")
    page.locator("#sub-dir input").press("Enter")
    field(page, "sub-repeats").fill("2x")
    page.locator("#sub-add").click()
    expect(page.get_by_text("Repeats (repeats): '2x' is not a whole number").first).to_be_visible()
    expect(page.locator("#sub-table")).to_contain_text("No subsets")

    field(page, "sub-repeats").fill("3")
    field(page, "sub-trigger").fill("zxq shape")
    field(page, "sub-loss-weight").fill("0.5")
    field(page, "sub-caption-dropout").fill("0.25")
    page.locator("#sub-add").click()
    table = page.locator("#sub-table")
    expect(table).to_contain_text("data.subsets[0]")
    expect(table).to_contain_text("datasets/more")
    expect(table).to_contain_text("zxq shape")
    expect(table.locator("tr").nth(1).locator("td").nth(2)).to_have_text("4")  # images in the folder
    expect(table).to_contain_text("caption_dropout 0.25")

    # A second one (the shapes again), then removed: the list is back to one.
    page.locator("#sub-dir input").fill("datasets/shapes")
    page.locator("#sub-dir input").press("Enter")
    field(page, "sub-trigger").fill("")
    page.locator("#sub-add").click()
    expect(table).to_contain_text("data.subsets[1]")
    expect(field(page, "sub-pick")).to_have_value("data.subsets[1] datasets/shapes")
    page.locator("#sub-remove").click()
    expect(table).not_to_contain_text("data.subsets[1]")

    # The check of the subset as training sees it: 64 px (the preset's), its repeats.
    field(page, "sub-pick").click()
    page.get_by_role("option", name="data.subsets[0] datasets/more").click()
    page.locator("#sub-check").click()
    report = page.locator("#sub-report")
    expect(report).to_contain_text("data.subsets[0]")
    expect(report).to_contain_text("4 of 4")
    expect(report).to_contain_text("12 samples per epoch")
    screenshot(page, "dataset-subsets")

    # The Train tab holds the list; Start runs it, and the command line carries it.
    page.get_by_role("tab", name="Train").click()
    expect(field(page, "cfg-data-subsets")).to_have_value(
        "- {dir: datasets/more, repeats: 3, trigger: zxq shape, loss_weight: 0.5, caption_dropout: 0.25}\n")
    field(page, "cfg-name").fill("concepts")
    set_number(page, "cfg-train-steps", 3)
    page.locator("#train-start").click()
    expect(field(page, "train-command")).to_have_value(
        "sdlora train --preset presets/uitest.yaml --set 'name=\"concepts\"' --set 'data.subsets=[{\"dir\": "
        "\"datasets/more\", \"repeats\": 3, \"trigger\": \"zxq shape\", \"loss_weight\": 0.5, \"caption_dropout\": "
        "0.25}]' --set train.steps=3")
    expect(page.locator("#train-status")).to_contain_text("concepts is done", timeout=RUN_TIMEOUT)

    run = project / "outputs" / "concepts"
    recorded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]
    assert recorded["dir"].endswith("datasets/shapes")
    assert [(s["dir"].endswith("datasets/more"), s["repeats"], s["trigger"], s["loss_weight"], s["caption_dropout"])
            for s in recorded["subsets"]] == [(True, 3, "zxq shape", 0.5, 0.25)]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert "10 images (data.dir 6, data.subsets[0] 4)" in start["message"]  # both folders trained
