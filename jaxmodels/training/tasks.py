"""Tasks: what the loop trains on, built from the data section of a config.

A task is a data source (jaxmodels/data/source.py): batches of the one format every step reads
({"inputs", "targets", "mask"}) and what a model needs to know about the data (input shape,
number of outputs). `build` looks the dataset up in the registry, so the package's image and
text datasets (jaxmodels/data/builtin.py) and a user's registered ones are built alike; the loop
never asks which one it has.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from jaxmodels import data, registry
from jaxmodels.config import DataConfig
from jaxmodels.data.builtin import TOKENIZER_FILE, ImageTask, LMTask
from jaxmodels.data.source import check_source
from jaxmodels.errors import UserError

__all__ = ["ImageTask", "LMTask", "TOKENIZER_FILE", "build", "load_tokenizer",
           "resolve_model"]

def load_tokenizer(workdir: pathlib.Path):
    path = pathlib.Path(workdir) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"no {TOKENIZER_FILE} in {str(workdir)!r}: is this the workdir of a language-model run?")
    return data.tokenizer_from_json(json.loads(path.read_text()))


def build(cfg: DataConfig):
    """The data source for a data config: the registered dataset's build(cfg), checked to be a
    DataSource that fits the config (see `check_source_fits`)."""
    where = f"the build function of dataset {cfg.dataset!r}"
    return check_source_fits(check_source(registry.dataset(cfg.dataset)(cfg), where), cfg, where)


def check_source_fits(task, cfg: DataConfig, where: str = "the data source"):
    """`task`, after checking that its batches are data.batch_size and that it has the splits
    the loop reads: validation (periodic validation) and data.eval_split (the final one)."""
    built_for = getattr(task, "batch_size", None)
    if built_for is not None and built_for != cfg.batch_size:
        raise UserError(f"{where} made batches of {built_for} but data.batch_size={cfg.batch_size}: "
                        f"build the source with batch_size=cfg.batch_size")
    for split, fix in ((cfg.eval_split, "set data.eval_split=validation"),
                       ("validation", "give the source a validation split")):
        if split not in task.splits:
            raise UserError(f"data.eval_split={cfg.eval_split}: {task.name} has no {split} split (it "
                            f"has {', '.join(task.splits)}): {fix}" if split == cfg.eval_split else
                            f"{task.name} has no validation split (it has {', '.join(task.splits)}), "
                            f"which periodic validation reads: {fix}")
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
