"""Sampling schedulers by short name, built from the base model's own noise schedule.

Every scheduler is made `from_config` of the model's scheduler config, so the betas and prediction type the model
was trained with carry over; only the sampling method changes.
"""

from __future__ import annotations

from typing import Any

from sdlora.errors import SdloraError

# name -> (diffusers class, settings that make it the named sampler)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    # DPM-Solver++(2M), Lu et al. 2022: second-order multistep in data-prediction form.
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # Latent Consistency Models, Luo et al. 2023: few-step sampling for LCM-distilled weights.
    "lcm": ("LCMScheduler", {}),
}


def make_scheduler(name: str, base_scheduler_config: Any, options: dict[str, Any] | None = None):
    """A diffusers scheduler named `name` (ddim, euler, euler_a, dpmpp_2m, lcm) on the base model's schedule.

    `base_scheduler_config` is the model's scheduler config (`pipe.scheduler.config` or a dict); `options` are
    settings of the scheduler class itself (e.g. an LCM adapter's `original_inference_steps`).
    """
    import diffusers

    if name not in SCHEDULERS:
        raise SdloraError(f"scheduler '{name}' is unknown; use one of {', '.join(SCHEDULERS)}")
    class_name, settings = SCHEDULERS[name]
    config = dict(base_scheduler_config)
    # Keys of the model's own scheduler class that mean something else (or nothing) to the new one are dropped
    # by from_config; the settings that define the sampler win over the base config.
    config.update(settings)
    config.update(options or {})
    return getattr(diffusers, class_name).from_config(config)
