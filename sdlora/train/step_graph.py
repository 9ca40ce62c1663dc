"""The whole training step as one CUDA graph per batch shape (train.cuda_graphs: step).

Why: with `cuda_graphs: on`, the compiled UNet's forward and backward replay as CUDA graphs, but the step still
runs Python between them. Round five's profile of SD 1.5 at batch 1 on an H200 (docs/PERFORMANCE.md) found 14.9 ms
of kernels in a 25.4 ms step: the GPU waited for the host, which spent ~12 ms launching the two graphs and in
their wrappers (cudagraph trees), 2.8 ms checking dynamo's guards, 2.1 ms in the AdamW step and 1 ms in the
gradient norm. Recorded whole (the cached batch to latents and conditioning, noise, forward, backward, clipping,
the fused AdamW update), a step is one replay: no guards, no wrappers, no launches but the graph's.

How, per batch shape (a bucket): the first WARMUP_STEPS steps of a shape run as usual, on the capture stream
(torch.compile compiles there); the next one is recorded (recording runs nothing) and replayed, and every later
step of that shape copies its batch into the graph's input tensors and replays. A graph reads fixed addresses
only, so:
- inputs: device tensors per shape, filled by `copy_` before each replay;
- the learning rate: one device tensor per param group (torch's capturable AdamW takes a tensor lr); the
  schedule fills it in place (torch's LRScheduler does, for a tensor lr) and the next replay reads it;
- randomness: the noise generator is registered with the graph (torch registers its default CUDA generator,
  LoRA dropout's, itself), which reads their seed and offset at each replay, so the per-step reseeding gives
  each step its own draws;
- gradients: None before recording, so the recorded backward writes them (no accumulation), the recorded clip
  and update read them, and they are let go after it: outside a replay no gradient is alive, so the graphs of
  all shapes share one memory pool (each replay is self-contained);
- the loss the graph writes is copied out after each replay (the next one overwrites it).

`step_graph_blocker` names what keeps a run from this (a host sync or Python state inside the step: gradient
accumulation, several processes, fp16 loss scaling, an optimizer other than AdamW, EMA, DyLoRA's rank draw, a
training text encoder, LCM, uncached data, multires noise, gradient checkpointing); such a run keeps
`cuda_graphs: on`. A recording that fails falls back the same way, with a warning, and the step runs eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from sdlora.config import Config

WARMUP_STEPS = 2  # eager steps of a shape before its recording: the compile, then one step with warm caches


def step_graph_blocker(cfg: Config, distributed: bool) -> str | None:
    """Why this run's step cannot be recorded whole, as `key: reason` (None: it can)."""
    train = cfg.train
    checks = [
        (train.gradient_accumulation > 1, "train.gradient_accumulation: micro-batches add up between graphs"),
        (distributed, "train.gpus: the gradients' all-reduce sits between backward and the update"),
        (train.mixed_precision == "fp16", "train.mixed_precision: fp16's loss scaler checks for inf on the host"),
        (train.optimizer != "adamw", f"train.optimizer: {train.optimizer} is not torch's capturable AdamW"),
        (train.ema, "train.ema: its decay is a Python number updated every step"),
        (cfg.network.type == "dylora", "network.type: DyLoRA draws its rank on the host every step"),
        (cfg.network.text_encoder, "network.text_encoder: captions are tokenized on the host every step"),
        (cfg.mode == "lcm", "mode: LCM distillation's teacher and solver run outside the UNet step"),
        (cfg.data.cache == "none", "data.cache: none, so the VAE and text encoder run on host-made tensors"),
        (bool(train.multires_noise_iterations), "train.multires_noise_iterations: it reads a random size back"),
        (train.gradient_checkpointing, "train.gradient_checkpointing: its recomputation saves RNG states on the "
                                       "host"),
    ]
    return next((reason for blocked, reason in checks if blocked), None)


def shape_key(batch: dict[str, Any]) -> tuple:
    """What a recorded graph is specialised to: the names, shapes and dtypes of the batch's tensors."""
    return tuple(sorted((name, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (name,)
                        for name, v in batch.items()))


class CudaGraphRecorder:
    """torch's CUDA graph: record `fn` once on a side stream, then replay. One memory pool for all shapes."""

    def __init__(self, device: torch.device, generators: list[torch.Generator]):
        self.device, self.generators = device, generators
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    def eager(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` now, on the recording stream (warm-up steps run where the recording will)."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = fn()
        current.wait_stream(self.stream)
        return out

    def record(self, fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        torch.cuda.synchronize(self.device)
        # thread_local: the DataLoader's pin-memory thread goes on (its event queries would break a global
        # capture); the capture still takes everything enqueued on this stream, the autograd thread's too.
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
            out = fn()
        return out, graph.replay


@dataclass
class _Shape:
    seen: int = 0  # eager steps run at this shape
    inputs: dict[str, Any] | None = None  # the recorded graph's input tensors (and the batch's other fields)
    loss: torch.Tensor | None = None  # the loss tensor the graph writes
    replay: Callable[[], None] | None = None


@dataclass
class StepGraphs:
    """Runs a training step's body, `body(batch) -> loss` (zero grads through the optimizer update), eagerly for a
    shape's first steps, then as that shape's recorded graph. `params`: whose gradients the body makes."""

    device: torch.device
    params: list[torch.nn.Parameter]
    recorder: Any  # CudaGraphRecorder, or a stand-in with eager(fn) and record(fn) -> (out, replay)
    warmup_steps: int = WARMUP_STEPS
    shapes: dict[tuple, _Shape] = field(default_factory=dict)
    failed: str | None = None  # why recording failed; then every step runs eagerly

    def run(self, batch: dict[str, Any], body: Callable[[dict[str, Any]], torch.Tensor]) -> tuple[torch.Tensor, str]:
        """The step's loss (a tensor of its own) and how the step ran: "eager", "recorded", "replayed",
        or "failed" (recording failed: this step and every later one run eagerly, `failed` says why)."""
        shape = self.shapes.setdefault(shape_key(batch), _Shape())
        if shape.replay is None and (self.failed or shape.seen < self.warmup_steps):
            shape.seen += 1
            return self.recorder.eager(lambda: body(self._on_device(batch))), "eager"
        how = "replayed"
        if shape.replay is None:
            inputs = self._on_device(batch, copy=True)  # the graph's own: later batches are copied in
            try:
                loss, replay = self.recorder.record(lambda: body(inputs))
            except Exception as error:  # an op that cannot be recorded: this run goes on without graphs
                self.failed = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                self._release_grads()
                return self.recorder.eager(lambda: body(self._on_device(batch))), "failed"
            shape.inputs, shape.loss, shape.replay = inputs, loss, replay
            self._release_grads()
            how = "recorded"
        else:
            for name, value in batch.items():
                if isinstance(value, torch.Tensor):
                    shape.inputs[name].copy_(value, non_blocking=True)
        shape.replay()
        return shape.loss.clone(), how

    def _on_device(self, batch: dict[str, Any], copy: bool = False) -> dict[str, Any]:
        return {name: value.to(self.device, non_blocking=True, copy=copy) if isinstance(value, torch.Tensor)
                else value for name, value in batch.items()}

    def _release_grads(self) -> None:
        # The recorded gradients live in the graphs' pool: no tensor outside a replay may hold them (module doc).
        for p in self.params:
            p.grad = None


def tensor_lr(optimizer, device: torch.device) -> None:
    """Each param group's lr as a device tensor (kept when it is one already): a recorded update reads it from
    its address, and the schedule fills it in place. Also after a checkpoint's optimizer state is loaded, which
    brings the lr of the run that saved it."""
    inner = getattr(optimizer, "optimizer", optimizer)
    for group in inner.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == device):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
