"""`compile: blocks`' variants saved traced and compiled, so a later start loads them without dynamo's tracing.

Why: a warm `blocks` start found every compiled graph in the compile cache, yet its first UNet call still took
~11 s of an SD 1.5 start on an H200, 7 s of it dynamo tracing the 21 block variants again to know which cached
graph each one is (docs/PERFORMANCE.md, round eight). torch's AOT precompile (`torch._dynamo.aot_compile`) saves
a traced, compiled function with its guards; loading it skips the tracing. The compile workers save each variant
so (compile_workers.py), and the trainer loads them on its first call, on the cold start and on every warm one.

What keeps a loaded variant right: it runs only where it would have been chosen. Its guards (shapes, strides,
dtypes, requires_grad, plain attributes, types) are checked at every call; the guards that cannot be saved (object
identity) stand for what the saved folder's key holds (the blocks' structure, the compile settings and global
state, torch, the device: compile_workers.run_key), and the state is compared at each call (grad mode, autocast).
A call that any of that refuses (another bucket's shapes, say) goes to the block's torch.compile, which traces
it as before. The sources the variant was traced from are compared with today's at load (an upgraded diffusers
or peft traces anew), and a block with hooks inside it is never given one (its hooks' guards are identity).

torch's API for this is private (torch 2.11-2.13); anything it does not offer, or any error in saving or loading,
leaves the block to torch.compile: this only ever saves time, it changes no result.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch._dynamo.utils import counters  # beside dynamo's own: bench/compile_times.py writes them

from sdlora.atomic import atomic_path


OFF_SWITCH = "SDLORA_NO_SAVED_BLOCKS"  # set to 1: the blocks compile as before (a comparison, or a way out)


def available(settings: dict) -> bool:
    """Whether this torch can save a variant for these compile settings. Not under "reduce-overhead": its CUDA
    graph trees are made by torch.compile's wrapper, which a loaded variant has not (the whole-step graph, the
    default for a LoRA on a GPU, compiles the blocks without it)."""
    if settings.get("mode") is not None or os.environ.get(OFF_SWITCH) == "1":
        return False
    try:
        from torch._dynamo.aot_compile import AOTCompiledFunction, CompileArtifacts, aot_compile_fullgraph  # noqa: F401
        from torch._dynamo.hooks import Hooks  # noqa: F401
    except ImportError:
        return False
    # What loading needs too: without it every block would fall back to an in-process compile, the workers having
    # filled the saved folder instead of torch.compile's caches.
    return (all(hasattr(AOTCompiledFunction, name) for name in ("serialize", "deserialize", "guard_check",
                                                                   "disable_guard_check"))
            and "source_info" in getattr(CompileArtifacts, "__dataclass_fields__", {}))


def _backend(settings: dict):
    if settings["backend"] == "inductor":
        return torch._TorchCompileInductorWrapper(settings["mode"], None, False)
    return torch._dynamo.lookup_backend(settings["backend"])


def _savable_guards(entries) -> list[bool]:
    """Keep the guards that can be written and hold from one start to the next: not global variables, not object
    identity, directly or through a guard built on one (torch raises on those when it writes the guards), and not
    the process's global state: that one also holds torch's CPU thread count, which sdlora sets from the load at
    each start (threads.py), so on an H200 every warm start refused every saved variant (docs/PERFORMANCE.md,
    round nine). `call_state` compares the rest of it at each call instead."""
    from torch._dynamo.guards import CheckFunctionManager

    unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES) | {"GLOBAL_STATE"}
    return [not (g.is_global or g.guard_type in unsupported or unsupported & set(g.derived_guard_types or ()))
            for g in entries]


def compile_and_save(block: torch.nn.Module, args: tuple, kwargs: dict, settings: dict, path: Path) -> Callable:
    """Trace and compile `block`'s forward for these inputs (under the caller's autocast and grad mode), write it
    to `path` atomically and return it, callable as fn(block, *args, **kwargs)."""
    from torch._dynamo.aot_compile import aot_compile_fullgraph
    from torch._dynamo.hooks import Hooks

    fn = aot_compile_fullgraph(type(block).forward, ((block, *args), kwargs), Hooks(guard_filter_fn=_savable_guards),
                               _backend(settings), dynamic=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(type(fn).serialize(fn).serialized_data)
    return fn


def load(path: Path, block: torch.nn.Module):
    """A saved variant of `block`'s forward. Call it under the grad mode and autocast its calls will have: its
    tensor guards take the thread's dispatch state at this point (outside the autocast they refuse every call).
    Raises ValueError where a source it was traced from has changed since."""
    from torch._dynamo.aot_compile import AOTCompiledFunction

    fn = AOTCompiledFunction.deserialize(path.read_bytes(), f_globals=sys.modules[type(block).__module__].__dict__)
    for source in fn._artifacts.source_info.inlined_sources:
        module = sys.modules.get(source.module)
        if module is None or _source_checksum(module, source.firstlineno, source.lastlineno) != source.checksum:
            raise ValueError(f"{source.module} changed since the variant was saved")
    fn.disable_guard_check()  # SavedForward checks them itself, and sends a refused call to torch.compile
    return fn


def _source_checksum(module, first: int, last: int) -> str:
    """What torch records for each source a variant inlined: the sha256 of those lines of the module's text."""
    lines = inspect.getsourcelines(module)[0][first - 1:last - 1]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def has_inner_hooks(block: torch.nn.Module) -> bool:
    """Hooks inside the block are traced into its graph and guarded by identity, which is not saved. (The block's
    own hooks run outside its forward, as with torch.compile.)"""
    from torch.nn.modules import module as module_globals

    if any(getattr(module_globals, name, None) for name in
           ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for name, m in block.named_modules() if name)


def call_state(device_type: str) -> tuple:
    """The global state a saved variant was traced under and must be called under: what dynamo's own global-state
    guard compares, less the CPU thread count (kernels read it when they run; it changes no graph)."""
    matmul = torch.backends.cuda.matmul
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch._C._is_torch_function_enabled(),
            torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type),
            torch.is_autocast_enabled("cpu"), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), matmul.allow_tf32,
            matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction)


class SavedForward:
    """A block's forward: the saved variant where its guards and the global state allow the call, otherwise the
    block's torch.compile (which traces that call as it always did)."""

    def __init__(self, block: torch.nn.Module, saved, compiled: Callable, device_type: str):
        self.block, self.saved, self.compiled, self.device_type = block, saved, compiled, device_type
        self.state = call_state(device_type)
        self.refused = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if call_state(self.device_type) == self.state and self.saved.guard_check(self.block, *args, **kwargs):
            counters["sdlora"]["saved_variant_calls"] += 1
            return self.saved(self.block, *args, **kwargs)
        counters["sdlora"]["saved_variant_refusals"] += 1
        if not self.refused:  # why, once per block (a bucket's other shapes are expected; a refusal of all is not)
            self.refused = True
            counters["saved_block_refusals"][self.reason(args, kwargs)[:300]] += 1
        return self.compiled(*args, **kwargs)

    def reason(self, args: tuple, kwargs: dict) -> str:
        if call_state(self.device_type) != self.state:
            return f"global state {call_state(self.device_type)}, saved under {self.state}"
        try:
            f_locals = self.saved.prepare_f_locals(self.block, *args, **kwargs)
            failed = self.saved._artifacts.guard_manager.check_verbose(f_locals).verbose_code_parts
            return "; ".join(map(str, failed))
        except Exception as exc:  # noqa: BLE001 - only a description
            return f"guards refused ({type(exc).__name__})"


def install(blocks: list[tuple[torch.nn.Module, Callable]], files: dict[int, Path],
            device_type: str) -> tuple[list[tuple[torch.nn.Module, Callable]], list[str]]:
    """`blocks` (block, its torch.compile) with each block that has a saved variant in `files` (by block index)
    given a SavedForward instead; and why any saved variant was not used. One load per file: blocks that share a
    variant share the loaded function."""
    loaded: dict[Path, Any] = {}
    problems: list[str] = []
    result = []
    for index, (block, compiled) in enumerate(blocks):
        path = files.get(index)
        if path is None or has_inner_hooks(block):
            result.append((block, compiled))
            continue
        if path not in loaded:
            try:
                loaded[path] = load(path, block)
            except Exception as exc:  # noqa: BLE001 - whatever a saved variant meets, torch.compile takes the block
                loaded[path] = None
                problems.append(f"{path.name}: {type(exc).__name__}: {exc}"[:300])
        saved = loaded[path]
        result.append((block, compiled if saved is None else SavedForward(block, saved, compiled, device_type)))
    counters["sdlora"]["saved_variants_loaded"] += sum(fn is not None for fn in loaded.values())
    if problems:
        warnings.warn(f"train.compile: {len(problems)} saved block variant(s) could not be loaded ({problems[0]}); "
                      f"their blocks compile as before", stacklevel=2)
    return result, problems
