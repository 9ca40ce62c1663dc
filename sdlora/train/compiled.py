"""How the training step runs on a GPU: torch.compile, CUDA graphs, and the compile cache that makes the second
start fast.

Why CUDA graphs: an eager SD 1.5 step issues a few thousand small kernels through Python (diffusers' blocks, peft's
LoRA wrappers, autocast casts). On an H100 that host work takes ~0.2 s a step whatever the batch size, while the
GPU's own work is ~11 ms a sample, so below batch ~16 the GPU mostly waits (docs/PERFORMANCE.md). torch.compile
fuses the kernels (fewer, larger); its "reduce-overhead" mode also records them as CUDA graphs that replay with
one launch, so the host cost all but vanishes.

CUDA graphs replay into the same memory every step. Two rules keep that safe here:
- with gradient accumulation, LoRA gradients are allocated once before the first step (distributed.GradientSync)
  and zeroed in place (zero_grad(set_to_none=False)), so autograd accumulates into memory the trainer owns, never
  into a graph's output buffer that the next replay (the next micro-batch) would overwrite. With one micro-batch a
  step nothing accumulates: autograd takes the backward graph's gradient outputs as they are (no copy, no add per
  parameter), the optimizer reads them, and zero_grad(set_to_none=True) lets them go before the next replay
  (`needs_gradient_buffer`);
- every micro-batch starts with `cudagraph_mark_step_begin()`, telling the graphs that tensors of the previous
  one are no longer read.
Those graphs hold the UNet's forward and backward only; with `train.cuda_graphs: step` (auto for a LoRA) the
trainer records the whole step instead, the UNet compiled without graphs of its own inside it (step_graph.py).

Two scopes (train.compile). `on` traces the whole UNet into one graph: the fastest step, but dynamo walks all of
diffusers' and peft's Python for every block again at each start (~12 s of an SD 1.5 warm start on the H100's
host, docs/PERFORMANCE.md). `blocks` compiles each attention and ResNet block on its own: dynamo traces one block
of each shape and reuses it for the others with a guard check, so a warm start is ~9 s shorter (27.7 s against
36.3 s on an H100), and the eager glue between blocks (up/down-sampling, skip connections) costs 6% of the step
at batch 8, ~40% at batch 1 where launches dominate. Its first compile on a new machine runs in worker processes
(compile_workers.py: SD 1.5 on an H200 78-93 s to the first step instead of 150 s).
"""

from __future__ import annotations

import os

import torch

from sdlora.config import TrainConfig
from sdlora.train.distributed import is_distributed
from sdlora.userdata import cache_dir


def use_compile(train: TrainConfig, device: torch.device) -> bool:
    return train.compile in ("on", "blocks") or (train.compile == "auto" and device.type == "cuda")


def use_cuda_graphs(train: TrainConfig, device: torch.device) -> bool:
    """CUDA graphs need a CUDA device and compile (auto: whenever both hold; they hold no collectives, so data
    parallelism keeps them, see distributed.py)."""
    if device.type != "cuda" or not use_compile(train, device):
        return False
    return train.cuda_graphs in ("auto", "on", "step")


def use_whole_step_graph(config) -> bool:
    """Whether to record the whole step as one graph (step_graph.py), where the run allows it: train.cuda_graphs
    step, or auto for what round six measured on an H200 (docs/PERFORMANCE.md): a LoRA on bf16/fp32 base weights,
    1.51x the samples/s of the UNet's own graphs at batch 1, 1.02x at 8, 1.00x at 32, the same losses to 1e-4.
    The other network types and fp8 base weights take it when asked for (step), untimed."""
    train = config.train
    if train.cuda_graphs == "step":
        return True
    return train.cuda_graphs == "auto" and config.network.type == "lora" and train.base_precision != "fp8"


def use_channels_last(train: TrainConfig, device: torch.device) -> bool:
    """train.channels_last: on (CUDA only), off, or auto: on for a whole-UNet compile at batch <= 8.

    Measured on an H200, SD 1.5 at 512 px, compiled + CUDA graphs (docs/PERFORMANCE.md, round five): the NCHW
    step spent 29% of its kernel time at batch 1 in cuDNN's NCHW<->NHWC copies around each convolution;
    channels-last removes them: 141.1 against 137.5 samples/s at batch 8 in the same call, and batch 1 rose from
    34.3 to 37.4 (two calls). At batch 32 it measured 4% slower (160.0 against round two's 167.0), and eager
    (round one) and `compile: blocks` (not measured) keep NCHW, so auto leaves those alone."""
    if device.type != "cuda" or train.channels_last == "off":
        return False
    if train.channels_last == "on":
        return True
    return train.compile in ("on", "auto") and train.batch_size <= 8


def needs_gradient_buffer(cuda_graphs: bool, train: TrainConfig) -> bool:
    """Whether LoRA gradients must live in one flat buffer the trainer owns (distributed.GradientSync): for the
    all-reduce of data parallelism, and under CUDA graphs when micro-batches accumulate (module docstring).
    Otherwise the buffer costs an `AccumulateGrad` add per LoRA tensor and step (256 kernel launches for SD 1.5's
    attention LoRA), host work that bounds the step at batch 1."""
    return is_distributed() or (cuda_graphs and train.gradient_accumulation > 1)


def persist_compile_cache() -> None:
    """Keep inductor's compiled kernels in the user cache instead of /tmp, so a second run (same model, batch
    and bucket shapes) loads them instead of compiling again. A user's own TORCHINDUCTOR_CACHE_DIR wins.

    Any `torch.compile(...)` call, even one at import time in a library (bitsandbytes decorates its kernels so),
    makes inductor write its default (/tmp/torchinductor_<user>) into the environment; that value is torch's
    choice, not the user's, so it is replaced (round five found the H200 runs' caches in /tmp so)."""
    ours = str(cache_dir() / "inductor")
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or current == _inductor_default_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = ours


def cache_custom_autograd_functions() -> None:
    """Let AOTAutograd's compile cache keep graphs that hold a custom autograd.Function. peft's LoHa computes its
    weight through one (HadaWeight), and torch bypasses the cache for such graphs by default, so every LoHa start
    redid the joint forward/backward trace of the whole UNet: 84.5 s to the first step on an H200 after a filled
    cache, against 17-21 s for LoRA, LoKr and DyLoRA (round seven, docs/PERFORMANCE.md). The Function's forward and
    backward are traced into the graph and so into its cache key: a changed Function misses, as it should."""
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "autograd_cache_allow_custom_autograd_functions"):
        functorch_config.autograd_cache_allow_custom_autograd_functions = True


def _inductor_default_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch without it: a value already set is kept
        return None
    return default_cache_dir()


def compile_step_model(model: torch.nn.Module, cuda_graphs: bool, backend: str = "inductor",
                       scope: str = "on", compile_workers: int = 0):
    """A compiled view of `model` for the training step (same parameters); scope "on" (one graph) or "blocks".
    `backend` is for tests: aot_eager traces the same forward and backward graphs as inductor without generating
    kernels. `compile_workers` (blocks only): at most that many processes compile the blocks' first compile
    (compile_workers.py)."""
    persist_compile_cache()
    cache_custom_autograd_functions()
    mode = "reduce-overhead" if cuda_graphs else None
    if scope == "blocks":
        return CompiledBlocks(model, mode, backend, compile_workers)
    return torch.compile(model, mode=mode, backend=backend)


def is_repeated_block(module: torch.nn.Module) -> bool:
    """The UNet's repeated blocks: attention (Transformer2DModel) and ResNet blocks, in SD 1.x/2.x and SDXL."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return isinstance(module, (Transformer2DModel, ResnetBlock2D))


class CompiledBlocks:
    """`model` with each repeated block compiled on its own, only while this view is called: sampling, saving and
    LCM's no-grad teacher calls use `plain_module` as it is, so their shapes never add compiled variants.

    dynamo keys compiled code on the block's code object and guards on shapes, so the 16 attention blocks of an
    SD 1.5 UNet share 4 traced variants (one per resolution) and its 22 ResNet blocks about 10; the rest reuse
    them. dynamic=False keeps each variant specialised to its shapes (dynamo would otherwise switch to symbolic
    shapes at the second variant, with slower kernels), and the recompile limit is raised to hold them all.
    With compile workers, the variants they saved traced and compiled replace the blocks' torch.compile for the
    calls those variants fit (saved_blocks.py: no tracing at a warm start).
    """

    RECOMPILE_LIMIT = 64

    def __init__(self, model: torch.nn.Module, mode: str | None, backend: str, compile_workers: int = 0):
        import torch._dynamo.config as dynamo_config

        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), self.RECOMPILE_LIMIT))
        self.plain_module = model
        self.settings = {"mode": mode, "backend": backend}
        self.blocks = [(block, torch.compile(block.forward, mode=mode, backend=backend, dynamic=False))
                       for block in model.modules() if is_repeated_block(block)]
        self.compile_workers = compile_workers
        self.precompiled = None  # compile_workers.Report of the first call, when workers were allowed

    def __call__(self, *args, **kwargs):
        if self.compile_workers and self.precompiled is None:
            from sdlora.train import saved_blocks
            from sdlora.train.compile_workers import precompile

            device = next(self.plain_module.parameters()).device
            self.precompiled = precompile(self.plain_module, [b for b, _ in self.blocks], args, kwargs,
                                          settings=self.settings, wanted=self.compile_workers, device=device,
                                          save=saved_blocks.available(self.settings) and not is_distributed())
            if self.precompiled.saved:  # loaded here, under this call's autocast: see saved_blocks.load
                self.blocks, _ = saved_blocks.install(self.blocks, self.precompiled.saved, device.type)
        # An instance attribute `forward` shadows the class's for this call only.
        for block, compiled in self.blocks:
            block.forward = compiled
        try:
            result = self.plain_module(*args, **kwargs)
        finally:
            for block, _ in self.blocks:
                del block.forward
        if self.precompiled is not None:
            self.precompiled.mark_warm()  # compiled, here or by the workers: the next start spawns none
        return result


def mark_step_begin(cuda_graphs: bool) -> None:
    if cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
