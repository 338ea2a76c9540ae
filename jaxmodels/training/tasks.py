"""Tasks: what the loop trains on, built from the data section of a config.

A task turns a dataset into batches of the one format every step reads ({"inputs", "targets",
"mask"}) and says what a model needs to know about it (input shape, number of outputs). Image
classification and language modelling are the two tasks; the loop never asks which one it has.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxmodels import data
from jaxmodels.config import DataConfig
from jaxmodels.errors import UserError

IMAGE_DATASETS = ("mnist", "fashion_mnist", "digits")
TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True, eq=False)
class ImageTask:
    """Image classification: targets [B], one per image."""

    dataset: data.ImageDataset
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

    def train_batches(self, seed: int) -> data.TrainBatches:
        images, labels = self.dataset.splits["train"]
        return data.TrainBatches(images, labels, batch_size=self.cfg.batch_size, seed=seed,
                                 mean=self.dataset.mean, std=self.dataset.std,
                                 normalization=self.cfg.normalization)

    def eval_batches(self, split: str, *, periodic: bool = False) -> Iterator[dict]:
        del periodic  # image splits are small enough to evaluate whole every time
        images, labels = self.dataset.splits[split]
        return data.eval_batches(images, labels, batch_size=self.cfg.eval_batch_size,
                                 mean=self.dataset.mean, std=self.dataset.std,
                                 normalization=self.cfg.normalization)

    def save(self, workdir: pathlib.Path) -> None:
        del workdir  # nothing beyond the config is needed to rebuild it


@dataclasses.dataclass(frozen=True, eq=False)
class LMTask:
    """Next-token prediction over a tokenised corpus: targets [B, T]."""

    corpus: Any  # data.TextCorpus
    tokenizer: Any  # data.Tokenizer
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
        return data.LMBatches(self.ids["train"], batch_size=self.cfg.batch_size,
                              seq_len=self.cfg.seq_len, seed=seed)

    def eval_batches(self, split: str, *, periodic: bool = False) -> Iterator[dict]:
        # Periodic validation reads the split's first eval_windows windows (fast and always the
        # same ones, so curves are comparable); the final evaluation reads all of it.
        limit = self.cfg.eval_windows if periodic else None
        return data.lm_eval_batches(self.ids[split], batch_size=self.cfg.eval_batch_size,
                                    seq_len=self.cfg.seq_len, max_windows=limit)

    def save(self, workdir: pathlib.Path) -> None:
        (workdir / TOKENIZER_FILE).write_text(json.dumps(self.tokenizer.to_json()))


def load_tokenizer(workdir: pathlib.Path):
    path = pathlib.Path(workdir) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"no {TOKENIZER_FILE} in {str(workdir)!r}: is this the workdir of a language-model run?")
    return data.tokenizer_from_json(json.loads(path.read_text()))


def build(cfg: DataConfig):
    """The task for a data config, with its dataset loaded (offline first)."""
    if cfg.dataset in IMAGE_DATASETS:
        dataset = data.load_image_dataset(cfg.dataset, data_dir=cfg.data_dir,
                                          download=cfg.download, mirror=cfg.mirror)
        task = ImageTask(dataset, cfg)
    else:
        corpus, tokenizer, ids = data.load_lm_data(
            cfg.dataset, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
            data_dir=cfg.data_dir, download=cfg.download, mirror=cfg.mirror)
        task = LMTask(corpus, tokenizer, ids, cfg)
        shortest = min(len(v) for v in ids.values())
        if cfg.seq_len + 1 > shortest:
            raise UserError(f"data.seq_len={cfg.seq_len} is longer than the shortest split of "
                            f"{cfg.dataset} ({shortest} tokens): lower data.seq_len")
    if cfg.eval_split not in task.splits:
        raise UserError(f"data.eval_split={cfg.eval_split}: {task.name} has no {cfg.eval_split} "
                        f"split (it has {', '.join(task.splits)}): set data.eval_split=validation")
    return task


def resolve_model(model_cfg, task):
    """The model config with what the task decides filled in, or a one-line error on a
    mismatch (a classifier on text, a vocabulary smaller than the tokenizer's, ...)."""
    if not (hasattr(model_cfg, "vocab_size") or hasattr(model_cfg, "num_classes")):
        return model_cfg  # a model that declares neither sizes itself from its own fields
    is_lm_model = hasattr(model_cfg, "vocab_size") and not hasattr(model_cfg, "num_classes")
    kind = model_cfg.kind
    if hasattr(model_cfg, "vocab_size") and hasattr(model_cfg, "num_classes"):
        raise UserError(f"model kind '{kind}' classifies token sequences and no text-classification "
                        f"dataset is bundled yet: call it from Python with your own batches")
    if isinstance(task, (LMTask, ImageTask)) and isinstance(task, LMTask) != is_lm_model:
        want = ("a text dataset (e.g. data.dataset=shakespeare)" if is_lm_model
                else "an image dataset (e.g. data.dataset=mnist)")
        raise UserError(f"model kind '{kind}' needs {want}, got data.dataset={task.name}")
    if hasattr(model_cfg, "vocab_size") and getattr(task, "num_outputs", None):
        if model_cfg.vocab_size is None:
            model_cfg = dataclasses.replace(model_cfg, vocab_size=task.num_outputs)
        elif model_cfg.vocab_size < task.num_outputs:
            raise UserError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the "
                            f"{task.num_outputs} tokens of the tokenizer: set model.vocab_size=none")
    if hasattr(model_cfg, "num_classes") and getattr(task, "num_outputs", None):
        if model_cfg.num_classes != task.num_outputs:
            raise UserError(f"model.num_classes={model_cfg.num_classes} but {task.name} has "
                            f"{task.num_outputs} classes: set model.num_classes={task.num_outputs}")
    max_len = getattr(model_cfg, "max_len", None)
    if isinstance(task, LMTask) and max_len is not None and task.cfg.seq_len > max_len:
        raise UserError(f"data.seq_len={task.cfg.seq_len} is longer than the model supports "
                        f"(model.max_len={max_len}): raise model.max_len or lower data.seq_len")
    return model_cfg
