"""How the training step runs on a GPU: torch.compile, CUDA graphs, and the compile cache that makes the second
start fast.

Why CUDA graphs: an eager SD 1.5 step issues a few thousand small kernels through Python (diffusers' blocks, peft's
LoRA wrappers, autocast casts). On an H100 that host work takes ~0.2 s a step whatever the batch size, while the
GPU's own work is ~11 ms a sample, so below batch ~16 the GPU mostly waits (docs/PERFORMANCE.md). torch.compile
fuses the kernels (fewer, larger); its "reduce-overhead" mode also records them as CUDA graphs that replay with
one launch, so the host cost all but vanishes.

CUDA graphs replay into the same memory every step. Two rules keep that safe here:
- LoRA gradients are allocated once before the first step (distributed.GradientSync) and zeroed in place
  (zero_grad(set_to_none=False)), so autograd accumulates into memory the trainer owns, never into a graph's
  output buffer that the next replay (the next micro-batch with gradient accumulation) would overwrite;
- every micro-batch starts with `cudagraph_mark_step_begin()`, telling the graphs that tensors of the previous
  one are no longer read.
"""

from __future__ import annotations

import os

import torch

from sdlora.config import TrainConfig
from sdlora.models.registry import cache_dir


def use_compile(train: TrainConfig, device: torch.device) -> bool:
    return train.compile == "on" or (train.compile == "auto" and device.type == "cuda")


def use_cuda_graphs(train: TrainConfig, device: torch.device) -> bool:
    """CUDA graphs need a CUDA device and compile (auto: whenever both hold; they hold no collectives, so data
    parallelism keeps them, see distributed.py)."""
    if device.type != "cuda" or not use_compile(train, device):
        return False
    return train.cuda_graphs in ("auto", "on")


def persist_compile_cache() -> None:
    """Keep inductor's compiled kernels in the user cache instead of /tmp, so a second run (same model, batch
    and bucket shapes) loads them instead of compiling again. A user's own TORCHINDUCTOR_CACHE_DIR wins."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))


def compile_step_model(model: torch.nn.Module, cuda_graphs: bool) -> torch.nn.Module:
    """A compiled view of `model` for the training step (same parameters)."""
    persist_compile_cache()
    return torch.compile(model, mode="reduce-overhead" if cuda_graphs else None)


def mark_step_begin(cuda_graphs: bool) -> None:
    if cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
