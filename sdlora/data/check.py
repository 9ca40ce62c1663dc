"""The `sdlora dataset check` report: what a folder holds and what is wrong with it, before any training.

It runs the same scan and checks as training (`build_index`), so what it calls usable is what training uses.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sdlora.config import DataConfig
from sdlora.data.buckets import histogram
from sdlora.data.captions import count_tokens, split_tags, token_window, with_trigger
from sdlora.data.images import describe_size
from sdlora.data.index import build_index
from sdlora.data.scan import IMAGE_KINDS, parse_repeat_folder, repeat_folder_of
from sdlora.errors import SdloraError
from sdlora.text import printable

TOP_TAGS = 15


def _caption_stats(entries, config: DataConfig, tokenizer) -> dict[str, Any]:
    captions = [with_trigger(e.caption, config.trigger) for e in entries]
    words = [len(c.split()) for c in captions] or [0]
    tokens = [count_tokens(c, tokenizer) for c in captions] or [0]
    window = token_window(tokenizer)
    tags = Counter(tag.lower() for e in entries for tag in split_tags(e.caption))
    sources = Counter(e.caption_source for e in entries)
    return {
        "from_file": sources["file"], "from_folder_name": sources["folder"], "default": sources["default"],
        "words": {"min": min(words), "mean": round(statistics.fmean(words), 1), "max": max(words)},
        "tokens": {"min": min(tokens), "mean": round(statistics.fmean(tokens), 1), "max": max(tokens),
                   "window": window, "over_window": sum(t > window for t in tokens),
                   "estimated": tokenizer is None},
        "top_tags": [{"tag": tag, "count": count} for tag, count in tags.most_common(TOP_TAGS)],
    }


def _size_stats(entries) -> dict[str, Any]:
    if not entries:
        return {}
    by_area = sorted(entries, key=lambda e: (e.size[0] * e.size[1], e.size))
    return {
        "smallest": describe_size(by_area[0].size), "largest": describe_size(by_area[-1].size),
        "median": describe_size(by_area[len(by_area) // 2].size),
        "landscape": sum(e.size[1] > e.size[0] for e in entries),
        "portrait": sum(e.size[1] < e.size[0] for e in entries),
        "square": sum(e.size[1] == e.size[0] for e in entries),
        "modes": dict(Counter(e.mode for e in entries).most_common()),
    }


def check_folder(config: DataConfig, tokenizer=None) -> dict[str, Any]:
    """The report as a JSON-ready dict. Raises `SdloraError` for a missing folder or one without images."""
    start = time.perf_counter()
    index = build_index(config, tokenizer)
    if not index.image_files:
        raise SdloraError(f"{config.dir}: holds no images ({IMAGE_KINDS}); add images or check the path")
    entries = index.train_entries()
    folders: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = repeat_folder_of(entry.path, config.dir)
        if name is not None:
            row = folders.setdefault(name, {"folder": name, "repeats": parse_repeat_folder(name)[0], "images": 0})
            row["images"] += 1
    root = Path(config.dir)
    return {
        "folder": str(root), "resolution": config.resolution, "buckets_enabled": config.buckets,
        "caption_extension": config.caption_extension,
        "image_files": index.image_files, "usable": len(entries), "skipped": len(index.skipped),
        "samples_per_epoch": sum(e.repeats for e in entries),
        "repeat_folders": list(folders.values()),
        "sizes": _size_stats(entries),
        "buckets": [{"size": describe_size(b), "images": n} for b, n in histogram(e.bucket for e in entries)],
        "captions": _caption_stats(entries, config, tokenizer),
        "problems": [{"file": str(p.path.relative_to(root)) if root in p.path.parents else str(p.path),
                      "reason": p.reason, "skipped": p.skipped} for p in index.problems],
        "seconds": round(time.perf_counter() - start, 3),
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as text for a terminal."""
    out = [f"{report['folder']}: {report['image_files']} image file(s), {report['usable']} usable, "
           f"{report['skipped']} skipped ({report['seconds']:.1f} s)"]
    for row in report["repeat_folders"]:
        out.append(f"  {row['folder']}: {row['images']} image(s) x {row['repeats']} repeats")
    out.append(f"  samples per epoch: {report['samples_per_epoch']}")
    sizes = report["sizes"]
    if sizes:
        out.append(f"sizes: smallest {sizes['smallest']}, median {sizes['median']}, largest {sizes['largest']}; "
                   f"{sizes['landscape']} landscape, {sizes['portrait']} portrait, {sizes['square']} square")
        out.append("  modes: " + ", ".join(f"{mode} {n}" for mode, n in sizes["modes"].items()))
    if report["buckets_enabled"]:
        out.append(f"buckets at ~{report['resolution']}² pixels (images per bucket):")
        most = max((b["images"] for b in report["buckets"]), default=1)
        out += [f"  {b['size']:>9}  {b['images']:>5}  {'#' * max(1, round(30 * b['images'] / most))}"
                for b in report["buckets"]]
    else:
        out.append(f"training size: {report['resolution']}x{report['resolution']} (square crops; --buckets shows "
                   f"aspect-ratio buckets)")
    c = report["captions"]
    tokens = c["tokens"]
    out.append(f"captions: {c['from_file']} from files, {c['from_folder_name']} from folder names, "
               f"{c['default']} default")
    out.append(f"  words: min {c['words']['min']}, mean {c['words']['mean']}, max {c['words']['max']}; tokens"
               f"{' (estimated, at least)' if tokens['estimated'] else ''}: mean {tokens['mean']}, max "
               f"{tokens['max']}; {tokens['over_window']} over the {tokens['window']}-token window (cut off)")
    if c["top_tags"]:
        out.append("  top tags: " + ", ".join(f"{t['tag']} ({t['count']})" for t in c["top_tags"]))
    problems = report["problems"]
    if problems:
        out.append(f"problems: {len(problems)} file(s)")
        out += [f"  {p['file']}: {p['reason']}{' (skipped)' if p['skipped'] else ''}" for p in problems]
    else:
        out.append("problems: none")
    return [printable(line) for line in out]  # file names and caption tags are the folder's, not ours

