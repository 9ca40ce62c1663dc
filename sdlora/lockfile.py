"""One owner at a time: a lock file that names the process holding it, and that a dead process does not keep.

Used for run folders (one trainer writes outputs/NAME at a time) and for the training queue (one runner). The
lock is a file created with O_EXCL holding the owner's PID and host; a second taker gets a `SdloraError` that
names the PID. A lock whose PID no longer runs on this host (the owner was killed with -9) is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from sdlora.errors import SdloraError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def lock_owner(lock: Path) -> dict | None:
    """The live owner recorded in `lock` ({"pid", "host", "purpose", "since"}), or None if free or stale."""
    try:
        owner = json.loads(Path(lock).read_text(encoding="utf-8"))
        pid = int(owner["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Torn or foreign content: a taker writes the whole record in one write, so this is not a live lock
        # being created right now unless it is very young.
        try:
            young = time.time() - Path(lock).stat().st_mtime < 2.0
        except OSError:
            return None
        return {"pid": -1, "host": "?", "purpose": "being created", "since": 0} if young else None
    if owner.get("host") == socket.gethostname() and not _alive(pid):
        return None
    return owner


@contextlib.contextmanager
def hold(lock: Path | str, purpose: str, what: str | None = None) -> Iterator[Path]:
    """Hold `lock` for the duration of the block; `what` names the guarded thing in the error message."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                         "since": round(time.time(), 3)})
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock_owner(lock)
            if owner is not None:
                raise SdloraError(f"{what or lock.parent} is in use by process {owner['pid']} "
                                  f"({owner.get('purpose', '?')}); wait for it to finish or stop it first") from None
            lock.unlink(missing_ok=True)  # stale: its owner died without releasing it
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(record)
        break
    else:
        raise SdloraError(f"{lock}: could not take the lock; another process keeps taking it")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if json.loads(lock.read_text(encoding="utf-8")).get("pid") == os.getpid():
                lock.unlink()
