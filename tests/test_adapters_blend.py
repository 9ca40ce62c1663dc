"""Live blending through diffusers' adapters, merging into the base weights, and the two agreeing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_adapters_fixtures import (ATTENTION, apply_by_hand, make_adapter, relative_difference, tiny_pipeline,
                                    unet_output)

from sdlora.adapters import Adapter, AdapterBlender, LoraLayer, merge_into, parse_lora_spec, save_adapter
from sdlora.adapters.merge import merge
from sdlora.errors import SdloraError
from sdlora.models.loading import load_pipeline
from sdlora.schedulers import SCHEDULERS, make_scheduler

TEXT = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
UNET = ATTENTION + ("ff.net.2", "proj_in", "conv1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two adapters with different targets, ranks and alphas, saved in both formats."""
    folder = tmp_path_factory.mktemp("loras")
    pipe = tiny_pipeline()
    style = make_adapter(pipe, UNET, TEXT, rank=4, alpha=2.0, seed=1)
    subject = make_adapter(pipe, ("to_k", "to_v", "ff.net.0.proj"), rank=2, alpha=4.0, seed=2, vary=True,
                           metadata={"sdlora_mode": "lcm", "sdlora_lcm_scheduler": "lcm", "sdlora_lcm_steps": "3",
                                     "sdlora_lcm_guidance": "1.5", "sdlora_lcm_original_steps": "25",
                                     "sdlora_lcm_timestep_scaling": "10.0"})
    return {"style": (style, save_adapter(style, folder / "style.safetensors", fmt="kohya")),
            "subject": (subject, save_adapter(subject, folder / "subject.safetensors", fmt="diffusers"))}


def image_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_blend_weights_match_the_weighted_sum_of_dw_applied_by_hand(files):
    (style, style_path), (subject, subject_path) = files["style"], files["subject"]
    pipe = tiny_pipeline()
    both = unet_output(apply_by_hand(apply_by_hand(pipe, style, 0.7), subject, -1.3))
    style_only = unet_output(apply_by_hand(pipe, style))
    blender = AdapterBlender(pipe)
    blender.set_weights({style_path: 0.7, subject_path: -1.3})
    assert relative_difference(unet_output(blender.pipe), both) < 1e-4
    # re-weighting needs no reload: the same two adapters, now at other weights
    blender.set_weights({style_path: 1.0})
    assert len(blender.adapters) == 2
    assert relative_difference(unet_output(blender.pipe), style_only) < 1e-4
    assert relative_difference(style_only, both) > 0.05


def test_weight_zero_gives_exactly_the_base_image(files, tmp_path):
    base = AdapterBlender(tiny_pipeline()).generate("a red circle", steps=2, seed=5)
    blender = AdapterBlender(tiny_pipeline())
    blender.set_weights({files["style"][1]: 1.0})
    with_lora = blender.generate("a red circle", steps=2, seed=5)
    blender.set_weights({files["style"][1]: 0.0, files["subject"][1]: 0.0})
    zero = blender.generate("a red circle", steps=2, seed=5)
    assert np.abs(image_array(with_lora) - image_array(base)).max() > 0  # the LoRA does show
    assert np.array_equal(image_array(zero), image_array(base))


def test_same_content_loads_once_and_weights_are_range_checked(files, tmp_path):
    copy_path = tmp_path / "copy.safetensors"
    shutil.copy(files["style"][1], copy_path)
    blender = AdapterBlender(tiny_pipeline())
    first, second = blender.load(files["style"][1]), blender.load(copy_path)
    assert first.name == second.name == "lora_" + first.sha256[:16]
    assert blender.pipe.get_list_adapters() == {"unet": [first.name], "text_encoder": [first.name]}
    with pytest.raises(SdloraError, match=r"outside \[-2, 2\]"):
        blender.set_weights({copy_path: 2.5})


def test_an_lcm_adapter_supplies_scheduler_steps_and_guidance(files):
    blender = AdapterBlender(tiny_pipeline())
    blender.set_weights({files["style"][1]: 1.0})
    assert blender.defaults().scheduler is None and blender.defaults().steps == 25
    blender.set_weights({files["style"][1]: 1.0, files["subject"][1]: 0.5})
    defaults = blender.defaults()
    assert (defaults.scheduler, defaults.steps, defaults.guidance) == ("lcm", 3, 1.5)
    blender.generate("a cat", seed=0)
    assert type(blender.pipe.scheduler).__name__ == "LCMScheduler"
    assert len(blender.pipe.scheduler.timesteps) == 3
    # Its few timesteps come from the 25-step solver schedule it was distilled on (t = 39, 79, ..., 999),
    # not LCMScheduler's default of 50 (t = 19, 39, ...).
    assert blender.pipe.scheduler.config.original_inference_steps == 25
    assert all((int(t) + 1) % 40 == 0 for t in blender.pipe.scheduler.timesteps), blender.pipe.scheduler.timesteps


def test_merged_model_gives_the_image_of_the_live_blend(files, tmp_path):
    (_, style_path), (_, subject_path) = files["style"], files["subject"]
    out = merge("tiny", [(style_path, 0.8), (subject_path, 1.5)], tmp_path / "merged")
    merged = load_pipeline(str(out))
    blender = AdapterBlender(tiny_pipeline())
    blender.set_weights({style_path: 0.8, subject_path: 1.5})
    assert relative_difference(unet_output(merged), unet_output(blender.pipe)) < 1e-4
    # guidance given: the live blend would otherwise take the LCM adapter's 1.5, the merged model 7.5
    live = blender.generate("a blue square", steps=3, seed=2, scheduler="euler", guidance=5.0)
    baked = AdapterBlender(merged).generate("a blue square", steps=3, seed=2, scheduler="euler", guidance=5.0)
    assert np.abs(image_array(live) - image_array(baked)).max() <= 2  # 8-bit rounding of a ~1e-6 difference
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    with pytest.raises(SdloraError, match="not an empty folder"):
        merge("tiny", [(style_path, 1.0)], out)


def test_merge_refuses_an_adapter_for_another_model(files):
    name = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    sd2_shaped = LoraLayer(down=torch.zeros(4, 1024), up=torch.zeros(128, 4), alpha=1.0)
    missing = LoraLayer(down=torch.zeros(4, 8), up=torch.zeros(8, 4), alpha=1.0)
    pipe = tiny_pipeline()
    with pytest.raises(SdloraError, match="x.safetensors: layer .*attn2.to_k has shape .*another base model"):
        merge_into(pipe, [(Adapter({name: sd2_shaped}, {}), 1.0)], sources=["x.safetensors"])
    with pytest.raises(SdloraError, match="is not in this model"):
        merge_into(pipe, [(Adapter({"unet.input_blocks.1.1.proj_in": missing}, {}), 1.0)])


def test_lora_spec_splits_on_the_last_colon_only_before_a_number():
    assert parse_lora_spec("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_lora_spec("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_lora_spec("a.safetensors:-1") == ("a.safetensors", -1.0)
    assert parse_lora_spec(r"C:\loras\a.safetensors") == (r"C:\loras\a.safetensors", 1.0)
    assert parse_lora_spec(r"C:\loras\a.safetensors:0.8") == (r"C:\loras\a.safetensors", 0.8)
    assert parse_lora_spec("/tmp/x:y/a.safetensors") == ("/tmp/x:y/a.safetensors", 1.0)


def test_every_scheduler_name_keeps_the_model_schedule():
    base = tiny_pipeline().scheduler.config
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, base)
        assert scheduler.config.beta_end == base.beta_end and scheduler.config.prediction_type == "epsilon"
    assert make_scheduler("dpmpp_2m", base).config.algorithm_type == "dpmsolver++"
    with pytest.raises(SdloraError, match="scheduler 'plms' is unknown"):
        make_scheduler("plms", base)
