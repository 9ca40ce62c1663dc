"""Recipe settings that depend on the loaded model: checks of combinations, the zero-terminal-SNR schedule, and
the optimizer's parameter groups (block-wise learning rates). Used by the trainer and by `train --dry-run`, so a
combination that cannot work is refused before any step.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from sdlora.config import Config
from sdlora.errors import SdloraError
from sdlora.network import lora_parameters

ZERO_SNR_GUIDANCE_RESCALE = 0.7  # Lin et al. 2023, sec. 3.4: phi = 0.7 works well


def check_recipe(config: Config, components) -> None:
    """Refuse combinations of the recipe with this model, naming both keys."""
    if config.train.zero_terminal_snr and components.prediction_type != "v_prediction":
        raise SdloraError(f"train.zero_terminal_snr: the model ({config.model}) predicts "
                          f"{components.prediction_type}; a zero-terminal-SNR schedule needs a v-prediction model "
                          f"(Lin et al. 2023): set model_family sd2-v/sdxl-v for a v model, or train.zero_terminal_snr "
                          f"false")


def apply_zero_terminal_snr(components) -> None:
    """Rescale the training schedule to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Algorithm 1) and sample from t = T ("trailing" timesteps, sec. 3.3). The
    samplers are built from this config, so samples use the same schedule."""
    from diffusers import DDPMScheduler

    # As keyword arguments: from_config drops keys of the config that the model left at their defaults.
    components.noise_scheduler = DDPMScheduler.from_config(components.noise_scheduler.config,
                                                           rescale_betas_zero_snr=True, timestep_spacing="trailing")


def guidance_rescale(config: Config) -> float:
    """sample.guidance_rescale, or 0.7 under train.zero_terminal_snr (Lin et al. 2023, sec. 3.4), else 0."""
    if config.sample.guidance_rescale is not None:
        return config.sample.guidance_rescale
    return ZERO_SNR_GUIDANCE_RESCALE if config.train.zero_terminal_snr else 0.0


def unet_stage(name: str) -> str:
    """kohya's three lr stages of a UNet parameter: down (conv_in, time embedding, down blocks), mid, up."""
    if name.startswith("mid_block"):
        return "mid"
    if name.startswith(("up_blocks", "conv_norm_out", "conv_out")):
        return "up"
    return "down"


def unet_param_groups(unet: torch.nn.Module, config: Config) -> list[dict]:
    """One group with all of the UNet's LoRA parameters, or with network.block_lr one group per stage whose lr
    is train.lr x the stage's multiplier (kohya's down/mid/up lr weights)."""
    block_lr = config.network.block_lr
    if block_lr.is_uniform:
        return [{"params": lora_parameters(unet)}]
    trainable = {id(p) for p in lora_parameters(unet)}
    stages: dict[str, list[torch.nn.Parameter]] = {"down": [], "mid": [], "up": []}
    for name, param in unet.named_parameters():
        if id(param) in trainable:
            stages[unet_stage(name)].append(param)
    return [{"params": params, "lr": config.train.lr * getattr(block_lr, stage), "name": f"unet_{stage}"}
            for stage, params in stages.items() if params]


# ----------------------------------------------------------------------------------------- the trainer's hooks
# Each is one call in trainer.py, so the loop stays readable and the recipe options stay in their own modules.


def split_validation(dataset, config: Config):
    from sdlora.train.validation import split_validation as split

    return split(dataset, config)


def make_validator(dataset, config: Config, encoder, components, device):
    if dataset is None:
        return None
    from sdlora.train.validation import Validator

    dataset.attach_encoder(encoder)  # with data.cache, its latents are cached like the training set's
    return Validator(dataset, config, encoder, components.noise_scheduler, device)


def make_ema(params: list[torch.nn.Parameter], train):
    if not train.ema:
        return None
    from sdlora.train.ema import AdapterEma

    return AdapterEma(params, train.ema_decay, train.ema_warmup)


def ema_path(adapter_path: Path) -> Path:
    from sdlora.train.ema import ema_adapter_name

    return adapter_path.with_name(ema_adapter_name(adapter_path.stem))


def add_logger(events, config: Config, run_root: Path, is_main: bool) -> None:
    if not is_main:
        return
    from sdlora.train.loggers import make_logger

    logger = make_logger(config, run_root)
    if logger is not None:
        events.add(logger)


@contextlib.contextmanager
def evaluation(optimizer, params, ema):
    """Schedule-free's evaluation point, then the EMA over it when train.ema is on."""
    from sdlora.train.optim import evaluation_weights

    with evaluation_weights(optimizer, params), (ema.weights_applied() if ema is not None
                                                 else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module):
    """No LoRA dropout inside; each module's mode restored after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


VALIDATION_FILE = "validation.json"
BEST_FILE = "best.json"


def checkpoint_files(ema, validator, step: int) -> dict:
    """Extra files of a checkpoint: the EMA state, and the validation loss taken at this step."""
    files = {}
    if ema is not None:
        from sdlora.train.ema import EMA_STATE_FILE

        files[EMA_STATE_FILE] = ema.save
    if validator is not None and validator.history and validator.history[-1][0] == step:
        loss = validator.history[-1][1]
        files[VALIDATION_FILE] = lambda p: p.write_text(json.dumps({"step": step, "validation_loss": loss}),
                                                        encoding="utf-8")
    return files


def mark_best(checkpoints: Path, path: Path | None, validator, step: int) -> dict:
    """Write checkpoints/best.json when this checkpoint has the lowest validation loss of the run's checkpoints;
    returns the fields for the checkpoint event (validation_loss, best)."""
    if path is None or not (path / VALIDATION_FILE).is_file():
        return {}
    from sdlora.atomic import write_text

    loss = json.loads((path / VALIDATION_FILE).read_text(encoding="utf-8"))["validation_loss"]
    best_file = checkpoints / BEST_FILE
    previous = json.loads(best_file.read_text(encoding="utf-8")) if best_file.is_file() else None
    best = previous is None or loss < previous["validation_loss"] or previous["step"] == step
    if best:
        write_text(best_file, json.dumps({"step": step, "validation_loss": loss, "path": str(path)}, indent=2))
    return {"validation_loss": round(loss, 6), "best": best}


def best_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint best.json names (kept when older ones are pruned), or None."""
    best_file = checkpoints / BEST_FILE
    return Path(json.loads(best_file.read_text(encoding="utf-8"))["path"]) if best_file.is_file() else None


def resume(checkpoint: Path, ema, validator, events) -> None:
    """Restore the EMA state and the validation history kept with a checkpoint."""
    if ema is not None:
        from sdlora.train.ema import EMA_STATE_FILE

        state = checkpoint / EMA_STATE_FILE
        if state.is_file():
            ema.load(state)
        else:
            events.emit("warning", message=f"{checkpoint}: no EMA state (train.ema was off when it was saved); "
                                           f"the EMA starts from the resumed weights")
            ema.shadow = [p.detach().float().clone() for p in ema.params]
    if validator is not None and (checkpoint / VALIDATION_FILE).is_file():
        saved = json.loads((checkpoint / VALIDATION_FILE).read_text(encoding="utf-8"))
        validator.history.append((saved["step"], saved["validation_loss"]))
