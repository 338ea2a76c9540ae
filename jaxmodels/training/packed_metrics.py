"""A train step's scalar metrics as one device array, so the loop fetches one buffer per step.

Why: the loop leaves each step's metrics on the device and fetches the pending ones at the next
log point. Fetching costs host time per array (about 10-20 us on these CPUs for a 0-d array:
the copy is started, waited for and wrapped one array at a time), and a step has seven or more
metrics, so a model whose step takes 2 ms lost about 0.2 ms per step to the fetch alone
(benchmarks/overhead.py's host row). Stacked inside the compiled step, the metrics cost one
fetch per step; the stack itself is free next to the step.

`PackedMetrics` is a read-only mapping over that array (`metrics["loss"]` is a slice of it), a
pytree with the array as its one leaf and the names as static data, so `jax.device_get`,
`jax.block_until_ready` and shardings treat it like any output. `unpack` turns a fetched one
into the plain {name: np.float32} dict the log, the checkpoints and the hooks have always seen.
Metrics that are not all floating-point scalars stay a plain dict (nothing is cast that would
change a value).
"""

from __future__ import annotations

import collections.abc
import functools

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_pytree_node_class
class PackedMetrics(collections.abc.Mapping):
    """Scalar metrics `names` stacked in `values` (float32, last axis = len(names))."""

    def __init__(self, values, names: tuple[str, ...]):
        self.values, self.names = values, tuple(names)

    def tree_flatten(self):
        return (self.values,), self.names

    @classmethod
    def tree_unflatten(cls, names, children):
        return cls(children[0], names)

    def __getitem__(self, name: str):
        try:
            i = self.names.index(name)
        except ValueError:
            raise KeyError(name) from None
        return self.values[..., i]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"PackedMetrics({dict(self)!r})"

    def unpack(self) -> dict:
        """{name: np.float32}; call it on a fetched (host) instance."""
        values = np.asarray(self.values)
        return {name: values[..., i] if values.ndim > 1 else np.float32(values[i])
                for i, name in enumerate(self.names)}


def _packable(value) -> bool:
    # Casting to float32 is exact for these; an int or a vector metric keeps the plain dict.
    dtype = jnp.result_type(value)
    return jnp.ndim(value) == 0 and jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize <= 4


def pack(metrics: dict):
    """Inside a traced step: `metrics` as a PackedMetrics, or unchanged when not all scalars."""
    if not metrics or not all(_packable(v) for v in metrics.values()):
        return metrics
    names = tuple(metrics)
    return PackedMetrics(jnp.stack([jnp.asarray(metrics[n], jnp.float32) for n in names]), names)


def packing(train_step):
    """`train_step(state, batch) -> (state, metrics)` with its metrics packed."""

    @functools.wraps(train_step)
    def step(state, batch):
        state, metrics = train_step(state, batch)
        return state, pack(metrics)

    return step


def _on_host(metrics) -> bool:
    return isinstance(metrics, dict) and all(
        isinstance(v, (np.ndarray, np.generic, float, int)) for v in metrics.values())


def to_host(pending: list) -> list:
    """Pending (step, metrics) pairs on the host with every metrics a plain dict: one
    `device_get` for all that are still on the device, then the packed ones unpacked. Pairs
    fetched earlier in the same interval (by a save or the non-finite check before the log)
    are not transferred again."""
    at = [i for i, (_, m) in enumerate(pending) if not _on_host(m)]
    out = list(pending)
    for i, m in zip(at, jax.device_get([pending[i][1] for i in at])):
        out[i] = (pending[i][0], m.unpack() if isinstance(m, PackedMetrics) else m)
    return out
