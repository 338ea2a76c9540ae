"""Datasets and batches, offline first.

Loaders read a local copy before anything else (an installed data package, the folder given
as data_dir, a system dataset package, the user cache) and touch the network only when the
caller passes download=True, and then only to fetch checksum-verified files into the cache.
When nothing is found the error says which package or command installs the data offline.
Nothing happens at import time.
"""

from jaxmodels.data.download import fetch
from jaxmodels.data.pipeline import TrainBatches, eval_batches, normalize
from jaxmodels.data.sources import IMAGE_DATASETS, ImageDataset, load_image_dataset

__all__ = [
    "IMAGE_DATASETS",
    "ImageDataset",
    "TrainBatches",
    "eval_batches",
    "fetch",
    "load_image_dataset",
    "normalize",
]
