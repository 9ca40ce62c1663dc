"""LoRA adapters: one in-memory form (`Adapter`), files in kohya or diffusers format. See docs/API.md."""

from sdlora.adapters.io import load_adapter, read_adapter_file, save_adapter
from sdlora.adapters.state import Adapter, LoraLayer

__all__ = ["Adapter", "LoraLayer", "load_adapter", "read_adapter_file", "save_adapter"]
