"""Optimizer and learning-rate schedule from `TrainConfig`."""

from __future__ import annotations

import torch

from sdlora.config import TrainConfig
from sdlora.errors import SdloraError


def make_optimizer(params: list[torch.nn.Parameter] | list[dict], train: TrainConfig, device: torch.device):
    """AdamW over `params`: a list of parameters, or of param groups (a group may set its own "lr", e.g. the
    text encoder's; the others get train.lr)."""
    kwargs = dict(lr=train.lr, betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_epsilon,
                  weight_decay=train.weight_decay)
    if train.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise SdloraError("train.optimizer: adamw8bit needs a CUDA GPU (bitsandbytes); use adamw on the CPU")
        try:
            import bitsandbytes as bnb
        except Exception as exc:  # ImportError, or a library that fails to load its CUDA binary
            raise SdloraError(f"train.optimizer: adamw8bit needs bitsandbytes, which cannot load here ({exc}); "
                              f"pip install bitsandbytes, or use adamw") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    # Fused: one kernel for all LoRA tensors, and it honours `found_inf`, which lets the trainer skip a
    # non-finite step on the device without a host sync (see Trainer.run).
    return torch.optim.AdamW(params, fused=True, **kwargs)


def make_lr_scheduler(optimizer, train: TrainConfig):
    from diffusers.optimization import get_scheduler

    warmup = train.warmup_steps
    if train.scheduler == "constant" and warmup:
        name = "constant_with_warmup"  # a warm-up asked for is a warm-up given
    else:
        name = train.scheduler
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=train.steps)
