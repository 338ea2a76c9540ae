"""Finite loss and gradients can still overflow the parameters (a huge learning rate): such a
state is never called good, never checkpointed, and `skip` never accepts the update."""

import pathlib

import numpy as np
import pytest

from jaxmodels import config as config_lib
from jaxmodels.errors import RunStopped
from jaxmodels.training import checkpoint, loop

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(*overrides):
    cfg = config_lib.load(ROOT / "experiments/configs/mlp_mnist.py", tiny=True)
    return config_lib.apply_overrides(cfg, [
        "data.dataset=digits", "train.steps=6", "optimizer.learning_rate=1e30",
        "optimizer.schedule=constant", "optimizer.warmup_steps=0", "checkpoint.every_steps=1",
        "train.log_every=1", *overrides])


def test_overflowing_parameters_stop_without_a_checkpoint(tmp_path):
    with pytest.raises(RunStopped) as stop:
        loop.train(_config(), tmp_path)
    assert stop.value.exit_code == 3
    message = str(stop.value)
    assert "non-finite param_norm" in message and "at step 1" in message, message
    assert "no checkpoint was saved before it" in message
    assert checkpoint.Checkpoints(tmp_path, config_lib.CheckpointConfig()).steps() == []


def test_skip_refuses_updates_that_overflow_the_parameters(tmp_path):
    summary = loop.train(_config("train.nonfinite=skip"), tmp_path)
    assert summary["skipped_updates"] == 6
    assert np.isfinite(summary["eval_loss"]) and np.isfinite(summary["train_loss"])
    import jax

    fresh = loop.setup(_config("train.nonfinite=skip")).init_fn()
    saved = checkpoint.restore_weights(tmp_path, {"params": fresh.params, "model_state": fresh.model_state})
    for a, b in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(fresh.params)):
        np.testing.assert_array_equal(a, b)  # every update was refused: the initial weights
