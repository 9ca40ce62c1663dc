"""The Train tab's Queue panel in a real browser: two jobs added, reordered, one cancelled, the other run to
the end; a reload shows the same queue (it lives in outputs/queue.json, not in the page)."""

from __future__ import annotations

import json
import re

import pytest

from playwright.sync_api import expect

from browser.conftest import screenshot
from browser.test_train_tab import RUN_TIMEOUT, field, set_number


def order(page) -> list[str]:
    return page.locator("#queue-table tr[data-name]").evaluate_all("rows => rows.map(r => r.dataset.name)")


def pick_job(page, name: str) -> None:
    field(page, "queue-job").click()
    page.get_by_role("option", name=re.compile(rf"· {name} \(")).click()


def add_job(page, name: str) -> None:
    box = field(page, "cfg-name")
    box.fill(name)
    box.press("Tab")
    page.locator("#queue-add").click()
    expect(page.locator(f"#queue-table tr[data-name='{name}']")).to_have_attribute("data-state", "queued")


@pytest.mark.slow  # ~25 s; the queue itself is covered by tests/test_queue.py
def test_add_reorder_cancel_run_and_reload(page, project):
    page.get_by_role("tab", name="Train").click()
    field(page, "train-preset").click()
    page.get_by_role("option", name="uitest").click()
    expect(field(page, "cfg-name")).to_have_value("uitest")
    set_number(page, "cfg-train-steps", 3)
    add_job(page, "qa")
    add_job(page, "qb")
    assert order(page) == ["qa", "qb"]

    pick_job(page, "qb")
    page.locator("#queue-up").click()
    expect(page.locator("#queue-table tr[data-name]").first).to_have_attribute("data-name", "qb")
    pick_job(page, "qa")
    page.locator("#queue-cancel").click()
    expect(page.locator("#queue-table tr[data-name='qa']")).to_have_count(0)
    assert order(page) == ["qb"]

    page.locator("#queue-run").click()
    row = page.locator("#queue-table tr[data-name='qb']")
    expect(row).to_have_attribute("data-state", "done", timeout=RUN_TIMEOUT)
    expect(row).to_contain_text("3 / 3")
    assert (project / "outputs" / "qb" / "qb.safetensors").is_file()
    assert not (project / "outputs" / "qa").exists()  # the cancelled job never ran
    screenshot(page, "queue")

    page.reload()
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#queue-table tr[data-name='qb']")).to_have_attribute("data-state", "done")
    assert order(page) == ["qb"]
    saved = json.loads((project / "outputs" / "queue.json").read_text(encoding="utf-8"))
    assert [(j["name"], j["state"]) for j in saved["jobs"]] == [("qb", "done")]
