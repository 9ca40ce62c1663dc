"""Which kind of captioner a path holds: a WD14-style tagger (ONNX model + tags CSV) or a transformers model."""

from __future__ import annotations

import json
from pathlib import Path

from sdlora.errors import SdloraError

EXPECTED = ("expected a transformers image-to-text model folder (config.json of BLIP, BLIP-2, GIT, Florence-2 or "
            "another image-text-to-text model, with its processor files) or a WD14-style tagger (a .onnx model and "
            "its tags .csv, e.g. model.onnx + selected_tags.csv)")


def tagger_files(path: Path) -> tuple[Path, Path] | None:
    """(model.onnx, tags.csv) when `path` is a tagger (the .onnx file or its folder), else None."""
    if path.is_file() and path.suffix.lower() == ".onnx":
        folder, models = path.parent, [path]
    elif path.is_dir():
        folder, models = path, sorted(path.glob("*.onnx"))
    else:
        return None
    tables = sorted(folder.glob("*.csv"))
    if not models or not tables:
        return None
    model = next((m for m in models if m.name == "model.onnx"), models[0])
    table = next((t for t in tables if t.name == "selected_tags.csv"), tables[0])
    return model, table


def detect_kind(path: Path | str) -> str:
    """"tagger" or "transformers"; anything else is a one-line `SdloraError` saying what was expected."""
    path = Path(path)
    if not path.exists():
        raise SdloraError(f"--model {path}: no such file or folder; give a captioning model on this machine "
                          f"({EXPECTED})")
    if tagger_files(path):
        return "tagger"
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise SdloraError(f"--model {config}: unreadable config.json ({exc}); {EXPECTED}") from None
        if model_type:
            return "transformers"
        raise SdloraError(f"--model {path}: config.json names no model_type; {EXPECTED}")
    raise SdloraError(f"--model {path}: not a captioning model; {EXPECTED}")


def load_captioner(path: Path | str, device: str = "auto", **options):
    """A captioner object with `.kind`, `.name` and `.caption(images) -> list[str]` for the model at `path`.

    Options: `threshold` (tagger), `max_length`, `prompt`, `trust_remote_code` (transformers).
    """
    path = Path(path)
    kind = detect_kind(path)
    if kind == "tagger":
        from sdlora.caption.tagger import Tagger

        model, table = tagger_files(path)
        return Tagger(model, table, device=device, threshold=options.get("threshold", 0.35))
    from sdlora.caption.image_to_text import ImageToText

    return ImageToText(path, device=device, max_length=options.get("max_length", 60),
                       prompt=options.get("prompt"), trust_remote_code=options.get("trust_remote_code", False))
