"""LoRA adapters for Stable Diffusion: one in-memory form, kohya and diffusers files, live blending, merging.

The public API (docs/API.md shows it in use from a plain diffusers script):

- `load_adapter(path) -> Adapter`, `save_adapter(adapter, path, fmt="kohya", dtype="fp32")`
- `read_adapter_file(path) -> AdapterFile` (the adapter plus detected format, dtypes and skipped keys)
- `AdapterBlender(pipe)`: load adapter files into a diffusers pipeline once, re-weight them, generate
- `merge_into(pipe, [(adapter, weight), ...])` and `merge(model, [(path, weight), ...], out_dir)`
- `resize_adapter(adapter, rank)`, `describe(adapter)`: the numbers behind `sdlora resize` and `sdlora inspect`;
  `truncate_adapter(adapter, rank)` for DyLoRA
- `apply_adapter(pipe, path, weight)`: any kind (LoHa and LoKr too, which diffusers does not read) in one call
"""

from sdlora.adapters.analysis import describe, resize_adapter, truncate_adapter
from sdlora.adapters.apply import AppliedAdapter, apply_adapter
from sdlora.adapters.blend import AdapterBlender, parse_lora_spec
from sdlora.lora.io import AdapterFile, load_adapter, read_adapter_file, save_adapter
from sdlora.adapters.merge import merge, merge_into
from sdlora.lora.kinds import DoraLayer, LohaLayer, LokrLayer
from sdlora.lora.state import Adapter, LoraLayer

__all__ = ["Adapter", "AdapterBlender", "AdapterFile", "AppliedAdapter", "DoraLayer", "LohaLayer", "LokrLayer",
           "LoraLayer", "apply_adapter", "describe", "load_adapter", "merge", "merge_into", "parse_lora_spec",
           "read_adapter_file", "resize_adapter", "save_adapter", "truncate_adapter"]
