"""Read a simple scene back from an image: the shape's pixels, colour, position, size, shape and texture.

Made for tests of what a model draws from a prompt (does "a red circle at the top" give something red at the
top?), so it takes nothing but the image. The background colour is the median of the image's border; the
shape is every pixel far enough from it. A closing (dilate, then erode) joins the pieces of a striped, dotted
or checkered fill into one region, and specks smaller than a few pixels are dropped, so that noise in a
generated image does not move the centroid. Shapes are scored by the overlap (IoU) of the region with each
shape's silhouette fitted to the region's centroid and area; the demo concept, a ring, is scored by the share of
the filled region that is an enclosed hole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from sdlora.procedural.scenes import COLOURS, GRID, POSITIONS, SHAPES, SIZE, SIZES, Scene, draw_shape_mask

MASK_THRESHOLD = 50.0  # RGB distance from the background above which a pixel belongs to the shape
CLOSING_RADIUS = 3  # px: joins fills whose gaps are up to 2x this (texture period 8 px -> gaps of 4 px)
MIN_PIECE = 12  # px: smaller separate pieces are noise
MIN_HOLE = 8  # px: smaller enclosed holes are gaps left between dots, not a ring's hole
MIN_SMALL_HOLE = 5  # px: the smallest hole of a solid shape that counts (a hole about 2.5 px across)
RING_HOLE_SCORE = 0.04  # drawn rings 0.2-0.3, bold generated ones 0.05-0.15; no base shape or scene has a hole
TEXTURE_SCORE = 0.15  # share of the region where the background shows through: solid < 0.1, textured 0.2-0.55


@dataclass
class Detection:
    """What `detect` read from an image. Coordinates are pixels of the image, (x, y) from its top left."""

    background: str
    background_rgb: tuple[int, int, int]
    colour: str
    rgb: tuple[int, int, int]
    centroid: tuple[float, float]
    position: str
    area: int  # shape region pixels (after closing, holes excluded)
    size: str
    shape: str
    shape_scores: dict[str, float] = field(repr=False)
    hole_score: float
    texture_score: float
    mask: np.ndarray = field(repr=False)  # the shape's own pixels (bool [H, W])

    @property
    def is_ring(self) -> bool:
        return self.hole_score >= RING_HOLE_SCORE

    @property
    def textured(self) -> bool:
        return self.texture_score >= TEXTURE_SCORE


def as_array(image) -> np.ndarray:
    """PIL image or uint8 array -> float32 [H, W, 3] in 0..255."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float32)[..., :3]


def nearest_colour(rgb) -> str:
    return min(COLOURS, key=lambda name: math.dist(COLOURS[name], rgb))


def background_colour(pixels: np.ndarray, border: int = 2) -> np.ndarray:
    frame = np.concatenate([pixels[:border].reshape(-1, 3), pixels[-border:].reshape(-1, 3),
                            pixels[:, :border].reshape(-1, 3), pixels[:, -border:].reshape(-1, 3)])
    return np.median(frame, axis=0)


# ------------------------------------------------------------------------------------ binary morphology


@lru_cache(maxsize=None)
def _disc_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    return tuple((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                 if dy * dy + dx * dx <= radius * radius + radius)


def _dilate(mask: np.ndarray, radius: int, outside: bool = False) -> np.ndarray:
    padded = np.pad(mask, radius, constant_values=outside)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy, dx in _disc_offsets(radius):
        out |= padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out


def closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate then erode; the image border does not erode (a shape cut by the border stays whole)."""
    grown = _dilate(mask, radius)
    return ~_dilate(~grown, radius, outside=False)


def label(mask: np.ndarray) -> np.ndarray:
    """8-connected components of `mask`: an int array, 0 outside the mask, one positive id per component."""
    h, w = mask.shape
    none = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), none)
    while True:  # propagate the smallest id through each component until nothing changes
        padded = np.pad(labels, 1, constant_values=none)
        smallest = labels
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                smallest = np.minimum(smallest, padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
        smallest = np.where(mask, smallest, none)
        if np.array_equal(smallest, labels):
            return np.where(mask, labels, 0)
        labels = smallest


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = label(mask)
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels, ids, counts


def enclosed_holes(region: np.ndarray, min_area: int = MIN_HOLE) -> np.ndarray:
    """Background pixels that the region encloses (not connected to the image border), in holes >= min_area."""
    labels, ids, counts = _pieces(~region)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = [i for i, c in zip(ids, counts) if i not in border and c >= min_area]
    return np.isin(labels, keep)


# ------------------------------------------------------------------------------------ shape templates


def _template(shape: str, centre: tuple[float, float], radius: float) -> np.ndarray:
    probe = Scene(shape=shape, colour="", rgb=(0, 0, 0), size="", radius=radius, position="", centre=centre,
                  rotation=0.0, texture="solid", texture_phase=(0.0, 0.0), background="",
                  background_rgb=(0, 0, 0), caption="")
    return np.asarray(draw_shape_mask(probe, scale=2).reduce(2)) >= 128


@lru_cache(maxsize=None)
def _template_geometry(shape: str) -> tuple[float, float, float]:
    """(area per radius², centroid dx / radius, centroid dy / radius) of a shape drawn in the middle."""
    radius = 10.0
    mask = _template(shape, (SIZE / 2, SIZE / 2), radius)
    ys, xs = np.nonzero(mask)
    return mask.sum() / radius ** 2, (xs.mean() + 0.5 - SIZE / 2) / radius, (ys.mean() + 0.5 - SIZE / 2) / radius


def shape_scores(region: np.ndarray, centroid: tuple[float, float], shapes=SHAPES) -> dict[str, float]:
    """IoU of `region` with each shape's silhouette placed at the same centroid with the same area."""
    area = int(region.sum())
    scores = {}
    for shape in shapes:
        per_r2, dx, dy = _template_geometry(shape)
        radius = math.sqrt(area / per_r2)
        template = _template(shape, (centroid[0] - dx * radius, centroid[1] - dy * radius), radius)
        scores[shape] = float((template & region).sum() / max(1, (template | region).sum()))
    return scores


# ------------------------------------------------------------------------------------ naming


def position_name(x: float, y: float, side: int = SIZE) -> str:
    """The 3x3 grid cell of a point; cell boundaries lie halfway between the grid centres."""
    edges = [(GRID[0] + GRID[1]) / 2 * side, (GRID[1] + GRID[2]) / 2 * side]
    col, row = int(x >= edges[0]) + int(x >= edges[1]), int(y >= edges[0]) + int(y >= edges[1])
    return next(name for name, cell in POSITIONS.items() if cell == (col, row))


def size_name(area: float) -> str:
    """The size whose circle area is nearest `area` (on a log scale)."""
    radius = math.sqrt(area / math.pi)
    return min(SIZES, key=lambda name: abs(math.log(radius / SIZES[name])))


def detect(image, background_rgb=None, threshold: float = MASK_THRESHOLD) -> Detection | None:
    """Read the shape of a one-shape scene from `image` (PIL or uint8 array); None when nothing stands out.

    `background_rgb` (optional) overrides the border estimate, e.g. with a rendered scene's known colour.
    """
    pixels = as_array(image)
    background = np.asarray(background_rgb, np.float32) if background_rgb is not None else \
        background_colour(pixels)
    distance = np.linalg.norm(pixels - background, axis=-1)
    mask = distance > threshold
    region = closing(mask, CLOSING_RADIUS)
    labels, ids, counts = _pieces(region)
    region = np.isin(labels, ids[counts >= MIN_PIECE])
    mask &= region
    if mask.sum() < MIN_PIECE:
        return None
    ys, xs = np.nonzero(region)
    centroid = (float(xs.mean() + 0.5), float(ys.mean() + 0.5))
    # The shape's colour: the median of its pixels nearly as far from the background as any (anti-aliased
    # edges blend in the background colour, and small or textured shapes are mostly edge).
    contrast = distance[mask]
    rgb = np.median(pixels[mask][contrast >= 0.85 * np.percentile(contrast, 95)], axis=0)
    texture_score = float(1.0 - mask.sum() / region.sum())
    holes = enclosed_holes(region)
    if texture_score < TEXTURE_SCORE:
        # A solid shape has no gaps to join, so a finer closing (1 px: anti-aliasing specks) keeps the small
        # holes that CLOSING_RADIUS fills: a thick ring with a hole 3-6 px across.
        holes |= enclosed_holes(closing(mask, 1), MIN_SMALL_HOLE)
    filled = region | holes
    scores = shape_scores(region, centroid)
    area = int((region & ~holes).sum())
    return Detection(
        background=nearest_colour(background), background_rgb=tuple(int(round(v)) for v in background),
        colour=nearest_colour(rgb), rgb=tuple(int(round(v)) for v in rgb), centroid=centroid,
        position=position_name(*centroid, side=pixels.shape[1]), area=area, size=size_name(filled.sum()),
        shape=max(scores, key=scores.get), shape_scores=scores,
        hole_score=float(holes.sum() / filled.sum()), texture_score=texture_score, mask=mask)
