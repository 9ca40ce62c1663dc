"""Optimizer and learning-rate schedule from `TrainConfig`.

Each optimizer comes from its own well-kept package (the `optimizers` extra: pip install 'sdlora[optimizers]');
`train.optimizer_args` adds keyword arguments, checked against the optimizer's signature before it is built.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from typing import Any, Callable

import torch

from sdlora.config import TrainConfig
from sdlora.errors import SdloraError

# name -> (module, class, pip package): where each optimizer lives.
OPTIMIZERS: dict[str, tuple[str, str, str]] = {
    "adamw": ("torch.optim", "AdamW", "torch"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    # Mishchenko & Defazio 2023, Prodigy: an expeditiously adaptive parameter-free learner (arXiv 2306.06101).
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
    # Shazeer & Stern 2018, Adafactor (arXiv 1804.04235), as transformers implements it.
    "adafactor": ("transformers.optimization", "Adafactor", "transformers"),
    # Defazio et al. 2024, The Road Less Scheduled (arXiv 2405.15682).
    "adamw_schedulefree": ("schedulefree", "AdamWScheduleFree", "schedulefree"),
    # Chen et al. 2023, Symbolic Discovery of Optimization Algorithms (Lion, arXiv 2302.06675).
    "lion": ("bitsandbytes.optim", "Lion", "bitsandbytes"),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes"),
    # Luo et al. 2023, CAME: Confidence-guided Adaptive Memory Efficient Optimization (arXiv 2307.02047).
    "came": ("came_pytorch", "CAME", "came-pytorch"),
}


def optimizer_class(name: str) -> type:
    """The optimizer class of `train.optimizer`; a missing package is a one-line error naming what to install."""
    module_name, class_name, package = OPTIMIZERS[name]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or a library that fails to load its native binary
        extra = "" if package in ("torch", "transformers") else " (or pip install 'sdlora[optimizers]')"
        raise SdloraError(f"train.optimizer: {name} needs the {package} package, which cannot be imported here "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pip install "
                          f"{package}{extra}, or use adamw") from None
    return getattr(module, class_name)


def default_kwargs(train: TrainConfig) -> dict[str, Any]:
    """The keyword arguments sdlora sets for `train.optimizer` from the AdamW-style keys."""
    betas = (train.adam_beta1, train.adam_beta2)
    name = train.optimizer
    if name in ("adamw", "adamw8bit", "prodigy"):
        return dict(lr=train.lr, betas=betas, eps=train.adam_epsilon, weight_decay=train.weight_decay)
    if name == "adamw_schedulefree":
        # Its warm-up is part of the method (the trainer's schedule stays constant).
        return dict(lr=train.lr, betas=betas, eps=train.adam_epsilon, weight_decay=train.weight_decay,
                    warmup_steps=train.warmup_steps)
    if name == "adafactor":
        # A fixed lr, as kohya recommends for LoRA; optimizer_args {relative_step: true} gives Adafactor's own.
        return dict(lr=train.lr, weight_decay=train.weight_decay, relative_step=False, scale_parameter=False,
                    warmup_init=False)
    if name in ("lion", "lion8bit"):
        return dict(lr=train.lr, betas=(train.adam_beta1, 0.99), weight_decay=train.weight_decay)
    return dict(lr=train.lr, weight_decay=train.weight_decay)  # came: its own betas and eps


def check_optimizer_args(name: str, cls: type, args: dict[str, Any]) -> None:
    """An argument the optimizer does not take is named, with the ones it does."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n not in ("self", "params")]
    for key in args:
        if key not in valid:
            raise SdloraError(f"train.optimizer_args: {name} ({cls.__module__}.{cls.__name__}) takes no argument "
                              f"{key!r}; valid: {', '.join(valid)}")


def check_optimizer(train: TrainConfig) -> None:
    """What make_optimizer would refuse, without building it (for --dry-run): the package, the arguments."""
    check_optimizer_args(train.optimizer, optimizer_class(train.optimizer), dict(train.optimizer_args))


def make_optimizer(params: list[torch.nn.Parameter] | list[dict], train: TrainConfig, device: torch.device):
    """`train.optimizer` over `params`: a list of parameters, or of param groups (a group may set its own "lr",
    e.g. the text encoder's; the others get train.lr)."""
    name = train.optimizer
    if name == "adamw8bit" and device.type != "cuda":
        raise SdloraError("train.optimizer: adamw8bit needs a CUDA GPU (bitsandbytes); use adamw on the CPU")
    cls = optimizer_class(name)
    args = dict(train.optimizer_args)
    check_optimizer_args(name, cls, args)
    kwargs = {**default_kwargs(train), **args}
    if name == "adafactor" and kwargs.get("relative_step"):
        kwargs["lr"] = None  # Adafactor's relative step computes the lr itself and refuses one given
        params = [{k: v for k, v in g.items() if k != "lr"} if isinstance(g, dict) else g for g in params]
    if name == "adamw":
        # Fused: one kernel for all LoRA tensors, and it honours `found_inf`, which lets the trainer skip a
        # non-finite step on the device without a host sync (see Trainer.run).
        kwargs.setdefault("fused", True)
    try:
        optimizer = cls(params, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SdloraError(f"train.optimizer_args: {name} refused its arguments {kwargs} "
                          f"({str(exc).splitlines()[0]})") from None
    if is_schedule_free(optimizer):
        optimizer.train()  # it refuses to step in eval mode, which is how it starts
    return optimizer


def make_lr_scheduler(optimizer, train: TrainConfig):
    from diffusers.optimization import get_scheduler

    if train.optimizer == "adafactor" and train.optimizer_args.get("relative_step"):
        if train.scheduler not in ("constant",) or train.warmup_steps:
            raise SdloraError("train.scheduler: adafactor with optimizer_args relative_step true schedules its own "
                              "lr; set train.scheduler constant and train.warmup_steps 0")
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer)
    warmup = train.warmup_steps
    if train.optimizer == "adamw_schedulefree":
        name, warmup = "constant", 0  # the warm-up and the schedule are the optimizer's own
    elif train.scheduler == "constant" and warmup:
        name = "constant_with_warmup"  # a warm-up asked for is a warm-up given
    else:
        name = train.scheduler
    # num_cycles: cosine_with_restarts' hard restarts; power: polynomial decay to 0 (diffusers' lr_end 1e-7).
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=train.steps,
                         num_cycles=train.lr_cycles, power=train.lr_power)


def is_schedule_free(optimizer) -> bool:
    """Schedule-free optimizers train on one point (y) and evaluate on another (x); they have train()/eval()."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return callable(getattr(inner, "eval", None)) and callable(getattr(inner, "train", None)) and any(
        "train_mode" in g for g in inner.param_groups)


@contextlib.contextmanager
def evaluation_weights(optimizer, params: list[torch.nn.Parameter]) -> Callable:
    """Inside, the parameters hold the weights to sample and save: a schedule-free optimizer's averaged x.

    On leaving, the training weights are restored bitwise from a copy (the optimizer's eval()/train() pair is a
    lerp and back, which rounds), so a run that samples or saves trains on exactly as one that does not.
    """
    if not is_schedule_free(optimizer):
        yield
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    saved = [p.detach().clone() for p in params]
    modes = [g["train_mode"] for g in inner.param_groups]
    inner.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, copy in zip(params, saved):
                p.copy_(copy)
        for group, mode in zip(inner.param_groups, modes):
            group["train_mode"] = mode
