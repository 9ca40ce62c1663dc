"""`sdlora dataset check`: counts, sizes, buckets, caption statistics and problem files; exit codes."""

from __future__ import annotations

import json

from fixtures_data import gradient, save, write_broken
from sdlora.cli import main


def check(capsys, *args) -> tuple[int, str, str]:
    code = main(["dataset", "check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def mixed_folder(tmp_path):
    folder = tmp_path / "data"
    write_broken(folder)
    for i in range(3):
        save(gradient((512, 768), seed=i), folder / "5_sks" / f"p{i}.jpg", "sks, portrait, red hair")
    save(gradient((1024, 512), seed=9), folder / "wide.png", "sks, landscape")
    save(gradient((300, 300), seed=8), folder / "small.png", "small")
    return folder


def test_json_report_counts_buckets_captions_and_problems(tmp_path, capsys):
    code, out, _ = check(capsys, mixed_folder(tmp_path), "--json", "--buckets", "--resolution", "512")
    report = json.loads(out)
    assert code == 0
    assert (report["image_files"], report["usable"], report["skipped"]) == (12, 4, 8)
    assert report["samples_per_epoch"] == 3 * 5 + 1
    assert report["repeat_folders"] == [{"folder": "5_sks", "repeats": 5, "images": 3}]
    assert report["buckets"] == [{"size": "384x640", "images": 3}, {"size": "704x320", "images": 1}]
    assert report["sizes"]["portrait"] == 3 and report["sizes"]["landscape"] == 1
    assert report["captions"]["top_tags"][0] == {"tag": "sks", "count": 4}
    assert report["captions"]["words"]["max"] == 4 and report["captions"]["tokens"]["estimated"] is True
    problems = {p["file"]: p for p in report["problems"]}
    assert problems["empty.jpg"]["reason"] == "empty file (0 bytes)" and problems["empty.jpg"]["skipped"]
    assert problems["small.png"]["reason"].startswith("too small: 300x300 is smaller than every bucket")


def test_text_report_shows_the_bucket_histogram(tmp_path, capsys):
    code, out, _ = check(capsys, mixed_folder(tmp_path), "--buckets")
    assert code == 0
    assert "buckets at ~512² pixels (images per bucket):" in out
    assert "384x640      3  ####" in out
    assert "cut.jpg: truncated or corrupt image data" in out


def test_square_check_without_buckets(tmp_path, capsys):
    for i in range(2):
        save(gradient((64, 64), seed=i), tmp_path / "d" / f"{i}.png", "a red circle")
    code, out, _ = check(capsys, tmp_path / "d", "--resolution", "64")
    assert code == 0 and "2 usable, 0 skipped" in out and "training size: 64x64" in out
    assert "problems: none" in out


def test_missing_empty_and_all_broken_folders_exit_2(tmp_path, capsys):
    code, _, err = check(capsys, tmp_path / "nope")
    assert code == 2 and "nope: no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = check(capsys, tmp_path / "empty")
    assert code == 2 and "empty: holds no images" in err
    write_broken(tmp_path / "bad")
    code, out, err = check(capsys, tmp_path / "bad")
    assert code == 2 and "none of the 7 image file(s)" in err and "empty.jpg: empty file" in out
