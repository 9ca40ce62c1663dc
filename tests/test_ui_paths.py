"""ui.paths: the app touches nothing outside its allowed roots, however the path is spelled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ui.paths import Roots, UnsafePath, safe_name


@pytest.fixture
def layout(tmp_path: Path):
    project = tmp_path / "project"
    (project / "datasets" / "cats").mkdir(parents=True)
    (project / "presets").mkdir()
    (project / "presets" / "a.yaml").write_text("name: a\n")
    extra = tmp_path / "extra"
    (extra / "dogs").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "key.txt").write_text("x")
    return project, extra, outside


def test_relative_paths_resolve_from_the_project_folder(layout):
    project, extra, _ = layout
    roots = Roots.of(project, [extra])
    assert roots.resolve("datasets/cats", kind="dir") == (project / "datasets" / "cats").resolve()
    assert roots.resolve("presets/a.yaml", kind="file").name == "a.yaml"


def test_absolute_paths_inside_any_root_are_accepted(layout):
    project, extra, _ = layout
    roots = Roots.of(project, [extra])
    assert roots.resolve(str(extra / "dogs"), kind="dir") == (extra / "dogs").resolve()
    assert roots.resolve(str(project)) == project.resolve()


@pytest.mark.parametrize("text", ["../outside", "datasets/../../outside", "datasets/cats/..", "..", "a/..\\b",
                                  "datasets\\..\\..\\outside"])
def test_dot_dot_is_refused(layout, text):
    project, _, _ = layout
    with pytest.raises(UnsafePath, match=r"'\.\.' is not allowed"):
        Roots.of(project).resolve(text, must_exist=False)


def test_absolute_paths_outside_the_roots_are_refused(layout):
    project, extra, outside = layout
    roots = Roots.of(project, [extra])
    for text in [str(outside / "secret"), "/etc/passwd", "/", str(project.parent)]:
        with pytest.raises(UnsafePath, match="outside the allowed folders"):
            roots.resolve(text, must_exist=False)


def test_a_symlink_that_leads_out_is_refused(layout):
    project, _, outside = layout
    os.symlink(outside / "secret", project / "datasets" / "link")
    os.symlink(outside / "secret" / "key.txt", project / "presets" / "key.yaml")
    roots = Roots.of(project)
    with pytest.raises(UnsafePath, match="symlink"):
        roots.resolve("datasets/link", kind="dir")
    with pytest.raises(UnsafePath, match="symlink"):
        roots.resolve("datasets/link/key.txt")
    with pytest.raises(UnsafePath, match="symlink"):
        roots.resolve("presets/key.yaml", kind="file")
    assert not roots.contains(project / "datasets" / "link")


def test_a_symlink_that_stays_inside_the_roots_is_fine(layout):
    project, extra, _ = layout
    os.symlink(extra / "dogs", project / "datasets" / "dogs")
    assert Roots.of(project, [extra]).resolve("datasets/dogs", kind="dir") == (extra / "dogs").resolve()
    with pytest.raises(UnsafePath):
        Roots.of(project).resolve("datasets/dogs", kind="dir")  # extra is not a root here


def test_a_root_given_through_a_symlink_works(tmp_path, layout):
    project, _, _ = layout
    os.symlink(project, tmp_path / "alias")
    roots = Roots.of(tmp_path / "alias")
    assert roots.resolve(str(tmp_path / "alias" / "datasets" / "cats"), kind="dir") == \
        (project / "datasets" / "cats").resolve()


def test_missing_empty_and_wrong_kind(layout):
    project, _, _ = layout
    roots = Roots.of(project)
    with pytest.raises(UnsafePath, match="no such folder"):
        roots.resolve("datasets/none", kind="dir")
    assert roots.resolve("datasets/new", must_exist=False) == (project / "datasets" / "new").resolve()
    with pytest.raises(UnsafePath, match="empty"):
        roots.resolve("  ")
    with pytest.raises(UnsafePath, match="not a folder"):
        roots.resolve("presets/a.yaml", kind="dir")
    with pytest.raises(UnsafePath, match="NUL"):
        roots.resolve("datasets/\x00cats")


def test_a_root_must_be_a_folder(tmp_path):
    with pytest.raises(UnsafePath, match="--root"):
        Roots.of(tmp_path, [tmp_path / "nope"])


@pytest.mark.parametrize("bad", ["", ".", "..", ".hidden", "a/b", "a\\b", "../x", "x" * 101, "a\x00"])
def test_safe_name_refuses_anything_but_a_plain_name(bad):
    with pytest.raises(UnsafePath):
        safe_name(bad)


def test_safe_name_keeps_plain_names():
    assert safe_name(" my set_2.v1 ") == "my set_2.v1"
