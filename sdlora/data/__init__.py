"""The data pipeline: a folder of captioned images -> deterministic batches of pixels (or cached latents).

The stages, one module each:
  scan.py      find images, captions and kohya `N_name` repeat folders
  images.py    open any image as RGB; check one (broken, odd, too large); crop geometry
  captions.py  read captions, trigger, tag shuffle/dropout, token counts
  buckets.py   aspect-ratio buckets of equal area
  index.py     scan + check + bucket + caption, once, into entries and problems
  dataset.py   TrainDataset (samples by SampleKey, epoch_batches), collate, build_dataset
  cache.py     VAE latents / text embeddings cached by content hash
  summary.py   the dry-run summary;  check.py  the `sdlora dataset check` report

`build_dataset(data_config)` scans and checks the folder; the trainer hands it the model's encoder
(`dataset.attach_encoder(encoder)`), asks it for one epoch's batches (`epoch_batches`), loads them through a
DataLoader with `collate`, and never needs to know about files. Names are imported lazily, so
`sdlora dataset check` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"SampleKey": "dataset", "TrainDataset": "dataset", "build_dataset": "dataset", "collate": "dataset",
            "summarize": "summary", "DataSummary": "summary", "build_index": "index", "check_folder": "check"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sdlora.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sdlora.data.{_EXPORTS[name]}"), name)
