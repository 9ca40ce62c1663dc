"""Single-file checkpoints (original SD/SDXL layout) load offline, as the diffusers model they were made from."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from ldm_fixtures import build_models, to_single_file, vae_to_ldm  # noqa: E402

from sdlora.config import config_from_dict  # noqa: E402
from sdlora.errors import SdloraError  # noqa: E402
from sdlora.events import EventBus  # noqa: E402
from sdlora.models import load_components, resolve_model  # noqa: E402
from sdlora.models.single_file import looks_like_v_prediction  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """family -> (source diffusers models, original-layout state dict)."""
    out = {}
    for family in ("sd1", "sd2", "sdxl"):
        models = build_models(family)
        out[family] = models, to_single_file(models, family)
    return out


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "cache"))


def write(state, path: Path) -> Path:
    save_file(state, str(path))
    return path


def unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    return (x, torch.tensor([10, 700]), ctx), kwargs


def rel_err(a: torch.nn.Module, b: torch.nn.Module) -> float:
    args, kwargs = unet_inputs(a)
    with torch.no_grad():
        want, got = a(*args, **kwargs).sample, b.float().eval()(*args, **kwargs).sample
    return ((want - got).norm() / want.norm()).item()


@pytest.mark.parametrize("family, model_family, prediction", [
    ("sd1", "auto", "epsilon"), ("sd2", "sd2-v", "v_prediction"), ("sd2", "sd2", "epsilon")])
def test_single_file_loads_as_the_model_it_was_made_from(made, tmp_path, family, model_family, prediction):
    models, state = made[family]
    c = load_components(str(write(state, tmp_path / "m.safetensors")), family=model_family)
    assert c.family == family and c.prediction_type == prediction
    assert rel_err(models["unet"], c.unet) < 1e-4
    ids = c.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(models["text_encoder"](ids)[0], c.text_encoder(ids)[0], atol=1e-5)
        image = torch.randn(1, 3, 32, 32)
        assert torch.allclose(models["vae"](image).sample, c.vae(image).sample, atol=1e-5)
    # SD 2.x's OpenCLIP pads with "!" (token 0), SD 1.x's CLIP with <|endoftext|>.
    assert ids[0, -1].item() == (0 if family == "sd2" else 49407) and len(c.tokenizer) == 49408


def test_sdxl_file_becomes_a_folder_that_diffusers_sdxl_pipeline_loads(made, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    models, state = made["sdxl"]
    folder = resolve_model(str(write(state, tmp_path / "xl.safetensors")))
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    assert rel_err(models["unet"], pipe.unet) < 1e-4
    assert pipe.tokenizer.pad_token_id == 49407 and pipe.tokenizer_2.pad_token_id == 0
    ids = pipe.tokenizer_2(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = models["text_encoder_2"](ids, output_hidden_states=True)
        got = pipe.text_encoder_2(ids, output_hidden_states=True)
    assert torch.allclose(want.text_embeds, got.text_embeds, atol=1e-5)
    assert torch.allclose(want.hidden_states[-2], got.hidden_states[-2], atol=1e-5)
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "epsilon"


@pytest.mark.parametrize("family, model_family", [("sd1", "auto"), ("sd2", "sd2-v")])
def test_trains_a_step_from_a_single_file(made, tmp_path, shapes_dir, family, model_family):
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    path = write(made[family][1], tmp_path / f"{family}.safetensors")
    config = config_from_dict({
        "name": "t", "model": str(path), "model_family": model_family,
        "data": {"dir": str(shapes_dir), "resolution": 64}, "network": {"rank": 4},
        "train": {"steps": 1, "batch_size": 2, "lr": 1e-3}, "save": {"output_dir": str(tmp_path / "out")}})
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    result = trainer.run()
    assert result.status == "done" and len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses[0]))
    adapter = load_file(str(result.adapter_path))
    assert any(k.startswith("lora_unet_") for k in adapter)
    assert trainer.components.prediction_type == ("v_prediction" if model_family == "sd2-v" else "epsilon")


def test_fp16_file_keeps_fp16_weights_and_loads_them(made, tmp_path):
    models, state = made["sd1"]
    c = load_components(str(write({k: v.half() for k, v in state.items()}, tmp_path / "h.safetensors")))
    folder = resolve_model(str(tmp_path / "h.safetensors"))
    unet_file = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in unet_file.values())
    reference = build_models("sd1")["unet"].half().float()  # the same weights, rounded as the file holds them
    assert rel_err(reference, c.unet) < 1e-4


def test_file_without_vae_needs_vae_key(made, tmp_path):
    models, state = made["sd1"]
    path = write({k: v for k, v in state.items() if not k.startswith("first_stage_model.")},
                 tmp_path / "novae.safetensors")
    with pytest.raises(SdloraError, match=r"has no VAE .*vae: /path/to/vae.safetensors"):
        resolve_model(str(path))
    vae_file = write(vae_to_ldm(models["vae"], prefix=""), tmp_path / "vae.safetensors")  # bare, as VAE releases
    c = load_components(str(path), vae=str(vae_file))
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(models["vae"](image).sample, c.vae(image).sample, atol=1e-5)


def test_generate_renders_from_a_file_without_vae_given_one(made, tmp_path, capsys):
    from PIL import Image

    from sdlora.cli import main

    models, state = made["sd1"]
    path = write({k: v for k, v in state.items() if not k.startswith("first_stage_model.")},
                 tmp_path / "novae.safetensors")
    vae_file = write(vae_to_ldm(models["vae"], prefix=""), tmp_path / "vae.safetensors")
    out = tmp_path / "x.png"
    common = ["generate", "--model", str(path), "--prompt", "a red circle", "--steps", "2", "--size", "32x32",
              "--out", str(out)]
    assert main(common) == 2 and "has no VAE" in capsys.readouterr().err
    assert main(common + ["--vae", str(vae_file)]) == 0
    assert Image.open(out).size == (32, 32)


def test_preview_engine_loads_a_checkpoint_file_with_a_separate_vae_once(made, tmp_path):
    from ui.preview_engine import GenParams, PreviewEngine

    models, state = made["sd1"]
    path = str(write({k: v for k, v in state.items() if not k.startswith("first_stage_model.")},
                     tmp_path / "novae.safetensors"))
    vae_file = str(write(vae_to_ldm(models["vae"], prefix=""), tmp_path / "vae.safetensors"))
    engine = PreviewEngine()
    params = GenParams(prompt="a red circle", negative="", seed=0, steps=2, guidance=5.0, width=32, height=32,
                       scheduler="ddim")
    with pytest.raises(SdloraError, match=r"has no VAE"):
        engine.generate(path, [], params)
    first = engine.generate(path, [], params, vae=vae_file)
    again = engine.generate(path, [], params, vae=vae_file)
    assert first.size == (32, 32) and list(first.getdata()) == list(again.getdata()) and engine.loads == 1


def test_ema_weights_are_left_out_in_favour_of_the_main_ones(made, tmp_path):
    models, state = made["sd1"]
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v + 1.0 for k, v in state.items()
           if k.startswith("model.diffusion_model.")}
    path = write({**state, **ema, "model_ema.decay": torch.tensor(0.9999)}, tmp_path / "ema.safetensors")
    c = load_components(str(path))
    assert rel_err(models["unet"], c.unet) < 1e-4
    source = json.loads((resolve_model(str(path)) / "source.json").read_text())
    assert source["unet_weights"].startswith("main") and "EMA tensors unused" in source["unet_weights"]


def test_pickle_is_refused_unless_allowed_then_loads_with_a_warning(made, tmp_path):
    models, state = made["sd1"]
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": state, "global_step": 10}, path)
    with pytest.raises(SdloraError, match=r"pickle file.*allow_pickle: true"):
        resolve_model(str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = load_components(str(path), allow_pickle=True)
    assert any("can run arbitrary code" in str(w.message) for w in caught)
    assert rel_err(models["unet"], c.unet) < 1e-4


@pytest.mark.parametrize("content, message", [
    (lambda p: p.write_bytes(b"\x00\x01garbage" * 100), "not a readable .safetensors file"),
    (lambda p: save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
                         str(p)), "is a LoRA adapter, not a base model"),
    (lambda p: save_file({"foo.weight": torch.zeros(2)}, str(p)), "not a Stable Diffusion checkpoint"),
])
def test_a_bad_file_is_a_one_line_error_saying_what_it_is(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    content(path)
    with pytest.raises(SdloraError) as err:
        resolve_model(str(path))
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_a_pickle_with_exit_2_and_one_line(tmp_path, shapes_dir):
    import subprocess

    path = tmp_path / "m.ckpt"
    torch.save({"x": torch.zeros(1)}, path)
    preset = tmp_path / "p.yaml"
    preset.write_text(f"model: {path}\ndata:\n  dir: {shapes_dir}\n  resolution: 64\n")
    run = subprocess.run([sys.executable, "-m", "sdlora.cli", "train", "--preset", str(preset), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    last = run.stderr.strip().splitlines()[-1]  # (a library may print a notice of its own before it)
    assert run.returncode == 2 and last.startswith("sdlora train: error: model") and "allow_pickle: true" in last


def test_conversion_is_cached_by_content(made, tmp_path):
    _, state = made["sd1"]
    first = resolve_model(str(write(state, tmp_path / "a.safetensors")))
    stamp = (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    (tmp_path / "b").mkdir()
    again = resolve_model(str(write(state, tmp_path / "b" / "a.safetensors")))  # same bytes, another place
    assert again == first and (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_sd2_prediction_type_from_a_yaml_beside_the_file_and_family_mismatch(made, tmp_path):
    _, state = made["sd2"]
    path = write(state, tmp_path / "v.safetensors")
    (tmp_path / "v.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert load_components(str(path)).prediction_type == "v_prediction"
    with pytest.raises(SdloraError, match="model_family: sdxl does not match"):
        resolve_model(str(path), family="sdxl")


def test_v_prediction_probe_reads_the_output_at_the_last_timestep():
    models = build_models("sd2")
    unet = models["unet"]
    with torch.no_grad():
        for p in unet.parameters():
            p.zero_()
        unet.conv_out.bias.fill_(-2.0)  # output -2 everywhere: far below the 0.5 input, as a v model's
        assert looks_like_v_prediction(unet)
        unet.conv_out.bias.fill_(0.6)  # output near the input, as an epsilon model's
        assert not looks_like_v_prediction(unet)


def test_diffusers_folder_family_and_model_family_override(made, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from sdlora.models.clip_vocab import write_clip_tokenizer
    from sdlora.models.ldm_configs import SD_SCHEDULER

    models, _ = made["sd2"]
    write_clip_tokenizer(tmp_path / "tok", pad="open_clip")
    pipe = StableDiffusionPipeline(**models, tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "tok"),
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd2")
    c = load_components(str(tmp_path / "sd2"))
    assert c.family == "sd2" and c.prediction_type == "epsilon"  # OpenCLIP's gelu tells SD 2.x at any width
    assert load_components(str(tmp_path / "sd2"), family="sd2-v").prediction_type == "v_prediction"


@pytest.mark.parametrize("mode, side, tiled", [("auto", 512, False), ("auto", 1536, True), ("on", 64, True),
                                               ("off", 2048, False)])
def test_vae_tiling_option(mode, side, tiled):
    from diffusers import AutoencoderKL

    from sdlora.train.encode import set_vae_memory
    from ldm_fixtures import SD_VAE

    vae = AutoencoderKL(**SD_VAE)
    assert set_vae_memory(vae, mode, side) is tiled
    assert vae.use_tiling is tiled and vae.use_slicing


def test_an_inpainting_unet_is_refused(made, tmp_path):
    _, state = made["sd1"]
    conv_in = state["model.diffusion_model.input_blocks.0.0.weight"]
    inpaint = {**state, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(conv_in.shape[0], 9, 3, 3)}
    with pytest.raises(SdloraError, match="9 input channels"):
        resolve_model(str(write(inpaint, tmp_path / "inpaint.safetensors")))
