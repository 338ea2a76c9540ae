"""A Python generator as a data source: `from_generator(factory, train_size=...)`.

`factory(seed, start)` returns an iterator whose first batch is batch `start` of the stream for
`seed`. The stream's state is the number of batches served: resuming calls the factory again
with that number, so the factory must be deterministic in (seed, start), i.e. batch k must not
depend on anything but seed and k (derive any randomness from np.random.default_rng([seed, k])
or skip ahead to `start` in a seeded stream). Batches are dicts {"inputs", "targets", "mask"?}
of numpy arrays with one leading batch size; a missing mask is filled as the protocol says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from jaxmodels.data.arrays import check_positive, eval_split
from jaxmodels.data.pipeline import restored_position
from jaxmodels.data.source import ShapeGuard, Source, check_batch
from jaxmodels.errors import DataError

Factory = Callable[[int, int], Iterable[Mapping[str, Any]]]

_FIX = "yield dicts of numpy arrays {'inputs': [B, ...], 'targets': [B, ...], 'mask': [B] (optional)}"


class GeneratorBatches:
    """The training stream of a factory: the iterator of factory(seed, position), opened on
    first use and reopened at the restored position after set_state."""

    def __init__(self, factory: Factory, *, seed: int, batch_size: int | None, name: str):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"{name}: the seed must be a non-negative integer, got {seed!r}")
        self._factory, self._seed, self._batch_size, self._name = factory, int(seed), batch_size, name
        self._position = 0
        self._it: Iterator | None = None
        self._guard = ShapeGuard(f"{name}'s training generator", _FIX)

    @property
    def position(self) -> int:
        return self._position

    def __iter__(self) -> GeneratorBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = iter(self._factory(self._seed, self._position))
        try:
            raw = next(self._it)
        except StopIteration:
            raise DataError(f"{self._name}'s training generator stopped after batch "
                            f"{self._position - 1}: training needs an endless stream, so loop over "
                            f"epochs inside the factory") from None
        batch = self._guard(check_batch(raw, f"{self._name}'s training generator "
                                             f"(batch {self._position})", _FIX))
        if self._batch_size is not None and len(batch["inputs"]) != self._batch_size:
            raise DataError(f"{self._name}'s training generator gave a batch of "
                            f"{len(batch['inputs'])} examples, expected batch_size="
                            f"{self._batch_size}: yield full batches of that size")
        self._position += 1
        return batch

    def get_state(self) -> dict:
        return {"position": self._position, "seed": self._seed}

    def set_state(self, state: dict) -> None:
        try:
            position = restored_position(state, "generator", seed=self._seed)
        except ValueError as e:
            raise DataError(f"cannot resume {self._name}'s generator: {e} (resume with the seed "
                            f"the checkpoint was written with)") from None
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        self._position, self._it = position, None


def _evaluator(split: Any, which: str, name: str, eval_batch_size: int | None) -> Callable:
    """evals entry for an eval split: arrays (padded by from_arrays) or a zero-argument
    function returning an iterable of batches, called again for every evaluation."""
    if callable(split):
        def batches(periodic: bool):
            del periodic
            guard = ShapeGuard(f"{name}'s {which} batches", _FIX)
            for i, raw in enumerate(split()):
                yield guard(check_batch(raw, f"{name}'s {which} batches (batch {i})", _FIX))
        return batches
    if eval_batch_size is None:
        raise DataError(f"from_generator: the {which} split is arrays, which need "
                        f"eval_batch_size=... to be cut into batches")
    return eval_split(split, which, eval_batch_size, where="from_generator")


def from_generator(factory: Factory, *, train_size: int, validation=None, test=None,
                   batch_size: int | None = None, eval_batch_size: int | None = None,
                   example_inputs: np.ndarray | None = None, num_outputs: int | None = None,
                   name: str = "generator", tokens_per_example: int = 1,
                   description: str = "generator") -> Source:
    """A data source whose training batches come from `factory(seed, start)`.

    Args:
      factory: (seed, start) -> an iterator of batches, the first being batch `start` of
        seed's stream; endless; deterministic in (seed, start) so that resuming is exact.
      train_size: examples in one epoch (what train.epochs counts).
      validation, test: a zero-argument function returning an iterable of batches (one pass,
        padded rows carrying mask 0), or arrays as for from_arrays with eval_batch_size.
      batch_size: when given, every training batch is checked to hold exactly this many.
      example_inputs: [1, ...] like one example's inputs; by default taken from the first
        batch of factory(0, 0), which calls the factory once here.
    """
    if not callable(factory):
        raise DataError(f"from_generator: factory must be a function (seed, start) -> iterator "
                        f"of batches, got {type(factory).__name__}")
    train_size = check_positive("from_generator", "train_size", train_size)
    if batch_size is not None:
        batch_size = check_positive("from_generator", "batch_size", batch_size)
    evals = {}
    for which, split in (("validation", validation), ("test", test)):
        if split is not None:
            evals[which] = _evaluator(split, which, name, eval_batch_size)
    if example_inputs is None:
        first = next(GeneratorBatches(factory, seed=0, batch_size=batch_size, name=name))
        example_inputs = np.zeros_like(first["inputs"][:1])

    def train_stream(seed: int) -> GeneratorBatches:
        return GeneratorBatches(factory, seed=seed, batch_size=batch_size, name=name)

    return Source(name=name, train=train_stream, evals=evals,
                  example_inputs=np.asarray(example_inputs), train_size=train_size,
                  num_outputs=num_outputs, tokens_per_example=tokens_per_example,
                  description=description, batch_size=batch_size)
