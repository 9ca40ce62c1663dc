"""The Train tab in a real browser: a short run from a preset, its progress and loss curve moving, Stop (which
saves), Resume, and the run finishing with its adapter on disk."""

from __future__ import annotations

import json
import re

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


def pick_preset(page, name="uitest"):
    page.get_by_role("tab", name="Train").click()
    field(page, "train-preset").click()
    page.get_by_role("option", name=name).click()
    expect(field(page, "cfg-name")).to_have_value(name)


def test_start_stop_resume_and_finish_a_short_run(page, project, browser_context, app_url):
    pick_preset(page)
    # Many steps, so the run is surely still going when Stop is pressed, however fast this machine is.
    set_number(page, "cfg-train-steps", 500)
    page.locator("#train-start").click()
    expect(field(page, "train-command")).to_have_value(
        "sdlora train --preset presets/uitest.yaml --set train.steps=500")

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
    expect(page.locator("#train-progress")).to_contain_text(" left")

    # A second browser tab attaches to the running run: its settings, progress, samples on request, and Stop.
    other = browser_context.new_page()
    other.goto(app_url)
    other.get_by_role("tab", name="Train").click()
    expect(field(other, "train-run")).to_have_value("outputs/uitest", timeout=30_000)  # a busy CPU: give it time
    expect(field(other, "cfg-train-steps")).to_have_value("500")
    expect(other.locator("#train-progress")).to_contain_text("of 500")
    expect(other.locator("#train-status")).to_contain_text("is training")
    other.locator("#train-history-box").click()
    other.locator("#train-sample-now").click()
    expect(other.locator("#train-history img").first).to_be_visible(timeout=RUN_TIMEOUT)
    sampled = [e for e in read_events(project) if e["event"] == "sample"]
    assert sampled and sampled[0]["step"] > 0  # asked for while training, served after a step
    row = other.locator(f'#train-history tr[data-step="{sampled[0]["step"]}"]')
    expect(row).to_contain_text(f"step {sampled[0]['step']}")
    expect(other.locator("#train-history")).to_contain_text("a red circle")  # the prompt heads its column
    other.wait_for_function("() => document.querySelector('#train-history img').naturalWidth > 0")  # served


    # Stop (from the second tab): the run finishes its step, saves a checkpoint and the adapter, and says how to
    # continue, in both tabs.
    other.locator("#train-stop").click()
    expect(other.locator("#train-status")).to_contain_text("stopped at step", timeout=RUN_TIMEOUT)
    other.close()
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
    page.locator("#train-history-box").click()
    page.locator("#train-runs-box").click()
    expect(page.locator("#train-history img")).to_have_count(2)  # the asked-for sample and the final one
    page.wait_for_timeout(1200)
    screenshot(page, "train")


def test_a_reload_during_training_shows_the_run(page, project):
    pick_preset(page)
    field(page, "cfg-name").fill("reloaded")
    set_number(page, "cfg-train-steps", 500)
    page.locator("#train-start").click()
    # (The progress bar still shows the previous run until the new one is picked: wait for this one's steps.)
    expect(page.locator("#train-status")).to_contain_text("reloaded is training", timeout=RUN_TIMEOUT)
    expect(page.locator("#train-progress .sdlora-progress")).to_have_attribute(
        "data-step", re.compile(r"^[1-9]\d*$"), timeout=RUN_TIMEOUT)
    page.reload()
    page.get_by_role("tab", name="Train").click()
    expect(field(page, "train-run")).to_have_value("outputs/reloaded", timeout=30_000)
    expect(field(page, "cfg-name")).to_have_value("reloaded")
    expect(page.locator("#train-status")).to_contain_text("is training")
    expect(page.locator("#train-start")).to_be_disabled()
    step = progress_step(page)
    page.wait_for_function("s => +document.querySelector('#train-progress .sdlora-progress').dataset.step > s",
                           arg=step, timeout=RUN_TIMEOUT)
    expect(page.locator("#train-loss svg")).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    page.locator("#train-stop").click()
    expect(page.locator("#train-status")).to_contain_text("stopped at step", timeout=RUN_TIMEOUT)
    expect(page.locator("#train-start")).to_be_enabled()


def test_an_empty_or_malformed_number_is_an_error_on_its_field(page, project):
    pick_preset(page)
    field(page, "cfg-name").fill("never")
    set_number(page, "cfg-train-steps", "")
    page.locator("#train-start").click()
    expect(page.get_by_text("train.steps: the field is empty").first).to_be_visible()
    set_number(page, "cfg-train-steps", "40O")
    page.locator("#train-start").click()
    expect(page.get_by_text("train.steps: '40O' is not a whole number").first).to_be_visible()
    assert not (project / "outputs" / "never").exists()  # nothing started


def test_a_run_that_fails_shows_a_readable_error_and_can_be_retried_and_deleted(page, project):
    pick_preset(page)
    field(page, "cfg-name").fill("broken")
    field(page, "cfg-data-dir").fill("datasets/none")
    page.locator("#train-start").click()
    expect(page.get_by_text("no such folder").first).to_be_visible()  # refused before starting a process

    field(page, "cfg-data-dir").fill("datasets/shapes")
    set_number(page, "cfg-data-resolution", 4096)  # every 64 px image is too small: the run itself fails
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("❌", timeout=RUN_TIMEOUT)
    expect(page.locator("#train-status")).to_contain_text("too small")

    # Start again under the same name is refused only for a run that trained: this one never took a step, so
    # Retry (the settings in the form, under its name) starts it afresh.
    expect(field(page, "train-run")).to_have_value("outputs/broken")
    set_number(page, "cfg-data-resolution", 64)
    set_number(page, "cfg-train-steps", 2)
    page.locator("#train-retry").click()
    expect(page.locator("#train-status")).to_contain_text("is done", timeout=RUN_TIMEOUT)
    assert [e["step"] for e in read_events(project, "broken") if e["event"] == "step"] == [1, 2]
    trashed = list((project / "outputs" / ".trash").glob("broken-*"))
    assert len(trashed) == 1 and (trashed[0] / "events.jsonl").is_file()  # the failed attempt, kept aside

    # The Runs list shows it; Delete moves it to the trash.
    page.locator("#train-runs-box").click()
    expect(page.locator("#train-runs")).to_contain_text("broken")
    expect(page.locator("#train-runs")).to_contain_text("2 / 2")
    page.locator("#train-delete").click()
    expect(page.get_by_text("broken moved to outputs/.trash/broken-").first).to_be_visible()
    assert not (project / "outputs" / "broken").exists()
    assert len(list((project / "outputs" / ".trash").glob("broken-*"))) == 2
    expect(page.locator("#train-runs")).not_to_contain_text("broken", timeout=5000)
