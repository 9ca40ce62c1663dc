"""Where sdlora keeps what it builds for the user, outside any run folder: `$SDLORA_CACHE`, else ~/.cache/sdlora.

Below it: models/ (built-in and converted single-file models), hashes/ (remembered file hashes), latents/
(data.cache: disk), inductor/ (compiled kernels). Everything there can be deleted; it is rebuilt when needed.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SDLORA_CACHE") or Path.home() / ".cache" / "sdlora")
