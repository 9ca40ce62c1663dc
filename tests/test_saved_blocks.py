"""`compile: blocks`' saved variants (sdlora/train/saved_blocks.py): a variant saved traced and compiled gives the
block's own result; a call it was not traced for (another shape, another attribute value, no grad) goes to the
block's torch.compile and still gives the block's result; a source edited since the save, or hooks inside the
block, keep it from being used; and with compile workers a second start loads every variant and traces nothing."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from torch._dynamo.utils import counters

from sdlora.train import saved_blocks
from sdlora.train.compiled import compile_step_model
from test_compile_workers import fixed_batch, unet_call
from test_compiled import lora_unet

pytestmark = pytest.mark.skipif(not saved_blocks.available({"mode": None, "backend": "aot_eager"}),
                                reason="this torch has no AOT precompile")
EAGER = {"mode": None, "backend": "aot_eager"}


def block_and_inputs():
    """The tiny LoRA UNet's first attention block (LoRA inside) and the inputs the UNet gives it on the fixed
    batch."""
    unet = lora_unet()[0].unet.train()
    block = next(m for m in unet.modules() if type(m).__name__ == "Transformer2DModel")
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, a, k: seen.setdefault("in", (a, k)), with_kwargs=True)
    args, kwargs = unet_call(unet)
    unet(*args, **kwargs)
    handle.remove()
    a, k = seen["in"]
    detached = {n: v.detach() if isinstance(v, torch.Tensor) else v for n, v in k.items()}
    return block, tuple(t.detach().requires_grad_(t.requires_grad) for t in a), detached


def tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.sample


def grads_of(block, out):
    tensor(out).square().mean().backward()
    grads = [p.grad.clone() for p in block.parameters() if p.grad is not None]
    block.zero_grad(set_to_none=True)
    return grads


def test_a_saved_variant_gives_the_blocks_result_and_refuses_what_it_was_not_traced_for(tmp_path):
    block, args, kwargs = block_and_inputs()
    path = tmp_path / "variant.bin"
    saved_blocks.compile_and_save(block, args, kwargs, EAGER, path)
    assert path.stat().st_size > 0
    torch._dynamo.reset()
    counters.clear()
    forward = saved_blocks.SavedForward(block, saved_blocks.load(path, block),
                                        torch.compile(block.forward, backend="aot_eager", dynamic=False), "cpu")
    assert counters["stats"]["unique_graphs"] == 0  # loading traced nothing

    def both(*call_args):
        """The block's eager output and gradients, and the same through `forward`."""
        eager = block.forward(*call_args, **kwargs)
        expected = (tensor(eager).detach(), grads_of(block, eager))
        got = forward(*call_args, **kwargs)
        return expected, (tensor(got).detach(), grads_of(block, got))

    (eager, eager_grads), (out, grads) = both(*args)
    assert counters["sdlora"]["saved_variant_calls"] == 1 and counters["stats"]["unique_graphs"] == 0
    assert torch.allclose(out, eager, atol=1e-6)
    assert len(grads) == len(eager_grads) > 0
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, eager_grads))

    # Another size: torch.compile traces it, the result is still the block's.
    (eager, _), (out, _) = both(args[0][..., :2, :])
    assert counters["sdlora"]["saved_variant_refusals"] == 1 and counters["stats"]["unique_graphs"] == 1
    assert torch.allclose(out, eager, atol=1e-6)

    # A number the graph was traced with (dynamo guards on it): the LoRA's scale (alpha / rank), changed.
    lora = next(m for m in block.modules() if hasattr(m, "scaling") and m.scaling)
    lora.scaling["default"] *= 3
    (eager, _), (out, _) = both(*args)
    assert counters["sdlora"]["saved_variant_refusals"] == 2
    assert torch.allclose(out, eager, atol=1e-6)
    lora.scaling["default"] /= 3

    with torch.no_grad():  # traced with grad: the state is compared at each call
        out = tensor(forward(*args, **kwargs))
    assert counters["sdlora"]["saved_variant_refusals"] == 3
    assert torch.allclose(out, tensor(block.forward(*args, **kwargs)).detach(), atol=1e-6)
    forward(*args, **kwargs)
    assert counters["sdlora"]["saved_variant_calls"] == 2


def test_a_saved_variant_holds_at_another_cpu_thread_count(tmp_path):
    """sdlora sets torch's thread count from the load at each start (threads.py); dynamo's global-state guard
    compares it, so with that guard saved an H200's warm starts refused every variant (round nine)."""
    block, args, kwargs = block_and_inputs()
    path = tmp_path / "variant.bin"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        saved_blocks.compile_and_save(block, args, kwargs, EAGER, path)
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(2)
    try:
        counters.clear()
        forward = saved_blocks.SavedForward(block, saved_blocks.load(path, block), block.forward, "cpu")
        out = tensor(forward(*args, **kwargs))
    finally:
        torch.set_num_threads(threads)
    assert counters["sdlora"]["saved_variant_calls"] == 1, dict(counters["saved_block_refusals"])
    assert torch.allclose(out, tensor(block.forward(*args, **kwargs)), atol=1e-6)


def test_a_variant_traced_from_a_source_edited_since_is_not_used(tmp_path, monkeypatch):
    source = tmp_path / "edited_block.py"
    source.write_text(textwrap.dedent("""
        import torch

        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(4, 4)

            def forward(self, x):
                return torch.relu(self.linear(x))
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("edited_block")
    block, x = module.Block(), torch.randn(2, 4, requires_grad=True)
    path = tmp_path / "variant.bin"
    saved_blocks.compile_and_save(block, (x,), {}, EAGER, path)
    assert saved_blocks.load(path, block) is not None  # unchanged: loads

    source.write_text(source.read_text().replace("torch.relu(self.linear(x))", "torch.tanh(self.linear(x))"))
    with pytest.raises(ValueError, match="edited_block changed since the variant was saved"):
        saved_blocks.load(path, block)
    compiled = torch.compile(block.forward, backend="aot_eager")
    with pytest.warns(UserWarning, match=r"1 saved block variant\(s\) could not be loaded .*edited_block changed"):
        installed, problems = saved_blocks.install([(block, compiled)], {0: path}, "cpu")
    assert installed == [(block, compiled)] and len(problems) == 1
    del sys.modules["edited_block"]


def test_a_block_with_hooks_inside_keeps_its_torch_compile(tmp_path):
    block, args, kwargs = block_and_inputs()
    path = tmp_path / "variant.bin"
    saved_blocks.compile_and_save(block, args, kwargs, EAGER, path)
    compiled = torch.compile(block.forward, backend="aot_eager")
    installed, _ = saved_blocks.install([(block, compiled)], {0: path}, "cpu")
    assert isinstance(installed[0][1], saved_blocks.SavedForward)
    # A hook inside is traced into the graph, guarded by identity, which is not saved: the loaded one would skip it.
    handle = block.proj_in.register_forward_hook(lambda *_: None)
    installed, problems = saved_blocks.install([(block, compiled)], {0: path}, "cpu")
    assert installed == [(block, compiled)] and problems == []
    handle.remove()


def test_the_off_switch_and_the_cuda_graph_trees_mode_compile_as_before(monkeypatch):
    assert saved_blocks.available(EAGER)
    assert not saved_blocks.available({"mode": "reduce-overhead", "backend": "inductor"})
    monkeypatch.setenv(saved_blocks.OFF_SWITCH, "1")
    assert not saved_blocks.available(EAGER)


@pytest.mark.slow  # two rounds of worker processes importing torch and diffusers: ~40 s on 2 cores
def test_workers_save_every_variant_and_the_next_start_traces_none(tmp_path, monkeypatch):
    """Through compile_step_model as the trainer calls it: the first start's workers save each variant, the
    trainer loads them (no tracing in its process even then); a second start (a new view, dynamo reset) spawns
    no worker and traces nothing; both give the eager loss and gradients."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from sdlora.train.objective import DenoisingObjective

    components, config = lora_unet()
    unet = components.unet.train()
    objective = DenoisingObjective(components.noise_scheduler, config.train)
    latents, text = fixed_batch(unet)

    def loss_and_grads(model):
        loss = objective(model, latents, text, torch.Generator().manual_seed(7)).mean()
        loss.backward()
        grads = [p.grad.clone() for p in unet.parameters() if p.grad is not None]
        unet.zero_grad(set_to_none=True)
        return loss.item(), grads

    eager, eager_grads = loss_and_grads(unet)
    for start in ("cold", "warm"):
        torch._dynamo.reset()
        counters.clear()
        view = compile_step_model(unet, cuda_graphs=False, backend="aot_eager", scope="blocks", compile_workers=2)
        loss, grads = loss_and_grads(view)
        report = view.precompiled
        assert report.workers == (2 if start == "cold" else 0), (start, report)
        assert report.not_saved == [] and sorted(report.saved) == list(range(len(view.blocks))), (start, report)
        assert counters["stats"]["unique_graphs"] == 0, start  # every block ran its saved variant
        assert counters["sdlora"]["saved_variant_calls"] == len(view.blocks)
        assert counters["sdlora"]["saved_variants_loaded"] == len(set(report.saved.values())) < len(view.blocks)
        assert loss == pytest.approx(eager, rel=1e-6), start
        assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, eager_grads)), start

