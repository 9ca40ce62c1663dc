"""The metadata written into every adapter: kohya's ss_* fields (which A1111 and ComfyUI show) and sdlora's own."""

from __future__ import annotations

import json
import time

from sdlora import __version__
from sdlora.config import Config

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def adapter_metadata(config: Config, *, family: str, prediction_type: str, num_images: int, steps_done: int,
                     started_at: float) -> dict[str, str]:
    network, train, data = config.network, config.train, config.data
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(network.rank),
        "ss_network_alpha": str(network.effective_alpha),
        "ss_network_dropout": str(network.dropout),
        "ss_base_model_version": BASE_MODEL_VERSION.get(family, family),
        "ss_v2": str(family == "sd2"),
        "ss_v_parameterization": str(prediction_type == "v_prediction"),
        "ss_sd_model_name": str(config.model),
        "ss_resolution": f"({data.resolution}, {data.resolution})",
        "ss_steps": str(steps_done),
        "ss_max_train_steps": str(train.steps),
        "ss_num_train_images": str(num_images),  # samples per epoch, repeats included
        "ss_batch_size_per_device": str(train.batch_size),
        "ss_gradient_accumulation_steps": str(train.gradient_accumulation),
        "ss_learning_rate": str(train.lr),
        "ss_unet_lr": str(train.lr),
        "ss_text_encoder_lr": str(train.effective_text_encoder_lr if network.text_encoder else 0),
        "ss_network_train_unet_only": str(not network.text_encoder),
        "ss_lr_scheduler": train.scheduler,
        "ss_lr_warmup_steps": str(train.warmup_steps),
        "ss_optimizer": train.optimizer,
        "ss_mixed_precision": train.mixed_precision,
        "ss_seed": str(train.seed),
        "ss_noise_offset": str(train.noise_offset),
        "ss_min_snr_gamma": str(train.min_snr_gamma),
        "ss_output_name": config.name,
        "ss_training_started_at": str(started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_network_args": json.dumps({"targets": list(network.targets)}),
        "sdlora_version": __version__,
        "sdlora_mode": config.mode,
        "sdlora_base_model": str(config.model),
        "sdlora_config": config.to_json(),
    }
    meta.update(network_type_metadata(network))
    meta.update(recipe_metadata(config))
    if config.mode == "lcm":
        # What an LCM adapter wants at inference (LCM-LoRA, Luo et al. 2023, sec. 4): few steps, low guidance.
        meta.update({"sdlora_lcm_scheduler": "lcm", "sdlora_lcm_steps": "4", "sdlora_lcm_guidance": "1.5",
                     # The LCMScheduler must pick its few timesteps from the solver schedule the adapter was
                     # distilled on, and use the same boundary-condition scaling.
                     "sdlora_lcm_original_steps": str(config.lcm.num_ddim_timesteps),
                     "sdlora_lcm_timestep_scaling": str(config.lcm.timestep_scaling)})
    return meta


def network_type_metadata(network) -> dict[str, str]:
    """`sdlora_network_type`, and `ss_network_module`/`ss_network_args` as kohya and LyCORIS write them: LoHa, LoKr
    and DoRA are LyCORIS' `lycoris.kohya` with an `algo` (DoRA: locon + dora_wd), DyLoRA kohya's networks.dylora."""
    args = {"targets": list(network.targets)}
    if network.conv_rank is not None or network.conv_alpha is not None:
        args.update(conv_dim=str(network.effective_conv_rank), conv_alpha=str(network.effective_conv_alpha))
    module = "networks.lora"
    if network.type in ("loha", "lokr", "dora"):
        module = "lycoris.kohya"
        args["algo"] = "locon" if network.type == "dora" else network.type
        if network.type == "dora":
            args["dora_wd"] = "True"
        if network.type == "lokr":
            args["factor"] = str(network.lokr_factor)
    elif network.type == "dylora":
        module = "networks.dylora"
        args["unit"] = str(network.dylora_unit)
    meta = {"sdlora_network_type": network.type, "ss_network_args": json.dumps(args)}
    if module != "networks.lora":
        meta["ss_network_module"] = module
    if network.type == "dylora":
        meta["sdlora_dylora_unit"] = str(network.dylora_unit)
    return meta


def recipe_metadata(config: Config) -> dict[str, str]:
    """The recipe options (issue 17) under the names kohya's sd-scripts write them."""
    train, block_lr = config.train, config.network.block_lr
    meta = {
        "ss_optimizer_args": json.dumps(train.optimizer_args, sort_keys=True),
        "ss_min_timestep": str(train.timestep_min),
        "ss_max_timestep": str(train.timestep_max if train.timestep_max is not None else 1000),
        "ss_timestep_sampling": train.timestep_sampling,
        "ss_loss_type": train.loss,
        "ss_huber_c": str(train.huber_c),
        "ss_huber_schedule": train.huber_schedule,
        "ss_debiased_estimation": str(train.debiased_estimation),
        "ss_multires_noise_iterations": str(train.multires_noise_iterations or None),
        "ss_multires_noise_discount": str(train.multires_noise_discount),
        "ss_ip_noise_gamma": str(train.ip_noise_gamma or None),
        "ss_zero_terminal_snr": str(train.zero_terminal_snr),
        "ss_masked_loss": str(config.data.masks != "none"),
        "sdlora_ema": str(train.ema),
    }
    if train.ema:
        meta["sdlora_ema_decay"] = str(train.ema_decay)
    if not block_lr.is_uniform:
        meta["sdlora_block_lr"] = json.dumps({"down": block_lr.down, "mid": block_lr.mid, "up": block_lr.up})
    return meta
