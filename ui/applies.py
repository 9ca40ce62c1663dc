"""Which options of the Advanced section apply, given the others: an option that cannot matter is hidden.

`RULES` maps an option (or a section prefix ending in ".") to the option it depends on and a test on that
option's widget value. A new option that only matters under some setting gets one line here; every other option
is always shown.
"""

from __future__ import annotations

from typing import Any, Callable

Rule = tuple[str, Callable[[Any], bool]]


def _on(value: Any) -> bool:
    return bool(value) and str(value).strip().lower() not in ("false", "off", "none", "0", "")


RULES: dict[str, Rule] = {
    "lcm.": ("mode", lambda v: v == "lcm"),
    "train.text_encoder_lr": ("network.text_encoder", _on),
    "data.bucket_min": ("data.buckets", _on),
    "data.bucket_max": ("data.buckets", _on),
    "data.bucket_step": ("data.buckets", _on),
    "data.reg_weight": ("data.reg_dir", _on),
    "data.keep_tokens": ("data.shuffle_tags", _on),
    "train.cuda_graphs": ("train.compile", lambda v: v != "off"),
    # As sdlora.train.optim.default_kwargs passes them: lion takes beta1 only, adafactor and came neither.
    "train.adam_beta1": ("train.optimizer", lambda v: str(v).startswith(("adamw", "prodigy", "lion"))),
    "train.adam_beta2": ("train.optimizer", lambda v: str(v).startswith(("adamw", "prodigy"))),
    "train.adam_epsilon": ("train.optimizer", lambda v: str(v).startswith(("adamw", "prodigy"))),
    "train.lr_cycles": ("train.scheduler", lambda v: v == "cosine_with_restarts"),
    "train.lr_power": ("train.scheduler", lambda v: v == "polynomial"),
    "train.timestep_logit_mean": ("train.timestep_sampling", lambda v: v == "logit_normal"),
    "train.timestep_logit_std": ("train.timestep_sampling", lambda v: v == "logit_normal"),
    "train.timestep_sigmoid_scale": ("train.timestep_sampling", lambda v: v == "sigmoid"),
    "train.huber_c": ("train.loss", lambda v: v in ("huber", "smooth_l1")),
    "train.huber_schedule": ("train.loss", lambda v: v in ("huber", "smooth_l1")),
    "train.multires_noise_discount": ("train.multires_noise_iterations", lambda v: str(v).strip() not in ("", "0")),
    "train.ema_decay": ("train.ema", _on),
    "train.ema_warmup": ("train.ema", _on),
    "vae": ("model", lambda v: v != "tiny"),
    "model_family": ("model", lambda v: v != "tiny"),
    "allow_pickle": ("model", lambda v: str(v).lower().endswith((".ckpt", ".pt", ".bin"))),
}


def rule_for(key: str) -> Rule | None:
    if key in RULES:
        return RULES[key]
    for prefix, rule in RULES.items():
        if prefix.endswith(".") and key.startswith(prefix):
            return rule
    return None


def dependents(keys: list[str]) -> dict[str, list[str]]:
    """Controlling option -> the options (of `keys`) whose visibility follows it."""
    out: dict[str, list[str]] = {}
    for key in keys:
        rule = rule_for(key)
        if rule is not None and rule[0] in keys:
            out.setdefault(rule[0], []).append(key)
    return out


def applies(key: str, values: dict[str, Any]) -> bool:
    """Whether `key` matters, given the widget values by key (an option without a rule always does)."""
    rule = rule_for(key)
    if rule is None or rule[0] not in values:
        return True
    return bool(rule[1](values[rule[0]]))
