"""The pure train/eval steps: jit == eager, accumulation == big batch, no retrace, PRNG."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import models
from jaxmodels.config import OptimizerConfig
from jaxmodels.training import optim
from jaxmodels.training import step as step_lib
from jaxmodels.training.state import init_state


def _batch(n, hw=8, seed=0, mask=None):
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.normal(size=(n, hw, hw, 1)).astype(np.float32),
        "targets": rng.integers(0, 10, size=n).astype(np.int32),
        "mask": np.ones(n, np.float32) if mask is None else mask,
    }


def _setup(cfg, opt=OptimizerConfig(name="adam", learning_rate=1e-2), microbatches=1, hw=8):
    model = models.build(cfg)
    tx, schedule = optim.make(opt, total_steps=100)
    state = init_state(model, tx, jnp.zeros((1, hw, hw, 1)), seed=0)
    train_step = step_lib.make_train_step(model, tx, schedule=schedule, microbatches=microbatches)
    return model, state, train_step


MLP = models.MLPConfig(hidden=(16,))
BN = models.BatchNormCNNConfig(block_filters=(4,), convs_per_block=1, hidden=8, dropout=0.3)


@pytest.mark.parametrize("cfg", [MLP, BN], ids=["mlp", "bn_cnn"])
def test_jit_equals_eager(cfg):
    _, state, train_step = _setup(cfg)
    batch = _batch(16)
    eager_state, eager_metrics = train_step(state, batch)
    jit_state, jit_metrics = jax.jit(train_step)(state, batch)
    chex.assert_trees_all_close(eager_state, jit_state, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(eager_metrics, jit_metrics, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_equals_one_big_batch(k):
    # SGD makes the update linear in the gradient, so params compare the gradients themselves.
    opt = OptimizerConfig(name="sgd", learning_rate=0.5)
    _, state, big_step = _setup(MLP, opt)
    _, _, micro_step = _setup(MLP, opt, microbatches=k)
    batch = _batch(16)
    big_state, big_metrics = jax.jit(big_step)(state, batch)
    micro_state, micro_metrics = jax.jit(micro_step)(state, batch)
    chex.assert_trees_all_close(big_state.params, micro_state.params, rtol=1e-5, atol=1e-6)
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(big_metrics[key], micro_metrics[key], rtol=1e-5)


def test_masked_examples_do_not_contribute():
    _, state, train_step = _setup(MLP, OptimizerConfig(name="sgd", learning_rate=0.5))
    full = _batch(8)
    mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    garbage = dict(full, inputs=full["inputs"].copy(), mask=mask)
    garbage["inputs"][5:] = 1e3  # huge values: any leak into the loss would show
    real = jax.tree.map(lambda x: x[:5], full)
    a, ma = jax.jit(train_step)(state, garbage)
    b, mb = jax.jit(train_step)(state, real)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)


def test_batch_stats_update_in_train_and_freeze_in_eval():
    model, state, train_step = _setup(BN)
    eval_step = jax.jit(step_lib.make_eval_step(model))
    batch = _batch(16)
    new_state, _ = jax.jit(train_step)(state, batch)
    stats0 = state.model_state["batch_stats"]
    stats1 = new_state.model_state["batch_stats"]
    assert jax.tree.structure(stats0) == jax.tree.structure(stats1)
    assert not np.allclose(stats0["bn0_0"]["mean"], stats1["bn0_0"]["mean"])
    # Evaluation uses running statistics: sums over a batch equal the sums over its two halves.
    whole = eval_step(new_state, batch)
    halves = [eval_step(new_state, jax.tree.map(lambda x: x[s], batch)) for s in (slice(0, 8), slice(8, 16))]
    np.testing.assert_allclose(whole["loss"][0], halves[0]["loss"][0] + halves[1]["loss"][0], rtol=1e-5)


def test_dropout_key_is_folded_with_the_step():
    _, state, train_step = _setup(BN)
    batch = _batch(16)
    step = jax.jit(train_step)
    # Same state and batch at different step counters: different dropout masks, different loss.
    _, m0 = step(state, batch)
    _, m1 = step(state.replace(step=state.step + 1), batch)
    assert not np.isclose(m0["loss"], m1["loss"])
    # Same step counter: identical (no hidden global randomness).
    _, m0_again = step(state, batch)
    np.testing.assert_array_equal(m0["loss"], m0_again["loss"])


def test_no_retrace_after_the_first_step():
    model, state, train_step = _setup(BN)
    traces = {"train": 0, "eval": 0}

    def counting(name, fn):
        @functools.wraps(fn)
        def wrapped(*args):
            traces[name] += 1  # runs only while tracing
            return fn(*args)
        return wrapped

    train_jit = jax.jit(counting("train", train_step), donate_argnums=0)
    eval_jit = jax.jit(counting("eval", step_lib.make_eval_step(model)))
    for i in range(4):
        state, metrics = train_jit(state, _batch(16, seed=i))
    # Full and padded (masked) evaluation batches share one shape, hence one compile.
    eval_jit(state, _batch(16))
    eval_jit(state, _batch(16, mask=np.r_[np.ones(5), np.zeros(11)].astype(np.float32)))
    jax.block_until_ready(metrics)
    assert traces == {"train": 1, "eval": 1}
    assert int(state.step) == 4


def test_metrics_report_the_scheduled_learning_rate():
    opt = OptimizerConfig(name="adam", learning_rate=0.1, schedule="warmup_linear", warmup_steps=4)
    _, state, train_step = _setup(MLP, opt)
    step = jax.jit(train_step)
    lrs = []
    for _ in range(3):
        state, m = step(state, _batch(8))
        lrs.append(float(m["learning_rate"]))
    np.testing.assert_allclose(lrs, [0.0, 0.025, 0.05], atol=1e-7)
