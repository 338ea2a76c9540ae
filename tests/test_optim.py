"""Optimizers and schedules built from OptimizerConfig."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels.config import OptimizerConfig
from jaxmodels.training import optim


def _quadratic_run(cfg, steps=200):
    target = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.3, -0.7])}
    params = jax.tree.map(jnp.zeros_like, target)
    tx, _ = optim.make(cfg, total_steps=steps)

    def loss(p):
        return sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    start = loss(params)
    for _ in range(steps):
        params, state = step(params, state)
    return float(start), float(loss(params)), step


@pytest.mark.parametrize("cfg", [
    OptimizerConfig(name="sgd", learning_rate=0.1),
    OptimizerConfig(name="sgd", learning_rate=0.05, momentum=0.9, nesterov=True),
    OptimizerConfig(name="adam", learning_rate=0.05),
    OptimizerConfig(name="adamw", learning_rate=0.05, weight_decay=1e-4),
    OptimizerConfig(name="lion", learning_rate=0.03, b2=0.99),
    OptimizerConfig(name="adafactor", learning_rate=0.5),
    OptimizerConfig(name="adam", learning_rate=0.05, schedule="warmup_cosine", warmup_steps=20),
    OptimizerConfig(name="adam", learning_rate=0.05, grad_clip_norm=1.0),
], ids=lambda c: f"{c.name}-{c.schedule}-{c.grad_clip_norm}")
def test_every_optimizer_minimises_a_quadratic(cfg):
    start, end, step = _quadratic_run(cfg)
    assert end < 0.05 * start, (start, end)
    assert step._cache_size() == 1  # no recompilation after the first call


def test_adamw_decays_matrices_but_not_biases_or_norm_scales():
    cfg = OptimizerConfig(name="adamw", learning_rate=0.1, weight_decay=0.5)
    tx, _ = optim.make(cfg, total_steps=10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0.0)
    np.testing.assert_array_equal(updates["scale"], 0.0)


@pytest.mark.parametrize("schedule", ["warmup_cosine", "warmup_linear"])
def test_schedules_warm_up_then_decay_to_the_final_fraction(schedule):
    cfg = OptimizerConfig(learning_rate=1.0, schedule=schedule, warmup_steps=10, final_lr_fraction=0.1)
    _, lr = optim.make(cfg, total_steps=110)
    np.testing.assert_allclose(float(lr(0)), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(lr(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(lr(110)), 0.1, rtol=1e-5)
    mid = float(lr(60))
    assert 0.1 < mid < 1.0
    if schedule == "warmup_linear":
        np.testing.assert_allclose(mid, 0.55, rtol=1e-5)
    else:
        np.testing.assert_allclose(mid, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)


def test_constant_schedule():
    _, lr = optim.make(OptimizerConfig(learning_rate=3e-4), total_steps=5)
    assert float(lr(0)) == float(lr(1000)) == pytest.approx(3e-4)


def test_clipping_caps_the_global_norm():
    cfg = OptimizerConfig(name="sgd", learning_rate=1.0, grad_clip_norm=2.0)
    tx, _ = optim.make(cfg, total_steps=1)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.full(3, 10.0), "b": jnp.full((2, 2), -10.0)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 2.0, rtol=1e-6)
