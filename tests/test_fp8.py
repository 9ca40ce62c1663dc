"""train.base_precision: fp8. The option's errors on the CPU, and the float8 layer's arithmetic (torch's
float8 matmul also runs on the CPU, slowly, so the conversion and its error can be checked here; the speed is
measured on a GPU, docs/PERFORMANCE.md)."""

from __future__ import annotations

import pytest
import torch

from sdlora.config import NetworkConfig, config_from_dict
from sdlora.errors import SdloraError
from sdlora.events import EventBus
from sdlora.train.fp8 import Fp8FrozenLinear, check_fp8_supported, convert_frozen_linears
from sdlora.train.rundir import new_run
from sdlora.train.trainer import Trainer
from test_trainer import make_config


def cpu_scaled_mm() -> bool:
    try:
        one = torch.ones((), dtype=torch.float32)
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


needs_scaled_mm = pytest.mark.skipif(not cpu_scaled_mm(), reason="this torch has no float8 matmul on the CPU")


def test_fp8_on_the_cpu_is_a_one_line_error_naming_the_key(shapes_dir, tmp_path):
    config = make_config(shapes_dir, tmp_path / "out", base_precision="fp8", mixed_precision="bf16")
    with pytest.raises(SdloraError) as err:
        Trainer(config, new_run(config), EventBus())
    assert str(err.value).startswith("train.base_precision: fp8 needs a CUDA GPU") and "\n" not in str(err.value)


def test_fp8_needs_bf16_mixed_precision():
    with pytest.raises(SdloraError, match="train.base_precision: fp8 needs train.mixed_precision: bf16"):
        check_fp8_supported(torch.device("cpu"), "no")


def test_unknown_base_precision_is_rejected_by_the_config():
    with pytest.raises(SdloraError, match="train.base_precision"):
        config_from_dict({"train": {"base_precision": "fp4"}})


@needs_scaled_mm
def test_fp8_layer_matches_the_linear_within_float8_error():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).requires_grad_(False)
    fp8 = Fp8FrozenLinear(linear)
    x = torch.randn(3, 10, 64, requires_grad=True)
    ref = linear(x)
    out = fp8(x)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    # e4m3 keeps 3 mantissa bits: ~3.5% relative error measured on random data; bf16 alone is ~0.4%.
    error = ((out.float() - ref).norm() / ref.norm()).item()
    assert 0.005 < error < 0.08, error
    g = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    (grad,) = torch.autograd.grad(out, x, g.bfloat16())
    assert ((grad.float() - ref_grad).norm() / ref_grad.norm()).item() < 0.08


@needs_scaled_mm
def test_fp8_products_get_dense_rows_even_for_one_row_or_a_strided_input(monkeypatch):
    """cuBLASLt's float8 product refuses a first operand that is not dense rows, and a single row (batch 1's time
    embedding, eager: "Only multiplication of row-major and column-major matrices is supported by cuBLASLt" on an
    H200). The CPU kernel takes anything, so the operands are checked where they are handed over; the results are
    the same rows as in a larger batch."""
    import sdlora.train.fp8 as fp8_module

    seen = []
    real = torch._scaled_mm

    def spy(a, b, **kwargs):
        seen.append((tuple(a.shape), a.stride(), tuple(kwargs["scale_a"].shape), kwargs["scale_a"].stride()))
        return real(a, b, **kwargs)

    monkeypatch.setattr(fp8_module.torch, "_scaled_mm", spy)
    torch.manual_seed(0)
    layer = Fp8FrozenLinear(torch.nn.Linear(64, 48).requires_grad_(False))
    batch = torch.randn(4, 64)
    one = batch[:1].clone().requires_grad_(True)
    strided = torch.randn(64, 4).t()  # (4, 64), not row-major
    out_one, out_batch = layer(one), layer(batch)
    out_one.float().sum().backward()  # the input gradient: a one-row product too
    layer(strided)
    assert torch.equal(out_one, out_batch[:1])
    assert out_one.shape == (1, 48) and one.grad.shape == (1, 64)
    assert len(seen) == 4
    for shape, stride, scale_shape, scale_stride in seen:
        assert shape[0] >= 2 and stride == (shape[1], 1), (shape, stride)
        assert scale_shape == (shape[0], 1) and scale_stride == (1, 1)


@needs_scaled_mm
def test_convert_swaps_frozen_base_layers_and_keeps_lora_trainable():
    from sdlora.models import load_components
    from sdlora.network import add_lora, lora_parameters

    unet = load_components("tiny", dtype=torch.bfloat16).unet
    add_lora(unet, NetworkConfig(rank=4, alpha=4), seed=0)
    lora_before = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    replaced = convert_frozen_linears(unet)
    fp8_layers = [m for m in unet.modules() if isinstance(m, Fp8FrozenLinear)]
    assert replaced == len(fp8_layers) > 0
    # Every LoRA-wrapped projection's base layer is float8; the LoRA matrices themselves are untouched.
    wrapped = [m for m in unet.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    assert wrapped and all(isinstance(m.base_layer, Fp8FrozenLinear) for m in wrapped if m.in_features % 16 == 0)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(lora_before)
    assert all(layer.w.dtype == torch.float8_e4m3fn for layer in fp8_layers)
    # Gradients still reach the LoRA weights through the float8 base layers.
    side = 8
    latents = torch.randn(1, 4, side, side, dtype=torch.bfloat16)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, dtype=torch.bfloat16)
    for p in lora_parameters(unet):
        p.data = p.data.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unet(latents, torch.tensor([500]), text).sample.float().pow(2).mean().backward()
    grads = [p.grad for p in lora_parameters(unet)]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@needs_scaled_mm
def test_fp8_layer_traces_under_torch_compile_with_the_same_result():
    # aot_eager traces the forward and backward graphs as inductor does (the custom op's fake and autograd
    # registrations), without generating kernels.
    torch.manual_seed(0)
    model = torch.nn.Sequential(Fp8FrozenLinear(torch.nn.Linear(64, 64).requires_grad_(False)), torch.nn.GELU(),
                                torch.nn.Linear(64, 16).bfloat16())
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16, requires_grad=True)
    eager = model(x)
    (eager_grad,) = torch.autograd.grad(eager.float().sum(), x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    (compiled_grad,) = torch.autograd.grad(compiled.float().sum(), x)
    assert torch.equal(compiled, eager) and torch.equal(compiled_grad, eager_grad)
