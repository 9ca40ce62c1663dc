"""The whole trainer, end to end on the CPU: a LoRA learns a concept the base model has never seen.

The project's main guard that training, saving, loading and blending work together. The real Trainer trains
a LoRA on the bundled demo set (examples/demo: large rings, a shape the built-in `tiny` model never saw, named
by the trigger word "sks", with examples/demo-reg as prior preservation) with the settings of presets/demo.yaml;
the adapter file it writes is then loaded into a fresh pipeline through `AdapterBlender` (the path of
`sdlora generate` and the Preview tab) and images for the trigger prompt are drawn at adapter weights 0, 0.5
and 1, and for the demo's untriggered prompt ("a red circle on a white background") at weight 1. The procedural
detector counts rings (a shape with an enclosed hole).

Measured on the 2-core CPU (torch 2.13, one thread as tests/conftest.py sets), presets/demo.yaml (400 steps of
batch 4, rank 8 on attention and ResNet convolutions, lr 5e-3, examples/demo-reg at weight 0.5), 10 DDIM
steps at guidance 5, seeds 0-15 (0-7 at weight 0):
- rings for the trigger prompt at weight 0 / 0.5 / 1 = 0/8 / 6/16 / 12/16 (0 / 0.375 / 0.75); rings for the
  untriggered prompt at weight 1: 4/16 (at weight 0, the base model: 0/16).
- time, the machine otherwise idle (load 0.5-0.9): training 64.8 s (400 steps), images 16.7 s (56 images), the
  test 84.6 s under pytest (`time python -m pytest -q -s tests/test_concept_end_to_end.py`: 87 s wall).
- the preset's history, 16 seeds each, 20 DDIM steps but the last row (one training run per row, so +-2
  images is noise):
  | what changed | weight 0 / 0.5 / 1 | untriggered at 1 |
  | the old preset: 200 steps, medium rings at three heights, no regularization | 0 / 3 / 7 | 14 |
  | large centred rings (examples/demo as now), still no regularization | 0 / 3 / 11 | 12 |
  | + examples/demo-reg at weight 0.5, 250 steps | 0 / 0 / 4 (text-encoder LoRA on) | 1 |
  | + 400 steps, cached latents (the rings are seen half as often per step) | 0 / 3 / 12 | 1 |
  | 300 steps instead | 0 / 0 / 5 | 2 |
  | attention + convolutions without proj_in/out and feed-forward (14% faster steps: the preset) | 0 / 6 / 12 | 4 |
  A regularization set of all base shapes in any composition (not half discs) stopped the rings from being
  learned at all (0-1 of 16 at weight 1), as did regularization weight 1.0 at 250 steps.
The thresholds keep a margin of two images in sixteen (one in eight at weight 0): a LoRA that learned nothing
(or an adapter file that did not load, or a weight that did not apply) gives 0 / 0 / 0 and fails, and so does
one that draws rings for every prompt (the preset without examples/demo-reg: 12-15 of 16 untriggered).
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from sdlora.adapters import AdapterBlender
from sdlora.config import config_from_dict
from sdlora.events import EventBus
from sdlora.models import load_pipeline
from sdlora.procedural import evaluate
from sdlora.train.rundir import new_run
from sdlora.train.trainer import Trainer

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


def test_a_lora_trained_on_a_new_concept_draws_it_and_blends_by_weight(tmp_path):
    start = time.perf_counter()
    config = demo_config(tmp_path)
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    result = trainer.run()
    assert result.status == "done" and result.adapter_path.is_file()
    trained = time.perf_counter()

    blender = AdapterBlender(load_pipeline("tiny"))  # a fresh base: only the file carries what was learned
    rates, leak = {}, {}
    for weight in (0.0, 0.5, 1.0):
        blender.set_weights({result.adapter_path: weight})
        # At weight 0 the pipeline is the base model again: half the seeds show it (and save 3 s); the base model's
        # untriggered prompt draws no ring (0 of 16 measured), so only weight 1 is asked for it.
        seeds = SEEDS[:8] if weight == 0.0 else SEEDS
        prompts = [PROMPT, UNTRIGGERED] if weight == 1.0 else [PROMPT]
        images = evaluate.generate(blender.pipe, evaluate.jobs(prompts, seeds), steps=STEPS, guidance=GUIDANCE)
        rates[weight] = ring_rate(images[:len(seeds)])
        if weight == 1.0:
            leak[weight] = ring_rate(images[len(seeds):])
    print(f"rings for '{PROMPT}' by adapter weight: {rates}; for '{UNTRIGGERED}': {leak}; "
          f"training {trained - start:.1f}s, images {time.perf_counter() - trained:.1f}s")
    assert rates[0.0] <= RING_AT_0, rates
    assert rates[1.0] >= RING_AT_1, rates
    assert rates[0.0] < rates[0.5] < rates[1.0], rates
    assert leak[1.0] <= LEAK_AT_1, leak


def ring_rate(images: list) -> float:
    return evaluate.follow_rates([CASE], images, len(images))["ring"]


# Margins of two images in sixteen (one in eight at weight 0) from what was measured; see the docstring.
RING_AT_0 = 1 / 8  # measured 0/8
RING_AT_1 = 10 / 16  # measured 12/16
LEAK_AT_1 = 6 / 16  # measured 4/16; 12-15/16 without examples/demo-reg
