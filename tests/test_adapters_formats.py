"""Adapter files: kohya <-> dotted names, kohya <-> diffusers round trips, loading in diffusers, other tools' files."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_adapters_fixtures import (ATTENTION, apply_by_hand, make_adapter, module_names, relative_difference,
                                    tiny_pipeline, unet_output)

from sdlora.adapters import load_adapter, read_adapter_file, save_adapter
from sdlora.lora.formats import kohya_stem_to_name, name_to_kohya_stem
from sdlora.errors import SdloraError

TEXT_ALL = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
UNET_MANY = ATTENTION + ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv_shortcut",
                         "time_emb_proj")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def read_raw(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def test_every_unet_and_clip_module_name_survives_kohya_flattening(pipe):
    names = [f"unet.{n}" for n in module_names(pipe.unet)]
    names += [f"text_encoder.text_model.{n.removeprefix('text_model.')}" for n in module_names(pipe.text_encoder)]
    assert len(names) == 150
    for name in names:
        assert kohya_stem_to_name(name_to_kohya_stem(name)) == name
    # SDXL's second text encoder and the flattened CLIP naming some tools write
    assert kohya_stem_to_name("lora_te2_text_model_encoder_layers_5_mlp_fc2") == \
        "text_encoder_2.text_model.encoder.layers.5.mlp.fc2"
    assert kohya_stem_to_name("lora_te_encoder_layers_0_self_attn_q_proj") == \
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    # kohya's SDXL block names (SGM layout) read as the diffusers module they are
    assert kohya_stem_to_name("lora_unet_input_blocks_1_1_proj_in") == "unet.down_blocks.0.attentions.0.proj_in"
    assert kohya_stem_to_name("lora_unet_input_blocks_1_1_proj_inx") is None


@pytest.mark.parametrize("first,second", [("kohya", "diffusers"), ("diffusers", "kohya")])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_round_trip_between_formats_is_bit_exact(pipe, tmp_path, first, second, dtype):
    adapter = make_adapter(pipe, UNET_MANY, TEXT_ALL, vary=True, metadata={"ss_steps": "7", "sdlora_mode": "lcm"})
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_adapter(adapter, a, fmt=first, dtype=dtype)
    save_adapter(load_adapter(a), b, fmt=second, dtype=None)
    save_adapter(load_adapter(b), c, fmt=first, dtype=None)
    (state_a, meta_a), (state_c, meta_c) = read_raw(a), read_raw(c)
    assert meta_a == meta_c and set(state_a) == set(state_c)
    for key, tensor in state_a.items():  # same dtype and the same bits, alphas included
        assert state_c[key].dtype == tensor.dtype and torch.equal(state_c[key], tensor), key
    back = load_adapter(b)
    assert back.metadata == {"ss_steps": "7", "sdlora_mode": "lcm"}
    assert set(back.layers) == set(adapter.layers)
    for name, layer in adapter.layers.items():
        want = layer.down.to(back.layers[name].down.dtype)
        assert torch.equal(back.layers[name].down, want)
        assert back.layers[name].alpha == layer.alpha


def test_diffusers_file_records_rank_and_alpha_for_each_module(pipe, tmp_path):
    adapter = make_adapter(pipe, UNET_MANY, TEXT_ALL, vary=True)
    path = save_adapter(adapter, tmp_path / "d.safetensors", fmt="diffusers")
    state, meta = read_raw(path)
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["unet.target_modules"] == sorted(adapter.component_layers("unet"))
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state)
    assert sum(k.startswith("text_encoder.text_model.encoder.") for k in state) == 2 * 18
    assert {v for v in config["unet.alpha_pattern"].values()} | {config["unet.lora_alpha"]} == {2.0, 4.0}


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_diffusers_load_lora_weights_matches_dw_applied_by_hand(pipe, tmp_path, fmt):
    # diffusers 0.42 maps per-layer alphas of kohya attention layers to wrong names (their scale falls back to
    # the most common alpha), so the kohya file gets one alpha; ranks still vary.
    adapter = make_adapter(pipe, UNET_MANY, TEXT_ALL, vary=True)
    if fmt == "kohya":
        for layer in adapter.layers.values():
            layer.alpha = 3.0
    path = save_adapter(adapter, tmp_path / f"{fmt}.safetensors", fmt=fmt)
    expected = unet_output(apply_by_hand(pipe, adapter))
    base = unet_output(pipe)
    live = copy.deepcopy(pipe)
    live.load_lora_weights(str(path), adapter_name="x")
    assert relative_difference(expected, base) > 0.05  # the adapter does change the output
    assert relative_difference(unet_output(live), expected) < 1e-4


def test_kohya_file_from_another_tool_loads_text_encoder_locon_ff_and_fp16(pipe, tmp_path):
    gen = torch.Generator().manual_seed(1)
    state = {}

    def pair(stem, out_shape, in_shape, rank, alpha=None):
        state[f"{stem}.lora_down.weight"] = torch.randn(rank, *in_shape, generator=gen).half()
        up_shape = (out_shape, rank) if len(in_shape) == 1 else (out_shape, rank, 1, 1)
        state[f"{stem}.lora_up.weight"] = torch.randn(*up_shape, generator=gen).half()
        if alpha is not None:
            state[f"{stem}.alpha"] = torch.tensor(alpha, dtype=torch.float16)

    pair("lora_te_text_model_encoder_layers_1_self_attn_out_proj", 128, (128,), 4, 1.0)
    pair("lora_unet_down_blocks_1_resnets_0_conv1", 128, (64, 3, 3), 2, 1.0)  # LoCon
    pair("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj", 1024, (128,), 8)  # no alpha
    state["lora_unet_up_blocks_0_resnets_0_conv1.hada_w1_a"] = torch.zeros(1)  # LyCORIS part we skip
    path = tmp_path / "other.safetensors"
    save_file(state, str(path), metadata={"ss_network_module": "lycoris.kohya"})
    with pytest.warns(UserWarning, match="skipped 1 key"):
        adapter = load_adapter(path)
    assert set(adapter.layers) == {"text_encoder.text_model.encoder.layers.1.self_attn.out_proj",
                                   "unet.down_blocks.1.resnets.0.conv1",
                                   "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"}
    assert adapter.layers["unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"].alpha == 8.0
    conv = adapter.layers["unet.down_blocks.1.resnets.0.conv1"]
    assert conv.delta_weight().shape == pipe.unet.down_blocks[1].resnets[0].conv1.weight.shape
    found = read_adapter_file(path)
    assert found.format == "kohya" and found.dtypes == {"float16"}


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind,fragment", [
    ("pickle", "pickled PyTorch checkpoint"),
    ("torch_zip", "pickled PyTorch checkpoint"),
    ("garbage", "not a readable .safetensors file"),
    ("full", "full Stable Diffusion checkpoint"),
    ("unet_weights", "full weights of a model component"),
    ("flux", "LoRA for Flux"),
    ("flux_kohya", "LoRA for Flux"),
    ("sd3", "Stable Diffusion 3"),
])
def test_files_that_are_not_sd_loras_are_refused_with_what_they_are(tmp_path, kind, fragment):
    path = tmp_path / f"{kind}.safetensors"
    t = torch.zeros(4, 4)
    u = torch.zeros(4, 4)
    if kind == "pickle":
        write(path, pickle.dumps({"a": 1}, protocol=4))
    elif kind == "torch_zip":
        torch.save({"state_dict": {"w": t}}, path)
    elif kind == "garbage":
        write(path, bytes(range(256)) * 4)
    elif kind == "full":
        save_file({"model.diffusion_model.input_blocks.0.0.weight": t, "first_stage_model.x.weight": u}, str(path))
    elif kind == "unet_weights":
        save_file({"down_blocks.0.resnets.0.conv1.weight": t}, str(path))
    elif kind == "flux":
        save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": t,
                   "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": u}, str(path))
    elif kind == "flux_kohya":
        save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": t,
                   "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": u}, str(path))
    elif kind == "sd3":
        save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": t,
                   "transformer.context_embedder.lora_A.weight": u}, str(path))
    with pytest.raises(SdloraError, match=fragment) as info:
        load_adapter(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_saving_is_atomic_and_metadata_values_become_strings(pipe, tmp_path):
    adapter = make_adapter(pipe, ("to_q",), metadata={"ss_steps": 12, "sdlora_config": {"a": [1, 2]}})
    path = save_adapter(adapter, tmp_path / "sub" / "x.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.safetensors"]  # no temp file left behind
    _, meta = read_raw(path)
    assert meta == {"ss_steps": "12", "sdlora_config": '{"a": [1, 2]}'}
    with pytest.raises(SdloraError, match="format 'safetensors' is unknown"):
        save_adapter(adapter, tmp_path / "y.safetensors", fmt="safetensors")
