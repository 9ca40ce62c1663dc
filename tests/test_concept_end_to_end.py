"""The whole trainer, end to end on the CPU: a LoRA learns a concept the base model has never seen.

The project's main guard that training, saving, loading and blending work together. The real Trainer trains
a LoRA on the bundled demo set (examples/demo: large rings, a shape the built-in `tiny` model never saw, named
by the trigger word "sks", with examples/demo-reg as prior preservation) with the settings of presets/demo.yaml;
the adapter file it writes is then loaded into a fresh pipeline through `AdapterBlender` (the path of
`sdlora generate` and the Preview tab) and images for the trigger prompt are drawn at adapter weights 0, 0.5
and 1, and for the demo's untriggered prompt ("a red circle on a white background") at weight 1. The procedural
detector counts rings (a shape with an enclosed hole).

Measured on the 2-core CPU (torch 2.13.0+cpu, diffusers 0.42.1, transformers 5.24.0, peft 0.21.2; one thread, as
tests/conftest.py sets), presets/demo.yaml (200 steps of batch 4, LoRA rank 8 on attention, the transformer's
projections and feed-forward and the ResNet convolutions, and on the text encoder; lr 7e-3 decayed by cosine,
logit-normal timesteps of mean 1.5, one caption in ten empty, examples/demo-reg at weight 0.5), 10 DDIM steps at
guidance 5, seeds 0-15 (0-7 at weight 0):
- train.seed 7 (the preset, this test): rings for the trigger prompt at weight 0 / 0.5 / 1 = 0/8 / 6/16 / 15/16;
  rings for the untriggered prompt at weight 1: 0/16 (all 16 read as circles). The same recipe with train.seed 42
  and 1 (`python bench/demo_concept.py --set train.seed=42`): 2/16 / 13/16 and 3/16 / 13/16, leak 0/16 and 1/16.
  The previous preset (300 steps at lr 5e-3, no text-encoder LoRA) gave 10/16 and 11/16 (seeds 7 and 42).
- the adapter's text-encoder half matters, and loads: the same file with its `lora_te_*` keys removed draws 4/16.
- the Preview tab's first image (ui/preview_engine.py PREVIEW_DEFAULTS: the trigger prompt, seed 5, 20 steps,
  guidance 5) at weight 1: a ring.
The counts depend on the library versions and the CPU (float rounding changes what a few hundred steps learn), so a
failure message names the versions. The history of the preset, what did not help and the figures of each variant:
docs/models/tiny.md, "Teaching it a new concept"; `python bench/demo_concept.py` measures a variant.
The thresholds keep a margin below the three training seeds (rings at weight 1 >= 10/16 against 13-15/16; leak
<= 2/16 against 0-1/16; weight 0 <= 1/8 against 0/8; weight 0.5 strictly between weights 0 and 1, 2-6/16 measured):
a LoRA that learned nothing (or an adapter file that did not load, or a weight that did not apply) gives
0 / 0 / 0 and fails, and so does one that draws rings for every prompt (an earlier preset without
examples/demo-reg: 14 of 16 untriggered).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from sdlora.adapters import AdapterBlender
from sdlora.config import config_from_dict
from sdlora.events import EventBus
from sdlora.models import load_pipeline
import prompt_following as evaluate
from sdlora.procedural.detect import detect
from sdlora.train.rundir import new_run
from sdlora.train.trainer import Trainer
from ui.preview_engine import PREVIEW_DEFAULTS, PreviewEngine

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a sks shape on a white background"
UNTRIGGERED = "a red circle on a white background"  # the demo's other sample prompt: must stay a disc
CASE = evaluate.PromptCase(PROMPT, ring=True)
SEEDS = list(range(16))
# The demo preset samples with 20 DDIM steps; 10 give the same ring counts (measured on one adapter: 3 / 12 / 1 of
# 16 at 20 steps, 4 / 12 / 2 at 10, weight 0.5 / 1 / the untriggered prompt) in half the time.
STEPS, GUIDANCE = 10, 5.0


def demo_config(out_dir: Path):
    """presets/demo.yaml as it is, with no sampling or checkpoints (the test draws its own images)."""
    preset = yaml.safe_load((ROOT / "presets" / "demo.yaml").read_text(encoding="utf-8"))
    preset["data"]["dir"] = str(ROOT / "examples" / "demo")
    preset["data"]["reg_dir"] = str(ROOT / "examples" / "demo-reg")
    preset["sample"] = {"every": 0, "prompts": []}
    preset["save"] = {"every": 0, "output_dir": str(out_dir)}
    return config_from_dict(preset)


@pytest.mark.slow
def test_a_lora_trained_on_a_new_concept_draws_it_and_blends_by_weight(tmp_path):
    start = time.perf_counter()
    config = demo_config(tmp_path)
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    result = trainer.run()
    assert result.status == "done" and result.adapter_path.is_file()
    trained = time.perf_counter()

    rates, leak = ring_rates(result.adapter_path)
    # The Preview tab's first image: its default prompt, seed, steps and guidance, this adapter at weight 1.
    preview = detect(PreviewEngine().generate("tiny", [(result.adapter_path, 1.0)], PREVIEW_DEFAULTS))
    print(f"rings for '{PROMPT}' by adapter weight: {rates}; for '{UNTRIGGERED}': {leak}; "
          f"training {trained - start:.1f}s, images {time.perf_counter() - trained:.1f}s; {versions()}")
    # The counts depend on the library versions and the CPU (float rounding changes what 300 steps learn): the
    # message names the versions, to compare with the figures of the docstring.
    assert rates[0.0] <= RING_AT_0, (rates, versions())
    assert rates[1.0] >= RING_AT_1, (rates, versions())
    assert rates[0.0] < rates[0.5] < rates[1.0], (rates, versions())  # half the weight, part of the concept
    assert leak[1.0] <= LEAK_AT_1, (leak, versions())
    assert preview is not None and preview.is_ring, (PREVIEW_DEFAULTS, preview, versions())


def ring_rates(adapter_path: Path, weights=(0.0, 0.5, 1.0)) -> tuple[dict, dict]:
    """Ring rates of the trigger prompt by adapter weight, and of the untriggered prompt at weight 1 (the leak)."""
    blender = AdapterBlender(load_pipeline("tiny"))  # a fresh base: only the file carries what was learned
    rates, leak = {}, {}
    for weight in weights:
        blender.set_weights({adapter_path: weight})
        # At weight 0 the pipeline is the base model again: half the seeds show it (and save 3 s); the base model's
        # untriggered prompt draws no ring (0 of 16 measured), so only weight 1 is asked for it.
        seeds = SEEDS[:8] if weight == 0.0 else SEEDS
        prompts = [PROMPT, UNTRIGGERED] if weight == 1.0 else [PROMPT]
        images = evaluate.generate(blender.pipe, evaluate.jobs(prompts, seeds), steps=STEPS, guidance=GUIDANCE)
        rates[weight] = ring_rate(images[:len(seeds)])
        if weight == 1.0:
            leak[weight] = ring_rate(images[len(seeds):])
    return rates, leak


def versions() -> str:
    import diffusers
    import peft
    import torch
    import transformers

    return (f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
            f"peft {peft.__version__}")


def ring_rate(images: list) -> float:
    return evaluate.follow_rates([CASE], images, len(images))["ring"]


# Below what two training seeds gave (see the docstring): the test asserts that the concept is learned, loaded and
# blended, and held to the trigger, with room for other version sets; the docstring holds the counts themselves.
RING_AT_0 = 1 / 8  # measured 0/8 (every training seed)
RING_AT_1 = 10 / 16  # measured 15/16 (train.seed 7, the preset), 13/16 (train.seed 42 and 1)
LEAK_AT_1 = 2 / 16  # measured 0/16, 0/16 and 1/16; 14/16 without examples/demo-reg (an earlier preset)
