"""The data pipeline: a folder of captioned images -> deterministic batches of pixels (or cached latents).

`build_dataset(data_config)` scans and checks the folder; the trainer asks the dataset for one epoch's batches
(`epoch_batches`), loads them through a DataLoader with `collate`, and never needs to know about files.
"""

from sdlora.data.dataset import SampleKey, TrainDataset, build_dataset, collate

__all__ = ["SampleKey", "TrainDataset", "build_dataset", "collate"]
