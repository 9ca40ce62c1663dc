"""Content hashes, one way everywhere: sha256 of a file's bytes (streamed), optionally remembered on disk.

They key the latent cache (an edited image is never served stale), the single-file model conversions and the
adapters held in memory by the Preview tab, grids and the app's API.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def file_sha256(path: Path | str, memo_dir: Path | None = None) -> str:
    """sha256 of the file's bytes. With `memo_dir`, remembered by (path, size, mtime), so a multi-GB checkpoint
    is read once, not at every start."""
    path = Path(path)
    memo = None
    if memo_dir is not None:
        stat = path.stat()
        memo = Path(memo_dir) / f"{sha256_text(f'{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}')[:32]}.json"
        try:
            return json.loads(memo.read_text(encoding="utf-8"))["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    if memo is not None:
        from sdlora.atomic import write_text

        write_text(memo, json.dumps({"path": str(path.resolve()), "sha256": sha}))
    return sha
