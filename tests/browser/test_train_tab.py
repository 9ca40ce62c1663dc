"""The Train tab in a real browser: a short run from a preset, its progress and loss curve moving, Stop (which
saves), Resume, and the run finishing with its adapter on disk."""

from __future__ import annotations

import json
import re
import time

from playwright.sync_api import expect

from browser.conftest import screenshot

RUN_TIMEOUT = 150_000  # ms: model load and the first step dominate on a busy 2-core CPU


def progress_step(page) -> int:
    return int(page.locator("#train-progress .sdlora-progress").get_attribute("data-step") or 0)


def field(page, elem_id: str):
    """The text box of a Gradio component (an input or a textarea, depending on the component)."""
    return page.locator(f"#{elem_id}").locator("input, textarea").first


def set_number(page, elem_id: str, value) -> None:
    box = field(page, elem_id)
    box.fill(str(value))
    box.press("Tab")


def test_start_stop_resume_and_finish_a_short_run(page, project):
    page.get_by_role("tab", name="Train").click()
    preset = field(page, "train-preset")
    preset.click()
    page.get_by_role("option", name="uitest").click()
    expect(field(page, "cfg-name")).to_have_value("uitest")
    set_number(page, "cfg-train-steps", 30)
    page.locator("#train-start").click()

    # Progress and the loss curve move while it trains.
    expect(page.locator("#train-progress .sdlora-progress")).to_have_attribute(
        "data-step", re.compile(r"^[1-9]\d*$"), timeout=RUN_TIMEOUT)
    first_step = progress_step(page)
    first_plot = page.locator("#train-loss").screenshot()
    page.wait_for_function("s => +document.querySelector('#train-progress .sdlora-progress').dataset.step > s",
                           arg=first_step + 2, timeout=60_000)
    page.wait_for_timeout(1200)  # the plot redraws on the next tick
    assert page.locator("#train-loss").screenshot() != first_plot, "the loss curve did not change"
    expect(page.locator("#train-progress")).to_contain_text("of 30")
    expect(page.locator("#train-progress")).to_contain_text("samples/s")

    # Stop: the run finishes its step, saves a checkpoint and the adapter, and says how to continue.
    page.locator("#train-stop").click()
    expect(page.locator("#train-status")).to_contain_text("stopped at step", timeout=60_000)
    events = [json.loads(line) for line in (project / "outputs" / "uitest" / "events.jsonl").read_text().splitlines()]
    stopped = [e for e in events if e["event"] == "stopped"]
    assert stopped and stopped[-1]["step"] < 30
    assert (project / "outputs" / "uitest" / "uitest.safetensors").is_file()
    expect(field(page, "train-run")).to_have_value("outputs/uitest")

    # Resume continues from the checkpoint to the end.
    page.locator("#train-resume").click()
    expect(page.locator("#train-status")).to_contain_text("is done", timeout=RUN_TIMEOUT)
    expect(page.locator("#train-progress")).to_contain_text("step 30 of 30")
    expect(page.locator("#train-samples img").first).to_be_visible()
    expect(page.locator("#train-log textarea")).to_have_value(re.compile("adapter:"))
    events = [json.loads(line) for line in (project / "outputs" / "uitest" / "events.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[-1] == 30 and sorted(set(steps)) == list(range(1, 31))  # every step once, none repeated
    screenshot(page, "train")


def test_a_run_that_fails_shows_a_readable_error(page, project):
    page.get_by_role("tab", name="Train").click()
    preset = field(page, "train-preset")
    preset.click()
    page.get_by_role("option", name="uitest").click()
    field(page, "cfg-name").fill("broken")
    field(page, "cfg-data-dir").fill("datasets/none")
    page.locator("#train-start").click()
    expect(page.get_by_text("no such folder").first).to_be_visible()  # refused before starting a process

    field(page, "cfg-data-dir").fill("datasets/shapes")
    set_number(page, "cfg-data-resolution", 4096)  # every 64 px image is too small: the run itself fails
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("❌", timeout=RUN_TIMEOUT)
    expect(page.locator("#train-status")).to_contain_text("too small")
