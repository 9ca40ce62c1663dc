"""The adapter metadata schema, in one place: every kohya ss_* key (which A1111 and ComfyUI show) and sdlora_* key
that sdlora writes or reads, their types and defaults.

`adapter_metadata` writes what training puts into a file (all strings, as safetensors wants); `read_metadata`
reads any file's metadata back into typed values (`AdapterMetadata`), tolerant of kohya's and other tools' files,
which may lack keys or hold values sdlora never writes. Everything that reads a key goes through here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sdlora import __version__
from sdlora.config import Config
from sdlora.errors import SdloraError

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
# ss_base_model_version as kohya's and other tools' files carry it -> sdlora's family.
FAMILY_OF_VERSION = {"sd_v1": "sd1", "sd_v2": "sd2", "sdxl_base_v1-0": "sdxl", "sd_v1_5": "sd1"}

# What an LCM adapter wants at inference (LCM-LoRA, Luo et al. 2023, sec. 4): few steps, low guidance. Written
# into every LCM adapter, and the reader's defaults for a file that lacks the keys.
LCM_SCHEDULER = "lcm"
LCM_STEPS = 4
LCM_GUIDANCE = 1.5

# Training metadata worth showing (`sdlora inspect`), in this order (kohya's ss_* names, then sdlora's own).
TRAINING_KEYS = ("ss_output_name", "ss_sd_model_name", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                 "ss_network_alpha", "ss_steps", "ss_max_train_steps", "ss_epoch", "ss_resolution",
                 "ss_num_train_images", "ss_batch_size_per_device", "ss_learning_rate", "ss_lr_scheduler",
                 "ss_optimizer", "ss_mixed_precision", "ss_seed", "ss_training_started_at",
                 "ss_training_finished_at", "sdlora_version", "sdlora_mode", "sdlora_base_model",
                 "sdlora_lcm_scheduler", "sdlora_lcm_steps", "sdlora_lcm_guidance", "sdlora_resized_from_rank",
                 "ss_network_args", "sdlora_dylora_unit", "sdlora_truncated_from_rank")


@dataclass(frozen=True)
class LcmSampling:
    """How an LCM adapter is sampled: scheduler, steps, guidance, and the solver schedule it was distilled on
    (None in files from before these keys: LCMScheduler's own defaults, 50 and 10)."""

    scheduler: str = LCM_SCHEDULER
    steps: int = LCM_STEPS
    guidance: float = LCM_GUIDANCE
    original_steps: int | None = None
    timestep_scaling: float | None = None

    @property
    def scheduler_options(self) -> dict[str, Any]:
        """The LCMScheduler arguments this adapter was trained for."""
        options: dict[str, Any] = {}
        if self.original_steps is not None:
            options["original_inference_steps"] = self.original_steps
        if self.timestep_scaling is not None:
            options["timestep_scaling"] = self.timestep_scaling
        return options


@dataclass(frozen=True)
class AdapterMetadata:
    """An adapter file's metadata, typed. Absent keys read as their defaults; `raw` keeps every string."""

    mode: str = "standard"  # sdlora_mode: standard | lcm
    network_type: str | None = None  # sdlora_network_type (lora, dora, loha, lokr, dylora); None: not sdlora's
    base_model_version: str = ""  # ss_base_model_version as written (sd_v1, sdxl_base_v1-0, ...)
    v2: bool = False  # ss_v2
    base_model: str | None = None  # sdlora_base_model, else kohya's ss_sd_model_name
    steps: int | None = None  # ss_steps: optimizer steps trained
    dylora_unit: int = 1  # sdlora_dylora_unit, else kohya's ss_network_args `unit`
    raw: dict[str, str] = field(default_factory=dict)
    where: str = "adapter"  # the file, for errors

    @property
    def lcm(self) -> LcmSampling | None:
        """How an LCM adapter wants to be sampled (None: not an LCM adapter). A broken sdlora_lcm_* number is a
        `SdloraError` naming the file, raised here (when sampling) rather than on reading, so inspect, convert and
        resize still read the file."""
        raw = self.raw
        if self.mode != "lcm":
            return None
        try:
            return LcmSampling(
                scheduler=raw.get("sdlora_lcm_scheduler", LCM_SCHEDULER),
                steps=int(float(raw.get("sdlora_lcm_steps", LCM_STEPS))),
                guidance=float(raw.get("sdlora_lcm_guidance", LCM_GUIDANCE)),
                original_steps=int(raw["sdlora_lcm_original_steps"]) if "sdlora_lcm_original_steps" in raw else None,
                timestep_scaling=(float(raw["sdlora_lcm_timestep_scaling"]) if "sdlora_lcm_timestep_scaling" in raw
                                  else None))
        except ValueError:
            raise SdloraError(f"{self.where}: its sdlora_lcm_* metadata (steps, guidance, solver schedule) is not a "
                              f"number; fix the metadata or give --steps and --guidance") from None

    @property
    def family(self) -> str | None:
        """sd1 | sd2 | sdxl from ss_base_model_version or ss_v2; None when the metadata does not say."""
        if self.base_model_version in FAMILY_OF_VERSION:
            return FAMILY_OF_VERSION[self.base_model_version]
        if self.v2:
            return "sd2"
        return None

    @property
    def is_sdxl(self) -> bool:
        return self.base_model_version.startswith("sdxl")

    def training(self) -> dict[str, str]:
        """The training keys worth showing, in `TRAINING_KEYS` order."""
        return {key: self.raw[key] for key in TRAINING_KEYS if key in self.raw}


def read_metadata(meta: dict[str, str] | None, where: str = "adapter") -> AdapterMetadata:
    """Typed metadata of any adapter file (`where` names it in errors). Values are read leniently: a foreign or
    broken value reads as absent, except the LCM sampling numbers (see `AdapterMetadata.lcm`), since sampling an
    LCM adapter with the wrong steps or schedule gives noise."""
    raw = {str(k): str(v) for k, v in (meta or {}).items()}
    return AdapterMetadata(mode=raw.get("sdlora_mode", "standard"), network_type=raw.get("sdlora_network_type"),
                           base_model_version=raw.get("ss_base_model_version", ""), v2=raw.get("ss_v2") == "True",
                           base_model=raw.get("sdlora_base_model") or raw.get("ss_sd_model_name"),
                           steps=_int_or_none(raw.get("ss_steps")), dylora_unit=_dylora_unit(raw), raw=raw,
                           where=where)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _dylora_unit(raw: dict[str, str]) -> int:
    if "sdlora_dylora_unit" in raw:
        try:
            return int(raw["sdlora_dylora_unit"])
        except ValueError:
            pass
    try:
        return int(json.loads(raw.get("ss_network_args", "{}")).get("unit", 1))
    except (ValueError, AttributeError, TypeError):
        return 1


def resized_metadata(meta: dict[str, str], *, rank: int, alpha: float | None = None,
                     resized_from: list[int] | None = None, truncated_from: int | None = None,
                     plain_lora: bool = False) -> dict[str, str]:
    """`meta` for an adapter resized (SVD) or truncated (DyLoRA) to `rank`; `plain_lora`: LoHa/LoKr became LoRA."""
    meta = dict(meta)
    if plain_lora:
        meta.update(sdlora_network_type="lora", ss_network_module="networks.lora")
    meta["ss_network_dim"] = str(rank)
    if alpha is not None:
        meta["ss_network_alpha"] = f"{alpha:g}"
    if resized_from is not None:
        meta["sdlora_resized_from_rank"] = ",".join(str(r) for r in sorted(resized_from))
    if truncated_from is not None:
        meta["sdlora_truncated_from_rank"] = str(truncated_from)
    return meta


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
        meta.update({"sdlora_lcm_scheduler": LCM_SCHEDULER, "sdlora_lcm_steps": str(LCM_STEPS),
                     "sdlora_lcm_guidance": str(LCM_GUIDANCE),
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
