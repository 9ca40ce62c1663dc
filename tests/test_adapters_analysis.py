"""Per-layer numbers of `inspect` and the SVD of `resize`, checked against direct computations on dW."""

from __future__ import annotations

import torch

from sdlora.adapters.analysis import (base_family, describe, module_kind, resize_adapter, resize_layer, spectrum)
from sdlora.lora.state import Adapter, LoraLayer


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def layer_with_singular_values(values, out=48, inp=40, alpha=None) -> LoraLayer:
    """A LoRA pair whose dW has exactly the singular values `values` (alpha defaults to rank: scale 1)."""
    rank = len(values)
    u, v = orthonormal(out, rank, 1), orthonormal(inp, rank, 2)
    alpha = float(rank) if alpha is None else alpha
    s = torch.tensor(values, dtype=torch.float64) * rank / alpha
    return LoraLayer(down=(v * s.sqrt()).T.float(), up=(u * s.sqrt()).float(), alpha=alpha)


def test_spectrum_is_the_svd_of_delta_weight():
    gen = torch.Generator().manual_seed(0)
    for down_shape, up_shape, alpha in [((6, 40), (48, 6), 3.0), ((4, 8, 3, 3), (16, 4, 1, 1), -2.0)]:
        layer = LoraLayer(down=torch.randn(*down_shape, generator=gen), up=torch.randn(*up_shape, generator=gen),
                          alpha=alpha)
        dw = layer.delta_weight().double().reshape(up_shape[0], -1)
        spec = spectrum(layer)
        assert torch.allclose(spec.s, torch.linalg.svdvals(dw)[:layer.rank], rtol=1e-5)
        assert torch.allclose(spec.u @ torch.diag(spec.s) @ spec.v.T, dw, atol=1e-4)


def test_effective_rank_counts_values_holding_ninety_percent_of_energy():
    assert spectrum(layer_with_singular_values([10, 1, 0.5, 0.1])).effective_rank() == 1  # 100/101.26
    assert spectrum(layer_with_singular_values([3, 3, 3, 0.1])).effective_rank() == 3  # 2/3 < 0.9 <= 1
    zero = LoraLayer(down=torch.randn(4, 10), up=torch.zeros(12, 4), alpha=4.0)
    assert spectrum(zero).effective_rank() == 0


def test_describe_reports_the_hand_computed_norm_and_rank_of_a_rank_two_layer():
    gen = torch.Generator().manual_seed(3)
    down = torch.randn(4, 128, generator=gen)
    down[2:] = 0  # two of the four directions are empty: dW has rank 2
    layer = LoraLayer(down=down, up=torch.randn(128, 4, generator=gen), alpha=8.0)
    name = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    report = describe(Adapter({name: layer}, {"ss_steps": "250", "unrelated": "x"}))
    row = report["layers"][0]
    by_hand = float((2.0 * layer.up @ layer.down).norm())  # alpha/rank = 8/4
    assert abs(row["norm"] - by_hand) < 1e-4 * by_hand
    assert row["effective_rank"] <= 2 and row["rank"] == 4 and row["shape"] == [128, 128]
    assert report["targets"] == {"attn2.to_k": 1}
    assert report["num_parameters"] == 4 * 128 * 2
    assert report["training"] == {"ss_steps": "250"}
    assert report["family"].startswith("unknown (cross-attention dim 128)")


def test_resize_keeps_the_energy_it_reports_and_the_scale():
    values = [5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05]
    layer = layer_with_singular_values(values, alpha=4.0)
    small, kept = resize_layer(layer, 3)
    assert small.rank == 3 and small.alpha == 4.0 * 3 / 8  # alpha/rank unchanged
    dw, dw3 = layer.delta_weight().double(), small.delta_weight().double()
    measured = 1 - float((dw - dw3).norm() ** 2 / dw.norm() ** 2)
    expected = sum(v * v for v in values[:3]) / sum(v * v for v in values)
    assert abs(kept - expected) < 1e-5 and measured >= kept - 1e-5


def test_resize_handles_conv_layers_and_leaves_small_ranks_alone():
    gen = torch.Generator().manual_seed(4)
    conv = LoraLayer(down=torch.randn(6, 8, 3, 3, generator=gen), up=torch.randn(16, 6, 1, 1, generator=gen),
                     alpha=6.0)
    small = LoraLayer(down=torch.randn(2, 10, generator=gen), up=torch.randn(12, 2, generator=gen), alpha=1.0)
    resized, kept = resize_adapter(Adapter({"unet.a.conv1": conv, "unet.b.to_q": small}, {}), 4)
    assert resized.layers["unet.a.conv1"].down.shape == (4, 8, 3, 3)
    assert resized.layers["unet.a.conv1"].up.shape == (16, 4, 1, 1)
    assert resized.layers["unet.b.to_q"] is small and kept["unet.b.to_q"] == 1.0
    dw, dw4 = conv.delta_weight().double(), resized.layers["unet.a.conv1"].delta_weight().double()
    assert 1 - float((dw - dw4).norm() ** 2 / dw.norm() ** 2) >= kept["unet.a.conv1"] - 1e-5
    assert resized.metadata["ss_network_dim"] == "4"


def test_module_kind_and_family():
    assert module_kind("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0") == "attn1.to_out.0"
    assert module_kind("unet.up_blocks.1.resnets.2.conv_shortcut") == "conv_shortcut"
    assert module_kind("text_encoder.text_model.encoder.layers.3.mlp.fc1") == "mlp.fc1"
    assert module_kind("unet.conv_in") == "conv_in"
    sd2 = LoraLayer(down=torch.zeros(2, 1024), up=torch.zeros(320, 2), alpha=1.0)
    assert base_family(Adapter({"unet.x.attn2.to_k": sd2}, {}))[0] == "sd2"
    assert base_family(Adapter({"unet.x.attn2.to_k": sd2}, {"ss_base_model_version": "sd_v1"}))[0] == "sd1"
