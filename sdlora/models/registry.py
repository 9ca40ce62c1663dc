"""The built-in models: name -> a diffusers-format folder that plain diffusers can load.

A model whose weights ship inside the package (`sdlora/models/builtin/NAME/`) is used as it is. Otherwise the
folder is built once, deterministically, into the user cache (`$SDLORA_CACHE` or ~/.cache/sdlora) and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdlora.userdata import cache_dir

SHIPPED_DIR = Path(__file__).parent / "builtin"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    resolution: int
    build: Callable[[], object]  # returns a pipeline with deterministic weights
    version: str

    @property
    def shipped_path(self) -> Path:
        return SHIPPED_DIR / self.name

    @property
    def path(self) -> Path:
        if (self.shipped_path / "model_index.json").is_file():
            return self.shipped_path
        return cache_dir() / "models" / f"{self.name}-{self.version}"

    def ensure(self) -> Path:
        """The model's folder, built first if it is not there yet."""
        path = self.path
        if not (path / "model_index.json").is_file():
            from sdlora.models.storage import save_pipeline_folder

            save_pipeline_folder(self.build(), path)
        return path


def _tiny_random():
    from sdlora.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


_BUILTINS = [
    BuiltinModel("tiny", "SD 1.x architecture at 64 px (tiny, for demos and tests)", 64, _tiny_random, "r1"),
]


def builtin_models() -> dict[str, BuiltinModel]:
    return {m.name: m for m in _BUILTINS}
