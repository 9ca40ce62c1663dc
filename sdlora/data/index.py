"""Scan and check a data folder once: which images are usable, at which training size, with which caption.

Every image file is opened and fully decoded here (a few threads; PIL releases the GIL while decoding), so a
broken file is reported once by name before training, not discovered mid-run. The result serves both the
trainer (`build_dataset`) and `sdlora dataset check`. Nothing here warns or raises for a bad file: problems are
data, which the caller reports (a worker thread's `warnings.warn` would escape the trainer's event capture).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.config import DataConfig
from sdlora.data.buckets import BucketPlan, Size
from sdlora.data.captions import count_tokens, read_caption, token_window, with_trigger
from sdlora.data.images import BadImage, ImageInfo, inspect_image
from sdlora.data.scan import ImageRecord, normalize_extension, scan_folder
from sdlora.data.subsets import Subset, subsets_of


@dataclass(frozen=True)
class Entry:
    """One usable image and everything training needs to know about it without opening it again."""

    path: Path
    caption: str  # as written (whitespace collapsed), before trigger and augmentation
    caption_source: str  # "file" | "folder" (kohya `N_name`) | "default"
    size: Size  # (height, width) after the EXIF rotation
    bucket: Size  # (height, width) it trains at
    repeats: int  # per epoch: `N_name` folder x its subset's repeats (regularization: the folder's N only)
    is_reg: bool
    content_hash: str
    mode: str
    subset: int = 0  # its folder: DataIndex.subsets[subset] (data.dir, a data.subsets item, or data.reg_dir)


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str
    skipped: bool  # True: the file is not used; False: used, but the user should know (e.g. caption encoding)

    def line(self) -> str:
        return f"{self.path}: {self.reason}" + (" (skipped)" if self.skipped else "")


@dataclass
class DataIndex:
    config: DataConfig
    entries: list[Entry]  # training images first, then regularization images, each in sorted path order
    problems: list[Problem] = field(default_factory=list)
    image_files: int = 0  # image files found in the training folders (data.dir, data.subsets)
    buckets: list[Size] = field(default_factory=list)  # the bucket set (one size without buckets)
    subsets: list[Subset] = field(default_factory=list)  # the folders, as Entry.subset numbers them
    subset_files: list[int] = field(default_factory=list)  # image files found in each

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if p.skipped]

    def train_entries(self) -> list[Entry]:
        return [e for e in self.entries if not e.is_reg]

    def reg_entries(self) -> list[Entry]:
        return [e for e in self.entries if e.is_reg]

    def config_of(self, entry: Entry) -> DataConfig:
        """The data settings of the entry's folder (its trigger and caption options)."""
        return self.subsets[entry.subset].config if self.subsets else self.config


def _inspect_all(paths: list[Path], threads: int | None) -> list[ImageInfo | BadImage]:
    def one(path: Path) -> ImageInfo | BadImage:
        try:
            return inspect_image(path)
        except BadImage as exc:
            return exc

    threads = threads or min(4, os.cpu_count() or 1)
    if threads <= 1 or len(paths) < 8:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, paths, chunksize=16))


def caption_of(record: ImageRecord, config: DataConfig) -> tuple[str, str, str | None]:
    """(caption, source, problem) of one image: its caption file, else its `N_name` folder, else the default."""
    problem = None
    if record.caption_path is not None:
        try:
            text, problem = read_caption(record.caption_path)
        except OSError as exc:
            text, problem = "", f"caption file unreadable ({exc.strerror or exc}); using the default caption"
        if text:
            return text, "file", problem
    if record.folder_caption:
        return record.folder_caption, "folder", problem
    return config.default_caption, "default", problem


def long_caption_problem(entry: Entry, config: DataConfig, tokenizer) -> Problem | None:
    """A note when the caption (with trigger) is longer than the text encoder's window."""
    caption = with_trigger(entry.caption, config.trigger)
    tokens, window = count_tokens(caption, tokenizer), token_window(tokenizer)
    if tokens <= window:
        return None
    return Problem(entry.path, f"caption is {tokens} tokens, longer than the {window} the text encoder sees; "
                               f"the end is cut off (shorten it, or put what matters first)", skipped=False)


def index_records(records: list[ImageRecord], config: DataConfig, plan: BucketPlan, is_reg: bool,
                  threads: int | None = None, subset: int = 0) -> tuple[list[Entry], list[Problem]]:
    entries: list[Entry] = []
    problems: list[Problem] = []
    for record, info in zip(records, _inspect_all([r.path for r in records], threads)):
        if isinstance(info, BadImage):
            problems.append(Problem(record.path, str(info), skipped=True))
            continue
        bucket = plan.assign(info.size)
        if bucket is None:
            problems.append(Problem(record.path, plan.too_small_reason(info.size), skipped=True))
            continue
        caption, source, caption_problem = caption_of(record, config)
        if caption_problem:
            problems.append(Problem(record.caption_path or record.path, caption_problem, skipped=False))
        repeats = record.repeats if is_reg else record.repeats * config.repeats
        entries.append(Entry(record.path, caption, source, info.size, bucket, repeats, is_reg, info.content_hash,
                             info.mode, subset))
    return entries, problems


def build_index(config: DataConfig, tokenizer=None, threads: int | None = None) -> DataIndex:
    """Scan data.dir, each of data.subsets and data.reg_dir, check every image, assign buckets, read captions.

    Raises `SdloraError` only for a missing folder; an empty or all-broken folder is the caller's to judge.
    """
    plan = BucketPlan(config)
    subsets = subsets_of(config)
    entries, problems, files = [], [], []
    for number, subset in enumerate(subsets):
        sub = subset.config
        records = scan_folder(Path(sub.dir), normalize_extension(sub.caption_extension), key=subset.dir_key)
        found, found_problems = index_records(records, sub, plan, is_reg=subset.is_reg, threads=threads,
                                              subset=number)
        entries += found
        problems += found_problems
        files.append(len(records))
    if tokenizer is not None:
        problems += [p for e in entries if (p := long_caption_problem(e, subsets[e.subset].config, tokenizer))]
    return DataIndex(config, entries, problems,
                     image_files=sum(n for s, n in zip(subsets, files) if not s.is_reg),
                     buckets=plan.sizes, subsets=subsets, subset_files=files)
