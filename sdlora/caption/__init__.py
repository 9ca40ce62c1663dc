"""Captions written by a model the user has on disk: a transformers image-to-text model or a WD14-style tagger.

`load_captioner(path)` reads the kind from the folder (nothing is downloaded); `caption_folder` captions a data
folder with it, one caption file per image, written atomically.
"""

from sdlora.caption.detect import detect_kind, load_captioner
from sdlora.caption.folder import CaptionReport, caption_folder, compose

__all__ = ["CaptionReport", "caption_folder", "compose", "detect_kind", "load_captioner"]
