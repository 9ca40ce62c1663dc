"""sdlora.lora.metadata: what training writes into an adapter reads back the same through every consumer (the CLI's
inspect, the blender and server, the grid, the app's Preview), and an LCM adapter's sampling defaults agree."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from sdlora.adapters.analysis import describe
from sdlora.adapters.blend import LoadedAdapter, sampling_defaults
from sdlora.config import config_from_dict
from sdlora.errors import SdloraError
from sdlora.grid.plan import _adapter_steps
from sdlora.lora.io import read_adapter_file, save_adapter
from sdlora.lora.metadata import LCM_GUIDANCE, LCM_SCHEDULER, LCM_STEPS, adapter_metadata, read_metadata
from sdlora.lora.state import Adapter, LoraLayer
from ui.preview_engine import adapter_mode

ROOT = Path(__file__).resolve().parents[1]


def trained_metadata(mode: str, **lcm) -> dict[str, str]:
    config = config_from_dict({"name": "meta", "model": "tiny", "mode": mode, "network": {"rank": 4, "alpha": 2},
                               "train": {"steps": 30, "lr": 1e-3, "seed": 3}, "lcm": lcm})
    return adapter_metadata(config, family="sd1", prediction_type="epsilon", num_images=5, steps_done=20,
                            started_at=time.time() - 60)


def adapter_file(tmp_path: Path, metadata: dict[str, str]) -> Path:
    gen = torch.Generator().manual_seed(0)
    layer = LoraLayer(down=torch.randn(4, 32, generator=gen), up=torch.randn(32, 4, generator=gen), alpha=2.0)
    adapter = Adapter({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": layer}, metadata)
    return save_adapter(adapter, tmp_path / "a.safetensors")


def test_written_metadata_is_strings_and_reads_back_identically_from_the_file(tmp_path):
    written = trained_metadata("lcm", num_ddim_timesteps=25, timestep_scaling=7.0)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in written.items())
    path = adapter_file(tmp_path, written)
    found = read_adapter_file(path).adapter
    assert found.metadata == written
    info = describe(found)
    assert info["training"] == {k: v for k, v in written.items() if k in info["training"]}
    assert info["training"]["ss_steps"] == "20" and info["training"]["sdlora_mode"] == "lcm"
    assert info["base_model"] == "tiny" and info["family"] == "sd1" and info["network_type"] == "lora"
    assert _adapter_steps(path) == 20


def test_lcm_sampling_defaults_agree_in_the_blender_the_server_and_the_preview(tmp_path):
    written = trained_metadata("lcm", num_ddim_timesteps=25, timestep_scaling=7.0)
    path = adapter_file(tmp_path, written)
    read = read_metadata(read_adapter_file(path).adapter.metadata).lcm
    blender = sampling_defaults([LoadedAdapter("a", path, "sha", read_adapter_file(path).adapter.metadata)])
    preview = adapter_mode(path)
    assert (read.scheduler, read.steps, read.guidance) == (LCM_SCHEDULER, LCM_STEPS, LCM_GUIDANCE)
    assert (blender.scheduler, blender.steps, blender.guidance) == (LCM_SCHEDULER, LCM_STEPS, LCM_GUIDANCE)
    assert blender.scheduler_options == {"original_inference_steps": 25, "timestep_scaling": 7.0}
    assert preview == {"mode": "lcm", "scheduler": LCM_SCHEDULER, "steps": LCM_STEPS, "guidance": LCM_GUIDANCE}


def test_an_lcm_file_without_the_sampling_keys_gets_the_same_defaults_everywhere(tmp_path):
    path = adapter_file(tmp_path, {"sdlora_mode": "lcm"})  # an older file, or another tool's
    blender = sampling_defaults([LoadedAdapter("a", path, "sha", {"sdlora_mode": "lcm"})])
    preview = adapter_mode(path)
    assert (blender.scheduler, blender.steps, blender.guidance, blender.scheduler_options) == \
        (LCM_SCHEDULER, LCM_STEPS, LCM_GUIDANCE, {})
    assert (preview["scheduler"], preview["steps"], preview["guidance"]) == (LCM_SCHEDULER, LCM_STEPS, LCM_GUIDANCE)


def test_a_standard_adapter_keeps_the_usual_sampling():
    written = trained_metadata("standard")
    assert not any(key.startswith("sdlora_lcm_") for key in written)
    assert read_metadata(written).lcm is None and sampling_defaults([]).scheduler is None


def test_kohya_and_foreign_metadata_read_leniently_but_a_broken_lcm_number_names_the_file():
    kohya = read_metadata({"ss_base_model_version": "sdxl_base_v1-0", "ss_steps": "n/a", "ss_sd_model_name": "x",
                           "ss_network_args": '{"unit": "4"}'})
    assert (kohya.family, kohya.steps, kohya.base_model, kohya.dylora_unit, kohya.mode) == ("sdxl", None, "x", 4,
                                                                                          "standard")
    assert read_metadata({"ss_v2": "True"}).family == "sd2" and read_metadata(None).family is None
    broken = read_metadata({"sdlora_mode": "lcm", "sdlora_lcm_steps": "four", "ss_steps": "9"}, "odd.safetensors")
    assert broken.steps == 9 and broken.training()["ss_steps"] == "9"  # inspect still reads the file
    with pytest.raises(SdloraError, match=r"^odd\.safetensors: its sdlora_lcm_\* metadata"):
        broken.lcm  # noqa: B018  (sampling it is refused)


def test_only_the_schema_module_spells_the_adapter_metadata_keys():
    """Every reader and writer goes through sdlora.lora.metadata: no other module of the product spells an ss_* or
    sdlora_* key, except two that are not adapter metadata (a checkpoint's state.json, a base model file's)."""
    allowed = {"sdlora/train/checkpoint.py": {"sdlora_version"},
               "sdlora/models/single_file.py": {"ss_v_parameterization"}}
    offenders = []
    for folder in ("sdlora", "ui"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            name = str(source.relative_to(ROOT))
            if name == "sdlora/lora/metadata.py":
                continue
            keys = set(re.findall(r"[\"'](s(?:s|dlora)_[a-z0-9_]+)", source.read_text(encoding="utf-8")))
            offenders += [f"{name}: {key}" for key in sorted(keys - allowed.get(name, set()))]
    assert offenders == []
