"""Checkpoints: everything needed to continue a run exactly, written as one folder that appears atomically.

checkpoints/step-000500/
  lora_state.safetensors   live LoRA weights, fp32, peft names (exact)
  optimizer.pt             optimizer state
  lr_scheduler.pt          learning-rate schedule state
  rng.pt                   torch/python/numpy (and CUDA) RNG states
  trainer_state.json       step, bad-step streak, sdlora version; written last and deleted first, so its
                           presence (with the files above) marks a complete checkpoint
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from sdlora import __version__
from sdlora.lora.kinds import DoraLayer, LohaLayer, LokrLayer
from sdlora.lora.state import Adapter, LoraLayer
from sdlora.tensorfile import read_safetensors
from sdlora.train.killpoints import kill_point

STATE_FILE = "trainer_state.json"
# A checkpoint is complete when its marker and these files are there (a kill may leave any other subset).
REQUIRED_FILES = ("lora_state.safetensors", "optimizer.pt", "lr_scheduler.pt", "rng.pt")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass
class Checkpoint:
    path: Path
    step: int
    bad_steps: int


def _adapter_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, layer in adapter.layers.items():
        for part, tensor in layer.tensors().items():  # down/up; DoRA + magnitude; LoHa/LoKr their factors
            tensors[f"{name}.{part}"] = tensor.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(layer.alpha), dtype=torch.float64)
        if layer.kind == "lokr":
            tensors[f"{name}.rank"] = torch.tensor(layer.rank, dtype=torch.int64)
    return tensors


def _layer_from_tensors(parts: dict[str, torch.Tensor]):
    alpha = parts.pop("alpha").item()
    if "rank" in parts:
        rank = int(parts.pop("rank").item())
        return LokrLayer(**{p: parts.get(p) for p in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")}, alpha=alpha,
                         rank=rank)
    if "w1_a" in parts:
        return LohaLayer(**parts, alpha=alpha)
    if "magnitude" in parts:
        return DoraLayer(parts["down"], parts["up"], alpha, magnitude=parts["magnitude"])
    return LoraLayer(parts["down"], parts["up"], alpha)


def _adapter_from_tensors(tensors: dict[str, torch.Tensor]) -> Adapter:
    layers: dict[str, dict] = {}
    for key, tensor in tensors.items():
        name, part = key.rsplit(".", 1)
        layers.setdefault(name, {})[part] = tensor
    return Adapter(layers={n: _layer_from_tensors(layers[n]) for n in sorted(layers)})


def save_checkpoint(folder: Path, step: int, adapter: Adapter, optimizer, lr_scheduler, bad_steps: int,
                    extra_files: dict[str, callable] | None = None, keep: int = 3,
                    keep_also: Path | None = None) -> Path:
    """Write checkpoints/step-N atomically (built as a hidden folder, then renamed); prune old ones, except
    `keep_also` (the checkpoint with the lowest validation loss)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    tmp = folder / f".{checkpoint_name(step)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_checkpoint(tmp, step, adapter, optimizer, lr_scheduler, bad_steps, extra_files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save (a full disk) must not keep eating the space
        raise
    return _publish(folder, tmp, final, keep, keep_also)


def _write_checkpoint(tmp: Path, step: int, adapter: Adapter, optimizer, lr_scheduler, bad_steps: int,
                      extra_files: dict[str, callable] | None) -> None:
    save_file(_adapter_tensors(adapter), tmp / "lora_state.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    for name, write in (extra_files or {}).items():
        write(tmp / name)
    state = {"step": step, "bad_steps": bad_steps, "sdlora_version": __version__}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    # On the disk before the rename: after a power cut the folder is there whole, or as the hidden .tmp.
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)


def _publish(folder: Path, tmp: Path, final: Path, keep: int, keep_also: Path | None) -> Path:
    if final.exists():
        remove_checkpoint(final)
    tmp.rename(final)
    _fsync(folder)
    kept = {c.path for c in list_checkpoints(folder)[-keep:]} | {final}
    if keep_also is not None:
        kept.add(folder / keep_also.name)
    for old in sorted(folder.glob("step-*")):
        if old not in kept:  # older complete ones, and incomplete ones a kill left behind
            remove_checkpoint(old)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_checkpoint(path: Path) -> None:
    """Delete the marker first: a kill part-way leaves an incomplete folder, never one that looks complete."""
    (path / STATE_FILE).unlink(missing_ok=True)
    kill_point("prune")
    shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first (a folder without trainer_state.json was cut off and is ignored)."""
    found = []
    for path in sorted(folder.glob("step-*")) if folder.is_dir() else []:
        state_file = path / STATE_FILE
        if state_file.is_file() and all((path / name).is_file() for name in REQUIRED_FILES):
            state = json.loads(state_file.read_text(encoding="utf-8"))
            found.append(Checkpoint(path, int(state["step"]), int(state.get("bad_steps", 0))))
    return sorted(found, key=lambda c: c.step)


def load_checkpoint(ckpt: Checkpoint, optimizer, lr_scheduler) -> Adapter:
    """Restore optimizer, schedule and RNG states; return the LoRA weights to load into the network."""
    optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(ckpt.path / "lr_scheduler.pt", weights_only=False))
    rng = torch.load(ckpt.path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return _adapter_from_tensors(read_safetensors(ckpt.path / "lora_state.safetensors",
                                                  advice="resume from another checkpoint")[0])
