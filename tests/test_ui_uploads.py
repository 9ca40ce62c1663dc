"""ui.uploads: uploads become a data-set folder; hostile zips and oversized files are refused whole."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from ui.paths import UnsafePath
from ui.uploads import Limits, extract_zip, import_uploads


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_of_images_and_captions_is_extracted_with_subfolders(tmp_path):
    archive = make_zip(tmp_path / "set.zip", {"a.png": png_bytes(), "a.txt": b"a red square",
                                              "10_cat/b.png": png_bytes(), "notes.pdf": b"%PDF",
                                              "__MACOSX/._a.png": b"junk"})
    report = extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "a red square"
    assert (tmp_path / "out" / "10_cat" / "b.png").is_file()
    assert not (tmp_path / "out" / "notes.pdf").exists()
    assert sorted(report.skipped) == ["__MACOSX/._a.png", "notes.pdf"]
    assert "2 image(s) and 1 caption file(s)" in report.summary()


@pytest.mark.parametrize("name", ["/etc/evil.png", "../evil.png", "a/../../evil.png", "..\\evil.png",
                                  "C:/evil.png"])
def test_zip_members_with_absolute_or_dotdot_paths_are_refused(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"ok.png": png_bytes(), name: png_bytes()})
    with pytest.raises(UnsafePath):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out" / "ok.png").exists()  # refused before anything was written


def test_zip_symlink_members_are_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafePath, match="symlink"):
        extract_zip(archive, tmp_path / "out")


def test_zip_bomb_by_ratio_is_refused(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"big.png": b"\0" * (20 * 2**20)})
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafePath, match="zip bomb"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "big.png").exists()


def test_zip_over_the_total_size_limit_is_refused(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"{i}.png": png_bytes() for i in range(5)}, zipfile.ZIP_STORED)
    limits = Limits(max_total_bytes=3 * len(png_bytes()))
    with pytest.raises(UnsafePath, match="limit"):
        extract_zip(archive, tmp_path / "out", limits)
    with pytest.raises(UnsafePath, match="members"):
        extract_zip(archive, tmp_path / "out", Limits(max_members=4))


def test_member_that_lies_about_its_size_is_stopped(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", {"a.png": b"x" * 5000}, zipfile.ZIP_STORED)
    # Patch the declared size in both headers down to 10 bytes; the real data is 5000.
    data = bytearray(archive.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig)
        data[at + offset:at + offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(UnsafePath):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "a.png").exists()


def test_uploads_are_size_limited_and_keep_only_their_base_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes())
    (src / "a.txt").write_text("caption")
    (src / "run.sh").write_text("echo hi")
    report = import_uploads([src / "a.png", src / "a.txt", src / "run.sh"], tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["a.png", "a.txt"]
    assert report.skipped == ["run.sh"]
    with pytest.raises(UnsafePath, match="upload limit"):
        import_uploads([src / "a.png"], tmp_path / "set2", Limits(max_file_bytes=10))


def test_a_refused_upload_leaves_no_empty_data_set_folder(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", {"a.png": b"\0" * (8 * 2**20)})
    dest = tmp_path / "datasets" / "new"
    with pytest.raises(UnsafePath, match="zip bomb"):
        import_uploads([bomb], dest)
    assert not dest.exists()
    dest.mkdir()  # a folder that was there before stays
    with pytest.raises(UnsafePath):
        import_uploads([bomb], dest)
    assert dest.is_dir()
