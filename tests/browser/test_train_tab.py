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


def read_events(project, name="uitest"):
    path = project / "outputs" / name / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_start_stop_resume_and_finish_a_short_run(page, project):
    page.get_by_role("tab", name="Train").click()
    field(page, "train-preset").click()
    page.get_by_role("option", name="uitest").click()
    expect(field(page, "cfg-name")).to_have_value("uitest")
    # Many steps, so the run is surely still going when Stop is pressed, however fast this machine is.
    set_number(page, "cfg-train-steps", 500)
    page.locator("#train-start").click()

    # Progress and the loss curve move while it trains.
    expect(page.locator("#train-progress .sdlora-progress")).to_have_attribute(
        "data-step", re.compile(r"^[1-9]\d*$"), timeout=RUN_TIMEOUT)
    first_step = progress_step(page)
    first_plot = page.locator("#train-loss").screenshot()
    page.wait_for_function("s => +document.querySelector('#train-progress .sdlora-progress').dataset.step >= s",
                           arg=first_step + 2, timeout=RUN_TIMEOUT)
    page.wait_for_timeout(1500)  # the plot redraws on the next tick
    assert page.locator("#train-loss").screenshot() != first_plot, "the loss curve did not change"
    expect(page.locator("#train-progress")).to_contain_text("of 500")
    expect(page.locator("#train-progress")).to_contain_text("samples/s")
    expect(page.locator("#train-progress")).to_contain_text("ETA")

    # Stop: the run finishes its step, saves a checkpoint and the adapter, and says how to continue.
    page.locator("#train-stop").click()
    expect(page.locator("#train-status")).to_contain_text("stopped at step", timeout=RUN_TIMEOUT)
    stopped = [e for e in read_events(project) if e["event"] == "stopped"]
    assert stopped and stopped[-1]["step"] < 500
    at = stopped[-1]["step"]
    assert (project / "outputs" / "uitest" / "uitest.safetensors").is_file()
    expect(field(page, "train-run")).to_have_value("outputs/uitest")

    # Resume continues from the checkpoint, here up to a few more steps, and finishes.
    set_number(page, "cfg-train-steps", at + 3)
    page.locator("#train-resume").click()
    expect(page.locator("#train-status")).to_contain_text("is done", timeout=RUN_TIMEOUT)
    expect(page.locator("#train-progress")).to_contain_text(f"step {at + 3} of {at + 3}")
    expect(page.locator("#train-samples img").first).to_be_visible()
    expect(page.locator("#train-log textarea")).to_have_value(re.compile("adapter:"))
    steps = [e["step"] for e in read_events(project) if e["event"] == "step"]
    assert steps == list(range(1, at + 4))  # every step once: resumed where it stopped, nothing repeated
    page.wait_for_timeout(1200)
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
