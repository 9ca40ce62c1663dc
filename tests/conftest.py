"""Shared fixtures: offline mode, a private model cache, and small generated image folders."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread, for this process and the CLIs and app servers the tests start: on a 2-core machine that is
# busy with anything else, two OpenMP threads spin-wait on each other and the tiny model's small ops get up to
# ~100x slower (a browser test then times out); idle, one thread costs ~10% on this suite (measured 62 s vs 57 s
# on test_sdxl + test_trainer).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    # `-n 2 --dist loadfile` hands whole files to the two workers. xdist queues the files with the most tests first
    # by default, which put the one-test concept files (2-2.5 min each on the CI machine) last, one after the
    # other on one worker while the other sat idle: ~2.5 min of a 19-min CI run. The collection order instead,
    # which the hook below makes the slow files' first.
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's --no-loadscope-reorder
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Files that hold slow tests first (the files' own order kept otherwise), so that the long ones start early and
    the short ones fill both workers at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file's tests stay in their order


def make_shape_folder(folder: Path, count: int = 8, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """`count` images of coloured circles and squares on white, with captions that say which."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour = rng.choice(["red", "blue", "green"])
        shape = rng.choice(["circle", "square"])
        img = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(img)
        x, y = rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)
        box = [x, y, x + size[0] // 2, y + size[1] // 2]
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
        img.save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(f"a {colour} {shape} on a white background", encoding="utf-8")
    return folder


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    return make_shape_folder(tmp_path / "shapes")


def write_preset(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
