"""ui.captions: the Dataset tab's caption edits land beside the images, atomically, and bulk edits are exact."""

from __future__ import annotations

from pathlib import Path

from conftest import make_shape_folder
from ui import captions


def test_entries_list_every_image_with_its_caption(tmp_path):
    folder = make_shape_folder(tmp_path / "set", count=3)
    (folder / "img001.txt").unlink()
    entries = captions.list_entries(folder)
    assert [e.image.name for e in entries] == ["img000.png", "img001.png", "img002.png"]
    assert entries[1].caption == "" and not entries[1].has_file
    assert entries[0].caption.endswith("on a white background")


def test_save_caption_writes_beside_the_image_without_temp_files_left(tmp_path):
    folder = make_shape_folder(tmp_path / "set", count=2)
    written = captions.save_caption(folder / "img000.png", "  a new caption  ")
    assert written == folder / "img000.txt"
    assert written.read_text(encoding="utf-8") == "a new caption\n"
    assert sorted(p.name for p in folder.iterdir()) == ["img000.png", "img000.txt", "img001.png", "img001.txt"]


def test_add_trigger_once_and_create_missing_captions(tmp_path):
    folder = make_shape_folder(tmp_path / "set", count=3)
    (folder / "img002.txt").unlink()
    assert captions.add_trigger(folder, "sks") == 3
    assert (folder / "img000.txt").read_text().startswith("sks, a ")
    assert (folder / "img002.txt").read_text().strip() == "sks"
    assert captions.add_trigger(folder, "sks") == 0  # already there: nothing changes
    assert captions.add_trigger(folder, "  ") == 0


def test_find_and_replace_in_all_captions(tmp_path):
    folder = make_shape_folder(tmp_path / "set", count=4)
    before = {p.name: p.read_text() for p in folder.glob("*.txt")}
    expected = sum("white" in t for t in before.values())
    assert captions.replace_text(folder, "white", "black") == expected
    for p in folder.glob("*.txt"):
        assert p.read_text() == before[p.name].replace("white", "black").strip() + "\n"
    assert captions.replace_text(folder, "", "x") == 0


def test_a_caption_symlinked_outside_the_allowed_folders_is_refused_by_name(tmp_path):
    from ui.check_view import checked
    from ui.paths import Roots

    project = tmp_path / "project"
    folder = make_shape_folder(project / "datasets" / "set", count=3)
    secret = tmp_path / "secret.txt"
    secret.write_text("root password hunter2", encoding="utf-8")
    (folder / "img001.txt").unlink()
    (folder / "img001.txt").symlink_to(secret)
    roots = Roots.of(project)
    entries = captions.list_entries(folder, allowed=roots.contains)
    assert [e.refused for e in entries] == ["", "img001.txt leads outside the allowed folders through a symlink; "
                                                "not read", ""]
    assert not any("hunter2" in e.caption for e in entries)
    assert captions.add_trigger(folder, "sks", allowed=roots.contains) == 2
    assert secret.read_text(encoding="utf-8") == "root password hunter2"  # never written through the link
    assert captions.replace_text(folder, "password", "x", allowed=roots.contains) == 0
    html, _ = checked(folder, 64, False, hide_tags=True)
    assert "hunter2" not in html  # the check's top tags would show the linked file's words
