"""In-memory arrays as a data source: `from_arrays(train, validation, test, batch_size=...)`.

Shape names: N examples in a split, B batch; inputs and targets keep their own dtypes and
trailing shapes (float features [N, D], float targets [N, 3], token ids [N, T], ...).

Training batches are EpochShuffle's (per-epoch permutations, full batches across epoch
boundaries, state = one integer), so the stream resumes exactly; evaluation batches read a
split once in order, the last padded with zero rows of mask 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from jaxmodels.data.pipeline import EpochShuffle, restored_position
from jaxmodels.data.source import Source, default_mask
from jaxmodels.errors import DataError

Gather = Callable[[np.ndarray], dict]  # split indices [B] -> batch {"inputs","targets","mask"}


def check_positive(where: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


class IndexedBatches:
    """The training stream of any random-access split: batch k gathers EpochShuffle's
    indices for (seed, k), so get_state is one integer and set_state jumps straight there."""

    def __init__(self, gather: Gather, num_examples: int, *, batch_size: int, seed: int,
                 kind: str):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"{kind}: the seed must be a non-negative integer, got {seed!r}")
        self._gather = gather
        self._order = EpochShuffle(num_examples, batch_size, int(seed))
        self._kind = kind
        self._position = 0

    @property
    def position(self) -> int:
        return self._position

    def indices(self, position: int) -> np.ndarray:
        return self._order.indices(position)

    def __iter__(self) -> IndexedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._gather(self._order.indices(self._position))
        self._position += 1
        return batch

    def get_state(self) -> dict:
        o = self._order
        return {"position": self._position, "seed": o.seed, "batch_size": o.batch_size,
                "num_examples": o.num_examples}

    def set_state(self, state: dict) -> None:
        o = self._order
        try:
            self._position = restored_position(state, self._kind, seed=o.seed,
                                               batch_size=o.batch_size, num_examples=o.num_examples)
        except ValueError as e:
            raise DataError(f"cannot resume the {self._kind} stream: {e} (resume with the "
                            f"data and settings the checkpoint was written with)") from None


def padded_eval_batches(gather: Gather, num_examples: int, batch_size: int) -> Iterator[dict]:
    """Examples 0..N-1 once, in order, in batches of B; the last batch's missing rows are
    zeros with mask 0, so mask-weighted sums count every example exactly once."""
    for start in range(0, num_examples, batch_size):
        stop = min(start + batch_size, num_examples)
        batch = gather(np.arange(start, stop))
        pad = batch_size - (stop - start)
        if pad:
            batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                     for k, v in batch.items()}
        yield batch


# ---------------------------------------------------------------------------------------------

def _split_arrays(split: Any, which: str, keys: tuple[str, str, str],
                  caller: str = "from_arrays") -> dict[str, np.ndarray]:
    """{"inputs", "targets", "mask"} arrays of one split given as (x, y) or a dict."""
    inputs_key, targets_key, mask_key = keys
    where = f"{caller}: the {which} split"
    if isinstance(split, tuple) and len(split) == 2:
        x, y, m = split[0], split[1], None
    elif isinstance(split, Mapping):
        missing = [k for k in (inputs_key, targets_key) if k not in split]
        if missing:
            raise DataError(f"{where} has keys {', '.join(map(repr, split)) or 'none'} but no "
                            f"{' or '.join(map(repr, missing))}: name its keys with "
                            f"inputs=... and targets=...")
        x, y, m = split[inputs_key], split[targets_key], split.get(mask_key)
    else:
        raise DataError(f"{where} is a {type(split).__name__}: give (inputs, targets) or a dict "
                        f"with {inputs_key!r} and {targets_key!r} arrays")
    arrays = {"inputs": np.asarray(x), "targets": np.asarray(y)}
    for k, v in arrays.items():
        if v.ndim == 0 or v.dtype == object:
            raise DataError(f"{where}: {k} must be a numeric array with examples along axis 0, "
                            f"got {v.dtype} of shape {v.shape}")
    n = len(arrays["inputs"])
    if len(arrays["targets"]) != n:
        raise DataError(f"{where} has {n} inputs but {len(arrays['targets'])} targets: give one "
                        f"target row per input row")
    if n == 0:
        raise DataError(f"{where} is empty: give it at least one example, or leave it out")
    mask = default_mask(arrays["targets"]) if m is None else np.asarray(m, np.float32)
    if mask.shape[:1] != (n,):
        raise DataError(f"{where}: mask has shape {mask.shape}, it needs {n} rows")
    arrays["mask"] = mask
    return arrays


def _gatherer(arrays: dict[str, np.ndarray]) -> Gather:
    return lambda idx: {k: v[idx] for k, v in arrays.items()}


def array_evaluator(arrays: dict[str, np.ndarray], eval_batch_size: int) -> Callable:
    """A Source.evals entry over checked split arrays: one padded pass per call."""
    return lambda periodic: padded_eval_batches(_gatherer(arrays), len(arrays["inputs"]),
                                                eval_batch_size)


def eval_split(split: Any, which: str, eval_batch_size: int, *, where: str) -> Callable:
    """A Source.evals entry for a split given as (inputs, targets) or a dict of arrays."""
    eb = check_positive(where, "eval_batch_size", eval_batch_size)
    return array_evaluator(_split_arrays(split, which, ("inputs", "targets", "mask"), where), eb)


def infer_num_outputs(target_arrays) -> int | None:
    """max + 1 over integer class ids, None for any other targets (regression)."""
    target_arrays = list(target_arrays)
    if not all(np.issubdtype(t.dtype, np.integer) for t in target_arrays):
        return None
    return int(max(int(t.max()) for t in target_arrays)) + 1


def from_arrays(train, validation=None, test=None, *, batch_size: int,
                eval_batch_size: int | None = None, name: str = "arrays",
                inputs: str = "inputs", targets: str = "targets", mask: str = "mask",
                num_outputs: int | None | str = "infer", tokens_per_example: int = 1,
                description: str = "in-memory arrays") -> Source:
    """A data source over numpy arrays held in memory.

    Args:
      train, validation, test: each (inputs, targets) or a dict of arrays with the keys named
        by `inputs` / `targets` (and optionally `mask`, float32 [N] or [N, T], 1 for real
        targets), N examples along axis 0, any dtype and trailing shape. Without a mask a
        batch's mask is ones shaped like integer targets, or [B] for float targets.
      batch_size: training examples per step (data.batch_size); at most the train split's N.
      eval_batch_size: evaluation batch size (default batch_size); the last batch is padded.
      num_outputs: "infer" gives max+1 of integer targets and None for float targets.
      tokens_per_example: target tokens in one example, for throughput reporting.

    The training stream of seed s is batch k = the examples EpochShuffle(N, B, s) assigns to
    k; its state is the number of batches served.
    """
    keys = (inputs, targets, mask)
    b = check_positive("from_arrays", "batch_size", batch_size)
    eb = check_positive("from_arrays", "eval_batch_size", eval_batch_size if eval_batch_size is not None else b)
    splits = {"train": _split_arrays(train, "train", keys)}
    for which, split in (("validation", validation), ("test", test)):
        if split is not None:
            splits[which] = _split_arrays(split, which, keys)
    n = len(splits["train"]["inputs"])
    if b > n:
        raise DataError(f"from_arrays: batch_size={b} is larger than the {n} train examples, so "
                        f"one batch would repeat examples: lower batch_size (data.batch_size) to "
                        f"at most {n}")
    first = splits["train"]
    for which, arrays in splits.items():
        for k in ("inputs", "targets"):
            if arrays[k].shape[1:] != first[k].shape[1:] or arrays[k].dtype != first[k].dtype:
                raise DataError(f"from_arrays: {which} {k} are {arrays[k].dtype} {arrays[k].shape[1:]} "
                                f"per example but train {k} are {first[k].dtype} "
                                f"{first[k].shape[1:]}: give every split the same layout")
    if num_outputs == "infer":
        num_outputs = infer_num_outputs(s["targets"] for s in splits.values())
    gather = _gatherer(first)

    def train_stream(seed: int) -> IndexedBatches:
        return IndexedBatches(gather, n, batch_size=b, seed=seed, kind=f"{name} (from_arrays)")

    return Source(name=name, train=train_stream,
                  evals={k: array_evaluator(v, eb) for k, v in splits.items()},
                  example_inputs=np.zeros_like(first["inputs"][:1]), train_size=n,
                  num_outputs=num_outputs, tokens_per_example=tokens_per_example,
                  description=description, batch_size=b)
