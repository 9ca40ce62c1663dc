"""LoRA injection: exactly the target modules, frozen base, output unchanged at step 0."""

from __future__ import annotations

import torch

from sdlora.config import NetworkConfig
from sdlora.models import load_components
from sdlora.network import add_lora, count_parameters, extract_adapter, load_into, lora_parameters


def _unet_output(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(latents, torch.tensor([10, 500]), text).sample


def test_injection_touches_exactly_the_target_modules():
    unet = load_components("tiny").unet
    expected = {n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)
                and n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0")}
    names = add_lora(unet, NetworkConfig(rank=4), seed=0)
    assert set(names) == expected
    adapted = {n for n, m in unet.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert adapted == expected
    # Only the LoRA matrices train, two per module, each of rank 4.
    params = lora_parameters(unet)
    assert len(params) == 2 * len(expected)
    assert all(4 in p.shape for p in params)
    assert all(not p.requires_grad for n, p in unet.named_parameters() if "lora_" not in n)


def test_step_zero_leaves_the_output_unchanged():
    unet = load_components("tiny").unet
    before = _unet_output(unet)
    add_lora(unet, NetworkConfig(rank=8, alpha=4), seed=0)
    after = _unet_output(unet)
    assert torch.equal(before, after)  # B = 0, so B·A·x adds exactly zero
    adapter = extract_adapter(unet)
    assert all(layer.up.abs().sum() == 0 and layer.down.abs().sum() > 0 for layer in adapter.layers.values())
    assert {layer.alpha for layer in adapter.layers.values()} == {4.0}


def test_targets_are_configurable_and_counted():
    unet = load_components("tiny").unet
    names = add_lora(unet, NetworkConfig(rank=2, targets=["to_q"]), seed=0)
    assert names and all(n.endswith("to_q") for n in names)
    trainable, total = count_parameters(unet)
    dims = [m.in_features + m.out_features for n, m in unet.named_modules() if n in names]
    assert trainable == 2 * sum(dims) and total > trainable


def test_same_seed_same_init_and_weights_roundtrip_into_live_layers():
    a, b = load_components("tiny").unet, load_components("tiny").unet
    base = _unet_output(a)
    add_lora(a, NetworkConfig(rank=4), seed=7)
    add_lora(b, NetworkConfig(rank=4), seed=7)
    ea, eb = extract_adapter(a), extract_adapter(b)
    assert all(torch.equal(ea.layers[k].down, eb.layers[k].down) for k in ea.layers)
    for layer in ea.layers.values():
        layer.up.normal_(std=0.1)
    load_into(b, ea)
    back = extract_adapter(b)
    assert all(torch.equal(back.layers[k].up, ea.layers[k].up) for k in ea.layers)
    assert not torch.allclose(_unet_output(b), base, atol=1e-3)  # the live layers now carry the update
