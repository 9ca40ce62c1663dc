"""Saving onto a full disk: one clear error that says so, which folder, and how much the save needed.

A full disk reaches us as `OSError(ENOSPC)` from plain writes, but torch.save reports it as
`RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos`, which never mentions space; so a
failed save is also called a full disk when the folder has less room left than the save needed.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(RuntimeError):
    """A save failed because the disk (or quota) is full; earlier files are kept."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def free_bytes(folder: Path) -> int | None:
    for candidate in (Path(folder), *Path(folder).parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def is_disk_full(exc: BaseException, folder: Path, needed: int) -> bool:
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    free = free_bytes(folder)
    return isinstance(exc, (OSError, RuntimeError)) and free is not None and free < needed


@contextlib.contextmanager
def reporting_disk_full(folder: Path | str, needed: int, what: str, then: str = "") -> Iterator[None]:
    """Turn a failed save of about `needed` bytes into `folder` into a `DiskFullError` when the disk is full."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, DiskFullError) or not is_disk_full(exc, Path(folder), needed):
            raise
        free = free_bytes(Path(folder))
        raise DiskFullError(f"disk full: saving {what} to {folder} needs about {_mib(needed)}, "
                            f"{_mib(free or 0)} free there; free some space{then}") from exc
