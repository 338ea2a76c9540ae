"""Hooks (jaxmodels/training/hooks.py): they see what the loop logs, can stop it, never change
what it computes, and a failing one leaves a resumable run.

One tiny MLP on digits, in process (8 simulated devices): 16 steps of batch 64, validation and a
checkpoint every 2 steps, a constant learning rate, so val_loss falls at every validation (the
early-stopping tests rely on it and check it).
"""

import csv
import json

import jax
import numpy as np
import pytest

from jaxmodels.config import CheckpointConfig, Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.errors import UserError
from jaxmodels.models import MLPConfig
from jaxmodels.training import checkpoint, loop
from jaxmodels.training.hooks import CSVLogger, EarlyStopping, Hook, SavePredictions, Stop
from helpers import read_metrics

CONFIG = Config(
    name="hooks_digits",
    model=MLPConfig(hidden=(16,), dropout=0.1),
    data=DataConfig(dataset="digits", batch_size=64, eval_batch_size=256, eval_split="test"),
    optimizer=OptimizerConfig(name="adam", learning_rate=3e-3),
    train=TrainConfig(steps=16, log_every=1, eval_every=2, progress=False),
    checkpoint=CheckpointConfig(every_steps=2, keep=3, async_save=False),
)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("plain")
    return workdir, loop.train(CONFIG, workdir)


class Recorder(Hook):
    def __init__(self):
        self.logged, self.evals, self.saved = [], [], []

    def on_log(self, step, record, state):
        self.logged.append(record)

    def on_eval(self, step, metrics, state):
        self.evals.append((step, metrics))

    def on_checkpoint(self, step, state):
        self.saved.append(step)


def test_hooks_see_the_records_and_do_not_change_the_run(plain, tmp_path):
    workdir, summary = plain
    rec, seen = Recorder(), []
    inputs = np.zeros((3, 8, 8, 1), np.float32)
    hooks = (rec, lambda step, record: seen.append(step), CSVLogger(),
             SavePredictions(inputs, every=4), EarlyStopping(patience=100))
    ours = loop.train(CONFIG, tmp_path, hooks=hooks)
    records = read_metrics(tmp_path)
    assert rec.logged == records and seen == [r["step"] for r in records]
    assert [s for s, _ in rec.evals] == list(range(2, 17, 2))
    assert all(set(m) == {"val_loss", "val_accuracy"} for _, m in rec.evals)
    assert rec.saved == list(range(2, 17, 2))
    # Bitwise the run without hooks: records (timings aside), summary numbers, weights.
    timing = ("examples_per_sec", "mfu", "hfu")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(records) == strip(read_metrics(workdir))
    for key in ("train_loss", "val_loss", "eval_loss", "eval_accuracy", "step"):
        assert ours[key] == summary[key], key
    _assert_same_weights(workdir, tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in records]
    assert float(rows[-1]["val_loss"]) == pytest.approx(records[-1]["val_loss"])
    saved = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert saved == ["step_12.npy", "step_16.npy", "step_4.npy", "step_8.npy"]
    assert np.load(tmp_path / "predictions" / "step_16.npy").shape == (3, 10)


def _val_losses(workdir):
    return [r["val_loss"] for r in read_metrics(workdir) if "val_loss" in r]


def test_early_stopping_stops_where_the_metric_says_and_the_summary_says_why(tmp_path):
    # mode="max" on a val_loss that falls: the first validation (step 2) is the best, and the
    # third without improvement (step 8) stops the run.
    summary = loop.train(CONFIG, tmp_path, hooks=[EarlyStopping("val_loss", patience=3, mode="max")])
    losses = _val_losses(tmp_path)
    assert all(b < a for a, b in zip(losses, losses[1:]))  # what the stop relies on
    assert summary["step"] == 8 and read_metrics(tmp_path)[-1]["step"] == 8
    assert summary["stopped"]["step"] == 8
    assert "val_loss did not improve for 3 evaluations (best" in summary["stopped"]["reason"]
    assert json.loads((tmp_path / "summary.json").read_text())["stopped"] == summary["stopped"]
    # Relaunching a stopped run trains no further.
    again = loop.train(CONFIG, tmp_path, hooks=[EarlyStopping("val_loss", patience=3, mode="max")])
    assert again["step"] == 8 and again["stopped"] == summary["stopped"]
    assert again["eval_loss"] == summary["eval_loss"]


def test_early_stopping_min_mode_does_not_stop_a_falling_loss(plain):
    workdir, summary = plain
    assert summary["stopped"] is None and summary["step"] == 16


class Boom(Hook):
    def __init__(self, at):
        self.at = at

    def on_log(self, step, record, state):
        if step == self.at:
            raise RuntimeError("disk on fire\nsecond line")


def test_a_raising_hook_is_one_line_and_the_run_resumes_exactly_with_its_counters(tmp_path):
    # The uninterrupted reference stops at step 8 (see above). The broken run dies at step 7,
    # after the checkpoint of step 6, where the early stopper has counted 2 evaluations without
    # improvement; unless those counters come back with the checkpoint, the resumed run would
    # take step 8's validation as a new best and train on to step 14.
    reference = tmp_path / "reference"
    expected = loop.train(CONFIG, reference, hooks=[EarlyStopping(patience=3, mode="max")])
    broken = tmp_path / "broken"
    with pytest.raises(UserError) as e:
        loop.train(CONFIG, broken, hooks=[EarlyStopping(patience=3, mode="max"), Boom(7)])
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("hook Boom failed in on_log at step 7: RuntimeError: disk on fire; "
                              "the last good checkpoint is step 6")
    assert not (broken / "summary.json").exists()
    resumed = loop.train(CONFIG, broken, hooks=[EarlyStopping(patience=3, mode="max")])
    assert resumed["resumed_from"] == [6]
    assert resumed["step"] == expected["step"] == 8
    assert resumed["stopped"] == expected["stopped"]
    for key in ("train_loss", "val_loss", "eval_loss", "eval_accuracy"):
        assert resumed[key] == expected[key], key
    _assert_same_weights(reference, broken)


def _assert_same_weights(a, b):
    state = loop.setup(CONFIG).init_fn()
    like = {"params": state.params, "model_state": state.model_state}
    wa, wb = checkpoint.restore_weights(a, like), checkpoint.restore_weights(b, like)
    for x, y in zip(jax.tree.leaves(wa), jax.tree.leaves(wb)):
        assert np.array_equal(np.asarray(x), np.asarray(y)), "weights differ bitwise"


def test_a_stop_returned_from_on_eval_stops_too(tmp_path):
    class StopAt(Hook):
        def on_eval(self, step, metrics, state):
            return Stop("enough") if step == 4 else None

    summary = loop.train(CONFIG, tmp_path, hooks=[StopAt()])
    assert summary["step"] == 4 and summary["stopped"] == {"step": 4, "reason": "enough"}


@pytest.mark.parametrize("hook, message", [
    (42, "hook 42 has none of start, on_log, on_eval, on_checkpoint and is not callable"),
])
def test_bad_hooks_are_one_line_errors_before_anything_is_written(tmp_path, hook, message):
    with pytest.raises(UserError, match=message):
        loop.train(CONFIG, tmp_path / "never", hooks=[hook])
    assert not (tmp_path / "never").exists()


def test_early_stopping_arguments_are_checked():
    with pytest.raises(UserError, match="mode='min' or mode='max'"):
        EarlyStopping(mode="up")
    with pytest.raises(UserError, match="patience"):
        EarlyStopping(patience=0)
