"""The Queue panel's timer never undoes the user's pick of a job: its refresh was sent with the pick of a second
ago, and putting that back made Cancel act on the job picked before (the browser test caught it once in CI)."""

from __future__ import annotations

from ui.queue_panel import tick_job_update

CHOICES = [("1 · qa (queued)", "1"), ("2 · qb (queued)", "2")]


def test_a_tick_updates_the_choices_and_leaves_the_pick_alone():
    for sent_with in ("2", None):  # a pick changed since the tick was sent, or nothing picked then
        update = tick_job_update(sent_with, CHOICES)
        assert update["choices"] == CHOICES and "value" not in update


def test_a_tick_clears_the_pick_of_a_job_gone_from_the_queue():
    update = tick_job_update("3", CHOICES)
    assert update["choices"] == CHOICES and update["value"] is None
