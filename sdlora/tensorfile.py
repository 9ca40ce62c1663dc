"""Read a .safetensors file: the one reader behind adapters, single-file models, caches, checkpoints and the UI.

A file that is not safetensors (a pickle renamed, random bytes, a torn download) is a one-line `SdloraError`
naming the file and what it looks like; a pickle is never opened, since unpickling can run code.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from sdlora.errors import SdloraError

PICKLE_ZIP = b"PK\x03\x04"  # torch.save's zip container
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")  # a raw pickle starts with \x80 and its protocol


def read_safetensors(path: Path | str, *, label: str | None = None, tensors: bool = True,
                     advice: str = "download or export it again") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file; `tensors=False` reads the header only (tensors come back empty).

    `label` names the file in errors (default: its path), e.g. "model 'x.safetensors'"; `advice` says what to do
    about a damaged one."""
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise SdloraError(f"{label}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(PICKLE_ZIP) or head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS:
        raise SdloraError(f"{label}: this is a pickled PyTorch checkpoint (.ckpt/.pt/.bin), which can run code "
                          f"when opened; sdlora reads .safetensors only, so convert it with a tool you trust")
    header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
    if len(head) < 9 or head[8:9] != b"{" or header_len > path.stat().st_size - 8:
        raise SdloraError(f"{label}: not a readable .safetensors file (no valid header); the file is damaged, "
                          f"incomplete or of another kind")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            state = {key: fh.get_tensor(key) for key in fh.keys()} if tensors else {}
    except Exception as exc:  # safetensors raises its own error types for a bad header or a short file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SdloraError(f"{label}: not a readable .safetensors file ({first}); the file is damaged or "
                          f"incomplete: {advice}") from None
    return state, metadata
