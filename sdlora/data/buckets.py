"""Aspect-ratio buckets: training sizes of (about) equal pixel area, so no image is squashed or cropped square.

The bucket set is kohya's: the square of side `resolution` (rounded down to `bucket_step`), and for every width
w in [bucket_min, bucket_max] (multiples of the step) the tallest height h <= resolution² / w that is a multiple
of the step, in both orientations. So every bucket has at most resolution² pixels and loses less than one step
of height to rounding. An image goes to the bucket whose aspect ratio is nearest its own (on a log scale, so
2:1 and 1:2 are equally far from square) among the buckets it covers without being enlarged; with
`allow_upscale` every bucket is a candidate.

All sizes here are (height, width), as tensors are laid out; `describe_size` prints them as WxH.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

from sdlora.config import DataConfig
from sdlora.data.images import describe_size, needs_upscale
from sdlora.errors import SdloraError

Size = tuple[int, int]  # (height, width)


def make_buckets(resolution: int, bucket_min: int, bucket_max: int, step: int) -> list[Size]:
    """The bucket sizes (height, width), ordered from tallest to widest."""
    if bucket_min > resolution:
        raise SdloraError(f"data.bucket_min: {bucket_min} is larger than data.resolution {resolution}, so no "
                          f"bucket of {resolution}² pixels fits; lower data.bucket_min (e.g. "
                          f"{max(step, resolution // 2 // step * step)})")
    area = resolution * resolution
    lowest = -(-bucket_min // step) * step  # the smallest multiple of the step at or above bucket_min
    square = min(resolution, bucket_max) // step * step
    buckets: set[Size] = set()
    if square >= lowest:
        buckets.add((square, square))
    for width in range(lowest, bucket_max + 1, step):
        height = min(bucket_max, area // width // step * step)
        if height >= lowest:
            buckets.update({(height, width), (width, height)})
    if not buckets:
        raise SdloraError(f"data.bucket_step: no side between data.bucket_min {bucket_min} and data.bucket_max "
                          f"{bucket_max} is a multiple of {step}; widen the range or lower the step")
    return sorted(buckets, key=lambda b: (b[1] / b[0], b))


def assign_bucket(size: Size, buckets: Iterable[Size], allow_upscale: bool) -> Size | None:
    """The bucket for an image of `size` (h, w), or None when every bucket would enlarge it."""
    aspect = math.log(size[1] / size[0])
    candidates = [b for b in buckets if allow_upscale or not needs_upscale(size, b)]
    if not candidates:
        return None
    # Nearest aspect; on a tie the larger bucket (less detail thrown away), then a fixed order.
    return min(candidates, key=lambda b: (round(abs(math.log(b[1] / b[0]) - aspect), 9), -b[0] * b[1], b))


class BucketPlan:
    """How images of a data config map to training sizes: one square, or aspect-ratio buckets."""

    def __init__(self, config: DataConfig):
        self.config = config
        if config.buckets:
            self.sizes = make_buckets(config.resolution, config.bucket_min, config.bucket_max, config.bucket_step)
        else:
            self.sizes = [(config.resolution, config.resolution)]

    def assign(self, size: Size) -> Size | None:
        return assign_bucket(size, self.sizes, self.config.allow_upscale)

    def too_small_reason(self, size: Size) -> str:
        """Why an image with no bucket is skipped, and what to change."""
        if not self.config.buckets:
            target = f"the training size {describe_size(self.sizes[0])}"
        else:
            best = assign_bucket(size, self.sizes, allow_upscale=True)
            target = (f"every bucket of ~{self.config.resolution}² pixels (nearest in shape: "
                      f"{describe_size(best)})")
        return (f"too small: {describe_size(size)} is smaller than {target}; set data.allow_upscale true to "
                f"enlarge it, or lower data.resolution")


def histogram(buckets: Iterable[Size]) -> list[tuple[Size, int]]:
    """(bucket, count) from tallest to widest."""
    counts = Counter(buckets)
    return sorted(counts.items(), key=lambda item: (item[0][1] / item[0][0], item[0]))
