"""sdlora.train.threads: the CPU thread count is chosen on purpose and said: config, then OMP_NUM_THREADS, then
the cores free."""

from __future__ import annotations

import os

import torch

from sdlora.config import config_from_dict
from sdlora.train.threads import apply_cpu_threads, choose_cpu_threads, usable_cores


def test_the_config_wins_then_omp_num_threads_then_the_free_cores(monkeypatch):
    assert choose_cpu_threads(3, {"OMP_NUM_THREADS": "1"}) == (3, "train.cpu_threads")
    assert choose_cpu_threads(None, {"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")
    monkeypatch.setattr(os, "getloadavg", lambda: (usable_cores() + 5.0, 0.0, 0.0))
    assert choose_cpu_threads(None, {})[0] == 1  # every core busy: one thread, not one per core
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    threads, why = choose_cpu_threads(None, {"OMP_NUM_THREADS": ""})
    assert threads == usable_cores() and "free" in why


def test_apply_sets_torch_threads_and_says_so():
    before = torch.get_num_threads()
    try:
        line = apply_cpu_threads(1)
        assert torch.get_num_threads() == 1
        assert line == "CPU threads: 1 (train.cpu_threads; train.cpu_threads sets it)"
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_is_a_config_key_with_a_range():
    assert config_from_dict({}).train.cpu_threads is None
    assert config_from_dict({"train": {"cpu_threads": 2}}).train.cpu_threads == 2
    import pytest

    from sdlora.errors import SdloraError

    with pytest.raises(SdloraError, match="train.cpu_threads"):
        config_from_dict({"train": {"cpu_threads": 0}})
