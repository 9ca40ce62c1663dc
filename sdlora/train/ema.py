"""An exponential moving average of the LoRA weights (train.ema).

After optimizer update n (n = 1, 2, ...):  ema ← d_n·ema + (1 - d_n)·θ,  with d_n = ema_decay, or with
train.ema_warmup d_n = min(ema_decay, (1 + n)/(10 + n)) (the warm-up of TensorFlow's ExponentialMovingAverage
num_updates, which diffusers' EMAModel also uses), so the random early weights fade quickly. The shadow copies
are fp32 and start equal to the weights at step 0. The EMA is written as NAME-ema.safetensors beside the plain
adapter and into each checkpoint (exact state for resume), and samples are drawn from it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdlora.tensorfile import read_safetensors

EMA_STATE_FILE = "ema_state.safetensors"


class AdapterEma:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, warmup: bool):
        self.params, self.decay, self.warmup = params, decay, warmup
        self.shadow = [p.detach().float().clone() for p in params]
        self.updates = 0

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = self.current_decay()
        # d·ema + (1 - d)·θ for all tensors in one call (one kernel launch per few tensors on a GPU)
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - d)

    @contextlib.contextmanager
    def weights_applied(self):
        """Inside, the live parameters hold the EMA; the training weights come back bitwise on leaving."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, copy in zip(self.params, saved):
                    param.copy_(copy)

    # ----------------------------------------------------------------------------------------------- resume
    def save(self, path: Path) -> None:
        tensors = {f"shadow.{i}": t.contiguous() for i, t in enumerate(self.shadow)}
        tensors["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        save_file(tensors, str(path))

    def load(self, path: Path) -> None:
        tensors = read_safetensors(path, advice="resume from another checkpoint")[0]
        if len(tensors) - 1 != len(self.shadow):
            raise ValueError(f"{path}: EMA state of {len(tensors) - 1} tensors for {len(self.shadow)} parameters")
        for i, shadow in enumerate(self.shadow):
            shadow.copy_(tensors[f"shadow.{i}"])
        self.updates = int(tensors["updates"].item())


def ema_adapter_name(name: str) -> str:
    return f"{name}-ema.safetensors"
