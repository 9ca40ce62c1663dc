"""`sdlora caption`: captions from a model on disk (a tiny random BLIP, a tiny ONNX tagger built here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from caption_fixtures import make_blip, make_git, make_tagger
from conftest import make_shape_folder
from sdlora.cli import main


@pytest.fixture(scope="module")
def blip(tmp_path_factory) -> Path:
    return make_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return make_tagger(tmp_path_factory.mktemp("models") / "tiny-tagger")


def data_folder(root: Path) -> Path:
    """6 shape images: img000 keeps its caption, the others have none; plus a truncated PNG."""
    folder = make_shape_folder(root, count=6)
    for txt in folder.glob("*.txt"):
        if txt.stem != "img000":
            txt.unlink()
    png = (folder / "img001.png").read_bytes()
    (folder / "broken.png").write_bytes(png[: len(png) // 2])
    return folder


def run_json(capsys, *args) -> dict:
    code = main(["caption", *map(str, args), "--max-length", "8", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_blip_writes_one_caption_per_image_keeps_existing_and_skips_broken(blip, tmp_path, capsys):
    folder = data_folder(tmp_path / "data")
    before = (folder / "img000.txt").read_bytes()
    report = run_json(capsys, folder, "--model", blip, "--prefix", "sks", "--batch", "2")
    assert report["kind"] == "transformers" and report["images"] == 7
    assert report["written"] == 5 and report["kept"] == 1
    assert [s["file"] for s in report["skipped"]] == ["broken.png"] and "truncated" in report["skipped"][0]["reason"]
    assert (folder / "img000.txt").read_bytes() == before  # kept without --overwrite
    assert not (folder / "broken.txt").exists()
    for i in range(1, 6):
        text = (folder / f"img{i:03d}.txt").read_text(encoding="utf-8")
        assert text.endswith("\n") and text.startswith("sks, ") and len(text.strip()) > len("sks, ")
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temp files


def test_blip_captions_are_deterministic_and_independent_of_the_batch(blip, tmp_path, capsys):
    folder = data_folder(tmp_path / "data")
    one = run_json(capsys, folder, "--model", blip, "--batch", "1")
    again = run_json(capsys, folder, "--model", blip, "--batch", "4", "--overwrite")
    assert again["written"] == 6  # img000 replaced too
    first = {c["file"]: c["caption"] for c in one["captions"]}
    second = {c["file"]: c["caption"] for c in again["captions"]}
    assert all(second[f] == first[f] for f in first)
    # The caption depends on the image: the six shape images do not all get the same text.
    assert len(set(second.values())) > 1


def test_overwrite_replaces_and_suffix_is_appended(blip, tmp_path, capsys):
    folder = data_folder(tmp_path / "data")
    run_json(capsys, folder, "--model", blip, "--overwrite", "--suffix", "best quality")
    assert (folder / "img000.txt").read_text(encoding="utf-8").rstrip().endswith(", best quality")
    assert "on a white background" not in (folder / "img000.txt").read_text(encoding="utf-8")


def test_a_decoder_only_model_gets_only_the_caption_not_its_prompt(tmp_path, capsys):
    git = make_git(tmp_path / "tiny-git")
    folder = make_shape_folder(tmp_path / "data", count=2)
    plain = run_json(capsys, folder, "--model", git, "--overwrite")
    prompted = run_json(capsys, folder, "--model", git, "--overwrite", "--prompt", "a photo of")
    assert plain["kind"] == "transformers" and plain["written"] == 2
    for caption in [c["caption"] for c in plain["captions"] + prompted["captions"]]:
        assert len(caption.split()) == 8  # --max-length new words (no end token here), without the prompt's 3
    assert run_json(capsys, folder, "--model", git, "--overwrite")["captions"] == plain["captions"]


def test_tagger_writes_tags_above_the_threshold(tagger, tmp_path, capsys):
    folder = tmp_path / "tags"
    folder.mkdir()
    Image.new("RGB", (40, 24), (220, 10, 10)).save(folder / "red.png")
    Image.new("RGB", (24, 40), (10, 10, 220)).save(folder / "blue.png")
    Image.new("RGB", (30, 30), (250, 250, 250)).save(folder / "white.png")
    run_json(capsys, folder, "--model", tagger, "--threshold", "0.5")
    read = lambda name: (folder / f"{name}.txt").read_text(encoding="utf-8").strip()  # noqa: E731
    # Underscores become spaces, kaomoji keep theirs, the rating tag ("general") is never written.
    assert read("red") == "red hair"
    assert read("blue") == "blue sky"
    assert read("white") == "^_^"
    run_json(capsys, folder, "--model", tagger / "model.onnx", "--threshold", "0.000001", "--overwrite")
    tags = read("red").split(", ")
    assert tags[0] == "red hair" and "^_^" in tags and "general" not in tags and "green (color)" in tags


def test_a_folder_that_is_no_captioner_is_a_one_line_error(tmp_path, capsys):
    folder = make_shape_folder(tmp_path / "data", count=1)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"x")
    assert main(["caption", str(folder), "--model", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "expected a transformers" in err and "WD14" in err
    assert main(["caption", str(folder), "--model", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_preview_writes_nothing(blip, tmp_path):
    from sdlora.caption import caption_folder, load_captioner

    folder = data_folder(tmp_path / "data")
    (folder / "broken.png").unlink()
    files = sorted(folder.iterdir())
    report = caption_folder(folder, load_captioner(blip), limit=2, write=False, prefix="sks")
    assert len(report.written) == 2 and all(c.startswith("sks, ") for _, _, c in report.written)
    assert sorted(folder.iterdir()) == files
