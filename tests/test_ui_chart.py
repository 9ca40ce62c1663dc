"""ui.chart: the loss chart's step axis has whole numbers, the moving average is a true one, the lr has its curve."""

from __future__ import annotations

import re

from ui.chart import bar_chart, loss_chart, moving_average, nice_ticks


def test_step_ticks_are_whole_numbers_even_for_a_few_steps():
    for lo, hi in ((1, 3), (0, 7), (1, 2), (5, 1000)):
        ticks = nice_ticks(lo, hi, 6, integer=True)
        assert ticks and all(isinstance(t, int) for t in ticks)
        assert ticks == sorted(set(ticks)) and lo <= ticks[0] and ticks[-1] <= hi
    svg = loss_chart([(1, 0.5), (2, 0.4), (3, 0.45)])
    labels = re.findall(r'class="x-tick"[^>]*>([^<]+)<', svg)
    assert labels == ["1", "2", "3"]


def test_the_moving_average_is_the_mean_of_the_last_values():
    assert moving_average([1, 2, 3, 4, 5], 2) == [1, 1.5, 2.5, 3.5, 4.5]
    assert moving_average([2.0], 10) == [2.0]


def test_the_loss_chart_draws_raw_smoothed_and_lr_curves():
    losses = [(s, 1.0 / s) for s in range(1, 41)]
    svg = loss_chart(losses, [(s, 1e-4) for s in range(1, 41)])
    assert 'class="raw"' in svg and 'class="smoothed"' in svg and 'class="lr"' in svg
    assert 'data-points="40"' in svg and "mean of 4" in svg
    assert 'class="lr"' not in loss_chart(losses)
    assert "no steps yet" in loss_chart([])


def test_bars_have_one_row_per_layer():
    svg = bar_chart([("a", 1.0, 2), ("b", 0.5, 4)], "layers", "|dW|", "eff. rank")
    assert 'data-rows="2"' in svg and svg.count("<rect") == 4


def test_the_validation_loss_is_drawn_on_the_loss_axis():
    svg = loss_chart([(s, 1.0) for s in range(1, 11)], validation=[(5, 2.0), (10, 1.5)])
    assert svg.count('class="validation-point"') == 2 and "validation</text>" in svg
    assert 'class="validation"' not in loss_chart([(1, 1.0), (2, 0.5)])
