"""The Dataset tab's Caption panel: a preview of the first captions writes nothing; the run writes them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from caption_fixtures import make_blip
from conftest import make_shape_folder
from sdlora.errors import SdloraError
from ui import caption_panel
from ui.context import AppContext
from ui.paths import Roots


def test_preview_then_write(tmp_path):
    ctx = AppContext(roots=Roots.of(tmp_path))
    make_blip(tmp_path / "models" / "blip")
    folder = make_shape_folder(tmp_path / "data", count=6)
    for txt in folder.glob("*.txt"):
        if txt.stem != "img005":
            txt.unlink()
    before = sorted(folder.iterdir())

    shown = caption_panel.preview(ctx, folder, "models/blip", "sks", False, 0.35)
    assert [Path(image).name for image, _ in shown] == ["img000.png", "img001.png", "img002.png", "img003.png"]
    assert all(caption.startswith("sks, ") for _, caption in shown)
    assert sorted(folder.iterdir()) == before  # nothing written by the preview

    lines = list(caption_panel.write(ctx, folder, "models/blip", "sks", False, 0.35))
    assert lines[-1].startswith("5 caption(s) written, 1 kept")
    # What was previewed is what gets written.
    assert [(folder / Path(image).with_suffix(".txt").name).read_text(encoding="utf-8").strip()
            for image, _ in shown] == [caption for _, caption in shown]
    assert (folder / "img005.txt").read_text(encoding="utf-8").startswith("a ")  # kept


def test_a_model_outside_the_allowed_folders_is_refused(tmp_path):
    (tmp_path / "project").mkdir()
    ctx = AppContext(roots=Roots.of(tmp_path / "project"))
    with pytest.raises(SdloraError):
        caption_panel.preview(ctx, tmp_path / "project", str(tmp_path / "elsewhere"), "", False, 0.35)
