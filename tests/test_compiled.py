"""The fast path computes what the plain path computes: on a fixed batch, the torch.compile'd UNet step with the
trainer's own flat gradient buffer (what CUDA graphs and data parallelism use on a GPU) gives the same loss and
the same LoRA gradients as the eager step with ordinary gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from sdlora.config import config_from_dict
from sdlora.models import load_components
from sdlora.network import add_lora, lora_parameters
from sdlora.train.compiled import compile_step_model, use_cuda_graphs
from sdlora.train.distributed import GradientSync
from sdlora.train.objective import DenoisingObjective


def lora_unet():
    config = config_from_dict({"model": "tiny", "network": {"rank": 4, "alpha": 4}})
    components = load_components("tiny")
    add_lora(components.unet, config.network, seed=0)
    with torch.no_grad():  # a non-zero B, so gradients reach A as well
        for name, p in components.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return components, config


def step(unet, objective, params, latents, text, flat: bool):
    """One forward and backward on the fixed batch; returns the loss and a copy of each gradient."""
    sync = GradientSync(params) if flat else None
    for p in params:
        if sync is None:
            p.grad = None
    loss = objective(unet, latents, text, torch.Generator().manual_seed(7)).mean()
    loss.backward()
    if sync is not None:
        sync.all_reduce()  # one process: leaves the buffer as it is
    return loss.detach(), [p.grad.clone() for p in params]


# "on" (one graph of the whole UNet) compiles for ~20 s on a 2-core CPU: slow; "blocks" runs by default.
@pytest.mark.parametrize("scope", [pytest.param("on", marks=pytest.mark.slow), "blocks"])
def test_compiled_step_with_flat_gradients_matches_the_eager_step(scope):
    components, config = lora_unet()
    unet = components.unet.train()
    objective = DenoisingObjective(components.noise_scheduler, config.train)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)

    eager_unet = copy.deepcopy(unet)
    eager_loss, eager_grads = step(eager_unet, objective, lora_parameters(eager_unet), latents, text, flat=False)
    fast_params = lora_parameters(unet)
    # aot_eager: the graphs dynamo and AOTAutograd trace through diffusers and peft, forward and backward, as
    # on a GPU, without inductor's code generation (minutes on 2 CPU cores; its kernels are PyTorch's to test).
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]  # reset() leaves dynamo's counters as they are
    fast = compile_step_model(unet, cuda_graphs=False, backend="aot_eager", scope=scope)
    fast_loss, fast_grads = step(fast, objective, fast_params, latents, text, flat=True)
    if scope == "blocks":
        # Blocks of the same shape share one traced variant (what shortens a start), and the compiled forwards
        # are in place only during the step: sampling and saving see the plain module.
        blocks = len(fast.blocks)
        graphs = counters["stats"]["unique_graphs"] - graphs_before
        assert 0 < graphs < blocks, (graphs, blocks)
        assert all("forward" not in vars(block) for block, _ in fast.blocks)

    assert len(fast_grads) == len(eager_grads) > 0
    assert torch.allclose(fast_loss, eager_loss, rtol=1e-4), (fast_loss, eager_loss)
    worst = max(((f - e).norm() / e.norm()).item() for f, e in zip(fast_grads, eager_grads) if e.norm() > 0)
    # fp32 on the CPU; traced graphs may reorder sums, so allow rounding (measured: 0 with aot_eager, ~1e-6 with
    # inductor on the CPU).
    assert worst < 1e-4, worst
    # The gradients live in the one flat buffer that is all-reduced, so the optimizer reads what was reduced.
    flat = fast_params[0].grad.untyped_storage().data_ptr()
    assert all(p.grad.untyped_storage().data_ptr() == flat for p in fast_params)


def test_lcm_teacher_calls_see_through_the_blocks_view():
    """LCM runs its teacher on the plain module (adapters off, no grad): with compile: blocks it must find the
    UNet behind the step's view, not the view, or it could not switch the LoRA off."""
    from sdlora.train.lcm import unwrap

    components, _ = lora_unet()
    view = compile_step_model(components.unet, cuda_graphs=False, backend="aot_eager", scope="blocks")
    assert unwrap(view) is components.unet
    assert len(view.blocks) > 0


def test_cuda_graphs_only_with_compile_on_a_gpu():
    def train(**values):
        return config_from_dict({"train": values}).train

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_cuda_graphs(train(compile="on"), cuda)
    assert use_cuda_graphs(train(compile="auto"), cuda)
    assert use_cuda_graphs(train(compile="blocks"), cuda)
    assert not use_cuda_graphs(train(compile="off"), cuda)
    assert not use_cuda_graphs(train(compile="on", cuda_graphs="off"), cuda)
    assert not use_cuda_graphs(train(compile="on"), cpu)
    assert use_cuda_graphs(train(compile="on", cuda_graphs="step"), cuda)


def test_auto_records_the_whole_step_where_it_was_measured_step_asks_for_it_anywhere():
    from sdlora.train.compiled import use_whole_step_graph

    def config(cuda_graphs, network_type="lora", base_precision="auto"):
        return config_from_dict({"network": {"type": network_type},
                                 "train": {"cuda_graphs": cuda_graphs, "base_precision": base_precision}})

    assert use_whole_step_graph(config("auto"))  # LoRA on bf16 weights: 1.51x at batch 1 (round six)
    assert not use_whole_step_graph(config("auto", "dora"))  # not timed: the UNet's own graphs
    assert not use_whole_step_graph(config("auto", base_precision="fp8"))
    assert use_whole_step_graph(config("step", "dora")) and use_whole_step_graph(config("step", "lokr"))
    assert not use_whole_step_graph(config("on")) and not use_whole_step_graph(config("off"))


def test_the_flat_gradient_buffer_is_kept_only_where_gradients_accumulate_or_are_all_reduced(monkeypatch):
    """With CUDA graphs and one micro-batch a step the buffer is dropped (an add per LoRA tensor and step, host
    work that bounds batch 1); accumulation under CUDA graphs and data parallelism keep it."""
    from sdlora.train.compiled import needs_gradient_buffer

    def train(accumulation):
        return config_from_dict({"model": "tiny", "train": {"gradient_accumulation": accumulation}}).train

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not needs_gradient_buffer(cuda_graphs=True, train=train(1))
    assert needs_gradient_buffer(cuda_graphs=True, train=train(4))
    assert not needs_gradient_buffer(cuda_graphs=False, train=train(4))  # eager: autograd's own grads add up
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert needs_gradient_buffer(cuda_graphs=False, train=train(1))


CACHE_PROBE = """
import os, sys, torch
torch.compile(lambda x: x + 1)  # what a library's import-time decorator does: inductor writes its default to env
from torch._inductor.runtime.cache_dir_utils import cache_dir
from sdlora.train.compiled import persist_compile_cache
persist_compile_cache()
print(cache_dir())
"""


@pytest.mark.parametrize("user_dir", [None, "mine"])
def test_compiled_kernels_go_to_the_sdlora_cache_unless_the_user_chose_a_folder(tmp_path, user_dir):
    """Inductor's cache (what makes a second start warm) lives in the sdlora cache, not /tmp, even after an
    earlier torch.compile call put torch's default into the environment; a TORCHINDUCTOR_CACHE_DIR the user set
    is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["SDLORA_CACHE"] = str(tmp_path / "cache")
    if user_dir:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / user_dir)
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True, text=True, check=True)
    expected = tmp_path / user_dir if user_dir else tmp_path / "cache" / "inductor"
    assert out.stdout.strip().splitlines()[-1] == str(expected)


def test_channels_last_auto_is_on_where_it_measured_faster():
    """auto: a whole-UNet compile on CUDA at batch <= 8 (faster there on an H200; slower at 32, round five);
    true/false in a preset still mean on/off; the CPU never converts."""
    from sdlora.train.compiled import use_channels_last

    def train(**values):
        return config_from_dict({"model": "tiny", "train": values}).train

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_channels_last(train(compile="on", batch_size=8), cuda)
    assert use_channels_last(train(compile="auto", batch_size=1), cuda)
    assert not use_channels_last(train(compile="on", batch_size=32), cuda)
    assert not use_channels_last(train(compile="blocks", batch_size=4), cuda)
    assert not use_channels_last(train(compile="off", batch_size=4), cuda)
    assert not use_channels_last(train(compile="on", batch_size=4), cpu)
    assert use_channels_last(train(compile="off", batch_size=32, channels_last=True), cuda)
    assert not use_channels_last(train(compile="on", batch_size=4, channels_last=False), cuda)
    assert train(channels_last=True).channels_last == "on"
