"""ui.captions: the Dataset tab's caption edits land beside the images, atomically, and bulk edits are exact."""

from __future__ import annotations


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


def test_a_bulk_edit_is_planned_before_it_is_written_and_can_be_undone_exactly(tmp_path):
    folder = make_shape_folder(tmp_path / "set", count=3)
    (folder / "img002.txt").unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    plan = captions.plan_trigger(folder, "sks")
    assert [c.image.name for c in plan] == ["img000.png", "img001.png", "img002.png"]
    assert plan[0].new.startswith("sks, a ") and plan[2].old is None and plan[2].new == "sks"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # planning writes nothing
    assert captions.apply_changes(plan) == 3
    assert (folder / "img002.txt").read_text() == "sks\n"
    assert captions.undo_changes(plan) == 3
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # byte for byte, img002.txt gone again
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


def test_the_dataset_tab_reads_and_writes_the_presets_caption_extension(tmp_path):
    """data.caption_extension decides the files: `.caption` captions are listed, edited and bulk-edited as such."""
    from PIL import Image

    from ui import captions
    from ui.check_view import run_check

    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("a red square\n")
    (tmp_path / "a.txt").write_text("not this one\n")
    entries = captions.list_entries(tmp_path, ".caption")
    assert [e.caption for e in entries] == ["a red square"]
    captions.save_caption(tmp_path / "a.png", "edited", ".caption")
    assert (tmp_path / "a.caption").read_text() == "edited\n" and (tmp_path / "a.txt").read_text() == "not this one\n"
    report = run_check(tmp_path, 64, False, ".caption")
    assert "edited" in str(report) and "not this one" not in str(report)
