"""The folders of one run: data.dir, each of data.subsets (concepts), and data.reg_dir, each a `Subset`.

A subset is a folder with the data settings its images are read and captioned with (its own dir, repeats,
trigger and caption options, as a `DataConfig`) and the loss weight of its samples. Regularization is one more
subset (`is_reg`, weight data.reg_weight), so training images of every concept and regularization images go
through the same index, epoch and loss-weight path. Every `Entry` names its subset by position.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sdlora.config import DataConfig, SubsetConfig

# The options of data.* a subset inherits unless it sets them (None there).
INHERITED = ("caption_extension", "default_caption", "shuffle_tags", "keep_tokens", "caption_dropout", "tag_dropout")


@dataclass(frozen=True)
class Subset:
    key: str  # how messages name it: "data.dir", "data.subsets[1]", "data.reg_dir"
    config: DataConfig  # the data settings of its images: dir, repeats, trigger and caption options its own
    loss_weight: float
    is_reg: bool = False
    own: tuple[str, ...] = ()  # the caption options the subset sets itself (the others are data.*'s)

    @property
    def dir_key(self) -> str:
        return self.key if self.key in ("data.dir", "data.reg_dir") else f"{self.key}.dir"

    @property
    def dir(self) -> str:
        return self.config.dir

    def option_key(self, name: str) -> str:
        """The key a caption option of this folder comes from: the subset's own, or data.*'s."""
        return f"{self.key}.{name}" if name in self.own else f"data.{name}"


def subset_data(data: DataConfig, subset: SubsetConfig) -> DataConfig:
    """The data settings of one data.subsets item: data.* with the subset's own keys in place."""
    own = {name: getattr(subset, name) for name in INHERITED if getattr(subset, name) is not None}
    return dataclasses.replace(data, dir=subset.dir, repeats=subset.repeats, trigger=subset.trigger, subsets=[],
                               **own)


def subsets_of(data: DataConfig) -> list[Subset]:
    """Training folders first (data.dir when set, then data.subsets in order), then data.reg_dir."""
    found = []
    if data.dir or not data.subsets:
        found.append(Subset("data.dir", dataclasses.replace(data, subsets=[]), 1.0))
    found += [Subset(f"data.subsets[{i}]", subset_data(data, s), s.loss_weight,
                     own=tuple(n for n in INHERITED if getattr(s, n) is not None)) for i, s in enumerate(data.subsets)]
    if data.reg_dir:
        # Regularization images keep data's caption options (and trigger), as they always have.
        found.append(Subset("data.reg_dir", dataclasses.replace(data, dir=data.reg_dir, subsets=[]), data.reg_weight,
                            is_reg=True))
    return found


def describe(subsets: list[Subset], images: list[int], samples: list[int]) -> list[str]:
    """One line per subset with its image and sample counts (the dry run's data summary)."""
    lines = []
    for subset, n_images, n_samples in zip(subsets, images, samples):
        extra = f", trigger {subset.config.trigger!r}" if subset.config.trigger else ""
        repeats = "" if subset.is_reg else f" x{subset.config.repeats}"
        lines.append(f"{subset.key} {subset.dir}: {n_images} image(s){repeats} -> {n_samples} samples per epoch, "
                     f"loss weight {subset.loss_weight:g}{extra}")
    return lines
