"""A warning when training nearly fills the GPU's memory.

Near the card's limit the CUDA allocator starts freeing and re-splitting its cache every step, and on Windows the
driver goes on by spilling into shared system memory: the run keeps going, many times slower, with no error. So
the trainer checks the step's peak against the card's memory at each report window and says so once per run,
with the settings that lower it.

The numbers come from a `read` function returning (peak bytes, total bytes), so tests can give any device's
figures without a GPU.
"""

from __future__ import annotations

from typing import Callable

import torch

from sdlora.config import TrainConfig

THRESHOLD = 0.95
MemoryReader = Callable[[], "tuple[int, int]"]


def cuda_reader(device: torch.device) -> MemoryReader:
    """Peak memory this process's allocator has held on `device` (reserved: what the card has given it, cache
    included), and the card's total memory."""
    total = torch.cuda.get_device_properties(device).total_memory

    def read() -> tuple[int, int]:
        return torch.cuda.max_memory_reserved(device), total
    return read


def lowering_advice(train: TrainConfig) -> str:
    """The settings that lower a step's peak, those not already in use, most effective first."""
    advice = []
    if not train.gradient_checkpointing:
        advice.append("train.gradient_checkpointing: true")
    if train.optimizer != "adamw8bit":
        advice.append("train.optimizer: adamw8bit")
    if train.batch_size > 1:
        advice.append(f"a smaller train.batch_size (now {train.batch_size}; raise train.gradient_accumulation "
                      "to keep the effective batch)")
    if not advice:
        advice.append("a lower data.resolution or network.rank")
    return "set " + ", or ".join(advice)


class MemoryWatch:
    """Checks the peak at each report; `check` returns the warning's message the first time the peak reaches
    `threshold` of the total, then None for the rest of the run."""

    def __init__(self, read: MemoryReader, train: TrainConfig, threshold: float = THRESHOLD):
        self.read, self.train, self.threshold = read, train, threshold
        self.warned = False

    def check(self, step: int) -> str | None:
        if self.warned:
            return None
        peak, total = self.read()
        if total <= 0 or peak < self.threshold * total:
            return None
        self.warned = True
        gib = 2**30
        return (f"GPU memory nearly full at step {step}: peak {peak / gib:.1f} GiB of {total / gib:.1f} GiB "
                f"({100 * peak / total:.0f}%); near the limit training slows down sharply (on Windows the driver "
                f"spills into shared system memory without an error). To lower it, {lowering_advice(self.train)}")


def memory_watch(device: torch.device, train: TrainConfig) -> MemoryWatch | None:
    """The trainer's watch for `device`: None on the CPU (no card to fill)."""
    if device.type != "cuda":
        return None
    return MemoryWatch(cuda_reader(device), train)
