"""SDXL end to end on a tiny random-weight SDXL of the real structure: train through the CLI, size/crop
conditioning from the buckets, the text cache with pooled embeddings, kohya's SDXL key names, the adapter in
diffusers' StableDiffusionXLPipeline, and `sdlora generate`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import make_shape_folder, write_preset
from safetensors import safe_open

from sdlora.adapters import load_adapter, save_adapter
from sdlora.lora.formats import kohya_stem_to_name, name_to_kohya_stem
from sdlora.cli import main

# Exact kohya sd-scripts names for SDXL base modules (SGM layout; te1/te2 for the two text encoders).
KOHYA_SDXL_NAMES = {
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q":
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
    "unet.down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj":
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_0_proj",
    "unet.mid_block.attentions.0.transformer_blocks.3.attn2.to_out.0":
        "lora_unet_middle_block_1_transformer_blocks_3_attn2_to_out_0",
    "unet.mid_block.resnets.1.time_emb_proj": "lora_unet_middle_block_2_emb_layers_1",
    "unet.up_blocks.0.attentions.2.proj_out": "lora_unet_output_blocks_2_1_proj_out",
    "unet.up_blocks.1.upsamplers.0.conv": "lora_unet_output_blocks_5_2_conv",
    "unet.up_blocks.2.resnets.0.conv_shortcut": "lora_unet_output_blocks_6_0_skip_connection",
    "unet.down_blocks.0.resnets.1.conv1": "lora_unet_input_blocks_2_0_in_layers_2",
    "unet.down_blocks.0.downsamplers.0.conv": "lora_unet_input_blocks_3_0_op",
    "unet.conv_in": "lora_unet_input_blocks_0_0",
    "unet.conv_out": "lora_unet_out_2",
    "unet.time_embedding.linear_1": "lora_unet_time_embed_0",
    "unet.add_embedding.linear_2": "lora_unet_label_emb_0_2",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
    "text_encoder_2.text_model.encoder.layers.31.mlp.fc2": "lora_te2_text_model_encoder_layers_31_mlp_fc2",
}


def linear_and_conv_names(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def test_full_size_sdxl_configs_have_the_published_sizes_and_kohya_names_round_trip_for_every_module():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from architectures import SDXL_TEXT_1, SDXL_TEXT_2, SDXL_UNET, SDXL_VAE

    with torch.device("meta"):  # the real 3.5B-parameter structure, without allocating it
        unet = UNet2DConditionModel(**SDXL_UNET)
        parts = [unet, AutoencoderKL(**SDXL_VAE), CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_1)),
                 CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2))]
    # SDXL base 1.0's parameter counts (UNet, VAE, CLIP ViT-L, OpenCLIP ViT-bigG with projection)
    assert [sum(p.numel() for p in m.parameters()) for m in parts] == [2_567_463_684, 83_653_863, 123_060_480,
                                                                       694_659_840]
    names = [f"unet.{n}" for n in linear_and_conv_names(unet)]
    assert len(names) == 794
    stems = [name_to_kohya_stem(name, sdxl=True) for name in names]
    assert len(set(stems)) == len(names)
    assert not [s for s in stems if s.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block"))]
    for name, stem in zip(names, stems):
        assert kohya_stem_to_name(stem) == name
    for name, stem in KOHYA_SDXL_NAMES.items():
        assert name_to_kohya_stem(name, sdxl=True) == stem
        assert kohya_stem_to_name(stem) == name
    # SD 1.x files keep diffusers' names
    assert name_to_kohya_stem("unet.down_blocks.1.attentions.0.proj_in") == "lora_unet_down_blocks_1_attentions_0_proj_in"


# ------------------------------------------------------------------------------------------------ a trained run


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory):
    """A tiny SDXL folder and one `sdlora train` run on it: bucketed non-square images, disk cache, samples."""
    from architectures import random_sdxl_pipeline
    from sdlora.models.storage import save_pipeline_folder

    root = tmp_path_factory.mktemp("sdxl")
    save_pipeline_folder(random_sdxl_pipeline(seed=0, tiny=True), root / "model")
    data = make_shape_folder(root / "data", count=4, size=(96, 48))  # 2:1 -> the 96x32 bucket at 64 px
    make_shape_folder(root / "data" / "square", count=2, size=(64, 64), seed=1)
    preset = write_preset(root / "sdxl.yaml", f"""
name: xl
model: {root / 'model'}
data: {{dir: {data}, resolution: 64, buckets: true, bucket_min: 32, bucket_step: 32, bucket_max: 128,
        cache: disk}}
network: {{rank: 4, alpha: 4}}
train: {{steps: 3, batch_size: 2, lr: 0.01, seed: 1}}
sample: {{prompts: [a red circle], steps: 2, every: 0}}
save: {{output_dir: {root / 'out'}}}
""")
    cache = root / "user-cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("SDLORA_CACHE", str(cache))
    code = main(["train", "--preset", str(preset)])
    yield {"root": root, "model": root / "model", "data": data, "preset": preset, "code": code,
           "run": root / "out" / "xl", "mp": mp}
    mp.undo()


def test_sdxl_trains_through_the_cli_and_writes_a_kohya_sdxl_adapter(sdxl_run):
    assert sdxl_run["code"] == 0
    run = sdxl_run["run"]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["step"] == 3
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000003"]
    with safe_open(str(run / "xl.safetensors"), framework="pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    # the tiny SDXL's first attention is input block 4 (as in SDXL base): kohya's names, not diffusers'
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0.alpha" in keys
    assert "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_k.lora_up.weight" in keys
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for k in keys)


def trainer_for(sdxl_run, **train):
    from sdlora.config import load_config
    from sdlora.events import EventBus
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    config = load_config(sdxl_run["preset"], ["name=again"] + [f"train.{k}={v}" for k, v in train.items()])
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    return trainer


def test_time_ids_are_the_bucket_crop_and_the_text_cache_with_pooled_embeddings_hits(sdxl_run):
    from sdlora.data import SampleKey, collate
    from sdlora.data.images import crop_geometry

    trainer = trainer_for(sdxl_run)  # a second run on the same data and model
    stats = trainer.cache_stats
    captions = {e.caption for e in trainer.dataset.records}
    assert (stats.texts_encoded, stats.texts_cached) == (0, len(captions))
    assert (stats.latents_encoded, stats.latents_cached) == (0, 6)
    wide = [i for i, e in enumerate(trainer.dataset.records) if e.size == (48, 96)]
    assert len(wide) == 4 and trainer.dataset.records[wide[0]].bucket == (32, 96)
    batch = collate([trainer.dataset[SampleKey(i, False, 7)] for i in wide[:2]])
    assert "pooled_text_embeddings" in batch  # served from the cache, not the text encoders
    _, cond = trainer.encoder(batch, torch.Generator().manual_seed(0))
    resized, (top, left) = crop_geometry((48, 96), (32, 96), True, None)
    assert (resized, top, left) == ((48, 96), 8, 0)
    expected = torch.tensor([[48, 96, 8, 0, 32, 96]] * 2, dtype=torch.float32)
    assert torch.equal(cond.time_ids.cpu(), expected)
    # A step recorded as one CUDA graph gets them as a tensor field made before the step: the same ids.
    from sdlora.train.encode import with_time_ids

    _, recorded = trainer.encoder({**with_time_ids(batch), "original_size": None}, torch.Generator().manual_seed(0))
    assert torch.equal(recorded.time_ids.cpu(), expected)
    assert cond.text_embeddings.shape == (2, 77, 64) and cond.pooled_text_embeddings.shape == (2, 32)
    # the cached pooled embedding is what the second encoder gives now
    fresh = trainer.encoder.text_features(batch["caption"])
    assert torch.allclose(fresh["pooled_text_embeddings"], cond.pooled_text_embeddings, atol=1e-6)
    assert torch.allclose(fresh["text_embeddings"], cond.text_embeddings, atol=1e-6)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_the_adapter_loads_in_diffusers_sdxl_pipeline_and_reproduces_the_trained_unet(sdxl_run, tmp_path, fmt):
    from sdlora.models import load_pipeline
    from sdlora.network import load_into

    trainer = trainer_for(sdxl_run)
    adapter = load_adapter(sdxl_run["run"] / "xl.safetensors")
    trained = trainer.accelerator.unwrap_model(trainer.unet).eval()
    load_into(trained, adapter)  # the run's trained weights into a live LoRA UNet
    path = save_adapter(adapter, tmp_path / f"xl-{fmt}.safetensors", fmt=fmt)

    pipe = load_pipeline(str(sdxl_run["model"]))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    pipe.load_lora_weights(str(path))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 48, generator=g)
    text = torch.randn(2, 77, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g),
             "time_ids": torch.tensor([[48.0, 96, 8, 0, 32, 96], [64, 64, 0, 0, 64, 64]])}
    t = torch.tensor([50, 700])
    with torch.no_grad():
        expected = trained(latents, t, text, added_cond_kwargs=added).sample
        got = pipe.unet(latents, t, text, added_cond_kwargs=added).sample
        base = load_pipeline(str(sdxl_run["model"])).unet(latents, t, text, added_cond_kwargs=added).sample
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4
    assert ((base - expected).norm() / expected.norm()).item() > 1e-3  # the training really moved the UNet
    if fmt == "kohya":  # baking the adapter into the base weights gives the same UNet (merge == blend)
        from sdlora.adapters import merge_into

        merged_pipe = load_pipeline(str(sdxl_run["model"]))
        assert merge_into(merged_pipe, [(load_adapter(path), 1.0)]) == len(adapter.layers)
        with torch.no_grad():
            merged = merged_pipe.unet(latents, t, text, added_cond_kwargs=added).sample
        assert ((merged - expected).norm() / expected.norm()).item() < 1e-4


def test_sdxl_key_names_round_trip_kohya_diffusers_bit_exact(sdxl_run, tmp_path):
    from safetensors.torch import load_file

    from sdlora.lora.state import LoraLayer

    adapter = load_adapter(sdxl_run["run"] / "xl.safetensors")
    gen = torch.Generator().manual_seed(0)
    for name, (out_f, in_f) in {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (32, 32),
                                "text_encoder_2.text_model.encoder.layers.1.mlp.fc1": (37, 32)}.items():
        adapter.layers[name] = LoraLayer(torch.randn(4, in_f, generator=gen), torch.randn(out_f, 4, generator=gen), 2.0)
    adapter.layers["unet.down_blocks.0.resnets.0.conv1"] = LoraLayer(
        torch.randn(4, 32, 3, 3, generator=gen), torch.randn(32, 4, 1, 1, generator=gen), 4.0)
    a, b, c = (tmp_path / f"{x}.safetensors" for x in "abc")
    save_adapter(adapter, a, fmt="kohya")
    save_adapter(load_adapter(a), b, fmt="diffusers", dtype=None)
    save_adapter(load_adapter(b), c, fmt="kohya", dtype=None)
    state_a, state_b, state_c = load_file(str(a)), load_file(str(b)), load_file(str(c))
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in state_a
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha" in state_a
    assert "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight" in state_a
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in state_b
    assert set(state_a) == set(state_c)
    assert all(torch.equal(state_a[k], state_c[k]) and state_a[k].dtype == state_c[k].dtype for k in state_a)


def test_generate_renders_with_the_sdxl_adapter(sdxl_run, tmp_path, capsys):
    out = tmp_path / "xl.png"
    code = main(["generate", "--model", str(sdxl_run["model"]), "--lora", f"{sdxl_run['run'] / 'xl.safetensors'}:0.8",
                 "--prompt", "a red circle", "--steps", "2", "--size", "96x64", "--scheduler", "euler",
                 "--out", str(out)])
    assert code == 0
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == (96, 64)
    assert "xl.safetensors:0.8" in capsys.readouterr().out


def test_an_sdxl_adapter_on_an_sd1_model_is_a_one_line_error(sdxl_run, tmp_path, capsys):
    code = main(["generate", "--model", "tiny", "--lora", str(sdxl_run["run"] / "xl.safetensors"), "--prompt", "x",
                 "--steps", "1", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "this LoRA is for sdxl" in err and "SD 1.x/2.x model" in err


def test_preview_engine_blends_on_sdxl(sdxl_run):
    from ui.preview_engine import GenParams, PreviewEngine

    engine = PreviewEngine()
    adapter = sdxl_run["run"] / "xl.safetensors"
    params = GenParams(prompt="a red circle", steps=2, width=64, height=64, scheduler="dpmpp_2m")
    base = engine.generate(str(sdxl_run["model"]), [(adapter, 0.0)], params)
    blended = engine.generate(str(sdxl_run["model"]), [(adapter, 1.5)], params)
    assert engine.loads == 1 and base.size == blended.size == (64, 64)
    import numpy as np

    assert np.abs(np.asarray(base, dtype=float) - np.asarray(blended, dtype=float)).mean() > 0  # weight matters


def test_lcm_mode_trains_on_sdxl(sdxl_run):
    trainer = trainer_for(sdxl_run, steps=1)
    trainer.config = dataclasses.replace(trainer.config, mode="lcm")
    from sdlora.train.objective import make_objective

    trainer.objective = make_objective(trainer.config, trainer.components, trainer.encoder)
    assert trainer.objective.uncond_features["pooled_text_embeddings"].shape == (1, 32)
    result = trainer.run()
    assert result.status == "done" and len(result.losses) == 1 and 0 < result.losses[0] < 10


def test_a_single_file_sdxl_checkpoint_trains_a_step(tmp_path, monkeypatch):
    """The single-file loader's SDXL folder (original SGM layout -> diffusers, in the cache) feeds the trainer."""
    from ldm_fixtures import build_models, to_single_file
    from safetensors.torch import save_file

    from sdlora.config import config_from_dict
    from sdlora.events import EventBus
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "xl-finetune.safetensors"
    save_file(to_single_file(build_models("sdxl"), "sdxl"), str(checkpoint))
    config = config_from_dict({"name": "file", "model": str(checkpoint),
                               "data": {"dir": str(make_shape_folder(tmp_path / "data", count=2)), "resolution": 64},
                               "train": {"steps": 1, "batch_size": 2}, "save": {"output_dir": str(tmp_path / "out")}})
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    assert trainer.components.family == "sdxl" and trainer.components.text_encoder_2 is not None
    result = trainer.run()
    assert result.status == "done" and 0 < result.losses[0] < 10


def test_fp16_samples_decode_sdxl_latents_in_fp32(sdxl_run, tmp_path):
    """Under fp16 autocast SDXL's VAE (force_upcast: it overflows in fp16) still decodes in fp32, autocast off."""
    from sdlora.config import SampleConfig
    from sdlora.models import load_components
    from sdlora.train.sampling import sample_images

    c = load_components(str(sdxl_run["model"]))
    c.vae.register_to_config(force_upcast=True)  # as SDXL base's VAE config says
    calls = []
    decode = c.vae.decode

    def spy(latents, *args, **kwargs):
        calls.append((latents.dtype, torch.is_autocast_enabled("cpu")))
        return decode(latents, *args, **kwargs)

    c.vae.decode = spy
    paths = sample_images(c, c.unet, SampleConfig(prompts=["a red circle"], steps=2), 64, tmp_path,
                          torch.device("cpu"), torch.float16)
    assert len(paths) == 1 and paths[0].is_file()
    assert calls == [(torch.float32, False)]


def test_sdxl_text_encoder_lora_trains_both_encoders_and_loads_in_the_sdxl_pipeline(sdxl_run, tmp_path):
    from safetensors import safe_open

    from sdlora.config import load_config
    from sdlora.events import EventBus
    from sdlora.models import load_pipeline
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    config = load_config(sdxl_run["preset"], ["name=te", "network.text_encoder=true", "train.steps=2",
                                              f"save.output_dir={tmp_path}"])
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    result = trainer.run()
    assert result.status == "done"
    with safe_open(str(result.adapter_path), framework="pt") as fh:
        keys = list(fh.keys())
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_mlp_fc1") for k in keys)

    pipe = load_pipeline(str(sdxl_run["model"]))
    base = load_pipeline(str(sdxl_run["model"]))
    pipe.load_lora_weights(str(result.adapter_path))
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    for name in ("text_encoder", "text_encoder_2"):
        trained = trainer.text_encoders[name].eval()
        with torch.no_grad():
            expected = trained(ids, output_hidden_states=True).hidden_states[-2]
            got = getattr(pipe, name)(ids, output_hidden_states=True).hidden_states[-2]
            plain = getattr(base, name)(ids, output_hidden_states=True).hidden_states[-2]
        assert ((got - expected).norm() / expected.norm()).item() < 1e-4, name
        assert ((plain - expected).norm() / expected.norm()).item() > 1e-4, name  # its LoRA really trained
