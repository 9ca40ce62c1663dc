"""`compile: blocks`'s first compile in worker processes (sdlora/train/compile_workers.py): the variants found are
the graphs dynamo compiles, the workers compile each of them into the shared cache so that the trainer's own
compile then loads every one, a warm cache spawns no worker, and a run whose blocks cannot go to a worker trains
exactly as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from sdlora.train import compile_workers
from sdlora.train.compiled import CompiledBlocks, compile_step_model
from sdlora.train.objective import DenoisingObjective
from test_compiled import lora_unet


def fixed_batch(unet):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)


def unet_call(unet):
    latents, text = fixed_batch(unet)
    return (latents, torch.tensor([10, 500]), text), {}


def test_the_variants_are_the_graphs_dynamo_compiles():
    components, _ = lora_unet()
    unet = components.unet.train()
    view = CompiledBlocks(unet, None, "aot_eager")
    args, kwargs = unet_call(unet)
    variants = compile_workers.find_variants(unet, [b for b, _ in view.blocks], args, kwargs)
    # The fake run left the model as it was: no hook, no parameter on the fake device.
    assert all(not block._forward_pre_hooks for block, _ in view.blocks)
    assert all(not isinstance(p, torch._subclasses.FakeTensor) for p in unet.parameters())

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    view(*args, **kwargs).sample.sum().backward()
    graphs = counters["stats"]["unique_graphs"] - before
    # One variant per graph: two ResNet blocks that differ only in output_scale_factor are two graphs to dynamo
    # (it guards on the attribute), and two variants here.
    assert len(variants) == graphs, (len(variants), graphs)
    assert graphs < len(view.blocks)  # repeated blocks share their variant
    assert len({v.key for v in variants}) == len(variants)


@pytest.mark.slow  # two processes importing torch and diffusers: ~20-30 s on 2 cores
def test_the_warm_marker_is_the_same_in_every_process():
    """The key of a warm cache's marker must not change between starts: a set in dynamo's config is written in the
    order of the process's string hashes, and round seven's warm starts on an H200 spawned the workers again so."""
    script = (
        "import sys, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_compile_workers import unet_call\n"
        "from test_compiled import lora_unet\n"
        "from sdlora.train import compile_workers as cw\n"
        "from sdlora.train.compiled import CompiledBlocks\n"
        "unet = lora_unet()[0].unet.train()\n"
        "view = CompiledBlocks(unet, None, 'aot_eager')\n"
        "args, kwargs = unet_call(unet)\n"
        "cpu = torch.device('cpu')\n"
        "print(cw.run_key(unet, [b for b, _ in view.blocks], args, kwargs, view.settings, cw.global_state(cpu),"
        " cpu))\n")
    keys = set()
    for seed in ("1", "2"):  # two string-hash seeds order a set of several names differently
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parent.parent)
        keys.add(done.stdout.strip().splitlines()[-1])
    assert len(keys) == 1, keys


def eager_and_blocks(tmp_path, monkeypatch):
    """A blocks view of the tiny LoRA UNet with workers allowed (aot_eager), a function giving the fixed batch's
    loss through a UNet, and that loss through the plain UNet."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    components, config = lora_unet()
    unet = components.unet.train()
    objective = DenoisingObjective(components.noise_scheduler, config.train)
    latents, text = fixed_batch(unet)

    def loss_of(model) -> float:
        return objective(model, latents, text, torch.Generator().manual_seed(7)).mean().item()

    view = compile_step_model(unet, cuda_graphs=False, backend="aot_eager", scope="blocks", compile_workers=2)
    return view, loss_of, loss_of(unet)


@pytest.mark.slow  # worker processes: ~20 s on 2 cores
def test_a_failing_worker_warns_and_the_trainer_compiles_instead(tmp_path, monkeypatch):
    view, loss_of, eager = eager_and_blocks(tmp_path, monkeypatch)
    view.settings = {"mode": None, "backend": "no_such_backend"}  # what the workers are told: each one fails
    with pytest.warns(UserWarning, match=r"train.compile_workers: 2 of 2 compile workers failed .*no_such_backend"):
        loss = loss_of(view)
    assert view.precompiled.failed and view.precompiled.compiled == 0
    assert loss == pytest.approx(eager, rel=1e-5)


def test_blocks_that_cannot_be_handed_over_are_compiled_here(tmp_path, monkeypatch):
    view, loss_of, eager = eager_and_blocks(tmp_path, monkeypatch)
    view.blocks[0][0].register_forward_hook(lambda *_: None)  # a lambda does not pickle: nothing goes to a worker
    loss = loss_of(view)
    assert view.precompiled.workers == 0 and "could not be handed to workers" in view.precompiled.skipped
    assert loss == pytest.approx(eager, rel=1e-5)
    # The trainer's own compile filled the cache: the next start spawns none.
    assert len(list(tmp_path.glob("inductor/sdlora-blocks/*"))) == 1


@pytest.mark.slow
def test_the_trainers_compile_loads_what_the_workers_compiled(tmp_path, monkeypatch):
    """With inductor (the GPU's compiler; C++ kernels on the CPU) and saving off (as under CUDA graph trees):
    after the workers, the trainer's process finds every graph in the cache and compiles none itself. The tiny
    UNet's two smallest variants keep it to half a minute (the first two: a minute). (The saved path: test_saved_blocks.py, with aot_eager, which
    keeps the suite's time; inductor's saved variants are timed on the GPU, docs/PERFORMANCE.md round nine.)"""
    from sdlora.train.saved_blocks import OFF_SWITCH

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv(OFF_SWITCH, "1")
    components, config = lora_unet()
    unet = components.unet.train()
    objective = DenoisingObjective(components.noise_scheduler, config.train)
    latents, text = fixed_batch(unet)
    view = compile_step_model(unet, cuda_graphs=False, backend="inductor", scope="blocks", compile_workers=2)
    find = compile_workers.find_variants
    kept: list = []

    def two_variants(*args, **kwargs):
        variants = sorted(find(*args, **kwargs), key=lambda v: v.cost)[:2]  # the two smallest: the least compiling
        kept.extend(v.block for v in variants)
        view.blocks = [(b, c) for b, c in view.blocks if any(b is k for k in kept)]  # the rest run eagerly
        return variants

    monkeypatch.setattr(compile_workers, "find_variants", two_variants)
    # The warm marker is written only once the trainer's own compile has run (a start killed between the workers
    # and that compile must not look warm to the next one).
    marker_before: list[bool] = []
    mark_warm = compile_workers.Report.mark_warm

    def watched_mark_warm(report):
        marker_before.append(report.marker is not None and report.marker.is_file())
        mark_warm(report)

    monkeypatch.setattr(compile_workers.Report, "mark_warm", watched_mark_warm)
    calls: list = []  # what the trainer's view hands to precompile: the next start hands the same
    precompile = compile_workers.precompile

    def watched_precompile(*args, **kwargs):
        calls.append((args, kwargs))
        return precompile(*args, **kwargs)

    monkeypatch.setattr(compile_workers, "precompile", watched_precompile)
    torch._dynamo.reset()
    counters.clear()
    loss = objective(view, latents, text, torch.Generator().manual_seed(7)).mean()
    loss.backward()
    report = view.precompiled
    assert report.workers == 2 and report.compiled == report.variants == 2, report
    assert marker_before == [False]
    assert loss.item() == pytest.approx(objective(unet, latents, text, torch.Generator().manual_seed(7)).mean().item(),
                                        rel=1e-5)
    assert not view.precompiled.saved
    assert counters["aot_autograd"]["autograd_cache_hit"] == 2, dict(counters["aot_autograd"])
    assert counters["aot_autograd"]["autograd_cache_miss"] == 0
    assert counters["inductor"]["fxgraph_cache_miss"] == 0

    # The next start with the same inputs spawns no worker; another batch shape is another set of graphs, so
    # another marker: not warm.
    (model, blocks, args, kwargs), options = calls[0]
    again = precompile(model, blocks, args, kwargs, **options)
    assert again.skipped.startswith("warm") and again.workers == 0, again
    cpu = torch.device("cpu")
    state = compile_workers.global_state(cpu)
    bigger = tuple(a.repeat(2, *[1] * (a.dim() - 1)) if torch.is_tensor(a) else a for a in args)
    bigger_kwargs = {k: v.repeat(2, *[1] * (v.dim() - 1)) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    key = compile_workers.run_key(model, blocks, args, kwargs, options["settings"], state, cpu)
    assert compile_workers.marker_path(key).is_file()  # the key the start wrote its marker under
    other = compile_workers.run_key(model, blocks, bigger, bigger_kwargs, options["settings"], state, cpu)
    assert other != key and not compile_workers.marker_path(other).is_file()
