"""What a data set holds, in a few lines: `sdlora train --dry-run` prints them before anything is loaded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sdlora.data.buckets import Size, histogram
from sdlora.data.images import describe_size
from sdlora.data.scan import repeat_folder_of
from sdlora.data.subsets import describe

if TYPE_CHECKING:
    from sdlora.data.dataset import TrainDataset

BAR_WIDTH = 30
LISTED_PROBLEMS = 10  # more are counted, not listed


def bucket_lines(rows: list[tuple[Size, int, int]], indent: str = "  ") -> list[str]:
    """`(bucket, images, samples)` rows as a text histogram of samples per epoch."""
    most = max((samples for _, _, samples in rows), default=0) or 1
    return [f"{indent}{describe_size(bucket):>9}  {images:>5} image(s) {samples:>6} samples  "
            f"{'#' * max(1, round(BAR_WIDTH * samples / most))}" for bucket, images, samples in rows]


@dataclass
class DataSummary:
    images: int  # usable training images
    with_caption: int  # of them, with a caption file
    repeats: int  # data.repeats
    resolution: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (file, note) of files that are used
    samples_per_epoch: int = 0
    folder_repeats: dict[str, tuple[int, int]] = field(default_factory=dict)  # N_name folder -> (N, images)
    reg_images: int = 0
    reg_samples: int = 0
    reg_weight: float = 1.0
    buckets: list[tuple[Size, int, int]] | None = None  # (bucket, images, samples); None: square training
    cache: str = "none"
    dropped_per_epoch: int | None = None  # with a batch size: samples left out by bucket tails
    subsets: list[str] = field(default_factory=list)  # with data.subsets: one line per folder (images, samples)

    def lines(self) -> list[str]:
        out = [f"images: {self.images} ({self.with_caption} with caption files, "
               f"{self.images - self.with_caption} using a folder or the default caption)"]
        folders = "".join(f", {name} x{n} ({count} images)" for name, (n, count) in self.folder_repeats.items())
        repeats = "per subset (below)" if self.subsets else f"data.repeats {self.repeats}"
        out.append(f"repeats: {repeats}{folders} -> {self.samples_per_epoch} samples per epoch"
                   + (f" ({self.reg_samples} of them regularization)" if self.reg_samples else ""))
        if self.subsets:
            out.append(f"subsets: {len(self.subsets)} folders")
            out += [f"    {line}" for line in self.subsets]
        if self.reg_images:
            out.append(f"regularization: {self.reg_images} images, {self.reg_samples} samples per epoch, "
                       f"loss weight {self.reg_weight}")
        if self.buckets is None:
            out.append(f"resolution: {self.resolution}x{self.resolution}")
        else:
            out.append(f"buckets: {len(self.buckets)} in use, ~{self.resolution}² pixels each "
                       f"(samples per epoch by bucket):")
            out += bucket_lines(self.buckets, indent="    ")
        if self.dropped_per_epoch:
            out.append(f"bucket tails: {self.dropped_per_epoch} samples per epoch do not fill a batch and wait "
                       f"for a later epoch")
        for title, rows in (("skipped", self.skipped), ("notes on", self.notes)):
            if rows:
                out.append(f"{title}: {len(rows)} file(s)")
                out += [f"    {name}: {reason}" for name, reason in rows[:LISTED_PROBLEMS]]
                if len(rows) > LISTED_PROBLEMS:
                    out.append(f"    ... and {len(rows) - LISTED_PROBLEMS} more (sdlora dataset check DIR)")
        if self.cache != "none":
            out.append(f"cache: {self.cache} (VAE latents and text embeddings, filled before the first step)")
        return out


def summarize(dataset: TrainDataset, batch_size: int | None = None) -> DataSummary:
    """The summary of a built data set; with `batch_size`, also what bucket tails leave out per epoch."""
    config = dataset.config
    train = [e for e in dataset.records if not e.is_reg]
    reg = [e for e in dataset.records if e.is_reg]
    folders: dict[str, tuple[int, int]] = {}
    for entry in train:
        sub = dataset.index.config_of(entry)
        folder = repeat_folder_of(entry.path, sub.dir)
        if folder is not None:
            n = entry.repeats // sub.repeats
            folders[folder] = (n, folders.get(folder, (n, 0))[1] + 1)
    buckets = None
    if config.buckets:
        images = Counter(e.bucket for e in dataset.records)
        samples = Counter(dataset.records[i].bucket for i in dataset.pool)
        buckets = [(b, images[b], samples[b]) for b, _ in histogram(samples.elements())]
    return DataSummary(
        images=len(train), with_caption=sum(e.caption_source == "file" for e in train), repeats=config.repeats,
        resolution=config.resolution,
        skipped=[(str(p.path), p.reason) for p in dataset.problems if p.skipped],
        notes=[(str(p.path), p.reason) for p in dataset.problems if not p.skipped],
        samples_per_epoch=len(dataset), folder_repeats=folders, reg_images=len(reg),
        reg_samples=len(dataset.reg_samples), reg_weight=config.reg_weight, buckets=buckets, cache=config.cache,
        dropped_per_epoch=dataset.dropped_per_epoch(batch_size) if batch_size else None,
        subsets=subset_lines(dataset) if config.subsets else [])


def subset_note(dataset: TrainDataset) -> str:
    """With data.subsets, the images each folder gives (" (data.dir 6, data.subsets[0] 8)"); else ""."""
    if not dataset.config.subsets:
        return ""
    images = Counter(e.subset for e in dataset.records)
    return " (" + ", ".join(f"{s.key} {images[n]}" for n, s in enumerate(dataset.index.subsets)) + ")"


def subset_lines(dataset: TrainDataset) -> list[str]:
    """Each folder of the run with its usable images and its samples per epoch."""
    subsets = dataset.index.subsets
    images = Counter(e.subset for e in dataset.records)
    samples = Counter(dataset.records[i].subset for i in dataset.pool)
    return describe(subsets, [images[n] for n in range(len(subsets))], [samples[n] for n in range(len(subsets))])
