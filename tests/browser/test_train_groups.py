"""The Train tab's Advanced section in a real browser: the recipe options under their group headings (Optimizer,
Schedule, Noise and loss, EMA, Validation, Logging, ...), each with its help text, and the options that do not
apply to the current choices appearing and disappearing as the optimizer and the schedule change."""

from __future__ import annotations

from playwright.sync_api import expect

from browser.conftest import ARTIFACTS
from browser.test_train_tab import field, pick_preset
from sdlora.config import GROUPS


def choose(page, elem_id: str, value: str) -> None:
    field(page, elem_id).click()
    page.get_by_role("option", name=value, exact=True).click()
    expect(field(page, elem_id)).to_have_value(value)


def test_recipe_options_under_group_headings_hide_what_does_not_apply(page):
    pick_preset(page)
    page.locator("#train-advanced").click()
    for name in ("Optimizer", "Schedule", "Timesteps", "Noise and loss", "EMA", "Validation", "Logging"):
        heading = page.locator("#train-group-" + name.lower().replace(" ", "-"))
        expect(heading).to_be_visible()
        expect(heading).to_contain_text(f"{name}: {GROUPS[name]}")
    expect(page.locator("#train-section-train")).to_have_count(0)  # every train option is in a group

    page.locator("#train-group-schedule").get_by_text("Schedule:").click()
    expect(page.locator("#cfg-train-warmup_steps")).to_contain_text("linear warm-up steps")  # the help text
    cycles, power = page.locator("#cfg-train-lr_cycles"), page.locator("#cfg-train-lr_power")
    expect(cycles).to_be_hidden()  # the preset's schedule is constant
    expect(power).to_be_hidden()
    choose(page, "cfg-train-scheduler", "cosine_with_restarts")
    expect(cycles).to_be_visible()
    expect(cycles).to_contain_text("restarts of scheduler cosine_with_restarts")
    expect(power).to_be_hidden()
    choose(page, "cfg-train-scheduler", "polynomial")
    expect(power).to_be_visible()
    expect(cycles).to_be_hidden()

    page.locator("#train-group-optimizer").get_by_text("Optimizer:").click()
    betas = [page.locator(f"#cfg-train-{key}") for key in ("adam_beta1", "adam_beta2", "adam_epsilon")]
    for box in betas:
        expect(box).to_be_visible()  # adamw
    choose(page, "cfg-train-optimizer", "adafactor")
    for box in betas:
        expect(box).to_be_hidden()
    expect(page.locator("#cfg-train-weight_decay")).to_be_visible()
    choose(page, "cfg-train-optimizer", "prodigy")
    for box in betas:
        expect(box).to_be_visible()
    choose(page, "cfg-train-optimizer", "lion")  # lion takes beta1 only
    expect(betas[0]).to_be_visible()
    expect(betas[1]).to_be_hidden()
    expect(betas[2]).to_be_hidden()

    page.locator("#train-group-ema").get_by_text("EMA:").click()
    expect(page.locator("#cfg-train-ema_decay")).to_be_hidden()
    page.locator("#cfg-train-ema input").check()
    expect(page.locator("#cfg-train-ema_decay")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#train-advanced").screenshot(path=str(ARTIFACTS / "ui-train-groups.png"))  # docs/UI.md's
