"""The metrics log: per-step device metrics in, interval means and metrics.jsonl lines out.

Steps leave their metrics on the device; they are fetched together at the next log (or save)
point, so dispatch never waits on the host. The pending (step, metrics) pairs live in the
LoopState (and so in every checkpoint), so a resumed run averages the very same values. The log
keeps every record it wrote, for the summary, the plot and the hooks.
"""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np

from jaxmodels import files
from jaxmodels.training import packed_metrics


def interval_record(fetched: list, guarded: bool) -> dict:
    """Means over the interval's steps; a step whose update was skipped does not enter them (its
    loss may be NaN), and the number skipped is reported instead."""
    metrics = [m for _, m in fetched]
    accepted = [m for m in metrics if not m.get("skipped", 0)] or metrics
    out = {k: float(np.mean([m[k] for m in accepted])) for k in metrics[0] if k != "skipped"}
    if guarded:
        out["skipped"] = int(sum(float(m["skipped"]) for m in metrics))
    return out


def first_nonfinite(fetched: list) -> tuple[int, str, float] | None:
    """(step, key, value) of the first non-finite loss, gradient norm or parameter norm (after
    the update: finite gradients can still overflow the parameters), or None. A checkpoint is
    only saved after this found nothing, so every kept checkpoint holds a finite state."""
    for step, m in fetched:
        for key in ("loss", "grad_norm", "param_norm"):
            if key in m and not np.isfinite(m[key]):
                return step, key, float(m[key])
    return None


def read_records(path: pathlib.Path, upto_step: int) -> list[dict]:
    """metrics.jsonl lines up to a checkpoint's step (a killed run may have logged past it)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= upto_step:
            records.append(record)
    return records


class MetricsLog:
    """Pending metrics of `ls` (a LoopState), interval means and the records written.

    `path` None keeps the records in memory only (processes other than the main one, packed
    models whose files are written at the end). `guarded`: the step may skip updates, so
    records carry "skipped".
    """

    def __init__(self, ls, records: list[dict], path: pathlib.Path | None, *, guarded: bool,
                 events=None):
        self.ls, self.records, self.guarded = ls, records, guarded
        self.events = events  # a second writer of each record (tensorboard.py), or None
        self.path = path
        if path is not None:
            # Rewritten whole, so lines a killed run logged past its checkpoint are dropped.
            files.write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
        self._file = path.open("a") if path is not None else io.StringIO()

    def add(self, step: int, metrics) -> None:
        self.ls.pending.append((step, metrics))

    def fetch(self) -> list:
        """The pending (step, metrics) on the host (one transfer; the sync point of a log)."""
        self.ls.pending = packed_metrics.to_host(self.ls.pending)
        return self.ls.pending

    def nonfinite(self) -> tuple[int, str, float] | None:
        return first_nonfinite(self.fetch())

    def interval(self, step: int, epoch: float) -> dict:
        """Closes the interval: a record of its means (the pending steps are consumed)."""
        record = {"step": step, "epoch": epoch, **interval_record(self.fetch(), self.guarded)}
        self.ls.skipped += record.get("skipped", 0)
        self.ls.pending = []
        return record

    def write(self, record: dict) -> None:
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.events is not None:
            self.events.write(record)

    @property
    def last_train(self) -> dict:
        """The newest record with train means (the summary's train_* values)."""
        return next((r for r in reversed(self.records) if "loss" in r), {})

    @property
    def last_val(self) -> dict:
        """The newest record (the summary's val_* values are read from it, as they always were)."""
        return self.records[-1] if self.records else {}

    def close(self) -> None:
        self._file.close()
        if self.events is not None:
            self.events.close()
