"""Requests to a running trainer from another process (the app's "sample now" and "save now" buttons, or a
user's `touch outputs/NAME/requests/sample`): one empty file per request in RUN_DIR/requests/, taken (deleted)
by the trainer at its next report, which serves it after that step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sdlora.atomic import write_text

REQUESTS = ("sample", "save")


def request(run_dir: Path | str, what: str) -> Path:
    """Ask the trainer of `run_dir` for `what` ("sample" or "save") after its current step."""
    if what not in REQUESTS:
        raise ValueError(f"unknown request {what!r}; one of {REQUESTS}")
    path = Path(run_dir) / "requests" / what
    write_text(path, "")
    return path


def take_requests(run_dir: Path | str) -> set[str]:
    """The requests waiting for `run_dir`, removed as they are taken (cheap when there are none)."""
    folder = Path(run_dir) / "requests"
    if not folder.is_dir():
        return set()
    taken = set()
    for what in REQUESTS:
        with contextlib.suppress(FileNotFoundError):
            (folder / what).unlink()
            taken.add(what)
    return taken
