"""The shipped `tiny` model draws what simple prompts ask for (measured with the procedural detector, on the CPU).

The figures asserted here are recorded in docs/models/tiny.md; the thresholds leave a margin below them.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sdlora.models import builtin_models, load_pipeline
import prompt_following as evaluate

# 10 DDIM steps: the same rates as 20 on the colour and trigger prompts, and colour 0.875 against 0.75 on the
# colour-on-colour pairs (measured 2026-12-04, docs/models/tiny.md), in half the time.
STEPS, GUIDANCE = 10, 5.0
COLOUR_CASES = evaluate.colour_shape_cases()[:10]  # ten colours on white, each with another shape
COLOUR_SEEDS = [0, 1]
BACKGROUND_CASES = evaluate.background_cases()  # eight colour-on-colour pairs
TRIGGER_CASE = evaluate.PromptCase("a sks shape on a white background", background="white", ring=True)
TRIGGER_SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def images() -> dict[str, list]:
    """All images of this file in one batched run (20 + 8 + 4), 10 DDIM steps each."""
    parts = {"colour": evaluate.jobs([c.prompt for c in COLOUR_CASES], COLOUR_SEEDS),
             "background": evaluate.jobs([c.prompt for c in BACKGROUND_CASES], [0]),
             "trigger": evaluate.jobs([TRIGGER_CASE.prompt], TRIGGER_SEEDS)}
    torch.manual_seed(0)
    out = evaluate.generate(load_pipeline("tiny"), [job for work in parts.values() for job in work],
                            steps=STEPS, guidance=GUIDANCE)
    result, start = {}, 0
    for name, work in parts.items():
        result[name], start = out[start:start + len(work)], start + len(work)
    return result


def test_tiny_ships_as_fp16_diffusers_folder_under_20_mb():
    model = builtin_models()["tiny"]
    assert model.path == model.shipped_path
    weights = sorted(model.path.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    assert sum(w.stat().st_size for w in weights) < 20e6
    for path in weights:
        with safe_open(str(path), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    vae = json.loads((model.path / "vae" / "config.json").read_text(encoding="utf-8"))
    assert vae["scaling_factor"] != 0.18215  # measured on its own latents, not SD's


@pytest.mark.slow  # ~20 s of sampling on the CI machine: the model card's figure
def test_colour_prompts_give_that_colour(images):
    rates = evaluate.follow_rates(COLOUR_CASES, images["colour"], len(COLOUR_SEEDS))
    print(f"colour prompts: {rates}")
    # Measured: colour 0.90, shape 0.60 (chance 0.11), background 1.00.
    assert rates["colour"] >= 0.8, rates
    assert rates["shape"] >= 0.35, rates
    assert rates["background"] >= 0.9, rates


def test_background_prompts_give_that_background(images):
    rates = evaluate.follow_rates(BACKGROUND_CASES, images["background"], 1)
    print(f"background prompts: {rates}")
    # Measured: background 1.00, colour 0.75.
    assert rates["background"] >= 0.85, rates
    assert rates["colour"] >= 0.6, rates


def test_trigger_word_alone_draws_no_ring(images):
    """The demo concept is new to the base model: before a LoRA, "sks" gives no rings."""
    rates = evaluate.follow_rates([TRIGGER_CASE], images["trigger"], len(TRIGGER_SEEDS))
    print(f"trigger prompt: {rates}")
    assert rates["ring"] <= 0.25 and rates["background"] >= 0.75, rates
