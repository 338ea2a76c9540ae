"""grain datasets as a data source: `from_grain(train, validation, test, batch_size=...)`.

An element is one example: a dict {"inputs", "targets", "mask"?} of arrays, or an
(inputs, targets) pair. Two kinds of training data resume in their own way:
  * a grain.MapDataset (random access, finite): batch k gathers the elements EpochShuffle
    assigns to (seed, k), like arrays, so the state is one integer;
  * a grain.IterDataset (or a function seed -> IterDataset): endless (call .repeat() on it),
    batched here with grain's own .batch, and resumed with grain's iterator state
    (DatasetIterator.get_state/set_state), carried through the checkpoint's JSON.
Evaluation splits are a MapDataset or any finite iterable of elements (an IterDataset
without repeat): read once in order, the last batch padded with mask 0.

grain is imported only when this module's functions run, so `import jaxmodels` does not need it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from jaxmodels.data.arrays import IndexedBatches, check_positive, padded_eval_batches
from jaxmodels.data.source import (ShapeGuard, Source, check_batch, default_mask, state_from_json,
                                   state_to_json)
from jaxmodels.errors import DataError

_FIX = ("make each element a dict {'inputs': ..., 'targets': ..., 'mask': ... (optional)} or "
        "an (inputs, targets) pair")


def _grain():
    try:
        import grain
    except ImportError:
        raise DataError("from_grain needs the grain package: pip install 'jaxmodels[grain]' "
                        "(or pip install grain)") from None
    return grain


def as_example(element: Any) -> dict[str, np.ndarray]:
    """One element in the batch layout, without the batch axis."""
    if isinstance(element, tuple) and len(element) == 2:
        element = {"inputs": element[0], "targets": element[1]}
    if not isinstance(element, Mapping):
        raise DataError(f"from_grain: an element is a {type(element).__name__}: {_FIX}")
    extra = sorted(set(element) - {"inputs", "targets", "mask"})
    if extra or "inputs" not in element or "targets" not in element:
        raise DataError(f"from_grain: an element has keys {', '.join(map(repr, element)) or 'none'}: {_FIX}")
    out = {"inputs": np.asarray(element["inputs"]), "targets": np.asarray(element["targets"])}
    out["mask"] = (np.asarray(element["mask"], np.float32) if "mask" in element
                   else default_mask(out["targets"][None])[0])
    return out


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _map_gatherer(ds) -> Callable[[np.ndarray], dict]:
    return lambda idx: _stack([as_example(ds[int(i)]) for i in idx])


def _finite_len(ds, which: str) -> int:
    n = len(ds)
    if n >= sys.maxsize // 2:  # grain reports an endless .repeat() as a huge length
        raise DataError(f"from_grain: the {which} MapDataset is endless (.repeat()): give the "
                        f"finite dataset; from_grain shuffles it per epoch itself")
    if n == 0:
        raise DataError(f"from_grain: the {which} dataset is empty: give it at least one example")
    return n


class GrainIterBatches:
    """Batches of an IterDataset, resumed by grain's own iterator state."""

    def __init__(self, dataset, *, seed: int, name: str):
        self._it = iter(dataset)
        self._seed, self._name = int(seed), name
        self._served = 0
        self._guard = ShapeGuard(f"{name}'s grain training dataset", _FIX)

    def __iter__(self) -> GrainIterBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            raw = next(self._it)
        except StopIteration:
            raise DataError(f"{self._name}'s grain training dataset ran out after {self._served} "
                            f"batches: training needs an endless stream, so call .repeat() on it") from None
        self._served += 1
        return self._guard(check_batch(raw, f"{self._name}'s grain training dataset", _FIX))

    def get_state(self) -> dict:
        return {"seed": self._seed, "served": self._served,
                "grain": state_to_json(self._it.get_state())}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, Mapping) or "grain" not in state:
            raise DataError(f"cannot resume {self._name}'s grain stream from {state!r:.80}: the "
                            f"checkpoint was written by another kind of data source")
        if int(state.get("seed", self._seed)) != self._seed:
            raise DataError(f"cannot resume {self._name}'s grain stream: the checkpoint has seed "
                            f"{state['seed']}, this run {self._seed}: resume with the same seed")
        self._it.set_state(state_from_json(state["grain"]))
        self._served = int(state.get("served", 0))


def _iter_eval(elements: Iterable, batch_size: int) -> Iterator[dict]:
    """A finite iterable of elements in batches, the last padded with mask 0."""
    chunk: list[dict] = []
    for element in elements:
        chunk.append(as_example(element))
        if len(chunk) == batch_size:
            yield _stack(chunk)
            chunk = []
    if chunk:
        stacked = _stack(chunk)
        pad = batch_size - len(chunk)
        yield {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in stacked.items()}


def from_grain(train, validation=None, test=None, *, batch_size: int,
               eval_batch_size: int | None = None, train_size: int | None = None,
               batched: bool = False, num_outputs: int | None = None, name: str = "grain",
               tokens_per_example: int = 1, description: str = "grain") -> Source:
    """A data source over grain datasets.

    Args:
      train: a finite grain.MapDataset (shuffled here per epoch by the run's seed, state one
        integer), or an endless grain.IterDataset, or a function seed -> IterDataset so that
        train.seed matters (a fixed IterDataset ignores the seed: it shuffles as it was built).
      validation, test: a MapDataset, or a finite re-iterable of elements (an IterDataset
        without .repeat(), a list), read again for every evaluation.
      batch_size: training examples per batch. An IterDataset is batched here with
        .batch(batch_size, drop_remainder=True) unless `batched` says it already yields batches.
      train_size: examples per epoch; required for an IterDataset (a MapDataset has len).
    """
    grain = _grain()
    b = check_positive("from_grain", "batch_size", batch_size)
    eb = check_positive("from_grain", "eval_batch_size", eval_batch_size if eval_batch_size is not None else b)
    evals = {}
    if isinstance(train, grain.MapDataset):
        n = _finite_len(train, "train")
        if b > n:
            raise DataError(f"from_grain: batch_size={b} is larger than the {n} train examples: "
                            f"lower batch_size (data.batch_size) to at most {n}")
        gather = _map_gatherer(train)
        example = gather(np.arange(1))

        def train_stream(seed: int):
            return IndexedBatches(gather, n, batch_size=b, seed=seed, kind=f"{name} (grain MapDataset)")

        evals["train"] = lambda periodic: padded_eval_batches(gather, n, eb)
    elif isinstance(train, grain.IterDataset) or callable(train):
        if train_size is None:
            raise DataError("from_grain: an IterDataset has no length: pass train_size=... (the "
                            "examples in one epoch)")
        n = check_positive("from_grain", "train_size", train_size)

        def dataset(seed: int):
            ds = train(seed) if callable(train) and not isinstance(train, grain.IterDataset) else train
            if isinstance(ds, grain.MapDataset):
                ds = ds.to_iter_dataset()
            if not isinstance(ds, grain.IterDataset):
                raise DataError(f"from_grain: train({seed}) returned {type(ds).__name__}, not a "
                                f"grain.IterDataset: return e.g. MapDataset...repeat().to_iter_dataset()")
            return ds if batched else ds.map(as_example).batch(b, drop_remainder=True)

        def train_stream(seed: int):
            return GrainIterBatches(dataset(seed), seed=seed, name=name)

        example = next(train_stream(0))
    else:
        raise DataError(f"from_grain: train is a {type(train).__name__}: give a grain.MapDataset, "
                        f"a grain.IterDataset or a function seed -> IterDataset")
    for which, split in (("validation", validation), ("test", test)):
        if split is None:
            continue
        if isinstance(split, grain.MapDataset):
            size = _finite_len(split, which)
            evals[which] = (lambda g, size: lambda periodic: padded_eval_batches(g, size, eb))(
                _map_gatherer(split), size)
        elif isinstance(split, Iterator):
            raise DataError(f"from_grain: the {which} split is a one-shot iterator, which the "
                            f"second evaluation would find empty: give a MapDataset, an "
                            f"IterDataset or a list")
        elif isinstance(split, Iterable):
            guard = f"{name}'s {which} split"
            evals[which] = (lambda s, w: lambda periodic: map(ShapeGuard(w, _FIX), _iter_eval(s, eb)))(split, guard)
        else:
            raise DataError(f"from_grain: the {which} split is a {type(split).__name__}: give a "
                            f"grain.MapDataset or an iterable of elements")
    return Source(name=name, train=train_stream, evals=evals,
                  example_inputs=np.zeros_like(example["inputs"][:1]), train_size=n,
                  num_outputs=num_outputs, tokens_per_example=tokens_per_example,
                  description=description, batch_size=None if batched else b)
