"""train.log_with: TensorBoard or Weights & Biases, as listeners on the events stream (events.jsonl stays the
contract; these only mirror it). TensorBoard files go to logs/ in the run folder: scalars loss, lr,
validation_loss and the sample images. W&B runs offline unless WANDB_MODE says otherwise (no network, no account
needed; `wandb sync outputs/NAME/logs/wandb/offline-run-*` uploads later); its files go to logs/wandb/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdlora.config import Config
from sdlora.errors import SdloraError


def _image_array(path: str):
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


class TensorBoardLogger:
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as exc:  # torch imports it lazily; without the tensorboard package it fails here
            raise SdloraError(f"train.log_with: tensorboard needs the tensorboard package ({exc}); pip install "
                              f"tensorboard (or 'sdlora[logging]'), or set train.log_with none") from None
        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=10)

    def __call__(self, event: dict[str, Any]) -> None:
        kind, step = event["event"], event.get("step")
        if kind == "step" and isinstance(event.get("loss"), (int, float)):
            self.writer.add_scalar("loss", event["loss"], step)
            self.writer.add_scalar("lr", event["lr"], step)
        elif kind == "validation":
            self.writer.add_scalar("validation_loss", event["loss"], step)
        elif kind == "sample":
            for i, path in enumerate(event.get("images", [])):
                self.writer.add_image(f"sample/{i:02d}", _image_array(path), step, dataformats="HWC")
        elif kind in ("done", "stopped", "error"):
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, config: Config, folder: Path):
        try:
            import wandb
        except Exception:
            raise SdloraError("train.log_with: wandb is not installed; pip install 'sdlora[wandb]' (or pip install "
                              "wandb), or set train.log_with tensorboard or none") from None
        self.wandb = wandb
        self.failed = False
        folder.mkdir(parents=True, exist_ok=True)
        # Offline unless the user asks (WANDB_MODE=online): a run never waits on a network or an account it was
        # not told about. The mode is passed explicitly, so `wandb online` in a settings file does not apply.
        mode = os.environ.get("WANDB_MODE") or "offline"
        try:
            self.run = wandb.init(project="sdlora", name=config.name, dir=str(folder), config=config.to_dict(),
                                  mode=mode)
        except Exception as exc:  # online without a network or a login: wandb's own error, on one line
            wandb.teardown()
            raise SdloraError(f"train.log_with: wandb could not start in mode {mode!r} "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); unset "
                              f"WANDB_MODE to log offline, or set train.log_with none") from None

    def __call__(self, event: dict[str, Any]) -> None:
        kind, step = event["event"], event.get("step")
        if kind == "step" and isinstance(event.get("loss"), (int, float)):
            self.run.log({"loss": event["loss"], "lr": event["lr"]}, step=step)
        elif kind == "validation":
            self.run.log({"validation_loss": event["loss"]}, step=step)
        elif kind == "sample":
            self.run.log({"samples": [self.wandb.Image(p) for p in event.get("images", [])]}, step=step)
        elif kind == "error":
            self.failed = True

    def close(self) -> None:
        self.run.finish(exit_code=1 if self.failed else 0)
        # finish() leaves wandb's service process (wandb-core) running until the interpreter exits; a trainer
        # inside a longer-lived process (the tests, a notebook) would keep one per run.
        self.wandb.teardown()


def make_logger(config: Config, run_root: Path):
    """The listener of train.log_with, or None."""
    if config.train.log_with == "tensorboard":
        return TensorBoardLogger(run_root / "logs")
    if config.train.log_with == "wandb":
        return WandbLogger(config, run_root / "logs")
    return None
