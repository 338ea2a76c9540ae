"""Input-pipeline overlap (data/prefetch.py): reading ahead changes when batches are read, never
which ones a step trains on or which position a checkpoint records."""

import pathlib
import signal
import threading

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import config as C
from jaxmodels.data.pipeline import TrainBatches
from jaxmodels.data.prefetch import Prefetch
from jaxmodels.errors import DataError, RunStopped
from helpers import TIMING, read_metrics, saved_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = ROOT / "experiments/configs/mlp_mnist.py"


class Counter:
    """A stream whose batch k is k and whose state is the count served; fails at `fail_at`."""

    def __init__(self, fail_at=None):
        self.position, self.fail_at = 0, fail_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.position == self.fail_at:
            raise DataError(f"cannot decode image {self.position}.png: re-export it")
        self.position += 1
        return {"k": self.position}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_state_counts_consumed_batches_not_the_ones_read_ahead(depth):
    inner = Counter()
    stream = Prefetch(inner, lambda b: {"k": b["k"] * 10}, depth)
    assert stream.get_state() == {"position": 0}
    got = [next(stream)["k"] for _ in range(4)]
    assert got == [10, 20, 30, 40]
    assert stream.get_state() == {"position": 4}  # whatever the thread has read since
    stream.set_state({"position": 2})  # read-ahead dropped: continues at batch 3
    assert [next(stream)["k"] for _ in range(2)] == [30, 40]
    assert stream.get_state() == {"position": 4}
    stream.close()


def test_producer_error_reaches_the_caller_after_the_batches_before_it():
    stream = Prefetch(Counter(fail_at=2), depth=2)
    assert [next(stream)["k"] for _ in range(2)] == [1, 2]
    assert stream.get_state() == {"position": 2}
    with pytest.raises(DataError, match=r"^cannot decode image 2.png: re-export it$"):
        next(stream)
    with pytest.raises(DataError):  # and again, not a hang
        next(stream)
    stream.close()


def test_close_stops_the_thread():
    stream = Prefetch(Counter(), depth=2)
    next(stream)
    stream.close()
    assert not any(t.name == "jaxmodels-prefetch" and t.is_alive() for t in threading.enumerate())


def _config(*overrides):
    base = ["data.dataset=digits", "train.steps=12", "train.log_every=3", "train.eval_every=6",
            "model.dropout=0.1", "checkpoint.every_steps=none", "checkpoint.async_save=false",
            "train.progress=false"]
    return C.apply_overrides(C.load(MLP, tiny=True), base + list(overrides))


def _records(workdir):
    return read_metrics(workdir, drop=TIMING)


def _state(workdir, step=12):
    return saved_state(workdir, step)


def _assert_same(a, b):
    assert _records(a) == _records(b)
    for x, y in zip(jax.tree.leaves(_state(a)), jax.tree.leaves(_state(b)), strict=True):
        assert np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("off")
    summary = jaxmodels.train(_config("data.prefetch=0"), workdir)
    return workdir, summary


def test_prefetch_on_trains_bitwise_like_off(reference, tmp_path):
    off_dir, off = reference
    on = jaxmodels.train(_config("data.prefetch=3"), tmp_path)
    assert on["train_loss"] == off["train_loss"] and on["eval_loss"] == off["eval_loss"]
    _assert_same(tmp_path, off_dir)


def test_resume_after_sigterm_with_prefetch_is_exact(reference, tmp_path, monkeypatch):
    off_dir, off = reference
    real_next = TrainBatches.__next__

    def next_then_signal(self):
        batch = real_next(self)
        if self.position == 6:  # read ahead by the thread, while an earlier step runs
            signal.raise_signal(signal.SIGTERM)
        return batch

    monkeypatch.setattr(TrainBatches, "__next__", next_then_signal)
    with pytest.raises(RunStopped, match=r"stopped by SIGTERM after step (\d+)") as stop:
        jaxmodels.train(_config("data.prefetch=2"), tmp_path)
    monkeypatch.setattr(TrainBatches, "__next__", real_next)
    stopped_at = int(stop.value.args[0].split("after step ")[1].split(":")[0])
    assert 1 <= stopped_at <= 6
    resumed = jaxmodels.train(_config("data.prefetch=2"), tmp_path)
    assert resumed["resumed_from"] == [stopped_at]
    assert resumed["train_loss"] == off["train_loss"] and resumed["eval_loss"] == off["eval_loss"]
    _assert_same(tmp_path, off_dir)


def test_a_failing_stream_stops_training_with_its_own_message(tmp_path, monkeypatch):
    real_next = TrainBatches.__next__

    def failing(self):
        if self.position == 4:
            raise DataError("cannot read shard 4: re-run the export")
        return real_next(self)

    monkeypatch.setattr(TrainBatches, "__next__", failing)
    with pytest.raises(DataError, match=r"^cannot read shard 4: re-run the export$"):
        jaxmodels.train(_config("data.prefetch=2"), tmp_path)
    assert not any(t.name == "jaxmodels-prefetch" and t.is_alive() for t in threading.enumerate())
