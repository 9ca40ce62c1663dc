"""The first compile of `train.compile: blocks`, spread over worker processes.

Why: a cold `blocks` compile is dozens of separate graphs (SD 1.5 at batch 8: 21 block variants, SDXL 16, each
forward and backward), compiled one after another as the first step reaches them, and each is single-threaded
Python in dynamo, AOTAutograd and inductor (bench/compile_times.py: lowering, scheduling and code generation take
most of it; the Triton kernels' own compile runs in a pool already). On a 16-core machine 15 of the cores wait.
Each variant's compile depends only on the block's structure and on its inputs' shapes, dtypes, strides and
requires_grad, not on weight values, so other processes can compile the variants side by side into the shared
compile cache (AOTAutograd's and inductor's caches under TORCHINDUCTOR_CACHE_DIR) while the trainer waits; the
trainer's own compile then loads each one as a warm start does. On an H200 (docs/PERFORMANCE.md, round seven):
SD 1.5's first step on a new machine 78-93 s instead of 150 s, all 21 graphs then loaded from the cache.

How: on the compiled view's first call, the UNet runs once on fake tensors (FakeTensorMode: shapes and autograd
metadata, no memory, no kernels) with a pre-hook on each repeated block that records its inputs. One block of
each distinct (structure, inputs) pair is saved with torch.save; each worker loads its share, sets the same global
state (autocast, grad mode, numerics flags, the compilers' configs), compiles each block's forward with the
trainer's own torch.compile settings and runs forward and backward on random inputs of the recorded layout. A
marker file keyed on what the graphs follow from (the UNet's inputs and parameters, the blocks' structure, the
compile settings and state, torch and the device) says the cache holds them, so a warm start spawns nothing and
skips the fake run.

Where torch can (saved_blocks.py: torch's AOT precompile, the blocks compiled without CUDA graph trees), each
worker compiles its variants that way instead and saves each one beside the marker, traced and compiled; the
trainer loads them on its first call, now and on every warm start, and so skips dynamo's tracing too. A variant
that cannot be saved is compiled with torch.compile in the worker as before.

Anything unexpected (a block that cannot be pickled, a fake run that fails, a worker that fails or runs past its
limit) leaves the compile to the trainer's process, as before: this only ever moves work, it changes no result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

from sdlora.atomic import write_text

WORKER_TIMEOUT_S = 900  # a cold SDXL block variant compiles in well under this on one core
PER_WORKER_GIB = 2.0  # a worker's CUDA context, one block's weights and activations, with room to spare


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """What a compiled graph is specialised on for one tensor input (its values are not)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorSpec:
        return cls(tuple(tensor.shape), tuple(tensor.stride()), str(tensor.dtype).removeprefix("torch."),
                   tensor.requires_grad)

    def make(self, device: torch.device) -> torch.Tensor:
        dtype = getattr(torch, self.dtype)
        tensor = torch.empty_strided(self.shape, self.stride, dtype=dtype, device=device)
        if dtype.is_floating_point:
            tensor.normal_()
        else:
            tensor.zero_()
        return tensor.requires_grad_(self.requires_grad)


class Unsupported(Exception):
    """This run's blocks cannot be compiled elsewhere; the trainer compiles them itself."""


def describe(value: Any) -> Any:
    """A picklable description of one argument: tensors become TensorSpec inside the same containers."""
    def leaf(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return TensorSpec.of(item)
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
        raise Unsupported(f"a block input of type {type(item).__name__}")

    return tree_map(leaf, value)


def materialize(spec: Any, device: torch.device) -> Any:
    return tree_map(lambda item: item.make(device) if isinstance(item, TensorSpec) else item, spec)


# Process-wide numerics settings a compiled graph depends on (the compile caches key on them), by torch.backends part.
# Each is copied to a worker only where it differs there: assigning even the default value changes what torch
# records (fp32_precision "none" becomes "ieee"), and with it the cache key.
_NUMERICS = {"cuda.matmul": ("fp32_precision", "allow_tf32", "allow_bf16_reduced_precision_reduction",
                             "allow_fp16_reduced_precision_reduction"),
             "cudnn": ("fp32_precision", "allow_tf32")}
_BACKENDS = {"cuda.matmul": torch.backends.cuda.matmul, "cudnn": torch.backends.cudnn}


def _compiler_configs() -> dict:
    import torch._dynamo.config
    import torch._functorch.config
    import torch._inductor.config

    return {"dynamo": torch._dynamo.config, "functorch": torch._functorch.config, "inductor": torch._inductor.config}


def global_state(device: torch.device) -> dict:
    """The process state a compiled graph depends on beyond its inputs (the compile caches key on it too): grad
    mode, autocast, numerics, and the compilers' own settings as this process has them (sdlora's and any
    library's changes included: cache_custom_autograd_functions, say)."""
    kind = device.type
    numerics = {f"{label}:{name}": getattr(_BACKENDS[label], name) for label, names in _NUMERICS.items()
                for name in names if hasattr(_BACKENDS[label], name)}
    return {"grad": torch.is_grad_enabled(), "autocast": torch.is_autocast_enabled(kind),
            "autocast_dtype": str(torch.get_autocast_dtype(kind)).removeprefix("torch."),
            "autocast_cache": torch.is_autocast_cache_enabled(),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(), "numerics": numerics,
            "configs": {name: module.save_config_portable() for name, module in _compiler_configs().items()}}


def apply_global_state(state: dict, device: torch.device):
    """Set what global_state read, where it differs here; the autocast context to run the blocks under."""
    for name, module in _compiler_configs().items():
        module.load_config(state["configs"][name])
    if torch.get_float32_matmul_precision() != state["matmul_precision"]:
        torch.set_float32_matmul_precision(state["matmul_precision"])
    for key, value in state["numerics"].items():
        label, _, name = key.partition(":")
        if getattr(_BACKENDS[label], name, value) != value:
            setattr(_BACKENDS[label], name, value)
    if torch.are_deterministic_algorithms_enabled() != state["deterministic"]:
        torch.use_deterministic_algorithms(state["deterministic"])
    torch.set_grad_enabled(state["grad"])
    return torch.autocast(device.type, dtype=getattr(torch, state["autocast_dtype"]), enabled=state["autocast"],
                          cache_enabled=state["autocast_cache"])


@dataclasses.dataclass
class Variant:
    """One distinct compiled graph of the blocks: a block of that structure and the inputs it was called with."""

    block: torch.nn.Module
    args: tuple
    kwargs: dict
    key: str
    cost: float  # for sharing the work out: parameters times input elements, a rough compile-size proxy
    members: list[int] = dataclasses.field(default_factory=list)  # the indices (in `blocks`) of the blocks it serves


def _structure(block: torch.nn.Module) -> list:
    """What dynamo specialises a block's graph on besides its inputs: each parameter's layout and each submodule's
    plain attributes (dynamo guards on them: two SD ResNet blocks differ only in output_scale_factor, say)."""
    plain = (bool, int, float, str, type(None))
    return ([(name, type(m).__qualname__, sorted((k, v) for k, v in vars(m).items() if isinstance(v, plain)))
             for name, m in block.named_modules()]
            + [(name, tuple(p.shape), tuple(p.stride()), str(p.dtype), p.requires_grad)
               for name, p in block.named_parameters()])


def find_variants(model: torch.nn.Module, blocks: list[torch.nn.Module], args: tuple, kwargs: dict) -> list[Variant]:
    """Run `model(*args, **kwargs)` on fake tensors and record each block's inputs; one Variant per distinct
    (structure, inputs). Raises Unsupported where that is not possible."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    seen: dict[str, Variant] = {}
    index_of = {id(block): i for i, block in enumerate(blocks)}

    def record(block, block_args, block_kwargs):
        spec_args, spec_kwargs = describe(block_args), describe(block_kwargs)
        key = hashlib.sha256(repr((_structure(block), spec_args, spec_kwargs)).encode()).hexdigest()[:20]
        if key not in seen:
            elements = sum(t.numel() for t in [*block_args, *block_kwargs.values()] if isinstance(t, torch.Tensor))
            params = sum(p.numel() for p in block.parameters())
            seen[key] = Variant(block, spec_args, spec_kwargs, key, float(elements) * (1 + params / 1e6))
        seen[key].members.append(index_of[id(block)])

    handles = [block.register_forward_pre_hook(record, with_kwargs=True) for block in blocks]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            model(*args, **kwargs)
    except Unsupported:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the fake run meets, the trainer compiles in-process
        raise Unsupported(f"the fake run of the UNet failed ({type(exc).__name__}: {exc})") from exc
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.values())


def share_out(variants: list[Variant], workers: int) -> list[list[Variant]]:
    """Largest first, each to the least loaded worker."""
    shares: list[list[Variant]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for variant in sorted(variants, key=lambda v: -v.cost):
        i = loads.index(min(loads))
        shares[i].append(variant)
        loads[i] += variant.cost
    return [share for share in shares if share]


def worker_count(wanted: int, variants: int, device: torch.device) -> int:
    """At most `wanted`, one per variant, half the CPU cores but at least two (each worker also starts
    kernel-compile threads), and what the GPU's free memory holds beside the training."""
    count = min(wanted, variants, max(2, (os.cpu_count() or 2) // 2))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        count = min(count, int(free / 2**30 / PER_WORKER_GIB))
    return count


def marker_path(key: str) -> Path | None:
    root = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(root) / "sdlora-blocks" / key if root else None


def saved_dir(marker: Path) -> Path:
    """Where the workers save the variants of the marker's run (saved_blocks.py), with `blocks.json`: for each
    block's index, its variant's file."""
    return marker.with_name(marker.name + ".saved")


def saved_files(marker: Path) -> dict[int, Path]:
    """The saved variant of each block that has one, by block index; {} where nothing was saved."""
    try:
        names = json.loads((saved_dir(marker) / "blocks.json").read_text())
    except (OSError, ValueError):
        return {}
    files = {int(index): saved_dir(marker) / name for index, name in names.items()}
    return {index: path for index, path in files.items() if path.is_file()}


def run_key(model: torch.nn.Module, blocks: list[torch.nn.Module], args: tuple, kwargs: dict, settings: dict,
            state: dict, device: torch.device) -> str:
    """What the blocks' graphs follow from, read without running the UNet (a warm start skips the fake run): the
    UNet's inputs and parameters, the blocks' structure, the compile settings and state, torch and the device."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    params = [(n, tuple(p.shape), tuple(p.stride()), str(p.dtype), p.requires_grad) for n, p in model.named_parameters()]
    parts = [torch.__version__, name, settings, state, describe(args), describe(kwargs), params,
             [_structure(block) for block in blocks]]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=_stable).encode()).hexdigest()[:24]


def _stable(value: Any) -> Any:
    """JSON for what json cannot write, the same in every process: a set's order follows the process's string hash
    seed (dynamo's config holds sets), so sets are sorted; round seven's warm starts missed their marker so."""
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    return str(value)


@dataclasses.dataclass
class Report:
    """What the precompile did, for the bench and the tests."""

    variants: int
    workers: int = 0
    seconds: float = 0.0
    skipped: str = ""  # why nothing was spawned ("warm", "one variant", ...)
    failed: list[str] = dataclasses.field(default_factory=list)
    compiled: int = 0  # graphs the workers compiled (dynamo's count in each, the saved variants' included)
    marker: Path | None = None  # written once the trainer's first compiled call has run
    saved: dict[int, Path] = dataclasses.field(default_factory=dict)  # block index -> its saved variant
    not_saved: list[str] = dataclasses.field(default_factory=list)  # why a worker compiled a variant unsaved

    def mark_warm(self) -> None:
        """The compile cache now holds these variants (compiled by the workers or by the trainer itself)."""
        if self.marker is not None and not self.marker.is_file():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.marker, json.dumps({"variants": self.variants, "workers": self.workers,
                                                "seconds": self.seconds}))
        self.marker = None


def precompile(model, blocks, args, kwargs, *, settings: dict, wanted: int, device: torch.device,
               save: bool = False) -> Report:
    """Compile the blocks' variants in worker processes into the shared cache, before the trainer's own compile.
    `settings`: torch.compile's mode and backend as the trainer uses them. `save`: the workers save each variant
    traced and compiled (saved_blocks.py); the Report's `saved` names the files, on a warm start too."""
    start = time.perf_counter()
    state = global_state(device)
    # A saving run's marker is its own: its workers fill the saved folder instead of torch.compile's caches, so a
    # run that does not load saved variants (several GPUs) must not take it for warm. And a saved variant holds
    # its device's index (a guard), so that is part of its key.
    key_settings = {**settings, "saved_for": str(device)} if save else settings
    try:
        marker = marker_path(run_key(model, blocks, args, kwargs, key_settings, state, device))
        if marker is not None and marker.is_file():
            return Report(0, skipped="warm: this cache holds them", saved=saved_files(marker) if save else {})
        variants = find_variants(model, blocks, args, kwargs)
    except Unsupported as exc:
        return Report(0, skipped=str(exc))
    count = worker_count(wanted, len(variants), device)
    if count < 2:
        return Report(len(variants), skipped=f"{count} worker(s) possible for {len(variants)} variant(s)",
                      marker=marker)
    report = Report(len(variants), workers=count, marker=marker)
    save_to = saved_dir(marker) if save and marker is not None else None
    with tempfile.TemporaryDirectory(prefix="sdlora-compile-") as tmp:
        procs = []
        try:
            for i, share in enumerate(share_out(variants, count)):
                job = Path(tmp) / f"share-{i}.pt"
                torch.save({"settings": settings, "state": state, "device": str(device),
                            "save_dir": None if save_to is None else str(save_to),
                            "variants": [(v.block, v.args, v.kwargs, v.key) for v in share]}, job)
                procs.append((job, _spawn(job, count)))
        except Exception as exc:  # noqa: BLE001 - a block that does not pickle, say: compiled in-process
            for _, proc in procs:
                proc.kill()
                proc.wait()
            return Report(len(variants), skipped=f"the blocks could not be handed to workers ({exc})",
                          marker=marker)
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        for job, proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                report.failed.append(f"past {WORKER_TIMEOUT_S} s")
                continue
            out, err = (job.with_suffix(s).read_text(errors="replace").strip() for s in (".out", ".err"))
            if proc.returncode or not out:
                report.failed.append(_reason(err) or f"exit {proc.returncode}")
            else:
                done = json.loads(out.splitlines()[-1])
                report.compiled += done["graphs"]  # a saved variant is one of dynamo's graphs too
                report.not_saved += done.get("not_saved", [])
    if save_to is not None:
        files = [(v, save_to / f"{v.key}.bin") for v in variants]
        report.saved = {i: path for v, path in files if path.is_file() for i in v.members}
        if report.saved:
            write_text(save_to / "blocks.json",
                       json.dumps({str(i): path.name for i, path in report.saved.items()}, sort_keys=True))
    report.seconds = round(time.perf_counter() - start, 1)
    if report.failed:
        warnings.warn(f"train.compile_workers: {len(report.failed)} of {count} compile workers failed "
                      f"({report.failed[0]}); their blocks compile in the trainer's process", stacklevel=2)
    return report


def _reason(stderr: str) -> str:
    """The exception line of a worker's traceback (dynamo ends its own with hints)."""
    lines = [line for line in stderr.splitlines() if "Error" in line or "Exception" in line]
    return (lines or stderr.splitlines() or [""])[-1][:300]


def _spawn(job: Path, workers: int) -> subprocess.Popen:
    # Each worker's inductor starts a pool of kernel-compile processes, one per core by default: share the cores.
    threads = max(1, (os.cpu_count() or 2) // workers)
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": str(threads)}
    # Output to files, not pipes: a pipe nobody reads yet would stall a worker that warns a lot.
    with open(job.with_suffix(".out"), "w") as out, open(job.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "sdlora.train.compile_workers", str(job)], env=env,
                                stdout=out, stderr=err)


def compile_share(job: Path) -> None:
    """A worker: compile and run (forward and backward: the kernels' own compile happens at the first run) each
    variant of its share, saved where the job names a folder (saved_blocks.py) and torch.compile's otherwise;
    prints how many graphs dynamo compiled, how many variants were saved, and why any was not."""
    from torch._dynamo.utils import counters

    import sdlora.train.trainer  # noqa: F401 - the import-time settings the trainer's process has
    from sdlora.train import saved_blocks

    share = torch.load(job, weights_only=False)
    device = torch.device(share["device"])
    settings = share["settings"]
    autocast = apply_global_state(share["state"], device)
    save_dir = Path(share["save_dir"]) if share.get("save_dir") else None
    saved, not_saved = 0, []

    def run(forward, args, kwargs) -> None:
        with autocast:
            out = forward(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
        if outputs:
            torch.autograd.backward(outputs, [torch.randn_like(t) for t in outputs])

    for block, spec_args, spec_kwargs, key in share["variants"]:
        block.to(device)
        args, kwargs = materialize(spec_args, device), materialize(spec_kwargs, device)
        if save_dir is not None:
            path = save_dir / f"{key}.bin"
            try:
                with autocast:
                    fn = saved_blocks.compile_and_save(block, args, kwargs, settings, path)
                run(lambda *a, **k: fn(block, *a, **k), args, kwargs)  # a file is kept only for a variant that ran
                saved += 1
                continue
            except Exception as exc:  # noqa: BLE001 - whatever torch's AOT precompile meets, torch.compile it
                path.unlink(missing_ok=True)
                not_saved.append(f"{type(block).__name__}: {type(exc).__name__}: {exc}"[:300])
        run(torch.compile(block.forward, mode=settings["mode"], backend=settings["backend"], dynamic=False),
            args, kwargs)
    print(json.dumps({"graphs": counters["stats"]["unique_graphs"], "saved": saved, "not_saved": not_saved}),
          flush=True)


if __name__ == "__main__":
    # Through the package, not this __main__ module: the share's TensorSpecs unpickle as the package's class.
    from sdlora.train.compile_workers import compile_share as _compile_share

    _compile_share(Path(sys.argv[1]))
