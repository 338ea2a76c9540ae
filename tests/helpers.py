"""Readers and fault injectors the end-to-end tests share: a run's metrics, a saved train state,
and a SIGTERM that arrives while a given batch is being read.

Imported as `helpers` (pytest puts this folder on sys.path, as it does for conftest.py).
"""

from __future__ import annotations

import json
import pathlib
import signal

import jax
import numpy as np

# Fields of metrics.jsonl that measure the machine, not the run: they differ between any two
# runs, so equivalence tests (resumed == uninterrupted, ...) leave them out.
TIMING = ("examples_per_sec", "tokens_per_sec", "mfu", "hfu")


def read_metrics(workdir, drop: tuple[str, ...] = ()) -> list[dict]:
    """metrics.jsonl of a run, one dict a line, without the fields named in `drop`."""
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def saved_state(workdir, step: int):
    """The train state saved at `step` as NumPy arrays (read without a target: values only)."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
    return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(path.absolute()))


def sigterm_when_reading(monkeypatch, data_config, position: int):
    """Makes the training stream of `data_config`'s dataset raise SIGTERM right after it yields
    batch `position` (that step is being prepared when the signal lands). Returns a function
    that takes the fault out again, for the relaunch."""
    from jaxmodels.training import tasks

    stream_class = type(tasks.build(data_config).train_batches(0))
    real_next = stream_class.__next__

    def next_then_signal(self):
        batch = real_next(self)
        if self.position == position:
            signal.raise_signal(signal.SIGTERM)
        return batch

    monkeypatch.setattr(stream_class, "__next__", next_then_signal)
    return lambda: monkeypatch.setattr(stream_class, "__next__", real_next)
