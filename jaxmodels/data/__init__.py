"""Datasets and batches, offline first.

Loaders read a local copy before anything else (an installed data package, the folder given
as data_dir, a system dataset package, the user cache) and touch the network only when the
caller passes download=True, and then only to fetch checksum-verified files into the cache.
When nothing is found the error says which package or command installs the data offline.
Nothing happens at import time.

What the training loop reads is a data source (the protocol in jaxmodels/data/source.py). The
built-in datasets are sources (data/builtin.py); a researcher's own data becomes one with
from_arrays (numpy in memory), from_generator (a function (seed, start) -> batches) or
from_grain (a grain MapDataset or IterDataset), and a name with jaxmodels.register_dataset.
"""

from jaxmodels.data.download import fetch
from jaxmodels.data.pipeline import EpochShuffle, TrainBatches, eval_batches, normalize
from jaxmodels.data.sources import IMAGE_DATASETS, ImageDataset, load_image_dataset

__all__ = [
    "IMAGE_DATASETS",
    "EpochShuffle",
    "ImageDataset",
    "TrainBatches",
    "eval_batches",
    "fetch",
    "load_image_dataset",
    "normalize",
]

# Data sources: the protocol the loop reads, and adapters from arrays, generators and grain
# (grain itself is imported only when from_grain runs).
from jaxmodels.data.arrays import from_arrays  # noqa: E402
from jaxmodels.data.generator import from_generator  # noqa: E402
from jaxmodels.data.grain_source import from_grain  # noqa: E402
from jaxmodels.data.source import BatchStream, DataSource, Source, check_source  # noqa: E402

__all__ += ["BatchStream", "DataSource", "Source", "check_source", "from_arrays", "from_generator",
            "from_grain"]

# Text: corpora, tokenizers and language-model batches (jaxmodels.data.text, .tokenizers, .lm).
from jaxmodels.data.lm import LMBatches, lm_eval_batches, load_lm_data  # noqa: E402
from jaxmodels.data.text import TEXT_CORPORA, TextCorpus, load_text_corpus  # noqa: E402
from jaxmodels.data.tokenizers import Tokenizer, tokenizer_from_json, train_tokenizer  # noqa: E402

__all__ += [
    "LMBatches",
    "TEXT_CORPORA",
    "TextCorpus",
    "Tokenizer",
    "lm_eval_batches",
    "load_lm_data",
    "load_text_corpus",
    "tokenizer_from_json",
    "train_tokenizer",
]
