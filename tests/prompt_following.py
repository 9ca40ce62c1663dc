"""How well a text-to-image pipeline follows prompts about simple scenes, measured with the detector.

A `PromptCase` is a prompt and what it asks for (colour, shape, position, background, the demo ring);
`generate` renders (prompt, seed) jobs, and `follow_rates` says, for each attribute, the share of images in which
the detector finds what was asked (cases that do not ask for an attribute do not count towards its rate). Used by
the tests, bench/demo_concept.py and scripts/pretrain_tiny.py (which put tests/ on sys.path), not by the product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdlora.procedural.detect import detect
from sdlora.procedural.scenes import COLOURS, POSITION_PHRASES, PRETRAIN_SHAPES


@dataclass(frozen=True)
class PromptCase:
    prompt: str
    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    background: str | None = None
    ring: bool | None = None  # the demo concept (sks)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def colour_shape_cases(pairs=None, background: str = "white") -> list[PromptCase]:
    """ "a red circle on a white background", for each (colour, shape); by default every colour once, with
    the shapes in turn."""
    colours = [c for c in COLOURS if c != background]
    pairs = pairs or [(c, PRETRAIN_SHAPES[i % len(PRETRAIN_SHAPES)]) for i, c in enumerate(colours)]
    return [PromptCase(f"{_a(c)} {c} {s} on {_a(background)} {background} background", colour=c, shape=s,
                       background=background) for c, s in pairs]


def position_cases(colour: str = "blue", shape: str = "circle", background: str = "white") -> list[PromptCase]:
    return [PromptCase(f"{_a(colour)} {colour} {shape} {phrase} on {_a(background)} {background} background",
                       colour=colour, shape=shape, position=position, background=background)
            for position, phrase in POSITION_PHRASES.items()]


def background_cases(shape: str = "square") -> list[PromptCase]:
    pairs = [("yellow", "blue"), ("white", "black"), ("red", "green"), ("blue", "pink"), ("black", "orange"),
             ("pink", "purple"), ("white", "red"), ("green", "gray")]
    return [PromptCase(f"{_a(c)} {c} {shape} on {_a(bg)} {bg} background", colour=c, shape=shape, background=bg)
            for c, bg in pairs]


def jobs(prompts: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Every (prompt, seed), prompt-major: the order `follow_rates` expects."""
    return [(p, s) for p in prompts for s in seeds]


@torch.no_grad()
def generate(pipe, work: list[tuple[str, int]], *, steps: int = 20, guidance: float = 5.0, batch: int = 64,
             size: int = 64) -> list:
    """One image per (prompt, seed); each image's noise comes from its own seed only, whatever the batch."""
    device = pipe.unet.device
    images = []
    for i in range(0, len(work), batch):
        chunk = work[i:i + batch]
        generators = [torch.Generator(device).manual_seed(s) for _, s in chunk]
        images += pipe([p for p, _ in chunk], generator=generators, num_inference_steps=steps,
                       guidance_scale=guidance, height=size, width=size).images
    return images


def follow_rates(cases: list[PromptCase], images: list, seeds_per_case: int) -> dict[str, float]:
    """Per attribute the share of images showing what their prompt asked for (a missing shape counts as wrong)."""
    hits: dict[str, list[bool]] = {}
    for n, image in enumerate(images):
        case = cases[n // seeds_per_case]
        found = detect(image)
        for attribute in ("colour", "shape", "position", "background", "ring"):
            wanted = getattr(case, attribute)
            if wanted is None:
                continue
            got = getattr(found, "is_ring" if attribute == "ring" else attribute) if found else None
            hits.setdefault(attribute, []).append(got == wanted)
    return {name: sum(ok) / len(ok) for name, ok in hits.items()}
