"""Turning uploaded files (images, captions, zips of them) into a data-set folder, within limits.

Uploads are untrusted: each file is size-limited, a zip member with an absolute path, a `..` part or a symlink is
refused, and a zip whose members add up to too much, or expand too far relative to their compressed size (a zip
bomb), is refused before anything is written. Members are also counted while they are written, since a zip's
declared sizes can lie.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sdlora.data.scan import IMAGE_EXTENSIONS
from ui.paths import UnsafePath

CAPTION_EXTENSIONS = {".txt", ".caption"}
KEPT_EXTENSIONS = IMAGE_EXTENSIONS | CAPTION_EXTENSIONS


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 200 * 2**20  # one uploaded file (a zip counts as one)
    max_total_bytes: int = 2 * 2**30  # everything a zip expands to
    max_ratio: float = 100.0  # uncompressed / compressed, for the whole zip and for each large member
    max_members: int = 20_000


@dataclass
class ImportReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # names that are not images or captions

    def summary(self) -> str:
        images = sum(1 for p in self.written if p.suffix.lower() in IMAGE_EXTENSIONS)
        text = f"{images} image(s) and {len(self.written) - images} caption file(s) added"
        if self.skipped:
            shown = ", ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
            text += f"; skipped {len(self.skipped)} other file(s): {shown}"
        return text


def member_path(name: str) -> PurePosixPath:
    """The relative path of a zip member, or `UnsafePath` for an absolute or `..` name."""
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or path.is_absolute():
        raise UnsafePath(f"zip member {name!r}: absolute paths are not allowed")
    if ".." in path.parts:
        raise UnsafePath(f"zip member {name!r}: '..' is not allowed")
    return path


def check_zip(zf: zipfile.ZipFile, archive_bytes: int, limits: Limits) -> list[zipfile.ZipInfo]:
    """The members to extract, after refusing the whole zip if any member or the total breaks a limit."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise UnsafePath(f"zip: {len(infos)} members is more than the limit of {limits.max_members}")
    total = 0
    for info in infos:
        member_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafePath(f"zip member {info.filename!r}: symlinks are not allowed")
        total += info.file_size
        if info.file_size > 2**20 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafePath(f"zip member {info.filename!r}: expands {info.file_size / max(info.compress_size, 1):.0f}"
                             f"x (limit {limits.max_ratio:.0f}x); this looks like a zip bomb")
    if total > limits.max_total_bytes:
        raise UnsafePath(f"zip: expands to {total / 2**20:.0f} MiB, more than the limit of "
                         f"{limits.max_total_bytes / 2**20:.0f} MiB")
    if total > 2**20 and total > limits.max_ratio * max(archive_bytes, 1):
        raise UnsafePath(f"zip: expands {total / max(archive_bytes, 1):.0f}x (limit {limits.max_ratio:.0f}x); "
                         f"this looks like a zip bomb")
    return [i for i in infos if not i.is_dir()]


def extract_zip(archive: Path, dest: Path, limits: Limits = Limits(), report: ImportReport | None = None) -> ImportReport:
    """Extract the images and captions of `archive` below `dest`, keeping subfolders (kohya's N_name folders)."""
    report = report or ImportReport()
    dest = dest.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UnsafePath(f"{Path(archive).name}: not a valid zip file") from None
    with zf:
        members = check_zip(zf, Path(archive).stat().st_size, limits)
        budget = limits.max_total_bytes
        for info in members:
            rel = member_path(info.filename)
            if rel.suffix.lower() not in KEPT_EXTENSIONS or any(p.startswith(".") or p == "__MACOSX" for p in rel.parts):
                report.skipped.append(info.filename)
                continue
            target = dest.joinpath(*rel.parts)
            if not target.resolve().is_relative_to(dest):
                raise UnsafePath(f"zip member {info.filename!r}: would land outside the data-set folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            budget -= _copy_limited(zf, info, target, budget)
            report.written.append(target)
    return report


def _copy_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Write one member, stopping if it yields more than it declared or than the remaining budget."""
    allowed = min(info.file_size, budget)
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(2**20):
                written += len(chunk)
                if written > allowed:
                    raise UnsafePath(f"zip member {info.filename!r}: holds more data than it declares; refused")
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, UnsafePath) as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, UnsafePath):
            raise
        raise UnsafePath(f"zip member {info.filename!r}: damaged ({exc})") from None
    return written


def import_uploads(files: list[Path | str], dest: Path, limits: Limits = Limits()) -> ImportReport:
    """Copy uploaded images and captions into `dest` and extract uploaded zips there.

    A refused upload leaves no trace: a `dest` this call created is removed again.
    """
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _import(files, dest, limits)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise


def _import(files: list[Path | str], dest: Path, limits: Limits) -> ImportReport:
    report = ImportReport()
    for file in files:
        src = Path(file)
        size = src.stat().st_size
        if size > limits.max_file_bytes:
            raise UnsafePath(f"{src.name}: {size / 2**20:.1f} MiB is more than the upload limit of "
                             f"{limits.max_file_bytes / 2**20:.0f} MiB")
        suffix = src.suffix.lower()
        if suffix == ".zip":
            extract_zip(src, dest, limits, report)
        elif suffix in KEPT_EXTENSIONS:
            # Only the base name: an upload's name is the browser's to choose, so no folders from it.
            target = dest / PurePosixPath(src.name.replace("\\", "/")).name
            shutil.copyfile(src, target)
            report.written.append(target)
        else:
            report.skipped.append(src.name)
    return report
