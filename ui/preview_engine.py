"""One loaded blender per base model in the app process, so re-weighting adapters never reloads the base."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from sdlora.tensorfile import read_safetensors
from sdlora.lora.metadata import read_metadata

from sdlora.schedulers import SCHEDULERS as _SCHEDULERS

SCHEDULERS = list(_SCHEDULERS)


@dataclass(frozen=True)
class GenParams:
    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    width: int = 64
    height: int = 64
    scheduler: str = "ddim"


# The Preview tab's opening values: the demo's trigger prompt, and a seed where the demo adapter (presets/demo.yaml)
# draws its ring at weight 1, so the first image a new user makes shows the concept (tests/test_concept_end_to_end.py
# draws this image from the adapter it trains and checks for the ring).
PREVIEW_DEFAULTS = GenParams(prompt="a sks shape on a white background", seed=5, steps=20, guidance=5.0)


def adapter_mode(path: Path) -> dict:
    """What an adapter's metadata says about how to sample it: mode, and for LCM scheduler, steps and guidance."""
    read = read_metadata(read_safetensors(path, label=path.name, tensors=False)[1], path.name)
    info: dict = {"mode": read.mode}
    if read.lcm is not None:
        info.update(scheduler=read.lcm.scheduler, steps=read.lcm.steps, guidance=read.lcm.guidance)
    return info


class PreviewEngine:
    """Blenders by base model, at most `max_models` kept (least recently used goes first)."""

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self._blenders: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many base models were loaded: tests check that a slider does not reload

    def blender(self, model: str, vae: str | None = None):
        """The blender of `model` (with `vae` in place of its own VAE when given), loaded once."""
        key = (model, vae)
        with self._lock:
            if key in self._blenders:
                self._blenders.move_to_end(key)
                return self._blenders[key]
            blender = _new_blender(model, vae)
            self.loads += 1
            self._blenders[key] = blender
            while len(self._blenders) > self.max_models:
                self._blenders.popitem(last=False)
            return blender

    def generate(self, model: str, adapters: list[tuple[Path, float]], params: GenParams, vae: str | None = None):
        blender = self.blender(model, vae)
        with self._lock:  # one pipeline, one generation at a time
            return _render(blender, adapters, params)


def _new_blender(model: str, vae: str | None):
    from sdlora.adapters.blend import AdapterBlender
    from sdlora.models import load_pipeline

    return AdapterBlender(load_pipeline(model, vae=vae))


def _render(blender, adapters: list[tuple[Path, float]], params: GenParams):
    weights: dict[str, float] = {}
    for path, weight in adapters:
        weights[str(path)] = weights.get(str(path), 0.0) + weight
    blender.set_weights(weights)  # loads each file once (cached by content hash); the base stays loaded
    return blender.generate(params.prompt, negative=params.negative or None, steps=params.steps,
                            guidance=params.guidance, seed=params.seed, scheduler=params.scheduler,
                            width=params.width, height=params.height)
