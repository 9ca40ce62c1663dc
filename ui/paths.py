"""Safe paths for the app: every folder or file a user types must lie under one of the allowed roots.

The roots are the project folder (the app's current folder) and each `--root DIR`. A path is refused when it has a
`..` part, when it is absolute and outside every root, or when it resolves (following symlinks) to a place outside
every root, so a symlink inside a root cannot lead out. Relative paths are taken from the first root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sdlora.errors import SdloraError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


class UnsafePath(SdloraError):
    """A path the app will not touch; the message says why and which roots are allowed."""


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class Roots:
    """The folders the app may read and write below; the first one is the project folder."""

    paths: tuple[Path, ...]
    spelled: tuple[Path, ...] = ()  # the roots as given (absolute, symlinks kept), for clearer messages only

    @classmethod
    def of(cls, project: Path | str, extra: list[Path | str] | tuple = ()) -> "Roots":
        resolved, spelled = [], []
        for folder in [project, *extra]:
            real = Path(folder).expanduser().resolve()
            if not real.is_dir():
                raise UnsafePath(f"--root {folder}: not a folder; give an existing folder")
            if real not in resolved:
                resolved.append(real)
                spelled.append(Path(folder).expanduser().absolute())
        return cls(tuple(resolved), tuple(spelled))

    @property
    def project(self) -> Path:
        return self.paths[0]

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def contains(self, path: Path | str) -> bool:
        """Whether `path`, with symlinks followed, lies under a root."""
        real = Path(path).resolve()
        return any(_is_within(real, root) for root in self.paths)

    def resolve(self, text: str | Path, *, must_exist: bool = True, kind: str | None = None) -> Path:
        """The real path that `text` names, or `UnsafePath`. `kind` is "dir" or "file" to check what it is."""
        raw = str(text).strip()
        if not raw:
            raise UnsafePath("the path is empty; give a folder under " + self.describe())
        if "\x00" in raw:
            raise UnsafePath("the path holds a NUL character")
        given = Path(raw).expanduser()
        # Refuse '..' outright, even where it would land inside a root: it is how traversal is written.
        if ".." in given.parts or ".." in raw.replace("\\", "/").split("/"):
            raise UnsafePath(f"{raw}: '..' is not allowed in a path; give a folder under {self.describe()}")
        absolute = given if given.is_absolute() else self.project / given
        real = absolute.resolve()  # follows every symlink on the way
        if not any(_is_within(real, root) for root in self.paths):
            if any(_is_within(absolute, root) for root in self.paths + self.spelled):
                raise UnsafePath(f"{raw}: leads outside the allowed folders through a symlink (to {real}); "
                                 f"allowed: {self.describe()}")
            raise UnsafePath(f"{raw}: outside the allowed folders ({self.describe()}); start the app with "
                             f"--root DIR to allow another folder")
        if must_exist and not real.exists():
            raise UnsafePath(f"{raw}: no such {'folder' if kind == 'dir' else 'file' if kind == 'file' else 'path'}")
        if real.exists():
            if kind == "dir" and not real.is_dir():
                raise UnsafePath(f"{raw}: is not a folder")
            if kind == "file" and not real.is_file():
                raise UnsafePath(f"{raw}: is not a file")
        return real


def safe_name(text: str, what: str = "name") -> str:
    """A plain file or folder name (letters, digits, space, '.', '_', '-'; no slashes, not hidden)."""
    name = str(text).strip()
    if not _NAME.match(name) or name in (".", ".."):
        raise UnsafePath(f"{what} {text!r}: use letters, digits, spaces, '.', '_' or '-' (no slashes, at most 100 "
                         f"characters, not starting with a dot)")
    return name
