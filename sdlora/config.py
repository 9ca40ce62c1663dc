"""The typed run configuration: a preset (YAML) plus `--set` overrides, validated once into `Config`.

The config objects are frozen after validation: code that needs a changed copy uses `dataclasses.replace` (or
`replace_keys` for dotted keys), so no part of a run can change what another part reads.

Each section is a dataclass whose fields carry their default, their allowed range and a one-line help text in
`metadata`. Validation walks the dataclasses, so adding an option is adding one field. Every problem is a
`SdloraError` that names the dotted key (and, for an unknown key, the nearest valid one).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from sdlora.errors import SdloraError


def opt(default: Any = dataclasses.MISSING, *, help: str, min: float | None = None, max: float | None = None,
        default_factory: Any = dataclasses.MISSING, group: str | None = None):
    """A config field with its help text and range; `group` (one of GROUPS) files a recipe option under a heading
    of the Train tab and the docs instead of its section's."""
    meta = {"help": help, "min": min, "max": max}
    if group is not None:
        if group not in GROUPS:
            raise ValueError(f"opt(group={group!r}): not one of sdlora.config.GROUPS")
        meta["group"] = group
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# The headings the recipe options are filed under (`opt(group=...)`), in the order the Train tab shows them; every
# train.* key has one. An option without a group stays under its section (data, network, sample, ...).
GROUPS = {
    "Steps and batch": "steps, batch size, gradient accumulation, seed",
    "Optimizer": "the optimizer and its settings, learning rates, gradient clipping",
    "Schedule": "how the learning rate moves over the run",
    "Timesteps": "which noise levels training draws",
    "Noise and loss": "the loss and its weighting, the noise added, masked loss",
    "EMA": "an exponential moving average of the adapter",
    "Validation": "a held-out loss at fixed noise and timesteps",
    "Logging": "TensorBoard, Weights & Biases, loss read-backs",
    "Precision and speed": "precision, device, compile, memory, threads",
}


@dataclass(frozen=True)
class DataConfig:
    dir: str = opt("", help="folder of images with same-stem caption files (searched recursively)")
    resolution: int = opt(512, min=64, max=4096, help="training side length in pixels (area for buckets)")
    caption_extension: str = opt(".txt", help="caption file extension, e.g. .txt or .caption")
    default_caption: str = opt("", help="caption used (with a warning) for an image without a caption file")
    trigger: str = opt("", help="trigger word or prefix put in front of every caption")
    repeats: int = opt(1, min=1, max=10000, help="times each image is seen per epoch (kohya N_name folders multiply)")
    flip: bool = opt(False, help="random horizontal flip (off for subjects whose left/right matter)")
    center_crop: bool = opt(True, help="center crop after resizing; false crops at a random position")
    shuffle_tags: bool = opt(False, help="shuffle comma-separated tags, keeping the first keep_tokens in place")
    keep_tokens: int = opt(0, min=0, max=100, help="leading tags that shuffling and tag dropout never touch")
    caption_dropout: float = opt(0.0, min=0.0, max=1.0, help="rate of training with an empty caption")
    tag_dropout: float = opt(0.0, min=0.0, max=1.0, help="rate at which each (non-kept) tag is dropped")
    buckets: bool = opt(False, help="aspect-ratio buckets of equal area instead of square crops")
    bucket_min: int = opt(256, min=16, max=4096, help="smallest bucket side in pixels")
    bucket_max: int = opt(1024, min=64, max=8192, help="largest bucket side in pixels")
    bucket_step: int = opt(64, min=8, max=256, help="bucket sides are multiples of this")
    allow_upscale: bool = opt(False, help="use images smaller than the target size by upscaling them")
    cache: Literal["none", "memory", "disk"] = opt("none", help="cache VAE latents and text embeddings")
    reg_dir: str = opt("", help="optional regularization (prior preservation) image folder")
    reg_weight: float = opt(1.0, min=0.0, max=10.0, help="loss weight of regularization images")
    vae_tiling: Literal["auto", "on", "off"] = opt(
        "auto", help="encode images in VAE tiles and slices to save memory (auto: on for images above 1024 px)")
    num_workers: int = opt(0, min=0, max=64, help="data loader worker processes (0 loads in the main process)")
    masks: str = opt("none", help="masked loss: none, alpha (each PNG's alpha channel), or a folder of same-stem "
                                  "mask images (white = learn, black = ignore, grey = weight)", group="Noise and loss")
    validation_dir: str = opt("", help="folder of held-out images (with captions) for the validation loss",
                              group="Validation")
    validation_split: float = opt(0.0, min=0.0, max=0.5, help="fraction of data.dir held out for the validation "
                                                               "loss (deterministic; instead of validation_dir)",
                                  group="Validation")
    subsets: list[SubsetConfig] = opt(default_factory=list, help="more data folders (concepts) in the same run, "
                                      "each with its own dir, repeats, trigger, loss_weight and caption options "
                                      "(e.g. [{dir: data/dog, repeats: 2, trigger: sks dog}]); data.dir, when set, "
                                      "is one more, with data's own options")


@dataclass(frozen=True)
class SubsetConfig:
    """One concept of data.subsets (kohya's dataset subset, OneTrainer's concept). Its dir, repeats, trigger and
    loss_weight are its own; a caption option left out (null) takes the value data.* has."""

    dir: str = opt("", help="folder of this subset's images with same-stem caption files (searched recursively)")
    repeats: int = opt(1, min=1, max=10000, help="times each image of this subset is seen per epoch")
    trigger: str = opt("", help="trigger word or prefix put in front of this subset's captions")
    loss_weight: float = opt(1.0, min=0.0, max=10.0, help="multiplies the loss of this subset's samples (0: they "
                                                          "give no gradient)")
    caption_extension: Optional[str] = opt(None, help="caption file extension (default: data.caption_extension)")
    default_caption: Optional[str] = opt(None, help="caption of an image without a caption file (default: "
                                                    "data.default_caption)")
    shuffle_tags: Optional[bool] = opt(None, help="shuffle comma-separated tags (default: data.shuffle_tags)")
    keep_tokens: Optional[int] = opt(None, min=0, max=100, help="leading tags never shuffled or dropped (default: "
                                                                "data.keep_tokens)")
    caption_dropout: Optional[float] = opt(None, min=0.0, max=1.0, help="rate of an empty caption (default: "
                                                                        "data.caption_dropout)")
    tag_dropout: Optional[float] = opt(None, min=0.0, max=1.0, help="rate at which each tag is dropped (default: "
                                                                    "data.tag_dropout)")


@dataclass(frozen=True)
class BlockLrConfig:
    down: float = opt(1.0, min=0.0, max=100.0, help="learning-rate multiplier of the UNet's down blocks "
                                                     "(and conv_in, time embedding)", group="Optimizer")
    mid: float = opt(1.0, min=0.0, max=100.0, help="learning-rate multiplier of the UNet's mid block",
                     group="Optimizer")
    up: float = opt(1.0, min=0.0, max=100.0, help="learning-rate multiplier of the UNet's up blocks (and conv_out)",
                    group="Optimizer")

    @property
    def is_uniform(self) -> bool:
        return self.down == self.mid == self.up == 1.0


@dataclass(frozen=True)
class NetworkConfig:
    rank: int = opt(16, min=1, max=1024, help="LoRA rank r (default 16; 64 in mode lcm)")
    alpha: Optional[float] = opt(None, min=0.0, max=100000.0, help="LoRA alpha; output scaled by alpha/rank (default: rank)")
    dropout: float = opt(0.0, min=0.0, max=0.9, help="dropout on the LoRA path during training")
    targets: list[str] = opt(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
                             help="UNet module name suffixes that get a LoRA")
    text_encoder: bool = opt(False, help="also train a LoRA on the text encoder (its attention q/k/v/out_proj and "
                                         "MLP fc1/fc2, as kohya does; lr: train.text_encoder_lr); SDXL: both "
                                         "encoders (lora_te1_, lora_te2_)")
    block_lr: BlockLrConfig = opt(default_factory=BlockLrConfig,
                                  help="learning-rate multipliers of the UNet's stages (kohya's down/mid/up lr weight)")
    type: Literal["lora", "loha", "lokr", "dora", "dylora"] = opt(
        "lora", help="adapter kind: lora (LoRA; LoCon on Conv2d targets), loha (Hadamard product of two low-rank "
                     "pairs), lokr (Kronecker product), dora (LoRA + a learned magnitude per output channel), dylora "
                     "(LoRA trained at a random rank each step, so it can be truncated to any multiple of "
                     "dylora_unit); see docs/NETWORKS.md")
    conv_rank: Optional[int] = opt(None, min=1, max=1024, help="rank of Conv2d targets with a kernel larger than 1x1 "
                                                               "(LoCon; default: rank)")
    conv_alpha: Optional[float] = opt(None, min=0.0, max=100000.0, help="alpha of those Conv2d targets (default: "
                                                                        "alpha, else conv_rank)")
    lokr_factor: int = opt(-1, min=-1, max=1024, help="LoKr: the size of the Kronecker product's small factor, as in "
                                                      "LyCORIS (-1: automatic, near the square root of each side)")
    dylora_unit: int = opt(1, min=1, max=1024, help="DyLoRA: the rank step; each training step uses the first b rows "
                                                    "of the LoRA, b a random multiple of this (rank must be one)")

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def effective_conv_rank(self) -> int:
        return self.rank if self.conv_rank is None else self.conv_rank

    @property
    def effective_conv_alpha(self) -> float:
        if self.conv_alpha is not None:
            return float(self.conv_alpha)
        return float(self.effective_conv_rank if self.alpha is None else self.alpha)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = opt(1000, min=1, max=10_000_000, help="optimizer steps", group="Steps and batch")
    batch_size: int = opt(1, min=1, max=4096, help="images per micro-batch", group="Steps and batch")
    gradient_accumulation: int = opt(1, min=1, max=1024, help="micro-batches per optimizer step",
                                     group="Steps and batch")
    lr: float = opt(1e-4, min=0.0, max=1.0, help="peak learning rate", group="Optimizer")
    text_encoder_lr: Optional[float] = opt(None, min=0.0, max=1.0, help="peak learning rate of the text-encoder "
                                                                       "LoRA (network.text_encoder; default: lr)",
                                           group="Optimizer")
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adafactor", "adamw_schedulefree", "lion", "lion8bit",
                       "came"] = opt(
        "adamw", help="adamw; adamw8bit, lion, lion8bit (bitsandbytes, GPU); prodigy (lr 1.0 by default), adafactor, "
                      "adamw_schedulefree, came: pip install 'sdlora[optimizers]'", group="Optimizer")
    weight_decay: float = opt(1e-2, min=0.0, max=10.0, help="AdamW weight decay", group="Optimizer")
    adam_beta1: float = opt(0.9, min=0.0, max=1.0, help="AdamW beta1", group="Optimizer")
    adam_beta2: float = opt(0.999, min=0.0, max=1.0, help="AdamW beta2", group="Optimizer")
    adam_epsilon: float = opt(1e-8, min=0.0, max=1.0, help="AdamW epsilon", group="Optimizer")
    scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts",
                       "polynomial"] = opt(
        "constant", help="learning-rate schedule", group="Schedule")
    warmup_steps: int = opt(0, min=0, max=10_000_000, help="linear warm-up steps", group="Schedule")
    max_grad_norm: float = opt(1.0, min=0.0, max=1e6, help="gradient clipping norm (0 turns it off)", group="Optimizer")
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", help="frozen weights and autocast precision",
                                                         group="Precision and speed")
    min_snr_gamma: Optional[float] = opt(None, min=0.0, max=100.0, help="Min-SNR loss weighting gamma (e.g. 5)",
                                         group="Noise and loss")
    noise_offset: float = opt(0.0, min=0.0, max=1.0, help="offset noise strength", group="Noise and loss")
    seed: int = opt(42, min=0, max=2**31 - 1, help="seed for LoRA init, data order and noise", group="Steps and batch")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", help="where to train", group="Precision and speed")
    gradient_checkpointing: bool = opt(False, help="trade compute for memory in the UNet", group="Precision and speed")
    max_bad_steps: int = opt(5, min=1, max=1000, help="non-finite losses in a row that stop the run",
                             group="Steps and batch")
    compile: Literal["auto", "on", "blocks", "off"] = opt(
        "off", help="torch.compile the UNet step: on = the whole UNet as one graph (fastest steps), blocks = each "
                    "attention/ResNet block on its own (repeated blocks traced once: a warm start ~9 s shorter, steps "
                    "~8% slower at batch 8; its first compile runs in train.compile_workers processes), auto = on "
                    "with CUDA; minutes of compile time on first use, seconds once cached", group="Precision and speed")
    compile_workers: int = opt(
        8, min=0, max=64, help="with compile: blocks, the first compile on a new machine (or after an upgrade) is "
                               "split over up to this many processes, half the CPU cores at most, which compile "
                               "the blocks side by side into the compile cache; 0 compiles them in the trainer's "
                               "process, one after another", group="Precision and speed")
    cuda_graphs: Literal["auto", "on", "step", "off"] = opt(
        "auto", help="with compile on a GPU, replay the step as CUDA graphs, which removes the per-step host "
                     "overhead that bounds small batches: on = the compiled UNet's forward and backward; step = the "
                     "whole step (forward, backward, clipping, AdamW) as one graph per batch shape, where the run "
                     "allows it (1.5x on at batch 1 on an H200); auto = step for a LoRA on bf16/fp32 base weights "
                     "where the run allows it, else on", group="Precision and speed")
    channels_last: Literal["auto", "on", "off"] = opt(
        "auto", help="channels-last memory layout for the UNet's convolutions on CUDA (cuDNN then skips a layout "
                     "copy around each one); auto: on with compile on and batch <= 8, where it measured faster "
                     "(SD 1.5 on an H200: +2.6% at batch 8; -4% at batch 32)", group="Precision and speed")
    report_every: int = opt(0, min=0, max=10000,
                            help="steps between loss read-backs (0: every step on the CPU, every 10 on a GPU, so "
                                 "the GPU never waits for the host)", group="Logging")
    optimizer_args: dict[str, Any] = opt(default_factory=dict, help="extra keyword arguments of the optimizer, e.g. "
                                                                    "{d_coef: 2} for prodigy (checked against it)",
                                         group="Optimizer")
    lr_cycles: int = opt(1, min=1, max=1000, help="restarts of scheduler cosine_with_restarts", group="Schedule")
    lr_power: float = opt(1.0, min=0.0, max=100.0, help="power of scheduler polynomial (1: linear decay)",
                          group="Schedule")
    timestep_min: int = opt(0, min=0, max=100000, help="smallest training timestep drawn", group="Timesteps")
    timestep_max: Optional[int] = opt(None, min=1, max=100000,
                                      help="timesteps are drawn below this (default: the model's count, 1000)",
                                      group="Timesteps")
    timestep_sampling: Literal["uniform", "logit_normal", "sigmoid"] = opt(
        "uniform", help="timestep distribution: uniform, logit_normal (sigmoid of N(mean, std), SD3's) or sigmoid "
                        "(sigmoid of scale x N(0, 1))", group="Timesteps")
    timestep_logit_mean: float = opt(0.0, min=-10.0, max=10.0, help="mean of timestep_sampling logit_normal",
                                     group="Timesteps")
    timestep_logit_std: float = opt(1.0, min=0.01, max=10.0, help="std of timestep_sampling logit_normal",
                                    group="Timesteps")
    timestep_sigmoid_scale: float = opt(1.0, min=0.01, max=10.0, help="scale of timestep_sampling sigmoid",
                                        group="Timesteps")
    loss: Literal["mse", "l1", "huber", "smooth_l1"] = opt(
        "mse", help="loss on the prediction: mse, l1, huber or smooth_l1 (pseudo-Huber, train.huber_c)",
        group="Noise and loss")
    huber_c: float = opt(0.1, min=1e-6, max=10.0, help="pseudo-Huber constant of loss huber/smooth_l1",
                         group="Noise and loss")
    huber_schedule: Literal["constant", "exponential", "snr"] = opt(
        "snr", help="huber_c over timesteps, as kohya: constant, exponential or snr (default)", group="Noise and loss")
    debiased_estimation: bool = opt(False, help="weight the loss by 1/sqrt(SNR) (debiased estimation loss)",
                                    group="Noise and loss")
    multires_noise_iterations: int = opt(0, min=0, max=20, help="multi-resolution (pyramid) noise levels; 0 off "
                                                                 "(6-10 typical)", group="Noise and loss")
    multires_noise_discount: float = opt(0.3, min=0.0, max=1.0, help="weight decay per level of multires noise",
                                         group="Noise and loss")
    ip_noise_gamma: float = opt(0.0, min=0.0, max=1.0, help="input perturbation of the noisy latents (0.1 typical)",
                                group="Noise and loss")
    zero_terminal_snr: bool = opt(False, help="rescale the noise schedule to zero terminal SNR (v-prediction models); "
                                              "samples then use trailing timesteps and rescaled guidance",
                                  group="Noise and loss")
    ema: bool = opt(False, help="keep an EMA of the LoRA weights: NAME-ema.safetensors, samples drawn from it",
                    group="EMA")
    ema_decay: float = opt(0.999, min=0.0, max=1.0, help="EMA decay per optimizer step", group="EMA")
    ema_warmup: bool = opt(True, help="EMA decay min(ema_decay, (1+n)/(10+n)) at update n, so early weights fade",
                           group="EMA")
    validate_every: int = opt(0, min=0, max=10_000_000, help="validation loss every N steps (0: at the end only, "
                                                             "when a validation set is given)", group="Validation")
    log_with: Literal["none", "tensorboard", "wandb"] = opt(
        "none", help="also log to TensorBoard (logs/ in the run folder) or Weights & Biases (offline by default)",
        group="Logging")
    base_precision: Literal["auto", "fp8"] = opt(
        "auto", help="frozen UNet Linear weights: auto = mixed_precision's dtype; fp8 = float8 e4m3 matmuls for "
                     "the frozen Linear layers, LoRA path in bf16 (needs mixed_precision bf16 and an Ada/Hopper or "
                     "newer GPU; measured 5-7% slower than bf16 for SD 1.5 on an H200, loss unchanged: "
                     "docs/PERFORMANCE.md)", group="Precision and speed")
    cpu_threads: Optional[int] = opt(None, min=1, max=1024,
                                     help="CPU threads for training (default: OMP_NUM_THREADS if set, else the "
                                          "cores free when the run starts); the log says how many",
                                     group="Precision and speed")

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.lr if self.text_encoder_lr is None else self.text_encoder_lr


@dataclass(frozen=True)
class SampleConfig:
    every: int = opt(0, min=0, max=10_000_000, help="sample every N steps (0: only at the end)")
    prompts: list[str] = opt(default_factory=list, help="prompts to sample")
    negative_prompt: str = opt("", help="negative prompt for samples")
    steps: int = opt(20, min=1, max=1000, help="sampling steps")
    guidance: float = opt(7.5, min=0.0, max=50.0, help="classifier-free guidance scale")
    seed: int = opt(0, min=0, max=2**31 - 1, help="fixed sampling seed, so samples are comparable over time")
    scheduler: Literal["ddim", "euler", "euler_a", "dpmpp_2m", "lcm"] = opt("ddim", help="sampling scheduler")
    size: Optional[int] = opt(None, min=64, max=4096, help="sample side in pixels (default: data.resolution)")
    guidance_rescale: Optional[float] = opt(None, min=0.0, max=1.0, help="rescaled guidance phi (Lin et al. 2023); "
                                                                          "default 0.7 with train.zero_terminal_snr, "
                                                                          "else 0")


@dataclass(frozen=True)
class SaveConfig:
    every: int = opt(0, min=0, max=10_000_000, help="checkpoint every N steps (0: only at the end)")
    format: Literal["kohya", "diffusers"] = opt(
        "kohya", help="adapter key format: kohya loads in A1111/Forge, ComfyUI, InvokeAI, kohya's tools and diffusers; "
                      "diffusers (PEFT keys) in diffusers/PEFT scripts only")
    dtype: Literal["fp32", "fp16", "bf16"] = opt("fp32", help="adapter tensor precision")
    keep_checkpoints: int = opt(3, min=1, max=1000, help="newest checkpoints kept on disk")
    output_dir: str = opt("outputs", help="folder that holds run folders")


@dataclass(frozen=True)
class LcmConfig:
    num_ddim_timesteps: int = opt(50, min=2, max=1000, help="DDIM skipping-schedule length of the ODE solver")
    w_min: float = opt(3.0, min=0.0, max=30.0, help="smallest teacher guidance scale drawn per sample")
    w_max: float = opt(15.0, min=0.0, max=30.0, help="largest teacher guidance scale drawn per sample")
    huber_c: float = opt(0.001, min=0.0, max=10.0, help="pseudo-Huber loss constant")
    timestep_scaling: float = opt(10.0, min=0.0, max=1000.0, help="boundary-condition timestep scaling")


@dataclass(frozen=True)
class Config:
    name: str = opt("lora", help="run name: outputs/NAME and NAME.safetensors")
    model: str = opt("tiny", help="'tiny' (built-in), a diffusers-format model folder, or a single-file "
                                  "checkpoint (.safetensors; original SD/SDXL layout)")
    model_family: Literal["auto", "sd1", "sd2", "sd2-v", "sdxl", "sdxl-v"] = opt(
        "auto", help="force the model family; -v means v-prediction (SD 2.x 768-v). auto: from the weights")
    vae: str = opt("", help="VAE for a single-file model without one (or to replace its own): a VAE .safetensors "
                            "or a diffusers VAE folder")
    allow_pickle: bool = opt(False, help="allow a .ckpt/.pt/.bin pickle model file; loading a pickle can run code")
    mode: Literal["standard", "lcm"] = opt("standard", help="standard LoRA, or LCM-LoRA distillation")
    data: DataConfig = opt(default_factory=DataConfig, help="data set")
    network: NetworkConfig = opt(default_factory=NetworkConfig, help="LoRA network")
    train: TrainConfig = opt(default_factory=TrainConfig, help="optimization")
    sample: SampleConfig = opt(default_factory=SampleConfig, help="sample images during training")
    save: SaveConfig = opt(default_factory=SaveConfig, help="adapter and checkpoints")
    lcm: LcmConfig = opt(default_factory=LcmConfig, help="LCM-LoRA distillation (mode: lcm)")

    @property
    def model_options(self) -> dict[str, Any]:
        """The keyword arguments of sdlora.models' loaders that this config sets."""
        return {"family": self.model_family, "allow_pickle": self.allow_pickle, "vae": self.vae or None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ----------------------------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping of names to values"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value in choices:
            return value
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SdloraError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}{more}")
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise SdloraError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item_tp):  # data.subsets: each item is validated as its own section
            return [_build(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None or value == "":
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise SdloraError(f"{key}: expected {_type_name(tp)} (e.g. {{name: value}}), got {type(value).__name__} "
                              f"{value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; a number is what was meant.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise SdloraError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SdloraError(f"{prefix or 'preset'}: expected a mapping of keys, got {type(raw).__name__}")
    fields = {f.name: (f, tp) for f, tp in section_fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else \
                f"valid keys: {', '.join(fields)}"
            raise SdloraError(f"unknown key '{dotted}': {hint}")
        field_, tp = fields[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted)
            continue
        value = _coerce(value, tp, dotted)
        meta = field_.metadata
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = meta.get("min"), meta.get("max")
            # NaN compares false with everything, so it would pass the range test: refused on its own, like inf.
            if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
                raise SdloraError(f"{dotted}: {value} is out of range [{lo}, {hi}] ({meta['help']})")
        kwargs[key] = value
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    if cfg.lcm.w_min > cfg.lcm.w_max:
        raise SdloraError(f"lcm.w_min ({cfg.lcm.w_min}) must not exceed lcm.w_max ({cfg.lcm.w_max})")
    if cfg.data.bucket_min > cfg.data.bucket_max:
        raise SdloraError("data.bucket_min must not exceed data.bucket_max")
    if not cfg.name or any(c in cfg.name for c in "/\\") or cfg.name in (".", ".."):
        raise SdloraError(f"name: {cfg.name!r} must be a plain folder name (no slashes)")
    too_long = len(cfg.name) > MAX_NAME or len(cfg.name.encode("utf-8")) > 2 * MAX_NAME
    if too_long or any(ord(c) < 32 or ord(c) == 127 for c in cfg.name):
        raise SdloraError(f"name: must be at most {MAX_NAME} characters with no control characters (it names "
                          f"the folder outputs/NAME and the file NAME.safetensors); give a shorter name")
    if not CAPTION_EXTENSION.match(cfg.data.caption_extension):
        raise SdloraError(f"data.caption_extension: {cfg.data.caption_extension!r} is not a file extension; give "
                          f"one like .txt or .caption")
    _subset_checks(cfg)
    if not cfg.network.targets:
        raise SdloraError("network.targets: name at least one module, e.g. [to_q, to_k, to_v, to_out.0]")
    _network_type_checks(cfg)
    if cfg.network.text_encoder and cfg.mode == "lcm":
        raise SdloraError("network.text_encoder: LCM-LoRA distillation trains the UNet only (its teacher uses the "
                          "base text encoder); set network.text_encoder false or mode standard")
    _recipe_checks(cfg)


# Options of the standard denoising objective; LCM distillation draws its own timesteps and has its own loss.
STANDARD_ONLY = ("train.loss", "train.timestep_sampling", "train.timestep_min", "train.timestep_max",
                 "train.debiased_estimation", "train.multires_noise_iterations", "train.ip_noise_gamma",
                 "train.zero_terminal_snr", "data.masks")


def _recipe_checks(cfg: Config) -> None:
    """Combinations of the recipe options (issue 17) that cannot work, named by both keys."""
    train, data = cfg.train, cfg.data
    if train.timestep_max is not None and train.timestep_min >= train.timestep_max:
        raise SdloraError(f"train.timestep_min ({train.timestep_min}) must be below train.timestep_max "
                          f"({train.timestep_max})")
    if train.optimizer == "adamw_schedulefree" and train.scheduler not in ("constant", "constant_with_warmup"):
        raise SdloraError(f"train.scheduler: {train.scheduler!r} cannot be used with train.optimizer "
                          f"adamw_schedulefree (it replaces the schedule; its warm-up is train.warmup_steps); set "
                          f"train.scheduler constant")
    block_lr = cfg.network.block_lr
    group_lrs = {train.lr * m for m in (block_lr.down, block_lr.mid, block_lr.up) if m}
    if cfg.network.text_encoder and train.effective_text_encoder_lr:
        group_lrs.add(train.effective_text_encoder_lr)
    if train.optimizer == "prodigy" and len(group_lrs) > 1:
        raise SdloraError("network.block_lr / train.text_encoder_lr: train.optimizer prodigy takes one lr for all "
                          "parameter groups (or 0 to freeze one); use multipliers of 0 or 1, or another optimizer")
    if data.validation_dir and data.validation_split:
        raise SdloraError("data.validation_split and data.validation_dir: give one of them, not both")
    if train.validate_every and not (data.validation_dir or data.validation_split):
        raise SdloraError("train.validate_every: there is no validation set; set data.validation_dir or "
                          "data.validation_split")
    if cfg.mode == "lcm":
        defaults = Config()
        for key in STANDARD_ONLY:
            section, name = key.split(".")
            if getattr(getattr(cfg, section), name) != getattr(getattr(defaults, section), name):
                raise SdloraError(f"{key}: not used by mode lcm (LCM distillation has its own timesteps and "
                                  f"pseudo-Huber loss, lcm.huber_c); remove {key} or set mode standard")


def _subset_checks(cfg: Config) -> None:
    """data.subsets: each names its folder and a caption extension that is one."""
    for i, subset in enumerate(cfg.data.subsets):
        key = f"data.subsets[{i}]"
        if not subset.dir:
            raise SdloraError(f"{key}.dir: not set; give each subset the folder of its images, e.g. "
                              f"{{dir: data/dog, repeats: 2}}")
        ext = subset.caption_extension
        if ext is not None and not CAPTION_EXTENSION.match(ext):
            raise SdloraError(f"{key}.caption_extension: {ext!r} is not a file extension; give one like .txt")


def _network_type_checks(cfg: Config) -> None:
    """An option set for another network.type is an error naming both keys, never silently ignored."""
    net = cfg.network
    kind = f"network.type is {net.type!r}"
    if net.lokr_factor != -1 and net.type != "lokr":
        raise SdloraError(f"network.lokr_factor applies to network.type lokr only ({kind}); remove it")
    if net.lokr_factor == 0:
        raise SdloraError("network.lokr_factor: 0 is not a factor; give -1 (automatic) or a positive size")
    if net.dylora_unit != 1 and net.type != "dylora":
        raise SdloraError(f"network.dylora_unit applies to network.type dylora only ({kind}); remove it")
    if net.type == "dylora":
        if net.rank % net.dylora_unit:
            raise SdloraError(f"network.rank {net.rank} is not a multiple of network.dylora_unit {net.dylora_unit}; "
                              f"DyLoRA truncates in steps of the unit")
        if net.conv_rank is not None and net.conv_rank != net.rank:
            raise SdloraError("network.conv_rank must equal network.rank for network.type dylora (one rank to "
                              "truncate), or be left out")
    if net.type in ("loha", "lokr") and net.dropout:
        raise SdloraError(f"network.dropout applies to network.type lora/dora/dylora ({kind}: LyCORIS has no input "
                          f"dropout for it); set network.dropout 0")
    if net.type in ("loha", "lokr") and cfg.save.format == "diffusers":
        raise SdloraError(f"save.format diffusers cannot hold network.type {net.type} (diffusers' loaders read LoRA "
                          f"and DoRA only); use save.format kohya")
    if net.type != "lora" and cfg.mode == "lcm":
        raise SdloraError(f"network.type {net.type}: mode lcm distils an LCM-LoRA; use network.type lora")
    if net.type != "lora" and net.text_encoder:
        raise SdloraError(f"network.text_encoder trains network.type lora only for now ({kind}); set "
                          f"network.text_encoder false")


LCM_DEFAULT_RANK = 64
MAX_NAME = 100  # outputs/NAME/NAME.safetensors and checkpoints' NAME.safetensors stay well within 255 bytes
CAPTION_EXTENSION = re.compile(r"^\.?[A-Za-z0-9_-][A-Za-z0-9_.-]{0,31}$")
PRODIGY_DEFAULT_LR = 1.0


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict (a parsed preset with overrides applied) into a `Config`."""
    cfg = _build(Config, raw, "")
    network_raw = raw.get("network") if isinstance(raw.get("network"), dict) else {}
    if cfg.mode == "lcm" and "rank" not in network_raw:
        # LCM-LoRA distils a whole sampler, not a concept: its default rank is the paper's 64 (arXiv 2311.05556).
        cfg = replace_keys(cfg, {"network.rank": LCM_DEFAULT_RANK})
    train_raw = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    if cfg.train.optimizer == "prodigy" and "lr" not in train_raw:
        # Prodigy estimates the step size itself; lr is a multiplier of its estimate, 1.0 as its authors advise.
        cfg = replace_keys(cfg, {"train.lr": PRODIGY_DEFAULT_LR})
    _cross_checks(cfg)
    return cfg


def replace_keys(cfg: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """A copy of a (frozen) config with these dotted keys changed, e.g. `replace_keys(cfg, {"save.every": 2})`:
    `dataclasses.replace` down the path. The values are not validated again (config_from_dict does that)."""
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if not dataclasses.is_dataclass(cfg) or head not in {f.name for f, _ in section_fields(type(cfg))}:
            raise SdloraError(f"unknown key '{prefix}{key}'")
        inner = replace_keys(getattr(cfg, head), {rest: value}, f"{prefix}{head}.") if rest else value
        cfg = dataclasses.replace(cfg, **{head: inner})
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.steps=200` -> (['train', 'steps'], 200); the value is parsed as YAML (so 1e-4, true, [a, b] work)."""
    if "=" not in text:
        raise SdloraError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.steps=200")
    key, _, value_text = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SdloraError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SdloraError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SdloraError(f"{path}: preset file not found (see presets/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SdloraError(f"{path}: not UTF-8 text (byte {exc.start}); save the preset as UTF-8") from None
    except IsADirectoryError:
        raise SdloraError(f"{path}: is a folder; give a preset .yaml file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SdloraError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SdloraError(f"{path}: a preset is a mapping of sections (name, model, data, ...)")
    return raw


def load_config(preset: Path | None, overrides: list[str] | None = None) -> Config:
    """Read a preset file, apply `--set` overrides, validate. Errors name the preset file and key."""
    raw = read_yaml(Path(preset)) if preset is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return config_from_dict(raw)
    except SdloraError as exc:
        where = f"{preset}: " if preset is not None else ""
        raise SdloraError(f"{where}{exc}") from None


def describe_options(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every option: the reference that README and UI show."""
    return [(option.key, option.help, option.default) for option in walk_options(cls, prefix)]


# ----------------------------------------------------------------------------------------------- the walker


@functools.lru_cache(maxsize=None)
def section_fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """The fields of one config dataclass with their resolved annotations, in declaration order."""
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class Option:
    """One leaf option of the config: its dotted key, annotation and dataclass field (help, range, default)."""

    key: str
    type: Any
    field: dataclasses.Field

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def minimum(self) -> float | None:
        return self.field.metadata.get("min")

    @property
    def maximum(self) -> float | None:
        return self.field.metadata.get("max")

    @property
    def group(self) -> str | None:
        """Its heading among GROUPS (opt(group=...)); None: it stays under its section."""
        return self.field.metadata.get("group")

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def walk_options(cls: type = Config, prefix: str = "") -> list[Option]:
    """Every leaf option of the config, depth first, in the dataclasses' order: the one walk behind the options
    reference (describe_options) and the app's form (ui.config_form); validation (_build) reads section_fields."""
    options = []
    for f, tp in section_fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            options.extend(walk_options(tp, key))
        else:
            options.append(Option(key, tp, f))
    return options
