"""The data-source protocol: what the training loop reads, and nothing more.

Shape names: B batch (data.batch_size for training, data.eval_batch_size for evaluation), and
whatever trailing axes the user's inputs and targets have.

A batch is a dict of exactly three numpy arrays with B leading:
  "inputs"   any dtype and shape [B, ...]: what the model's apply receives.
  "targets"  any dtype and shape [B, ...]: int class ids [B], token ids [B, T], float
             regression targets [B] or [B, 3], ...; what the objective's losses receive.
  "mask"     float32, shaped like the objective's per-target losses: [B] for one loss per
             example (classification, regression), [B, T] for one per token. 1.0 marks a real
             target, 0.0 padding; metrics are sums weighted by it, so padding never counts.
Every batch of one stream has the same shapes and dtypes, so a jitted step compiles once:
training batches are always full, and the last evaluation batch is padded with mask 0.

Training streams are resumable by construction, one of two ways:
  * batch k is a pure function of (seed, k), so the state is one integer (arrays, a grain
    MapDataset, a generator factory called again at k), or
  * the iterator keeps its own state (a grain DatasetIterator), which get_state exports.
Either way get_state() is JSON (the loop writes it into every checkpoint) and set_state(state)
on a fresh stream from the same source and seed continues exactly where the old one stopped.

Multi-host reading (optional): a source may also have
    local_train_batches(seed, rows: slice) -> BatchStream
whose batch k is rows `rows` (of 0..B) of train_batches(seed)'s batch k, and nothing else read.
With several processes the loop then asks each process for its own rows only (parallel/
distributed.py train_stream; put_batch assembles the global array from the processes' rows);
a source without it keeps working, every process building the whole batch and keeping its rows.
A source may also have split_examples(split) -> int, the examples (targets) a full evaluation
of the split scores, so summary.json can say what share of it a bounded final evaluation read.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxmodels.errors import DataError

BATCH_KEYS = ("inputs", "targets", "mask")


@runtime_checkable
class BatchStream(Protocol):
    """An endless iterator of training batches with a JSON-able, restorable state."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict:
        """A JSON-serialisable dict; set_state of it on a fresh stream resumes exactly."""
        ...

    def set_state(self, state: dict) -> None: ...


@runtime_checkable
class DataSource(Protocol):
    """What the loop trains and evaluates on (`Parts(data=...)`, or a registered dataset's
    build(DataConfig)).

    name: shown in logs and summaries.
    splits: the split names eval_batches accepts; the loop evaluates "validation" during
        training and data.eval_split ("test" by default) at the end.
    example_inputs: an array shaped and typed like one example's inputs, with a leading 1
        ([1, ...]); the model is initialised on it.
    num_outputs: the class or vocabulary count that sizes a model's last layer (a registered
        model with num_classes / vocab_size is checked or filled from it), or None.
    train_size: examples in one epoch (train.epochs counts these).
    tokens_per_example: target tokens per example (seq_len for text, 1 otherwise): throughput.
    """

    name: str
    splits: tuple[str, ...]
    example_inputs: np.ndarray
    num_outputs: int | None
    train_size: int
    tokens_per_example: int

    def describe(self) -> str:
        """One line for the run log: the dataset, its size and where it came from."""
        ...

    def train_batches(self, seed: int) -> BatchStream:
        """The training stream of full batches for `seed`, from batch 0."""
        ...

    def eval_batches(self, split: str, *, periodic: bool = False) -> Iterable[dict[str, np.ndarray]]:
        """Every example of `split` once, the last batch padded with mask 0. `periodic` (the
        evaluation during training) may read a fixed subset instead."""
        ...

    def save(self, workdir: pathlib.Path) -> None:
        """Writes what rebuilding the source needs beyond the config (a tokenizer), or nothing."""
        ...


def check_source(source: Any, where: str) -> Any:
    """`source` itself, after checking it has every attribute of DataSource (one line naming
    the missing ones otherwise)."""
    members = ("name", "splits", "example_inputs", "num_outputs", "train_size",
               "tokens_per_example", "describe", "train_batches", "eval_batches", "save")
    missing = [m for m in members if not hasattr(source, m)]
    if missing:
        raise DataError(f"{where} returned {type(source).__name__}, which is not a data source "
                        f"(missing {', '.join(missing)}): return jaxmodels.data.from_arrays(...), "
                        f"from_generator(...) or from_grain(...)")
    return source


def default_mask(targets: np.ndarray) -> np.ndarray:
    """Ones shaped like the per-target losses the built-in objectives give: integer targets
    are scored one by one (cross-entropy: [B] labels or [B, T] tokens), float targets once
    per example (mse averages the trailing axes)."""
    shape = targets.shape if np.issubdtype(targets.dtype, np.integer) else targets.shape[:1]
    return np.ones(shape, np.float32)


def check_batch(batch: Any, where: str, fix: str) -> dict[str, np.ndarray]:
    """A batch from user code as the loop wants it: a dict of the three keys (a missing
    "mask" filled by default_mask), numpy arrays with one leading batch size."""
    if not isinstance(batch, Mapping):
        raise DataError(f"{where} gave a {type(batch).__name__}, not a dict of arrays: {fix}")
    extra = sorted(set(batch) - set(BATCH_KEYS))
    missing = [k for k in ("inputs", "targets") if k not in batch]
    if extra or missing:
        got = ", ".join(map(repr, batch)) or "none"
        raise DataError(f"{where} gave keys {got}, expected 'inputs', 'targets' and optionally "
                        f"'mask': {fix}")
    out = {k: np.asarray(batch[k]) for k in ("inputs", "targets")}
    out["mask"] = (np.asarray(batch["mask"], np.float32) if "mask" in batch
                   else default_mask(out["targets"]))
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in out.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise DataError(f"{where} gave arrays of different batch sizes "
                        f"({', '.join(f'{k} {v.shape}' for k, v in out.items())}): {fix}")
    return out


def signature(batch: dict[str, np.ndarray]) -> dict[str, tuple]:
    return {k: (v.shape, v.dtype.str) for k, v in batch.items()}


class ShapeGuard:
    """Remembers the first batch's shapes and dtypes and rejects a later batch that differs:
    a new shape would be a silent recompilation of the step, and usually a bug."""

    def __init__(self, where: str, fix: str):
        self._where, self._fix, self._first = where, fix, None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sig = signature(batch)
        if self._first is None:
            self._first = sig
        elif sig != self._first:
            diff = [f"{k} {self._first[k]} then {sig[k]}" for k in sig if sig[k] != self._first[k]]
            raise DataError(f"{self._where} changed batch shapes ({'; '.join(diff)}): every batch "
                            f"must have one shape and dtype; {self._fix}")
        return batch


# ---------------------------------------------------------------------------------------------
# Foreign iterator states (grain's) carried through the JSON the checkpoint stores.

def state_to_json(state: Any) -> dict:
    """A JSON dict carrying `state` exactly: plain JSON as is, bytes as base64 (grain's
    DataLoader state), anything else refused rather than silently mangled."""
    if isinstance(state, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(state)).decode("ascii")}
    try:
        text = json.dumps(state)
    except TypeError as e:
        raise DataError(f"the iterator's get_state() returned {type(state).__name__}, which the "
                        f"checkpoint cannot store as JSON ({e}): return a dict of JSON values "
                        f"or bytes") from None
    if json.loads(text) != state:  # e.g. tuples or int dict keys, which JSON would change
        raise DataError(f"the iterator's get_state() {state!r:.80} does not survive JSON "
                        f"unchanged: use lists and string keys, or return bytes")
    return {"json": state}


def state_from_json(saved: dict) -> Any:
    if "bytes" in saved:
        return base64.b64decode(saved["bytes"])
    return saved["json"]


# ---------------------------------------------------------------------------------------------
# The one concrete source every adapter returns.

@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """A DataSource made of functions: `train(seed)` gives the training stream and
    `evals[split](periodic)` one pass of evaluation batches."""

    name: str
    train: Callable[[int], BatchStream]
    evals: Mapping[str, Callable[[bool], Iterable[dict]]]
    example_inputs: np.ndarray
    train_size: int
    num_outputs: int | None = None
    tokens_per_example: int = 1
    description: str = ""
    saver: Callable[[pathlib.Path], None] | None = None
    # The training batch size the stream was built for (None: not fixed by the source), so a
    # caller can check it against data.batch_size before compiling.
    batch_size: int | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.evals)

    def describe(self) -> str:
        return f"{self.name} ({self.train_size:,} train examples{', ' + self.description if self.description else ''})"

    def train_batches(self, seed: int) -> BatchStream:
        return self.train(seed)

    def eval_batches(self, split: str, *, periodic: bool = False) -> Iterable[dict]:
        if split not in self.evals:
            raise DataError(f"data source {self.name!r} has no {split!r} split (it has "
                            f"{', '.join(self.evals) or 'none'}): give it one (e.g. "
                            f"{split}=... when building it) or set data.eval_split")
        return self.evals[split](periodic)

    def save(self, workdir: pathlib.Path) -> None:
        if self.saver is not None:
            self.saver(pathlib.Path(workdir))
