"""The procedural scenes (pretraining and demo data) and the detector that reads them back from images."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sdlora.models.tiny import TINY_WORDS
from sdlora.procedural import (demo_reg_scenes, demo_scenes, detect, render, render_many, scene, write_demo_reg_set,
                               write_demo_set)
from sdlora.procedural.scenes import COLOURS, DEMO_SHAPE, DEMO_TRIGGER, PRETRAIN_SHAPES, sample_scene

DEMO_DIR = Path(__file__).resolve().parents[1] / "examples" / "demo"
DEMO_REG_DIR = DEMO_DIR.parent / "demo-reg"


def test_scenes_are_a_function_of_seed_and_index():
    first = [scene(7, i) for i in range(50)]
    assert first == [scene(7, i) for i in range(50)]
    assert [np.asarray(render(s)).tobytes() for s in first[:10]] == \
        [np.asarray(render(s)).tobytes() for s in first[:10]]
    other = [scene(8, i) for i in range(50)]
    assert sum(a == b for a, b in zip(first, other)) == 0


def test_render_many_in_processes_equals_rendering_one_by_one():
    images, captions = render_many(45, seed=3, workers=2, chunk=20)
    assert images.shape == (45, 64, 64, 3) and images.dtype == np.uint8
    for i in (0, 19, 20, 44):
        assert np.array_equal(images[i], np.asarray(render(scene(3, i))))
        assert captions[i] == scene(3, i).caption


def test_captions_use_only_words_the_tiny_tokenizer_keeps_whole():
    vocabulary = set(TINY_WORDS)
    words = Counter(w for i in range(2000) for w in scene(0, i).caption.split())
    assert set(words) <= vocabulary, set(words) - vocabulary
    # Every attribute is named often, and sometimes left out.
    for name in (*PRETRAIN_SHAPES, *COLOURS, "striped", "dotted", "checkered", "small", "large", "top", "left",
                 "background"):
        assert words[name] > 40, name


def test_pretraining_scenes_never_show_the_demo_concept():
    scenes = [scene(0, i) for i in range(3000)]
    assert not any(s.shape == DEMO_SHAPE for s in scenes)
    assert not any({DEMO_SHAPE, DEMO_TRIGGER} & set(s.caption.split()) for s in scenes)
    shapes = Counter(s.shape for s in scenes)
    assert set(shapes) == set(PRETRAIN_SHAPES) and min(shapes.values()) > 250


def test_detector_reads_colour_and_position_of_rendered_scenes():
    scenes = [scene(11, i) for i in range(300)]
    found = [detect(render(s)) for s in scenes]
    assert all(d is not None for d in found)
    rate = lambda ok: sum(ok) / len(scenes)  # noqa: E731
    colour = rate(d.colour == s.colour for s, d in zip(scenes, found))
    background = rate(d.background == s.background for s, d in zip(scenes, found))
    position = rate(d.position == s.position for s, d in zip(scenes, found))
    texture = rate(d.textured == (s.texture != "solid") for s, d in zip(scenes, found))
    assert colour >= 0.95 and background >= 0.95 and position >= 0.95, (colour, background, position)
    assert texture >= 0.9, texture
    solid = [(s, d) for s, d in zip(scenes, found) if s.texture == "solid"]
    assert sum(d.shape == s.shape for s, d in solid) / len(solid) >= 0.9
    # A centroid is within a few pixels of where the scene put the shape.
    errors = [np.hypot(d.centroid[0] - s.centre[0], d.centroid[1] - s.centre[1]) for s, d in zip(scenes, found)]
    assert np.median(errors) < 1.0 and np.percentile(errors, 95) < 3.0


def test_detector_tells_rings_from_every_pretraining_shape_and_texture():
    pretraining = [detect(render(scene(5, i))) for i in range(300)]
    assert sum(d.is_ring for d in pretraining) == 0  # measured: no enclosed hole in 600 scenes
    demo = demo_scenes(20)
    rings = [detect(render(s)) for s in demo]
    assert all(d.is_ring and d.shape == DEMO_SHAPE for d in rings)
    assert all(d.colour == s.colour and d.position == s.position for s, d in zip(demo, rings))


def thick_ring(radius: float, hole: float) -> Image.Image:
    """A red disc with a white hole in the middle (a generated ring is often this: bold, with a small hole)."""
    image = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(image)
    for r, fill in ((radius, (220, 40, 40)), (hole, "white")):
        if r:
            draw.ellipse([128 - 4 * r, 128 - 4 * r, 128 + 4 * r, 128 + 4 * r], fill=fill)
    return image.reduce(4)


def test_detector_counts_thick_rings_with_small_holes():
    # Holes 5-6 px across in discs 16-22 px across: the closing that joins textured fills would fill them.
    assert all(detect(thick_ring(r, h)).is_ring for r, h in ((8, 2.5), (11, 3.0), (8, 4.0)))
    assert not any(detect(thick_ring(r, 0)).is_ring for r in (8, 11, 14))
    assert not detect(thick_ring(11, 1.0)).is_ring  # a hole of a pixel or two is noise, not a ring


def test_detector_finds_nothing_on_a_plain_image_and_survives_noise():
    assert detect(Image.new("RGB", (64, 64), (245, 245, 245))) is None
    rng = np.random.default_rng(0)
    noisy_ok = 0
    scenes = [sample_scene(random.Random(i)) for i in range(60)]
    for s in scenes:
        pixels = np.asarray(render(s)).astype(np.float32) + rng.normal(0, 12, (64, 64, 3))
        d = detect(np.clip(pixels, 0, 255).astype(np.uint8))
        noisy_ok += d is not None and d.colour == s.colour and d.position == s.position
    assert noisy_ok / len(scenes) >= 0.9


def assert_bundled_equals_written(folder: Path, written: list[Path]) -> list[list[str]]:
    """The bundled images and captions of `folder` are exactly `written`; returns the captions' words."""
    bundled = sorted(folder.glob("*.png"))
    assert [p.name for p in bundled] == [p.name for p in written]
    captions = []
    for ours, theirs in zip(bundled, written):
        assert np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(theirs))), ours.name
        caption = ours.with_suffix(".txt").read_text(encoding="utf-8")
        assert caption == theirs.with_suffix(".txt").read_text(encoding="utf-8")
        assert set(caption.split()) <= set(TINY_WORDS)
        captions.append(caption.split())
    return captions


def test_bundled_demo_set_is_what_the_generator_writes(tmp_path):
    captions = assert_bundled_equals_written(DEMO_DIR, write_demo_set(tmp_path / "demo"))
    assert 16 <= len(captions) <= 24
    for words in captions:
        assert DEMO_TRIGGER in words and "left" not in words and "right" not in words


def test_bundled_demo_reg_set_is_base_shapes_half_discs_without_the_trigger(tmp_path):
    captions = assert_bundled_equals_written(DEMO_REG_DIR, write_demo_reg_set(tmp_path / "reg"))
    assert not any({DEMO_TRIGGER, DEMO_SHAPE} & set(words) for words in captions)
    scenes = demo_reg_scenes()
    assert len(captions) == len(scenes) and all(s.shape == "circle" for s in scenes[::2])
    found = [detect(render(s)) for s in scenes]
    assert not any(d.is_ring for d in found)
    assert all(d.colour == s.colour and d.position == s.position for s, d in zip(scenes, found))
