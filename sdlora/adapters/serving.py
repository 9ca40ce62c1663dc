"""Generation for many requests at once, each with its own adapter mix, on one loaded pipeline.

Requests that share what cannot differ within one pipeline call (scheduler, steps, guidance, size) are sampled
together in batches of up to `batch_size`, each sample with its own prompt, negative prompt, seed and adapters
(`sdlora.adapters.batched.MultiAdapter`). Every image is what `sdlora generate` gives for the same request: the same
defaults (an LCM adapter's scheduler, steps and guidance), the same per-sample noise (one CPU generator per sample,
seeded as `generate` seeds its one), so only the float rounding of batched matmuls differs.

An adapter that cannot be batched (DoRA: its update is not linear in the weight) is served one request at a time
through `AdapterBlender`, the path `sdlora generate` takes; `notes` says which files took it. LoHa and LoKr batch
(as their dense update, `sdlora.adapters.batched`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sdlora.adapters.batched import DEFAULT_CAPACITY, MultiAdapter, check_fits, not_batchable
from sdlora.adapters.blend import AdapterBlender, LoadedAdapter, check_weight, file_sha256, sampling_defaults
from sdlora.errors import SdloraError
from sdlora.schedulers import make_scheduler

DEFAULT_BATCH = 8  # samples per pipeline call (the UNet sees twice that under classifier-free guidance)


@dataclass(frozen=True)
class Request:
    """One image: a prompt and an adapter mix ((file, weight), ...); unset options as `sdlora generate` sets them."""

    prompt: str
    adapters: tuple[tuple[str, float], ...] = ()
    negative: str = ""
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class AdapterInfo:
    path: Path
    sha256: str
    metadata: dict[str, str]
    not_batchable: str | None  # why it takes the one-at-a-time path, or None


@dataclass(frozen=True)
class _Sampling:
    """What all samples of one pipeline call share."""

    scheduler: str | None
    options: tuple = ()
    steps: int = 25
    guidance: float = 7.5
    width: int | None = None
    height: int | None = None
    # SDXL samples an empty negative as zeros (force_zeros_for_empty_prompt) only when none is given at all, so
    # requests with and without one are not mixed in a call
    negative: bool = False


@dataclass
class BatchGenerator:
    """Holds one pipeline; `generate(requests)` returns one PIL image per request, in order."""

    pipe: Any
    batch_size: int = DEFAULT_BATCH
    capacity: int = DEFAULT_CAPACITY
    notes: list[str] = field(default_factory=list)
    calls: int = 0  # pipeline calls made: a grid of N cells in batches of B takes about N/B

    def __post_init__(self):
        self.pipe.set_progress_bar_config(disable=True)
        self._base_scheduler = self.pipe.scheduler
        self.multi = MultiAdapter(self.pipe, self.capacity)
        self._files: dict[str, AdapterInfo] = {}  # by path as given
        self._by_sha: dict[str, AdapterInfo] = {}
        self._blender: AdapterBlender | None = None

    def check(self, path: str | Path) -> AdapterInfo:
        """Read and check an adapter file once (family, layer shapes); batchable ones go into the device cache."""
        from sdlora.lora.io import read_adapter_file

        key = str(path)
        if key not in self._files:
            found = read_adapter_file(path)
            reason = not_batchable(found.adapter)
            check_fits(self.pipe, found.adapter, str(path))
            sha = file_sha256(found.path)
            if reason is None:
                self.multi.add(sha, found.adapter, found.path)
            else:
                self.notes.append(f"{path}: {reason}, sampled one adapter at a time through diffusers")
            self._files[key] = self._by_sha[sha] = AdapterInfo(found.path, sha, dict(found.adapter.metadata), reason)
        return self._files[key]

    def generate(self, requests: list[Request], on_image: Callable[[int, Any], None] | None = None) -> list:
        """Images for `requests`; `on_image(index, image)` is called as each one is done."""
        images: list = [None] * len(requests)
        groups: dict[_Sampling, list[int]] = {}
        alone: list[int] = []
        for i, request in enumerate(requests):
            active = [(self.check(p), check_weight(w, str(p))) for p, w in request.adapters]
            if any(info.not_batchable for info, w in active if w):
                alone.append(i)
            else:
                groups.setdefault(self._sampling(request, [info for info, w in active if w]), []).append(i)
        for sampling, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                for i, image in zip(batch, self._sample(sampling, [requests[i] for i in batch])):
                    images[i] = image
                    if on_image:
                        on_image(i, image)
        for i in alone:
            images[i] = self._one_at_a_time(requests[i])
            if on_image:
                on_image(i, images[i])
        return images

    def resolve(self, request: Request) -> dict:
        """The scheduler (None: the model's own), steps and guidance `request` is sampled with."""
        active = [self.check(p) for p, w in request.adapters if w]
        sampling = self._sampling(request, active)
        return {"scheduler": sampling.scheduler, "steps": sampling.steps, "guidance": sampling.guidance}

    def _sampling(self, request: Request, active: list[AdapterInfo]) -> _Sampling:
        """AdapterBlender.generate's choice of scheduler, steps and guidance for these active adapters."""
        defaults = sampling_defaults([LoadedAdapter(info.sha256, info.path, info.sha256, info.metadata)
                                      for info in active])
        scheduler = request.scheduler or defaults.scheduler
        options = defaults.scheduler_options if scheduler == defaults.scheduler else {}
        return _Sampling(scheduler, tuple(sorted(options.items())), request.steps or defaults.steps,
                         defaults.guidance if request.guidance is None else request.guidance,
                         request.width, request.height, bool(request.negative))

    def _sample(self, sampling: _Sampling, batch: list[Request]) -> list:
        if self._blender is not None:
            self._blender.set_weights({})  # diffusers' LoRA layers off: the batched hooks serve these samples
        self.pipe.scheduler = (make_scheduler(sampling.scheduler, self._base_scheduler.config, dict(sampling.options))
                               if sampling.scheduler else self._base_scheduler)
        rows = []
        for request in batch:
            mix: dict[str, float] = {}
            for path, weight in request.adapters:
                sha = self._files[str(path)].sha256
                mix[sha] = mix.get(sha, 0.0) + weight
            for sha in mix:
                if sha not in self.multi.adapters:  # evicted from the device cache since it was checked
                    self.multi.load(self._by_sha[sha].path)
            rows.append([(sha, w) for sha, w in mix.items() if w])
        # one CPU generator per sample, seeded as `generate` seeds its one: the same noise per sample
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in batch]
        self.calls += 1
        with self.multi.mixes(rows), torch.no_grad():
            return self.pipe([r.prompt for r in batch],
                             negative_prompt=[r.negative for r in batch] if sampling.negative else None,
                             num_inference_steps=sampling.steps, guidance_scale=sampling.guidance,
                             width=sampling.width, height=sampling.height, generator=generators).images

    def _one_at_a_time(self, request: Request):
        if self._blender is None:
            self.pipe.scheduler = self._base_scheduler
            self._blender = AdapterBlender(self.pipe)
        weights: dict[str, float] = {}
        for path, weight in request.adapters:
            weights[str(path)] = weights.get(str(path), 0.0) + weight
        self._blender.set_weights(weights)
        self.calls += 1
        return self._blender.generate(request.prompt, negative=request.negative or None, steps=request.steps,
                                      guidance=request.guidance, seed=request.seed, scheduler=request.scheduler,
                                      width=request.width, height=request.height)


def check_request_adapters(adapters, what: str = "adapters") -> tuple[tuple[str, float], ...]:
    """[(file, weight), ...] from a caller: weights in range, files present; a user error otherwise."""
    out = []
    for path, weight in adapters:
        check_weight(float(weight), f"{what} {path}")
        if not Path(path).exists():
            raise SdloraError(f"{what} {path}: no such file; give the path of a LoRA .safetensors file")
        out.append((str(path), float(weight)))
    return tuple(out)
