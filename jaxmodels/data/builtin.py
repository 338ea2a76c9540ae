"""The package's own datasets as data sources, registered in jaxmodels/registry.py exactly as a
user's `jaxmodels.register_dataset(name, build)` would be.

ImageTask: image classification, uint8 images normalised per batch, targets [B] class ids.
LMTask: next-token prediction over a tokenised corpus, targets [B, T] token ids.
Both follow the DataSource protocol of jaxmodels/data/source.py; each stream's state is one
integer (EpochShuffle for images, LMBatches' (seed, k) windows for text).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxmodels import files
from jaxmodels.config import DataConfig
from jaxmodels.data.lm import LMBatches, lm_eval_batches, load_lm_data
from jaxmodels.data.pipeline import TrainBatches, eval_batches
from jaxmodels.data.sources import ImageDataset, load_image_dataset
from jaxmodels.errors import UserError

TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True, eq=False)
class ImageTask:
    """Image classification: targets [B], one per image."""

    dataset: ImageDataset
    cfg: DataConfig
    tokens_per_example = 1

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.dataset.splits)

    @property
    def example_inputs(self) -> np.ndarray:
        return np.zeros((1, *self.dataset.splits["train"][0].shape[1:]), np.float32)

    @property
    def num_outputs(self) -> int:
        return self.dataset.num_classes

    @property
    def train_size(self) -> int:
        """Training examples in one epoch."""
        return len(self.dataset.splits["train"][1])

    def describe(self) -> str:
        return f"{self.name} ({self.train_size:,} train examples, {self.dataset.source})"

    def train_batches(self, seed: int) -> TrainBatches:
        images, labels = self.dataset.splits["train"]
        return TrainBatches(images, labels, batch_size=self.cfg.batch_size, seed=seed,
                                 mean=self.dataset.mean, std=self.dataset.std,
                                 normalization=self.cfg.normalization)

    def eval_batches(self, split: str, *, periodic: bool = False) -> Iterator[dict]:
        del periodic  # image splits are small enough to evaluate whole every time
        images, labels = self.dataset.splits[split]
        return eval_batches(images, labels, batch_size=self.cfg.eval_batch_size,
                                 mean=self.dataset.mean, std=self.dataset.std,
                                 normalization=self.cfg.normalization)

    def save(self, workdir: pathlib.Path) -> None:
        del workdir  # nothing beyond the config is needed to rebuild it


@dataclasses.dataclass(frozen=True, eq=False)
class LMTask:
    """Next-token prediction over a tokenised corpus: targets [B, T]."""

    corpus: Any  # TextCorpus
    tokenizer: Any  # Tokenizer
    ids: dict[str, np.ndarray]
    cfg: DataConfig

    @property
    def name(self) -> str:
        return self.corpus.name

    @property
    def tokens_per_example(self) -> int:
        return self.cfg.seq_len

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.ids)

    @property
    def example_inputs(self) -> np.ndarray:
        return np.zeros((1, self.cfg.seq_len), np.int32)

    @property
    def num_outputs(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def train_size(self) -> int:
        """Windows in one epoch: an epoch is one pass over the training tokens."""
        return max(1, len(self.ids["train"]) // self.cfg.seq_len)

    def describe(self) -> str:
        return (f"{self.name} ({len(self.ids['train']):,} train tokens, {self.tokenizer.kind} "
                f"tokenizer, vocabulary {self.tokenizer.vocab_size}, {self.corpus.source})")

    def train_batches(self, seed: int):
        return LMBatches(self.ids["train"], batch_size=self.cfg.batch_size,
                              seq_len=self.cfg.seq_len, seed=seed)

    def local_train_batches(self, seed: int, rows: slice):
        """Only `rows` of each training batch (source.py: a multi-host process's own rows)."""
        return LMBatches(self.ids["train"], batch_size=self.cfg.batch_size,
                         seq_len=self.cfg.seq_len, seed=seed, rows=rows)

    def split_examples(self, split: str) -> int:
        """Targets in the whole split (what a full evaluation scores)."""
        return len(self.ids[split]) - 1

    def eval_batches(self, split: str, *, periodic: bool = False) -> Iterator[dict]:
        # Periodic validation reads eval_windows windows spread over the split (fast and always
        # the same ones, so curves are comparable); the final one final_eval_windows (None: all).
        limit = self.cfg.eval_windows if periodic else self.cfg.final_eval_windows
        return lm_eval_batches(self.ids[split], batch_size=self.cfg.eval_batch_size,
                                    seq_len=self.cfg.seq_len, max_windows=limit)

    def save(self, workdir: pathlib.Path) -> None:
        # Atomic: every launch rewrites it, and `sample` cannot decode with a torn one.
        files.write_atomic(workdir / TOKENIZER_FILE, json.dumps(self.tokenizer.to_json()))


def image_source(cfg: DataConfig) -> ImageTask:
    """mnist, fashion_mnist or digits, loaded offline first (see jaxmodels/data/sources.py)."""
    _no_augment(cfg)
    dataset = load_image_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                                 mirror=cfg.mirror)
    return ImageTask(dataset, cfg)


def text_source(cfg: DataConfig) -> LMTask:
    """A text corpus with a tokenizer trained on its train split (see jaxmodels/data/lm.py)."""
    _no_augment(cfg)
    corpus, tokenizer, ids = load_lm_data(
        cfg.dataset, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
        data_dir=cfg.data_dir, download=cfg.download, mirror=cfg.mirror)
    shortest = min(len(v) for v in ids.values())
    if cfg.seq_len + 1 > shortest:
        raise UserError(f"data.seq_len={cfg.seq_len} is longer than the shortest split of "
                        f"{cfg.dataset} ({shortest} tokens): lower data.seq_len")
    return LMTask(corpus, tokenizer, ids, cfg)


@dataclasses.dataclass(frozen=True)
class _StoreCorpus:
    """What LMTask reads of a corpus (name, source), for a token store."""
    name: str
    source: str


def tokens_source(cfg: DataConfig) -> LMTask:
    """A token store written by `jaxmodels prepare` (data/token_store.py), memory-mapped: the
    splits stay on disk and LMBatches gathers each batch's windows from the map."""
    from jaxmodels.data import token_store

    store = token_store.open_store(cfg.data_dir)
    shortest = min(len(v) for v in store.ids.values())
    if cfg.seq_len + 1 > shortest:
        raise UserError(f"data.seq_len={cfg.seq_len} is longer than the shortest split of "
                        f"{store.folder} ({shortest} tokens): lower data.seq_len")
    corpus = _StoreCorpus("tokens", f"token store {store.folder}, {store.index['dtype']}")
    return LMTask(corpus, store.tokenizer(), dict(store.ids), cfg)


def _no_augment(cfg: DataConfig) -> None:
    # Silently training without the augmentation asked for would be worse than refusing.
    if cfg.augment:
        raise UserError(f"data.augment={cfg.augment!r} applies to data.dataset=image_folder only, "
                        f"not {cfg.dataset}: remove data.augment")
