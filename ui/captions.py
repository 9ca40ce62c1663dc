"""Captions of a data-set folder as the Dataset tab edits them: read, save atomically, bulk edits.

Reading and the trigger rule come from `sdlora.data` (the same the trainer uses); this module only writes the
caption files beside their images, each with `sdlora.atomic.write_text`, so a crash never leaves half a caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdlora.atomic import write_text
from sdlora.data.captions import read_caption, with_trigger
from sdlora.data.scan import scan_folder


Allowed = Callable[[Path], bool]


@dataclass(frozen=True)
class Entry:
    image: Path
    caption_path: Path  # where the caption lives or will be written
    caption: str
    has_file: bool
    refused: str = ""  # why the app will not read this entry's image or caption (a symlink that leads out)


def caption_path_for(image: Path, extension: str = ".txt") -> Path:
    return image.with_suffix(extension if extension.startswith(".") else "." + extension)


def list_entries(folder: Path, extension: str = ".txt", allowed: Allowed | None = None) -> list[Entry]:
    """Every image of the folder (as training sees them, sorted) with its caption ("" where there is none).

    With `allowed` (the app's `Roots.contains`), an image or caption that resolves outside the allowed folders (a
    symlink that leads out) is not read: its entry has `refused` set, naming the file, and no caption.
    """
    entries = []
    for record in scan_folder(folder, extension):
        path = caption_path_for(record.path, extension)
        outside = [p for p in (record.path, path) if allowed is not None and p.exists() and not allowed(p)]
        if outside:
            reason = f"{outside[0].name} leads outside the allowed folders through a symlink; not read"
            entries.append(Entry(record.path, path, "", False, refused=reason))
            continue
        caption = read_caption(path)[0] if path.is_file() else ""
        entries.append(Entry(record.path, path, caption, path.is_file()))
    return entries


def save_caption(image: Path, caption: str, extension: str = ".txt") -> Path:
    """Write the caption beside its image, atomically; returns the caption file."""
    path = caption_path_for(image, extension)
    write_text(path, caption.strip() + "\n")
    return path


@dataclass(frozen=True)
class Change:
    """One caption file a bulk edit would write: its text before (None: no file yet) and after."""

    image: Path
    caption_path: Path
    old: str | None
    new: str


def plan_trigger(folder: Path, trigger: str, extension: str = ".txt", allowed: Allowed | None = None) -> list[Change]:
    """The changes "add a trigger to all" makes: the trigger in front of each caption not starting with it."""
    trigger = trigger.strip()
    if not trigger:
        return []
    changes = []
    for entry in list_entries(folder, extension, allowed):
        if entry.refused:
            continue
        new = with_trigger(entry.caption, trigger)
        if new != entry.caption or not entry.has_file:
            changes.append(Change(entry.image, entry.caption_path, _file_text(entry), new))
    return changes


def plan_replace(folder: Path, find: str, replace: str, extension: str = ".txt",
                 allowed: Allowed | None = None) -> list[Change]:
    """The changes "replace in all" makes (plain text, case-sensitive)."""
    if not find:
        return []
    return [Change(e.image, e.caption_path, _file_text(e), " ".join(e.caption.replace(find, replace).split()))
            for e in list_entries(folder, extension, allowed) if e.has_file and find in e.caption]


def apply_changes(changes: list[Change]) -> int:
    """Write each change's caption (atomically); returns how many files were written."""
    for change in changes:
        write_text(change.caption_path, change.new.strip() + "\n")
    return len(changes)


def undo_changes(changes: list[Change]) -> int:
    """Put every file back as it was before `apply_changes` (a caption that had no file loses it again)."""
    for change in changes:
        if change.old is None:
            change.caption_path.unlink(missing_ok=True)
        else:
            write_text(change.caption_path, change.old)
    return len(changes)


def _file_text(entry: Entry) -> str | None:
    return entry.caption_path.read_text(encoding="utf-8") if entry.has_file else None


def add_trigger(folder: Path, trigger: str, extension: str = ".txt", allowed: Allowed | None = None) -> int:
    """Put `trigger` in front of every caption that does not start with it; returns how many files changed."""
    return apply_changes(plan_trigger(folder, trigger, extension, allowed))


def replace_text(folder: Path, find: str, replace: str, extension: str = ".txt", allowed: Allowed | None = None) -> int:
    """Replace `find` with `replace` in every caption (plain text, case-sensitive); returns files changed."""
    return apply_changes(plan_replace(folder, find, replace, extension, allowed))
