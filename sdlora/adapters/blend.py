"""Live blending: one loaded pipeline, any number of adapters loaded once, re-weighted between images.

The adapters go into the pipeline through diffusers' own mechanism (`load_lora_weights(..., adapter_name=...)`,
`set_adapters(names, adapter_weights=...)`), so what a user sees here is what their own diffusers script gets:
h = W0·x + Σ_i weight_i·(alpha_i/rank_i)·B_i·A_i·x. Each file is read and checked by `sdlora.lora.io` first
(so other tools' files, with keys diffusers would choke on, load too), then handed to diffusers in our diffusers
format, which carries every layer's rank and alpha. LoHa and LoKr adapters, which diffusers does not read, are
applied by `sdlora.adapters.apply` (forward hooks adding each layer's update) and weighted the same way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlora.adapters.apply import AppliedAdapter
from sdlora.lora.check import check_fit, only
from sdlora.lora.io import check_fully_read, read_adapter_file, save_adapter
from sdlora.lora.kinds import DIFFUSERS_KINDS
from sdlora.lora.metadata import read_metadata
from sdlora.errors import SdloraError
from sdlora.models.loading import quiet_loading
from sdlora.hashing import file_sha256  # noqa: F401  (serving.py and batched.py take it from here too)
from sdlora.schedulers import make_scheduler

WEIGHT_RANGE = (-2.0, 2.0)
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


@dataclass
class LoadedAdapter:
    name: str  # the adapter name inside the pipeline, derived from the file's sha256
    path: Path
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class SamplingDefaults:
    scheduler: str | None  # None: the pipeline's own scheduler
    steps: int
    guidance: float
    scheduler_options: dict[str, Any] = field(default_factory=dict)  # e.g. the LCM solver schedule


def check_weight(weight: float, what: str) -> float:
    low, high = WEIGHT_RANGE
    if not low <= weight <= high:  # also refuses NaN
        raise SdloraError(f"{what}: weight {weight} is outside [{low:g}, {high:g}]; pick a weight in that range")
    return float(weight)


GUIDANCE_RANGE = (0.0, 50.0)  # as sample.guidance in the config


def check_guidance(guidance: float | None, what: str = "--guidance") -> float | None:
    low, high = GUIDANCE_RANGE
    if guidance is not None and not low <= guidance <= high:  # also refuses NaN
        raise SdloraError(f"{what} {guidance}: give a guidance scale in [{low:g}, {high:g}] (7.5 is usual, 1 turns "
                          f"it off)")
    return guidance


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """`FILE[:WEIGHT]`. Split on the last colon only when what follows is a number, so `C:\\loras\\a.safetensors`
    and `C:\\loras\\a.safetensors:0.5` both read as meant; a whole spec that names an existing file wins."""
    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if path and not (Path(spec).is_file() and not Path(path).is_file()):
            return path, weight
    return spec, 1.0


def sampling_defaults(adapters: list[LoadedAdapter]) -> SamplingDefaults:
    """Scheduler, steps and guidance for these active adapters: what an LCM one asks for, else the usual ones."""
    for adapter in adapters:
        lcm = read_metadata(adapter.metadata, str(adapter.path)).lcm
        if lcm is not None:
            return SamplingDefaults(lcm.scheduler, lcm.steps, lcm.guidance, lcm.scheduler_options)
    return SamplingDefaults(None, DEFAULT_STEPS, DEFAULT_GUIDANCE)


class AdapterBlender:
    """Holds one StableDiffusion(XL)Pipeline and the adapters loaded into it; `set_weights` then `generate`.

    >>> blender = AdapterBlender(pipe)
    >>> blender.set_weights({"style.safetensors": 0.8, "subject.safetensors": 1.0})
    >>> image = blender.generate("a photo of sks dog", seed=1)
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.adapters: dict[str, LoadedAdapter] = {}  # by sha256
        self.weights: dict[str, float] = {}  # by adapter name; only non-zero weights are active
        self.hooked: dict = {}  # LoHa/LoKr adapters by name: AppliedAdapter, outside diffusers' LoRA layers
        self._base_scheduler = pipe.scheduler
        pipe.set_progress_bar_config(disable=True)

    def load(self, path: Path | str) -> LoadedAdapter:
        """Load a LoRA file into the pipeline, once per distinct file content."""
        path = Path(path)
        if path.is_file():  # re-weighting re-hashes the file but does not parse it again
            cached = self.adapters.get(file_sha256(path))
            if cached:
                return cached
        found = read_adapter_file(path)  # checks the file and says what it is when it is not a SD LoRA
        check_fully_read(found)
        self._check_family(found)
        # Shapes against the model; layers the model lacks (or the reader could not place): a warning.
        fit = check_fit(found.adapter, self.pipe, str(path), skipped_keys=found.skipped_keys)
        adapter = only(found.adapter, fit.matched)
        sha = file_sha256(found.path)
        if sha in self.adapters:
            return self.adapters[sha]
        loaded = LoadedAdapter(name=f"lora_{sha[:16]}", path=path, sha256=sha, metadata=found.adapter.metadata)
        if {layer.kind for layer in found.adapter.layers.values()} - set(DIFFUSERS_KINDS):
            self.hooked[loaded.name] = AppliedAdapter(self.pipe, adapter, 0.0, str(path))
            self.adapters[sha] = loaded
            return loaded
        with tempfile.TemporaryDirectory(prefix="sdlora-blend-") as tmp:
            normalised = save_adapter(adapter, Path(tmp) / "adapter.safetensors", fmt="diffusers", dtype=None)
            with quiet_loading():  # diffusers' per-file progress bar: our own output says what loaded
                self.pipe.load_lora_weights(str(normalised), adapter_name=loaded.name)
        self.adapters[sha] = loaded
        self._apply()  # a freshly loaded adapter is active in diffusers until told otherwise
        return loaded

    def _check_family(self, found) -> None:
        """An SDXL adapter on an SD 1.x/2.x pipeline (or the reverse) would fail deep in diffusers on shapes."""
        from sdlora.adapters.analysis import base_family

        family, source = base_family(found.adapter)
        pipe_is_xl = getattr(self.pipe, "text_encoder_2", None) is not None
        if family in ("sd1", "sd2", "sdxl") and (family == "sdxl") != pipe_is_xl:
            model = "an SDXL" if pipe_is_xl else "an SD 1.x/2.x"
            raise SdloraError(f"{found.path}: this LoRA is for {family} (from {source}) but the model is {model} "
                              f"model; use it with a model of its family")

    def set_weights(self, weights: dict[str | Path, float]) -> None:
        """Weight of each adapter file (loading it if needed); adapters not named are switched off."""
        wanted = {}
        for path, weight in weights.items():
            loaded = self.load(path)
            wanted[loaded.name] = wanted.get(loaded.name, 0.0) + check_weight(weight, str(path))
        self.weights = {name: w for name, w in wanted.items() if w != 0.0}
        self._apply()

    def _apply(self) -> None:
        for name, applied in self.hooked.items():
            applied.set_weight(self.weights.get(name, 0.0))
        names = [name for name in self.weights if name not in self.hooked]
        if not names:
            # Weight 0 everywhere: the LoRA layers are bypassed, so the image is exactly the base model's.
            if any(a.name not in self.hooked for a in self.adapters.values()):
                self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        self.pipe.set_adapters(names, adapter_weights=[self.weights[n] for n in names])

    @property
    def active(self) -> list[LoadedAdapter]:
        return [a for a in self.adapters.values() if a.name in self.weights]

    def defaults(self) -> SamplingDefaults:
        """Scheduler, steps and guidance: what an active LCM adapter asks for, else the usual ones."""
        return sampling_defaults(self.active)

    def generate(self, prompt: str, *, negative: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, scheduler: str | None = None,
                 width: int | None = None, height: int | None = None):
        """One image (PIL) with the current weights; unset options come from `defaults()`."""
        check_guidance(guidance, "guidance")
        defaults = self.defaults()
        scheduler = scheduler or defaults.scheduler
        # The adapter's own scheduler settings apply when its scheduler is used, chosen by hand or not.
        options = defaults.scheduler_options if scheduler == defaults.scheduler else None
        self.pipe.scheduler = (make_scheduler(scheduler, self._base_scheduler.config, options) if scheduler
                               else self._base_scheduler)
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            return self.pipe(prompt, negative_prompt=negative or None, num_inference_steps=steps or defaults.steps,
                             guidance_scale=defaults.guidance if guidance is None else guidance,
                             width=width, height=height, generator=generator).images[0]
