"""Built-in models and loading: folders plain diffusers loads, clear errors for anything else."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sdlora.errors import SdloraError
from sdlora.models import load_components, resolve_model


def test_models_json_lists_folders_that_plain_diffusers_loads():
    out = subprocess.run([sys.executable, "-m", "sdlora.cli", "models", "--json"], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    rows = json.loads(out)
    assert {"name", "path"} <= rows[0].keys() and rows[0]["name"] == "tiny"
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(rows[0]["path"], local_files_only=True, dtype=torch.float32)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_components_carry_the_training_schedule():
    c = load_components("tiny")
    assert c.family == "sd1" and c.prediction_type == "epsilon" and c.vae_scale_factor == 4
    assert type(c.noise_scheduler).__name__ == "DDPMScheduler"


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such file or folder"),
    (lambda p: (p.mkdir(), p)[1], "model_index.json is missing"),
    (lambda p: (p.mkdir(), (p / "model_index.json").write_text("{}"), p)[2], "subfolder(s) unet, vae"),
    (lambda p: (p.mkdir(), (p / "model_index.json").write_text("{nope"), p)[2], "not valid JSON"),
])
def test_a_bad_model_path_is_a_clear_error_naming_it(tmp_path, make, message):
    path = make(tmp_path / "model")
    with pytest.raises(SdloraError) as err:
        resolve_model(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_importing_and_loading_leave_the_callers_process_alone():
    """A library must not change its user's environment or logging: sdlora.models neither sets HF_* variables
    nor leaves transformers/diffusers logging silenced after a load."""
    import os
    import subprocess
    import sys

    code = """
import os, json
for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.pop(k, None)
import transformers, diffusers
transformers.utils.logging.set_verbosity_info()
import sdlora.models
sdlora.models.load_components("tiny")
print(json.dumps({"env": [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
                          if k in os.environ],
                  "verbosity": transformers.utils.logging.get_verbosity(),
                  "bars": transformers.utils.logging.is_progress_bar_enabled()}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         check=True).stdout.strip().splitlines()[-1]
    import json
    import logging

    seen = json.loads(out)
    assert seen == {"env": [], "verbosity": logging.INFO, "bars": True}
