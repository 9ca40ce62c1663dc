"""One GPU round of issue 20 in as few device calls as possible: chip rates, SD 1.5 speed beside the diffusers
recipe, fp8 against bf16 (speed and the loss after the same steps), cold and warm time to the first step.

    python bench/gpu_round.py --state STATE.json --budget 560 [--sdxl]

Stages run in order, each in its own process with a time limit; each one's result is saved into STATE.json as
soon as it ends, and a stage already in STATE.json is skipped, so the same command in a second call (the file
carried back) goes on where the first stopped. A stage is started only when the budget left covers its estimate.
The compile cache lives on the machine (SDLORA_CACHE, default /tmp/gpuround-cache): when it is gone (a new
machine), the timed stages compile again first (`precompile`, several configurations at once).

Stages:
- env: versions and the card;
- model: a random-weight SD 1.5 folder and 64 synthetic 512 px images (train_speed.py's builders);
- rates: the bf16 and fp8 (row-wise scaled) matmul rates, 8192^3, median of 20; the fp8 layer's error against
  bf16 on the GPU, eager and compiled;
- flops: forward + backward FLOPs per 512 px sample (FlopCounterMode);
- first_step: `sdlora train` in a new process to its first step, batch 8, compile on: cold (empty inductor
  cache, the first compile of the round) then warm;
- precompile: the other timed configurations through `sdlora train` for 2 steps, in parallel, to fill the cache
  (`--precompile NAME ...` picks them from COMPILE_CONFIGS; a later call with new names compiles those too);
- first-step-blocks: SD 1.5 batch 8 with `compile: blocks`, cold (its own empty cache folder) then warm, then a
  warm start under cProfile; -step with the whole step as one graph, -step-quick without the profiled start,
  -step-sampled both starts under bench/stack_sampler.py (where the wall time goes, the files beside them); each
  start's compile-cache hits and misses, and what train.compile_workers did (the cache's markers);
- memory: peak memory at batch 1, eager, per network type and with fp8, plain and with gradient checkpointing;
- baseline: the diffusers recipe loop at batch 1, 8, 32;
- timed-*: train_speed.py runs (compiled + CUDA graphs, cached latents) with the loss on fixed data afterwards
  (validation_loss): bf16 at batch 1, 8, 32 (8 and 32 with two seeds for the run-to-run spread), fp8 at 8, 32,
  each network type at 8, channels-last and NCHW (train.channels_last is auto: on at batch <= 8 since round five);
- sdxl-* (--sdxl): SDXL 1024 px batch 4, `compile: blocks` cold and warm first step (-sampled: under the stack
  sampler), then its speed.
Prints a short table last. `--only` runs the stages named, in the order given.

On the lent machine, compile site-packages to bytecode first (its image sets PYTHONDONTWRITEBYTECODE, so every new
process would compile torch's sources again, seconds a start that a pip install does not pay):
    unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pyc
    python3 -m compileall -q -j 16 /opt/torch/.venv/lib/python3.12/site-packages /tmp/site
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

STEPS = {1: (20, 60), 8: (20, 60), 32: (20, 40)}  # batch: (warm-up, timed steps)
LR = 3e-4  # high enough that 100 steps move the fixed-data loss on a random-weight UNet
FEATURES = ("train.ema=true", "data.validation_split=0.125", "train.validate_every=20")
LOCON = ("network.targets=[to_q,to_k,to_v,to_out.0,proj_in,proj_out,conv1,conv2]", "network.conv_rank=8",
         "network.conv_alpha=4")
DYLORA = ("network.type=dylora", "network.dylora_unit=4")
STEP = ("train.cuda_graphs=step",)  # the whole step as one CUDA graph (round six; sdlora/train/step_graph.py)
TIMED = [  # (name, batch, base_precision, seed, --set overrides, --val, profiled steps)
    ("timed-bf16-b8-s42", 8, "auto", 42, (), True, 0),
    ("timed-ema-val-b8", 8, "auto", 42, FEATURES, False, 0),
    ("timed-dora-b8", 8, "auto", 42, ("network.type=dora",), False, 0),
    ("timed-lokr-b8", 8, "auto", 42, ("network.type=lokr",), False, 0),
    ("timed-loha-b8", 8, "auto", 42, ("network.type=loha",), False, 0),
    ("timed-locon-b8", 8, "auto", 42, LOCON, False, 0),
    ("timed-dylora-b8", 8, "auto", 42, DYLORA, False, 0),
    ("timed-fp8-b8-s42", 8, "fp8", 42, (), True, 0),
    ("timed-bf16-b1-s42", 1, "auto", 42, (), False, 20),
    # Channels-last convolutions: round four's b1 profile spent 29% of its kernel time in cuDNN NCHW->NHWC copies.
    ("timed-cl-b1", 1, "auto", 42, ("train.channels_last=true",), False, 20),
    # train.channels_last is auto since round five (on at batch <= 8 with compile on): the NCHW rows to compare.
    ("timed-nchw-b1", 1, "auto", 42, ("train.channels_last=off",), False, 0),
    ("timed-nchw-b8", 8, "auto", 42, ("train.channels_last=off",), False, 0),
    ("timed-cl-b8", 8, "auto", 42, ("train.channels_last=true",), False, 0),
    ("timed-cl-b32", 32, "auto", 42, ("train.channels_last=true",), True, 0),
    # The flat gradient buffer the trainer kept before round five (compiled.needs_gradient_buffer): the A/B at b1.
    ("timed-cl-b1-buffer", 1, "auto", 42, ("train.channels_last=true",), False, 0),
    ("timed-blocks-b8", 8, "auto", 42, (), False, 0),  # compile: blocks (EXTRA_ARGS), after first-step-blocks
    # Round six: the whole step recorded as one CUDA graph, against the UNet's own graphs (the bf16 rows) of the call.
    ("timed-step-b1", 1, "auto", 42, STEP, False, 20),
    ("timed-step-b8", 8, "auto", 42, STEP, True, 0),
    ("timed-step-b32", 32, "auto", 42, STEP, True, 0),
    ("timed-step-blocks-b8", 8, "auto", 42, STEP, False, 0),  # compile: blocks, after first-step-blocks-step
    ("timed-step-dora-b8", 8, "auto", 42, STEP + ("network.type=dora",), False, 0),
    ("timed-bf16-b8-s7", 8, "auto", 7, (), True, 0),
    ("timed-bf16-b32-s42", 32, "auto", 42, (), True, 0),
    ("timed-fp8-b32-s42", 32, "fp8", 42, (), True, 0),
]
SDXL_TFLOP_PER_SAMPLE = 14.58
SD15_TFLOP_PER_SAMPLE = 1.7876  # FlopCounterMode, forward + backward, the `flops` stage of the last round
# train_speed.py flags of a timed stage beyond TIMED's (a later --compile wins over stage_timed's own)
EXTRA_ARGS = {"timed-cl-b1-buffer": ["--grad-buffer"], "timed-blocks-b8": ["--compile", "blocks"],
              "timed-step-blocks-b8": ["--compile", "blocks"]}
# Stages that run on the compile cache of a first-step-blocks stage (a folder of its own, see there)
OWN_CACHE = {"timed-blocks-b8": "cache-blocks", "timed-step-blocks-b8": "cache-blocks-step"}
CL = ("train.channels_last=true",)
NCHW = ("train.channels_last=off",)
# Compiled together by `precompile` (the compile is mostly one CPU thread per process, and 16 cores are there):
# name: (batch, base_precision, --set overrides). Each one fills the cache of the timed stages of that shape.
COMPILE_CONFIGS = {"b8-lora": (8, "auto", ()), "b1-lora": (1, "auto", ()), "b8-dora": (8, "auto", ("network.type=dora",)),
                   "b32-lora": (32, "auto", ()), "b8-fp8": (8, "fp8", ()), "b32-fp8": (32, "fp8", ()),
                   "b8-lokr": (8, "auto", ("network.type=lokr",)),
                   "b8-loha": (8, "auto", ("network.type=loha",)), "b8-locon": (8, "auto", LOCON),
                   "b8-dylora": (8, "auto", DYLORA), "b1-cl": (1, "auto", CL), "b8-cl": (8, "auto", CL),
                   "b32-cl": (32, "auto", CL), "b1-nchw": (1, "auto", NCHW), "b8-nchw": (8, "auto", NCHW),
                   "b1-step": (1, "auto", STEP), "b8-step": (8, "auto", STEP), "b32-step": (32, "auto", STEP),
                   "b8-dora-step": (8, "auto", STEP + ("network.type=dora",))}
PRECOMPILE = ["b8-lora", "b1-lora", "b8-dora"]  # --precompile picks others
MEMORY_RUNS = [  # (label, gradient checkpointing, base_precision, --set overrides): batch 1, eager
    ("lora", False, "auto", ()), ("lora", True, "auto", ()), ("locon", True, "auto", LOCON),
    ("loha", True, "auto", ("network.type=loha",)), ("lokr", True, "auto", ("network.type=lokr",)),
    ("dora", True, "auto", ("network.type=dora",)), ("dylora", True, "auto", DYLORA),
    ("fp8", False, "fp8", ()), ("fp8", True, "fp8", ()),
]
EAGER_TYPES = [  # (label, --set overrides): the step cost of each network type, eager, batch 8
    ("lora", ()), ("locon", LOCON),
    ("loha", ("network.type=loha",)), ("lokr", ("network.type=lokr",)), ("dora", ("network.type=dora",)),
    ("dylora", DYLORA), ("lora+ema+val", FEATURES),
]


def work_dir() -> Path:
    return Path(os.environ.setdefault("SDLORA_CACHE", "/tmp/gpuround-cache")).parent / "gpuround-work"


# ------------------------------------------------------------------------------------------ stages (children)
def stage_env(_args) -> dict:
    import diffusers
    import peft
    import torch
    import transformers

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    return {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
            "total_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            "nvidia_smi": smi, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def stage_model(_args) -> dict:
    from train_speed import build_model, make_images

    work = work_dir()
    t0 = time.perf_counter()
    build_model("sd15", work / "sd15")
    make_images(work / "data", 64, 512)
    return {"model_dir": str(work / "sd15"), "data_dir": str(work / "data"), "build_s": round(time.perf_counter() - t0, 1)}


def _median_ms(fn, repeats: int = 20) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def stage_rates(_args) -> dict:
    import torch

    from sdlora.train.fp8 import Fp8FrozenLinear, quantize_rows

    n = 8192
    out = {}
    # Several input sets, rotated, so the timing does not measure one cached pair; random data, not zeros.
    pairs = [(torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
              torch.randn(n, n, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
    calls = [0]

    def bf16():
        calls[0] += 1
        a, b = pairs[calls[0] % 3]  # noqa: F821  (called before the `del` below)
        return a @ b

    def fp8():
        calls[0] += 1
        (a, sa), (b, sb) = quant[calls[0] % 3]  # noqa: F821  (called before the `del` below)
        return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)

    ms = _median_ms(bf16)
    out["bf16_matmul_tflops"] = round(2 * n**3 / ms / 1e9, 1)
    quant = [(quantize_rows(a), quantize_rows(b)) for a, b in pairs]
    ms = _median_ms(fp8)
    out["fp8_rowwise_matmul_tflops"] = round(2 * n**3 / ms / 1e9, 1)
    del pairs, quant
    # The fp8 layer against the bf16 linear on fresh random data, forward and input gradient, eager and compiled.
    torch.manual_seed(1)
    linear = torch.nn.Linear(1280, 5120, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    layer = Fp8FrozenLinear(linear)
    for mode, fn in (("eager", layer), ("compiled", torch.compile(layer))):
        x = torch.randn(8, 1024, 1280, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        x64 = x.detach().double()
        ref = x64 @ linear.weight.double().t() + linear.bias.double()
        y = fn(x)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, g)
        ref_gx = g.double() @ linear.weight.double()
        out[f"fp8_layer_{mode}_rel_err"] = round(((y.double() - ref).norm() / ref.norm()).item(), 5)
        out[f"fp8_layer_{mode}_grad_rel_err"] = round(((gx.double() - ref_gx).norm() / ref_gx.norm()).item(), 5)
        bf = linear(x.detach())
        out["bf16_layer_rel_err"] = round(((bf.double() - ref).norm() / ref.norm()).item(), 5)
    assert all(v < 0.1 for k, v in out.items() if k.endswith("rel_err")), out
    return out


def stage_fp8_check(args) -> dict:
    """The fp8 UNet eagerly for one training step at batch 2 (LoRA gradients arrive), and the memory reader."""
    import torch

    from sdlora.config import NetworkConfig
    from sdlora.models import load_components
    from sdlora.network import add_lora, lora_parameters
    from sdlora.train.fp8 import convert_frozen_linears
    from sdlora.train.memory import cuda_reader

    c = load_components(args.model_dir, dtype=torch.bfloat16)
    add_lora(c.unet, NetworkConfig(rank=16, alpha=16), seed=0)
    unet = c.unet.cuda().train()
    replaced = convert_frozen_linears(unet)
    for p in lora_parameters(unet):
        p.data = p.data.float()
    latents = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(2, 77, 768, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        unet(latents, torch.tensor([500, 20], device="cuda"), text).sample.float().pow(2).mean().backward()
    grads = [p.grad for p in lora_parameters(unet)]
    peak, total = cuda_reader(torch.device("cuda"))()
    return {"replaced_linears": replaced, "lora_grads_nonzero": sum(int(g is not None and bool(g.abs().sum() > 0))
                                                                    for g in grads),
            "lora_params": len(grads), "peak_reserved_gib": round(peak / 2**30, 2),
            "total_gib": round(total / 2**30, 2)}


def bench_args(**kw) -> SimpleNamespace:
    base = dict(rank=16, resolution=512, workers=4, precision="bf16", compile="on", cuda_graphs="auto",
                first_step_profile=None, warmup=5, steps=15)
    base.update(kw)
    return SimpleNamespace(**base)


def stage_flops(args) -> dict:
    from train_speed import flops_per_sample

    return {"tflop_per_sample": round(flops_per_sample(Path(args.model_dir), bench_args()) / 1e12, 4)}


def stage_baseline(args) -> dict:
    import torch

    from train_speed import run_baseline

    rows = []
    for b in (1, 8):  # batch 32's recipe figure stands from the last round (59.67 samples/s)
        rows.append(run_baseline(Path(args.model_dir), b, bench_args()))
        torch.cuda.empty_cache()
    return {"rows": rows}


def stage_first_step(args) -> dict:
    import shutil

    from train_speed import time_to_first_step

    inductor = Path(os.environ["SDLORA_CACHE"]) / "inductor"
    cold = not inductor.is_dir() or not any(inductor.iterdir())
    out = work_dir() / "first"
    shutil.rmtree(out, ignore_errors=True)
    result = time_to_first_step(Path(args.model_dir), Path(args.data_dir), out, 8, bench_args())
    result["run1_cache"] = "cold" if cold else "warm"
    return result


def stage_precompile(args) -> dict:
    """`sdlora train` for 2 steps per configuration, all at once (the compile is CPU work on 16 cores), each under
    bench/compile_times.py, which writes dynamo's and inductor's own phase times at exit: where a cold compile goes
    (with five compiles sharing the cores, the phases' shares, not their absolute times, are the finding)."""
    import shutil

    import yaml

    from sdlora.config import apply_overrides

    out = work_dir() / "precompile"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    procs = {}
    start = time.perf_counter()
    names = args.precompile or PRECOMPILE
    for name in names:
        batch, precision, sets = COMPILE_CONFIGS[name]
        preset = out / f"{name}.yaml"
        preset.write_text(yaml.safe_dump(apply_overrides({
            "name": name, "model": args.model_dir,
            "data": {"dir": args.data_dir, "resolution": 512, "cache": "disk", "num_workers": 2},
            "network": {"rank": 16, "alpha": 16},
            "train": {"steps": 2, "batch_size": batch, "mixed_precision": "bf16", "compile": "on",
                      "base_precision": precision, "report_every": 1},
            "save": {"output_dir": str(out)}}, list(sets))))
        # Each process would start a pool of one kernel-compile worker per core: with many at once, share them.
        workers = max(4, 2 * (os.cpu_count() or 16) // len(names))
        procs[name] = subprocess.Popen([sys.executable, str(HERE / "compile_times.py"), str(out / f"{name}.times"),
                                        "train", "--preset", str(preset)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": str(workers)})
    result = {}
    for name, proc in procs.items():
        _, err = proc.communicate()
        result[name] = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 1)}
        times = out / f"{name}.times"
        if times.is_file():
            result[name]["compile_times"] = json.loads(times.read_text())
        if proc.returncode:
            result[name]["stderr"] = err[-1500:]
    (Path(os.environ["SDLORA_CACHE"]) / "precompiled").write_text(json.dumps(result))
    return result


def compile_workers_done(cache: Path) -> list:
    """What train.compile_workers recorded in the cache (compile_workers.Report.mark_warm): variants, workers, s."""
    return [json.loads(p.read_text()) for p in sorted((cache / "inductor" / "sdlora-blocks").glob("*"))
            if p.is_file()]  # not the saved variants' folders beside them


def stage_first_step_blocks(args, cache: str = "cache-blocks", cuda_graphs: str = "auto",
                            profiled: bool = True, sampled: bool = False) -> dict:
    """SD 1.5 at batch 8 with `compile: blocks` to its first step: cold (SDLORA_CACHE pointed at a new, empty
    folder, so inductor's cache and the latents' disk cache start empty as on a new machine), warm (50 steps, their
    speed from the step events), then warm again under cProfile: where a warm start's seconds go."""
    import pstats
    import shutil

    from train_speed import time_to_first_step

    work = work_dir()  # before SDLORA_CACHE moves: work_dir() follows it
    fresh = work / cache
    shutil.rmtree(fresh, ignore_errors=True)
    os.environ["SDLORA_CACHE"] = str(fresh)  # the `sdlora train` children inherit it
    out = work / f"first-{cache}"
    shutil.rmtree(out, ignore_errors=True)
    profile = work / f"first-{cache}.prof" if profiled else None
    result = time_to_first_step(Path(args.model_dir), Path(args.data_dir), out, 8,
                                bench_args(compile="blocks", cuda_graphs=cuda_graphs, first_step_profile=profile,
                                           first_step_sampled=sampled),
                                run2_steps=50)
    result["compile_workers"] = compile_workers_done(fresh)
    if profile is not None and profile.is_file():
        import io

        text = io.StringIO()
        pstats.Stats(str(profile), stream=text).sort_stats("cumulative").print_stats(45)
        result["warm_profile_top"] = text.getvalue()[-9000:]
    return result


def unsaved(stage):
    """Run `stage` with the saved block variants switched off for the `sdlora train` processes it starts."""
    from sdlora.train.saved_blocks import OFF_SWITCH

    os.environ[OFF_SWITCH] = "1"
    try:
        return stage()
    finally:
        del os.environ[OFF_SWITCH]


SMOKE_RUN_S = 150  # one small compile and 30 steps take ~20-80 s; a hang past this leaves its tracebacks


def stage_step_smoke(args) -> dict:
    """The whole-step CUDA graph on small models first (seconds of compile, not minutes): the tiny SD 1.x model and
    the tiny SDXL structure (its size/crop ids), compiled, 30 steps with cuda_graphs step and with on at the same
    seed. Does the step record (no fallback warning), and do its losses follow the other run's? Each run in its
    own process (as `sdlora train` runs), with a time limit: round six's first try ran the four in one process
    and hung with nothing kept; a run that hangs now leaves every thread's traceback (faulthandler)."""
    from train_speed import build_model, make_images

    work = work_dir()
    data = work / "data64"
    if not data.is_dir():
        make_images(data, 16, 64)
    if not (work / "sdxl-tiny" / "model_index.json").is_file():
        build_model("sdxl-tiny", work / "sdxl-tiny")
    out = {}
    for model, label in (("tiny", "tiny"), (str(work / "sdxl-tiny"), "sdxl-tiny")):
        rows = {}
        for mode in ("step", "on"):
            cmd = [sys.executable, __file__, "--state", str(args.state), "--stage", "step-smoke-run",
                   "--model-dir", model, "--data-dir", str(data)]
            env = {**os.environ, "SDLORA_SMOKE_RUN": json.dumps({"label": label, "mode": mode})}
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SMOKE_RUN_S)
                line = next((o for o in proc.stdout.splitlines() if o.startswith("RESULT ")), None)
                rows[mode] = (json.loads(line[7:]) if proc.returncode == 0 and line
                              else {"error": f"rc={proc.returncode}: {proc.stderr[-2500:]}"})
            except subprocess.TimeoutExpired as error:
                err = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr
                rows[mode] = {"error": f"timed out after {SMOKE_RUN_S} s: {(err or '')[-2500:]}"}
        a, b = rows["step"].get("losses_head"), rows["on"].get("losses_head")
        if a and b:
            rows["max_loss_diff"] = round(max(abs(x - y) for x, y in zip(a, b)), 6)
        out[label] = rows
        print(json.dumps({label: {m: {k: v for k, v in r.items() if k != "losses_head"} if isinstance(r, dict) else r
                                  for m, r in rows.items()}})[:3000], file=sys.stderr, flush=True)
    return out


def stage_step_smoke_run(args) -> dict:
    """One run of step-smoke (a child process): SDLORA_SMOKE_RUN names the label and the cuda_graphs mode."""
    import faulthandler
    import shutil

    from train_speed import run_one

    faulthandler.dump_traceback_later(SMOKE_RUN_S - 15, exit=True)  # before the parent's limit kills it
    spec = json.loads(os.environ["SDLORA_SMOKE_RUN"])
    out = work_dir() / f"smoke-{spec['label']}-{spec['mode']}"
    shutil.rmtree(out, ignore_errors=True)
    run_args = bench_args(resolution=64, rank=8, compile="on", cuda_graphs=spec["mode"], warmup=10, steps=20,
                          cache="memory", lr=LR, seed=42, base_precision="auto", gradient_checkpointing=False,
                          channels_last="auto", optimizer="adamw", set=[], profile_steps=0, val=False)
    row = run_one(Path(args.model_dir), Path(args.data_dir), out, 4, run_args)
    return {k: row.get(k) for k in ("samples_per_s", "whole_step_graph", "warnings", "losses_head")}


def stage_memory(args) -> dict:
    """Peak GPU memory at batch 1, eager, latents cached, for each network type and fp8 base weights, plain and
    with gradient checkpointing (docs/PERFORMANCE.md's low-memory table; 8-bit AdamW is left out: bitsandbytes is
    not on the lent machine, and a rank-16 LoRA's optimizer state is tens of MB)."""
    import gc
    import shutil

    import torch
    from train_speed import run_one

    rows = []
    for label, checkpointing, precision, sets in MEMORY_RUNS:
        run_args = bench_args(compile="off", cuda_graphs="off", warmup=10, steps=10, cache="memory", lr=LR,
                              seed=42, base_precision=precision, gradient_checkpointing=checkpointing,
                              channels_last=False, optimizer="adamw", set=list(sets), profile_steps=0, val=False)
        out = work_dir() / f"memory-{label}-{checkpointing}"
        shutil.rmtree(out, ignore_errors=True)
        try:
            row = run_one(Path(args.model_dir), Path(args.data_dir), out, 1, run_args)
            rows.append({"type": label, "gradient_checkpointing": checkpointing,
                         **{k: row.get(k) for k in ("samples_per_s", "peak_gpu_mem_gib")}})
        except Exception as error:  # one failing must not hide the others
            rows.append({"type": label, "gradient_checkpointing": checkpointing,
                         "error": f"{type(error).__name__}: {error}"[-1500:]})
        gc.collect()
        torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows}


def stage_fp8_first_step(args) -> dict:
    """A warm start of an fp8 run (compiled by `precompile`): does the custom op's graph now load from the cache?"""
    import shutil

    from train_speed import time_to_first_step

    out = work_dir() / "first-fp8"
    shutil.rmtree(out, ignore_errors=True)
    return time_to_first_step(Path(args.model_dir), Path(args.data_dir), out, 8, bench_args(base_precision="fp8"))


def stage_types_eager(args) -> dict:
    """Each network type at batch 8 without compile, and LoRA with EMA + validation, one after another in this
    process (train_speed.run_one, as its CLI runs it): the step cost against plain LoRA."""
    import gc
    import shutil

    import torch
    from train_speed import run_one

    rows = []
    for label, sets in EAGER_TYPES:
        run_args = bench_args(compile="off", cuda_graphs="off", warmup=10, steps=30, cache="memory", lr=LR,
                              seed=42, base_precision="auto", gradient_checkpointing=False, channels_last=False,
                              optimizer="adamw", set=list(sets), profile_steps=0, val=False)
        out = work_dir() / f"eager-{label}"
        shutil.rmtree(out, ignore_errors=True)
        try:
            row = run_one(Path(args.model_dir), Path(args.data_dir), out, 8, run_args)
            rows.append({"type": label, **{k: row.get(k) for k in ("samples_per_s", "s_per_step", "peak_gpu_mem_gib",
                                                                   "validation_pass_s")}})
        except Exception as error:  # one type failing must not hide the others
            rows.append({"type": label, "error": f"{type(error).__name__}: {error}"[-1500:]})
        gc.collect()
        torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows}


def stage_grid(args) -> dict:
    """The batched multi-adapter grid against one adapter at a time: 8 random adapters x 3 weights x 2 prompts."""
    cmd = [sys.executable, str(HERE / "grid_batched.py"), "--model", args.model_dir, "--device", "cuda",
           "--dtype", "fp16", "--size", "512x512", "--steps", "10", "--adapters", "8", "--batch", "8", "24"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    report, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{"):])  # the JSON, then a table
    return {**report, "table": proc.stdout[-2500:]}


def stage_peers(args) -> dict:
    """kohya's train_network.py and diffusers' train_text_to_image_lora.py at batch 1 and 8 (the kit in .peers/,
    carried, never committed: bench/peers.py)."""
    kit = HERE.parent / ".peers" / "peers.py"
    if not kit.is_file():
        raise RuntimeError(".peers/peers.py is not here (carry .peers)")
    out = work_dir() / "peers.json"
    cmd = [sys.executable, str(kit), "--model-dir", args.model_dir, "--data-dir", args.data_dir, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    if not out.is_file():
        raise RuntimeError(f"rc={proc.returncode} {proc.stdout[-1500:]} {proc.stderr[-2500:]}")
    return json.loads(out.read_text())


def stage_timed(args, name: str, batch: int, precision: str, seed: int, sets: tuple, val: bool,
                profile: int) -> dict:
    warmup, steps = STEPS[batch]
    out = work_dir() / f"{name}.json"
    cmd = [sys.executable, str(HERE / "train_speed.py"), "--batch", str(batch), "--warmup", str(warmup),
           "--steps", str(steps), "--cache", "memory", "--compile", "on", "--seed", str(seed),
           "--lr", str(LR), "--base-precision", precision, "--model-dir", args.model_dir, "--data-dir",
           args.data_dir, "--skip-flops", "--json", str(out), "--profile-steps", str(profile)]
    cmd += (["--val"] if val else []) + [a for s in sets for a in ("--set", s)] + EXTRA_ARGS.get(name, [])
    env = dict(os.environ, SDLORA_CACHE=str(work_dir() / OWN_CACHE[name])) if name in OWN_CACHE else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    row = json.loads(out.read_text())["results"][0]
    return row


def stage_sdxl_model(_args) -> dict:
    from train_speed import build_model, make_images

    work = work_dir()
    t0 = time.perf_counter()
    build_model("sdxl", work / "sdxl")
    make_images(work / "data1024", 16, 1024)
    return {"build_s": round(time.perf_counter() - t0, 1)}


def stage_sdxl_first_step(_args, sampled: bool = False) -> dict:
    import shutil

    from train_speed import time_to_first_step

    out = work_dir() / "first-sdxl"
    shutil.rmtree(out, ignore_errors=True)
    result = time_to_first_step(work_dir() / "sdxl", work_dir() / "data1024", out, 4,
                                bench_args(resolution=1024, compile="blocks", workers=4, first_step_sampled=sampled),
                                run2_steps=50)
    result["compile_workers"] = compile_workers_done(Path(os.environ["SDLORA_CACHE"]))
    result["tflop_per_sample"] = SDXL_TFLOP_PER_SAMPLE
    return result


def stage_sdxl_timed(_args) -> dict:
    out = work_dir() / "timed-sdxl.json"
    cmd = [sys.executable, str(HERE / "train_speed.py"), "--arch", "sdxl", "--batch", "4", "--warmup", "10",
           "--steps", "20", "--cache", "memory", "--compile", "blocks", "--images", "16",
           "--model-dir", str(work_dir() / "sdxl"), "--data-dir", str(work_dir() / "data1024"), "--skip-flops",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    # The FLOP count of SDXL at 1024 px takes minutes: docs/PERFORMANCE.md's count (14.58 TFLOP a sample, forward
    # and backward, FlopCounterMode) is used for the chip share against the rates stage's bf16 figure.
    return {**json.loads(out.read_text())["results"][0], "tflop_per_sample": SDXL_TFLOP_PER_SAMPLE}


def stage_functions() -> dict:
    stages = {"env": (20, stage_env), "model": (60, stage_model), "rates": (60, stage_rates),
              "flops": (40, stage_flops), "fp8_check": (40, stage_fp8_check), "first_step": (300, stage_first_step),
              "precompile": (300, stage_precompile), "baseline": (90, stage_baseline)}
    stages["fp8-first-step"] = (60, stage_fp8_first_step)
    stages["first-step-blocks"] = (200, stage_first_step_blocks)
    stages["first-step-blocks-step"] = (200, lambda a: stage_first_step_blocks(a, "cache-blocks-step", "step"))
    # The same without the profiled third start: cold and warm only, for a short call.
    stages["first-step-blocks-step-quick"] = (150, lambda a: stage_first_step_blocks(a, "cache-blocks-step", "step",
                                                                                     profiled=False))
    # Both starts under bench/stack_sampler.py: where each one's wall time goes, without cProfile's slow-down.
    stages["first-step-blocks-step-sampled"] = (180, lambda a: stage_first_step_blocks(  # 139-177 s (round 8)
        a, "cache-blocks-step", "step", profiled=False, sampled=True))
    # Beside the sampled stage in the same call: blocks traced by dynamo at each start, as before the saved variants
    # (sdlora/train/saved_blocks.py), cold and warm in a cache of their own.
    stages["first-step-blocks-step-unsaved"] = (150, lambda a: unsaved(lambda: stage_first_step_blocks(
        a, "cache-blocks-step-unsaved", "step", profiled=False)))
    stages["step-smoke"] = (120, stage_step_smoke)
    stages["step-smoke-run"] = (SMOKE_RUN_S, stage_step_smoke_run)  # a child of step-smoke
    stages["memory"] = (150, stage_memory)
    for name, batch, precision, seed, sets, val, profile in TIMED:
        stages[name] = (60 if batch < 32 else 80,
                        lambda a, n=name, b=batch, p=precision, s=seed, o=sets, v=val, f=profile:
                        stage_timed(a, n, b, p, s, o, v, f))
    stages["types-eager"] = (150, stage_types_eager)
    stages["grid"] = (120, stage_grid)
    stages["peers"] = (380, stage_peers)
    # The order a round runs them in: the shared compile first, then what it makes warm, then the eager stages.
    order = ["env", "model", "rates", "flops", "fp8_check", "first_step", "precompile", "timed-bf16-b8-s42",
             "timed-ema-val-b8", "fp8-first-step"]
    stages = {name: stages[name] for name in order} | {k: v for k, v in stages.items() if k not in order}
    stages["sdxl-model"] = (120, stage_sdxl_model)
    stages["sdxl-first-step"] = (240, stage_sdxl_first_step)  # cold, then warm with 50 steps timed: 185 s (round 7)
    stages["sdxl-first-step-sampled"] = (240, lambda a: stage_sdxl_first_step(a, sampled=True))  # 187-218 s
    stages["sdxl-timed"] = (100, stage_sdxl_timed)
    return stages


# ------------------------------------------------------------------------------------------ orchestration
def summary_table(state: dict) -> str:
    rates = state.get("rates", {}).get("result", {})
    peak = rates.get("bf16_matmul_tflops")
    flops = state.get("flops", {}).get("result", {}).get("tflop_per_sample", SD15_TFLOP_PER_SAMPLE)
    base = {r["batch"]: r for r in state.get("baseline", {}).get("result", {}).get("rows", [])}
    lines = [f"bf16 matmul {peak} TFLOP/s, fp8 row-wise {rates.get('fp8_rowwise_matmul_tflops')} TFLOP/s; "
             f"{flops} TFLOP per 512 px sample",
             f"{'run':<22} {'samples/s':>9} {'s/step':>7} {'GiB':>6} {'chip%':>6} {'recipe':>7} {'x':>5} "
             f"{'val loss':>9} {'init':>9}"]
    for name, *_ in TIMED:
        r = state.get(name, {}).get("result")
        if not r:
            lines.append(f"{name:<22} {state.get(name, {}).get('status', 'not run')}")
            continue
        chip = f"{100 * r['samples_per_s'] * flops / peak:.1f}" if flops and peak else "-"
        b = base.get(r["batch"], {}).get("samples_per_s")
        ratio = f"{r['samples_per_s'] / b:.2f}" if b else "-"
        lines.append(f"{name:<22} {r['samples_per_s']:>9} {r['s_per_step']:>7} {r['peak_gpu_mem_gib']!s:>6} "
                     f"{chip:>6} {b!s:>7} {ratio:>5} {r.get('val_loss')!s:>9} {r.get('val_loss_lora_init')!s:>9}")
    first = state.get("first_step", {}).get("result")
    if first:
        lines.append(f"first step b8 on: run1 ({first.get('run1_cache')}) {first.get('run1_s')} s "
                     f"(setup {first.get('run1_setup_s')}), run2 {first.get('run2_s')} s (setup {first.get('run2_setup_s')})")
    # The whole-step graph rows against the UNet-graph rows of the same batch and seed: the first 40 losses.
    for step_row, other in (("timed-step-b1", "timed-bf16-b1-s42"), ("timed-step-b8", "timed-bf16-b8-s42"),
                            ("timed-step-b32", "timed-bf16-b32-s42")):
        a, b = (state.get(n, {}).get("result", {}).get("losses_head") for n in (step_row, other))
        if a and b:
            lines.append(f"{step_row} vs {other}: first {min(len(a), len(b))} losses differ by at most "
                         f"{max(abs(x - y) for x, y in zip(a, b)):.5f}; whole step "
                         f"{state[step_row]['result'].get('whole_step_graph')}")
    if state.get("step-smoke", {}).get("result"):
        for label, rows in state["step-smoke"]["result"].items():
            lines.append(f"step-smoke {label}: " + json.dumps(
                {m: ({k: v for k, v in r.items() if k != "losses_head"} if isinstance(r, dict) else r)
                 for m, r in rows.items()})[:600])
    for name in ("fp8-first-step", "first-step-blocks", "first-step-blocks-step", "first-step-blocks-step-sampled",
                 "first-step-blocks-step-unsaved", "sdxl-first-step", "sdxl-first-step-sampled", "sdxl-timed"):
        if state.get(name, {}).get("result"):
            shown = {k: v for k, v in state[name]["result"].items()
                     if k != "warm_profile_top" and not k.endswith("_sampled")}
            lines.append(f"{name}: {json.dumps(shown)}")
    for row in state.get("memory", {}).get("result", {}).get("rows", []):
        lines.append(f"memory b1 {row.get('type'):<7} checkpointing {row.get('gradient_checkpointing')!s:<5} "
                     f"{row.get('samples_per_s', row.get('error', '')[-200:])!s:>9} {row.get('peak_gpu_mem_gib', '')!s:>6}")
    for row in state.get("types-eager", {}).get("result", {}).get("rows", []):
        lines.append(f"eager b8 {row.get('type'):<7} {row.get('samples_per_s', row.get('error', '')[-200:])!s:>9} "
                     f"{row.get('s_per_step', '')!s:>7} {row.get('peak_gpu_mem_gib', '')!s:>6}")
    for name, row in state.get("precompile", {}).get("result", {}).items():
        phases = row.get("compile_times", {}).get("phases_s", {})
        top = sorted(phases.items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"precompile {name}: rc {row.get('rc')} {row.get('wall_s')} s; "
                     + ", ".join(f"{k} {v:.0f}" for k, v in top))
    if state.get("grid", {}).get("result"):
        lines.append(state["grid"]["result"].get("table", "")[-900:])
    if state.get("peers", {}).get("result"):
        lines.append("peers: " + json.dumps(state["peers"]["result"])[:900])
    failed = [f"{k}: {v.get('status')}" for k, v in state.items() if v.get("status") not in ("ok", None)]
    if failed:
        lines.append("not ok: " + "; ".join(failed))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="JSON of the stages done so far (read and written)")
    parser.add_argument("--budget", type=float, default=560, help="seconds this call may spend")
    parser.add_argument("--sdxl", action="store_true", help="also the SDXL stages, after the SD 1.5 ones")
    parser.add_argument("--only", nargs="*", help="run only these stages, in this order")
    parser.add_argument("--precompile", nargs="*", choices=list(COMPILE_CONFIGS),
                        help=f"the configurations the precompile stage compiles (default: {' '.join(PRECOMPILE)})")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # a child process: run this stage, print its JSON
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("SDLORA_CACHE", "/tmp/gpuround-cache")
    stages = stage_functions()
    if args.stage:
        print("RESULT " + json.dumps(stages[args.stage][1](args)), flush=True)
        return

    start = time.perf_counter()
    state = json.loads(args.state.read_text()) if args.state.is_file() else {}
    cache = Path(os.environ["SDLORA_CACHE"])
    work = work_dir()
    order = [s for s in stages if args.sdxl or not s.startswith("sdxl")]
    if args.only:
        unknown = [s for s in args.only if s not in stages]
        if unknown:
            parser.error(f"--only: no stage named {', '.join(unknown)} (stages: {', '.join(stages)})")
        order = args.only  # in the order given: a round puts what matters most first
    for name in order:
        done = state.get(name, {}).get("status") == "ok"
        # Stages whose product lives on the machine run again on a new machine.
        if name == "model" and done and not (work / "sd15" / "model_index.json").is_file():
            done = False
        if name == "precompile" and done and (not (cache / "precompiled").is_file() or not set(
                args.precompile or PRECOMPILE) <= set(state[name]["result"])):
            done = False  # a new machine, or configurations not compiled yet (the new ones join the old result)
        if name == "sdxl-model" and done and not (work / "sdxl" / "model_index.json").is_file():
            done = False
        if done:
            continue
        timed = next((t for t in TIMED if t[0] == name), None)
        if name in OWN_CACHE and not (work / OWN_CACHE[name] / "inductor").is_dir():
            print(f"[{time.strftime('%X')}] {name}: skipped until first-step-blocks has run", flush=True)
            continue
        if (timed or name == "fp8-first-step") and name not in OWN_CACHE and not (cache / "precompiled").is_file():
            # Not compiled on this machine yet: a cold compile inside a timed stage would eat the budget.
            print(f"[{time.strftime('%X')}] {name}: skipped until precompile has run", flush=True)
            continue
        estimate, _ = stages[name]
        left = args.budget - (time.perf_counter() - start)
        if left < estimate:
            print(f"[{time.strftime('%X')}] {name}: skipped, {left:.0f} s left < estimate {estimate} s", flush=True)
            continue
        model = state.get("model", {}).get("result", {})
        cmd = [sys.executable, __file__, "--state", str(args.state), "--stage", name,
               *(["--precompile", *args.precompile] if args.precompile else []),
               "--model-dir", model.get("model_dir", str(work / "sd15")),
               "--data-dir", model.get("data_dir", str(work / "data"))]
        print(f"[{time.strftime('%X')}] {name}: start ({left:.0f} s left)", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(left - 5, 10))
            line = next((out for out in proc.stdout.splitlines() if out.startswith("RESULT ")), None)
            if proc.returncode == 0 and line:
                entry = {"status": "ok", "result": json.loads(line[7:])}
            else:
                entry = {"status": f"failed rc={proc.returncode}", "stderr": proc.stderr[-3000:],
                         "stdout": proc.stdout[-2000:]}
        except subprocess.TimeoutExpired:
            entry = {"status": "timed out"}
        if name == "precompile" and entry["status"] == "ok" and state.get(name, {}).get("status") == "ok":
            entry["result"] = {**state[name]["result"], **entry["result"]}
        entry["wall_s"] = round(time.perf_counter() - t0, 1)
        entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        state[name] = entry
        args.state.parent.mkdir(parents=True, exist_ok=True)
        args.state.write_text(json.dumps(state, indent=1))
        print(f"[{time.strftime('%X')}] {name}: {entry['status']} in {entry['wall_s']} s "
              f"{json.dumps(entry.get('result'))[:400] if 'result' in entry else entry.get('stderr', '')[-1500:]}",
              flush=True)
    print(summary_table(state))


if __name__ == "__main__":
    main()
