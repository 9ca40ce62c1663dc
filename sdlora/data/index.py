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


@dataclass(frozen=True)
class Entry:
    """One usable image and everything training needs to know about it without opening it again."""

    path: Path
    caption: str  # as written (whitespace collapsed), before trigger and augmentation
    caption_source: str  # "file" | "folder" (kohya `N_name`) | "default"
    size: Size  # (height, width) after the EXIF rotation
    bucket: Size  # (height, width) it trains at
    repeats: int  # per epoch: `N_name` folder x data.repeats (regularization: the folder's N only)
    is_reg: bool
    content_hash: str
    mode: str


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
    image_files: int = 0  # image files found in data.dir
    reg_files: int = 0  # image files found in data.reg_dir
    buckets: list[Size] = field(default_factory=list)  # the bucket set (one size without buckets)

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if p.skipped]

    def train_entries(self) -> list[Entry]:
        return [e for e in self.entries if not e.is_reg]

    def reg_entries(self) -> list[Entry]:
        return [e for e in self.entries if e.is_reg]


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
                  threads: int | None = None) -> tuple[list[Entry], list[Problem]]:
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
                             info.mode))
    return entries, problems


def build_index(config: DataConfig, tokenizer=None, threads: int | None = None) -> DataIndex:
    """Scan data.dir (and data.reg_dir), check every image, assign buckets and read captions.

    Raises `SdloraError` only for a missing folder; an empty or all-broken folder is the caller's to judge.
    """
    plan = BucketPlan(config)
    ext = normalize_extension(config.caption_extension)
    records = scan_folder(Path(config.dir), ext, key="data.dir")
    entries, problems = index_records(records, config, plan, is_reg=False, threads=threads)
    reg_files = 0
    if config.reg_dir:
        reg_records = scan_folder(Path(config.reg_dir), ext, key="data.reg_dir")
        reg_files = len(reg_records)
        reg_entries, reg_problems = index_records(reg_records, config, plan, is_reg=True, threads=threads)
        entries += reg_entries
        problems += reg_problems
    if tokenizer is not None:
        problems += [p for e in entries if (p := long_caption_problem(e, config, tokenizer))]
    return DataIndex(config, entries, problems, image_files=len(records), reg_files=reg_files,
                     buckets=plan.sizes)
