"""A procedural, captioned data set of simple 64 px scenes: one shape, its colour, size, position, fill texture
and a plain background, with a caption that says so in words of the tiny model's vocabulary.

Everything is a pure function of (seed, index): `scene(seed, i)` draws the i-th scene's attributes and caption
from its own random stream, and `render(scene)` draws it with PIL at 4x and averages down (anti-aliasing), so any
image of the set can be regenerated alone. `render_many` renders ranges of the set in worker processes for
pretraining (a few hundred thousand images in seconds on 16 cores).

The shape "ring" is kept out of the pretraining scenes (and the word out of their captions): it is the new
concept of the bundled demo data set (`demo_scenes`), captioned with the trigger word "sks".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

# Named colours (sRGB). Pairwise at least ~100 apart, so a rendered colour (jittered by at most ±10 a channel)
# is always nearest its own name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 140, 20),
    "yellow": (245, 215, 40),
    "green": (40, 160, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 210),
    "purple": (140, 50, 180),
    "pink": (245, 140, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (130, 130, 130),
    "brown": (125, 75, 35),
}
COLOUR_JITTER = 10
MIN_CONTRAST = 120.0  # smallest RGB distance between a shape's colour and its background's

PRETRAIN_SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart", "moon")
DEMO_SHAPE = "ring"  # never in pretraining: the demo's new concept
SHAPES = PRETRAIN_SHAPES + (DEMO_SHAPE,)
# A ring's outer and hole radius, as multiples of the scene's radius.
RING_OUTER, RING_INNER = 1.2, 0.65

TEXTURES = {"solid": 0.6, "striped": 0.14, "dotted": 0.13, "checkered": 0.13}
TEXTURE_PERIOD = 8.0  # px at 64: stripes and checks 4 px on / 4 px off, so the 4x-downsampling VAE can hold them

# Size name -> radius in px at 64 (the radius of a circle; other shapes have about the same area).
SIZES = {"small": 7.0, "medium": 11.0, "large": 15.0}
SIZE_JITTER = 1.0

# 3x3 grid of positions: name -> (column, row), and the caption phrase of each.
POSITIONS = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
GRID = (0.25, 0.5, 0.75)  # cell centres as fractions of the side
POSITION_JITTER = 3.0  # px; cell boundaries (for the detector) lie halfway between centres, 8 px away

BACKGROUNDS = {"white": 0.4, "black": 0.1, "gray": 0.1}  # the rest of the mass: the other colours, evenly


@dataclass(frozen=True)
class Scene:
    """One image's content. Geometry is in pixels of the 64 px image; colours are the exact rendered RGB."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    size: str
    radius: float
    position: str
    centre: tuple[float, float]  # (x, y)
    rotation: float  # degrees, counter-clockwise
    texture: str
    texture_phase: tuple[float, float]
    background: str
    background_rgb: tuple[int, int, int]
    caption: str


def colour_distance(a, b) -> float:
    return float(math.dist(a, b))


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _background_weights(colour: str) -> dict[str, float]:
    others = [c for c in COLOURS if c not in BACKGROUNDS]
    weights = dict(BACKGROUNDS, **{c: (1.0 - sum(BACKGROUNDS.values())) / len(others) for c in others})
    return {c: w for c, w in weights.items()
            if colour_distance(COLOURS[c], COLOURS[colour]) >= MIN_CONTRAST}


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for v in rgb)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def compose_caption(scene: Scene, rng: random.Random, *, shape_word: str | None = None) -> str:
    """A caption naming some of the scene's attributes; which ones (and the word order) vary with `rng`.

    Captions sometimes leave an attribute out, so the model learns to fill in whatever a prompt does not say.
    """
    noun = shape_word or (scene.shape if rng.random() < 0.9 else "shape")
    words = []
    if rng.random() < 0.6:
        words.append(scene.size)
    if rng.random() < 0.9:
        words.append(scene.colour)
    if scene.texture != "solid" and rng.random() < 0.9 or scene.texture == "solid" and rng.random() < 0.1:
        words.append(scene.texture)
    words.append(noun)
    phrase = f"{_article(words[0])} {' '.join(words)}"
    parts = []
    if rng.random() < 0.75:
        parts.append(POSITION_PHRASES[scene.position])
    if rng.random() < 0.8:
        parts.append(f"on {_article(scene.background)} {scene.background} background")
    if rng.random() < 0.3:
        parts.reverse()
    return " ".join([phrase, *parts])


def sample_scene(rng: random.Random, shapes=PRETRAIN_SHAPES) -> Scene:
    shape = rng.choice(shapes)
    colour = rng.choice(list(COLOURS))
    background = _weighted_choice(rng, _background_weights(colour))
    size = rng.choice(list(SIZES))
    position = rng.choice(list(POSITIONS))
    col, row = POSITIONS[position]
    centre = (GRID[col] * SIZE + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
              GRID[row] * SIZE + rng.uniform(-POSITION_JITTER, POSITION_JITTER))
    scene = Scene(
        shape=shape, colour=colour, rgb=_jitter(COLOURS[colour], rng), size=size,
        radius=SIZES[size] + rng.uniform(-SIZE_JITTER, SIZE_JITTER), position=position, centre=centre,
        rotation=rng.uniform(-8.0, 8.0), texture=_weighted_choice(rng, TEXTURES),
        texture_phase=(rng.uniform(0, TEXTURE_PERIOD), rng.uniform(0, TEXTURE_PERIOD)),
        background=background, background_rgb=_jitter(COLOURS[background], rng), caption="")
    return replace(scene, caption=compose_caption(scene, rng))


def scene(seed: int, index: int) -> Scene:
    """The `index`-th pretraining scene of the set `seed` (its own random stream, so any one is cheap)."""
    return sample_scene(random.Random(f"sdlora-scenes/{seed}/{index}"))


# ------------------------------------------------------------------------------------------------ drawing


def _polygon(points: list[tuple[float, float]], scene_: Scene, scale: float) -> list[tuple[float, float]]:
    """Unit-radius points (y up) -> rotated, scaled, placed pixel coordinates of the supersampled canvas."""
    angle = math.radians(scene_.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = scene_.centre
    r = scene_.radius
    return [((cx + r * (x * cos - y * sin)) * scale, (cy - r * (x * sin + y * cos)) * scale) for x, y in points]


def _regular(n: int, radius: float, start_deg: float = 90.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start_deg + 360.0 * k / n)),
             radius * math.sin(math.radians(start_deg + 360.0 * k / n))) for k in range(n)]


@lru_cache(maxsize=None)
def _outline(shape: str) -> tuple[tuple[float, float], ...]:
    """Polygon shapes at unit radius, sized to roughly the area of the unit circle."""
    if shape == "square":
        return tuple(_regular(4, 1.25, 45.0))
    if shape == "diamond":
        return ((0.0, 1.3), (0.85, 0.0), (0.0, -1.3), (-0.85, 0.0))
    if shape == "triangle":
        return tuple((x, y - 0.1) for x, y in _regular(3, 1.4))
    if shape == "hexagon":
        return tuple(_regular(6, 1.1, 0.0))
    if shape == "star":
        outer, inner = _regular(5, 1.4), _regular(5, 0.6, 90.0 + 36.0)
        return tuple(p for pair in zip(outer, inner) for p in pair)
    if shape == "cross":
        a, b = 1.15, 0.42
        return ((-b, a), (b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b),
                (-a, b), (-b, b))
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 14.5, (y + 2.5) / 14.5))
        return tuple(pts)
    raise KeyError(shape)


def draw_shape_mask(scene_: Scene, scale: int = SUPERSAMPLE) -> Image.Image:
    """The shape's silhouette (no texture) as an 'L' image of side SIZE*scale: 255 inside, 0 outside."""
    side = SIZE * scale
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = scene_.centre
    r = scene_.radius

    def disc(x: float, y: float, radius: float, fill: int) -> None:
        draw.ellipse([(x - radius) * scale, (y - radius) * scale, (x + radius) * scale, (y + radius) * scale],
                     fill=fill)

    if scene_.shape == "circle":
        disc(cx, cy, r, 255)
    elif scene_.shape == "ring":
        disc(cx, cy, RING_OUTER * r, 255)
        disc(cx, cy, RING_INNER * r, 0)
    elif scene_.shape == "moon":
        # A crescent: a disc (radius 1.2) with a disc (0.9) cut away 0.5 to the right of its centre, turned by
        # the rotation; placed so that the crescent's centroid (0.434 left of the first disc's centre) is the
        # scene's centre.
        ux, uy = math.cos(math.radians(scene_.rotation)), -math.sin(math.radians(scene_.rotation))
        disc(cx + 0.434 * r * ux, cy + 0.434 * r * uy, 1.2 * r, 255)
        disc(cx + 0.934 * r * ux, cy + 0.934 * r * uy, 0.9 * r, 0)
    else:
        draw.polygon(_polygon(list(_outline(scene_.shape)), scene_, scale), fill=255)
    return mask


def _texture_mask(scene_: Scene, scale: int) -> np.ndarray | None:
    """Where a textured fill shows the shape colour (True) or lets the background through; None for solid."""
    if scene_.texture == "solid":
        return None
    side = SIZE * scale
    coords = (np.arange(side, dtype=np.float32) + 0.5) / scale
    px, py = scene_.texture_phase
    half = TEXTURE_PERIOD / 2
    cols = ((coords + px) % TEXTURE_PERIOD) < half
    rows = ((coords + py) % TEXTURE_PERIOD) < half
    if scene_.texture == "striped":
        return np.broadcast_to(rows[:, None], (side, side))
    if scene_.texture == "checkered":
        return rows[:, None] ^ cols[None, :]
    if scene_.texture == "dotted":
        dx = (coords + px) % TEXTURE_PERIOD - half
        dy = (coords + py) % TEXTURE_PERIOD - half
        return dy[:, None] ** 2 + dx[None, :] ** 2 < (0.35 * TEXTURE_PERIOD) ** 2
    raise KeyError(scene_.texture)


def render(scene_: Scene, scale: int = SUPERSAMPLE) -> Image.Image:
    """The scene as a 64 px RGB image, drawn at `scale` x and box-filtered down (anti-aliased edges)."""
    mask = draw_shape_mask(scene_, scale)
    texture = _texture_mask(scene_, scale)
    if texture is not None:
        mask = Image.fromarray(np.where(texture, np.asarray(mask), 0).astype(np.uint8), "L")
    side = SIZE * scale
    image = Image.new("RGB", (side, side), scene_.background_rgb)
    image.paste(scene_.rgb, mask=mask)
    return image.reduce(scale) if scale > 1 else image


# ------------------------------------------------------------------------------------------------ many


def render_range(seed: int, start: int, stop: int) -> tuple[np.ndarray, list[str]]:
    """Scenes start..stop-1 of set `seed` as a uint8 array [n, 64, 64, 3] and their captions."""
    scenes = [scene(seed, i) for i in range(start, stop)]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    return images, [s.caption for s in scenes]


def _render_range_args(args: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    return render_range(*args)


def render_many(count: int, seed: int = 0, workers: int | None = None,
                chunk: int = 1000) -> tuple[np.ndarray, list[str]]:
    """The first `count` scenes of set `seed`, rendered in `workers` processes (default: all CPUs)."""
    import multiprocessing
    import os

    ranges = [(seed, a, min(a + chunk, count)) for a in range(0, count, chunk)]
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(ranges) <= 1:
        parts = [render_range(*r) for r in ranges]
    else:
        # Spawned, never forked: a fork copies the caller's threads' locks without the threads (torch's and
        # onnxruntime's pools, pytest-xdist's I/O thread), and a worker forked while one was held waits forever (seen
        # in CI: a pool worker stuck on its task queue's lock, the test run hung). Each worker imports this module
        # afresh instead, about a second on start.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_range_args, ranges, chunksize=1)
    images = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return images, [c for p in parts for c in p[1]]


# ------------------------------------------------------------------------------------------------ demo set

DEMO_TRIGGER = "sks"
DEMO_COLOURS = ("red", "blue", "green", "orange", "purple", "black")


def _demo_background(i: int, colour: str, rng: random.Random) -> str:
    """White for three scenes in four, else a light colour that the shape stands out from."""
    if i % 4:
        return "white"
    return rng.choice([c for c in ("gray", "yellow", "cyan", "pink")
                       if colour_distance(COLOURS[c], COLOURS[colour]) >= MIN_CONTRAST])


def _large_centred(shape: str, colour: str, background: str, rng: random.Random, rotate: bool) -> Scene:
    col, row = POSITIONS["center"]
    # Keyword arguments are evaluated in order: the random draws follow this order (the bundled sets depend on it).
    return Scene(
        shape=shape, colour=colour, rgb=_jitter(COLOURS[colour], rng), size="large",
        radius=SIZES["large"] + rng.uniform(-SIZE_JITTER, SIZE_JITTER), position="center",
        centre=(GRID[col] * SIZE + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
                GRID[row] * SIZE + rng.uniform(-POSITION_JITTER, POSITION_JITTER)),
        rotation=rng.uniform(-8.0, 8.0) if rotate else 0.0, texture="solid", texture_phase=(0.0, 0.0),
        background=background, background_rgb=_jitter(COLOURS[background], rng), caption="")


def demo_scenes(count: int = 20, seed: int = 0, colours: tuple[str, ...] = DEMO_COLOURS) -> list[Scene]:
    """The demo data set: solid rings (a shape pretraining never shows) named by the trigger word.

    Large (36 px across, the hole 20 px) and in the centre: measured, bold rings of one size and place are learned
    faster than medium and large ones at three heights (with the demo preset's first settings, 200 steps and no
    regularization: rings in 11 of 16 images at weight 1 against 7 of 16, by sdlora/procedural/detect.py). Mostly
    on white, and captioned without left/right, so mirrored copies (the demo preset flips) stay true to their
    captions: "a large red sks shape in the center on a white background".
    """
    rng = random.Random(f"sdlora-demo/{seed}")
    out = []
    for i in range(count):
        colour = colours[i % len(colours)]
        base = _large_centred(DEMO_SHAPE, colour, _demo_background(i, colour, rng), rng, rotate=False)
        out.append(replace(base, caption=compose_caption(base, rng, shape_word=f"{DEMO_TRIGGER} shape")))
    return out


def demo_reg_scenes(count: int = 40, seed: int = 0, disc_every: int = 2) -> list[Scene]:
    """Regularization (prior preservation) scenes for the demo: what the base model draws, composed like the demo.

    Every other one is a disc ("circle", the base shape nearest a ring), the rest any pretraining shape; same colours,
    size, place and backgrounds as the demo set, captioned in the base model's words without the trigger. Trained
    alongside the rings, they pin "a red circle on a white background" to a disc, so the LoRA can only draw the
    hole where the prompt says "sks" (DreamBooth's prior preservation, Ruiz et al. 2023, section 3.3).
    """
    rng = random.Random(f"sdlora-prior/{seed}")
    out = []
    for i in range(count):
        shape = "circle" if i % disc_every == 0 else rng.choice(PRETRAIN_SHAPES)
        colour = rng.choice(DEMO_COLOURS)
        base = _large_centred(shape, colour, _demo_background(i, colour, rng), rng, rotate=True)
        out.append(replace(base, caption=compose_caption(base, rng)))
    return out


def write_scenes(folder: Path, scenes: list[Scene], stem: str) -> list[Path]:
    """Write `scenes` as STEM_NNN.png + STEM_NNN.txt (the caption) into `folder`; returns the image paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(scenes):
        path = folder / f"{stem}_{i:03d}.png"
        render(s).save(path, optimize=True)
        path.with_suffix(".txt").write_text(s.caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def write_demo_set(folder: Path, count: int = 20, seed: int = 0) -> list[Path]:
    """Write the demo set (`demo_scenes`) as sks_NNN.png + sks_NNN.txt into `folder`; returns the image paths."""
    return write_scenes(folder, demo_scenes(count, seed), DEMO_TRIGGER)


def write_demo_reg_set(folder: Path, count: int = 40, seed: int = 0) -> list[Path]:
    """Write the demo's regularization set (`demo_reg_scenes`) as prior_NNN.png + .txt into `folder`."""
    return write_scenes(folder, demo_reg_scenes(count, seed), "prior")
