"""Objectives as values: built-ins against NumPy formulas, a user's metrics aggregating exactly."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxmodels
from jaxmodels.training import objectives, step as step_lib
from jaxmodels.training.state import init_state

RNG = np.random.default_rng(0)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_label_smoothing_and_z_loss_match_numpy():
    logits = RNG.normal(size=(6, 5, 7)).astype(np.float32) * 3
    targets = RNG.integers(0, 7, size=(6, 5))
    eps, z = 0.1, 1e-3
    obj = objectives.cross_entropy(label_smoothing=eps, z_loss=z)
    got = np.asarray(obj.losses(jnp.asarray(logits), jnp.asarray(targets)))
    logp = _log_softmax(logits.astype(np.float64))
    soft = np.full(logits.shape, eps / 7) + (1 - eps) * np.eye(7)[targets]
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    want = -(soft * logp).sum(-1) + z * lse ** 2
    np.testing.assert_allclose(got, want, rtol=1e-5)
    mask = (RNG.random((6, 5)) > 0.3).astype(np.float32)
    sums = obj.metrics(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums["nll"][0], (nll * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["z_loss"][0], (z * lse ** 2 * mask).sum(), rtol=1e-5)
    assert float(sums["accuracy"][1]) == mask.sum()
    # Without smoothing and z-loss: plain cross-entropy, no extra metrics.
    plain = objectives.cross_entropy()
    np.testing.assert_allclose(plain.losses(jnp.asarray(logits), jnp.asarray(targets)), nll, rtol=1e-5)
    assert set(plain.metrics(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))) == {"accuracy"}


def test_mse_regression_recovers_least_squares_weights(tmp_path):
    w = RNG.normal(size=(6, 2))
    x = RNG.normal(size=(1024, 6)).astype(np.float32)
    y = (x @ w + 0.1 * RNG.normal(size=(1024, 2))).astype(np.float32)  # noisy: lstsq is the target
    reference = np.linalg.lstsq(np.c_[x, np.ones(1024)], y, rcond=None)[0]
    summary = jaxmodels.fit(nn.Dense(2), (x, y), loss="mse", learning_rate=3e-2, batch_size=128,
                            steps=600, schedule="warmup_cosine", warmup_steps=20,
                            workdir=tmp_path, progress=False, log_every=100)
    from jaxmodels.api import _restore

    _, saved = _restore(tmp_path, nn.Dense(2), jnp.asarray(x[:1]))
    kernel, bias = saved["params"]["kernel"], saved["params"]["bias"]
    np.testing.assert_allclose(kernel, reference[:6], atol=5e-3)
    np.testing.assert_allclose(bias, reference[6], atol=5e-3)
    # The logs and summary speak the objective's language: no accuracy for a regression.
    assert summary["objective"] == "mse" and "eval_mae" in summary
    assert "eval_accuracy" not in summary and "val_accuracy" not in summary
    line = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    assert "accuracy" not in line and "val_mae" in line


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.tanh(nn.Dense(16)(x)))


TOP3 = objectives.with_metrics(objectives.cross_entropy(), top3=objectives.top_k_accuracy(3),
                               predicted=objectives.class_counts(10))


def _setup(microbatches=1):
    model = jaxmodels.as_model(Tiny())
    tx = optax.sgd(0.1)
    state = init_state(model, tx, jnp.zeros((1, 12)), seed=0)
    train = step_lib.make_train_step(model, tx, TOP3, microbatches=microbatches)
    return model, state, train


def _batch(n, pad=0):
    x = RNG.normal(size=(n, 12)).astype(np.float32)
    y = RNG.integers(0, 10, size=n).astype(np.int32)
    mask = np.r_[np.ones(n - pad), np.zeros(pad)].astype(np.float32)
    return {"inputs": x, "targets": y, "mask": mask}


def test_custom_metrics_aggregate_exactly_over_padded_batches():
    model, state, _ = _setup()
    eval_step = jax.jit(step_lib.make_eval_step(model, TOP3))
    batch = _batch(60)
    whole = jax.device_get(eval_step(state, batch))
    # The same 60 rows as batches of 16, the last padded with 4 garbage rows of mask 0.
    parts = []
    for start in range(0, 60, 16):
        piece = {k: v[start:start + 16] for k, v in batch.items()}
        n = len(piece["mask"])
        if n < 16:
            piece = {k: np.concatenate([v, RNG.normal(size=(16 - n, *v.shape[1:])).astype(v.dtype)])
                     for k, v in piece.items()}
            piece["mask"][n:] = 0.0
        parts.append(jax.device_get(eval_step(state, piece)))
    for name in ("loss", "accuracy", "top3", "predicted"):
        total = sum(np.asarray(p[name][0], np.float64) for p in parts)
        count = sum(float(p[name][1]) for p in parts)
        assert count == 60.0
        np.testing.assert_allclose(total, whole[name][0], rtol=1e-5)
    assert np.asarray(whole["predicted"][0]).sum() == 60  # a per-class vector metric


def test_custom_metrics_equal_over_micro_batches_and_eight_devices():
    _, state, one = _setup(1)
    _, _, four = _setup(4)
    batch = _batch(64, pad=5)
    s1, m1 = jax.jit(one)(state, batch)
    s4, m4 = jax.jit(four)(state, batch)
    for k in ("loss", "accuracy", "top3"):
        np.testing.assert_allclose(m4[k], m1[k], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    sharded = jax.jit(one, in_shardings=(NamedSharding(mesh, P()), rows))
    s8, m8 = sharded(jax.device_put(state, NamedSharding(mesh, P())), batch)
    for k in ("loss", "accuracy", "top3"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-6)
    # top3 counts hits among the 59 real rows only: a multiple of 1/59.
    assert float(m1["top3"]) * 59 == pytest.approx(round(float(m1["top3"]) * 59), abs=1e-4)


def test_a_loss_function_is_an_objective():
    def huber(outputs, targets):
        d = jnp.abs(outputs - targets).mean(-1)
        return jnp.where(d < 1, 0.5 * d ** 2, d - 0.5)

    obj = objectives.resolve(huber)
    assert obj.name == "huber" and obj.metrics(None, None, None) == {}
    with pytest.raises(jaxmodels.ConfigError, match="unknown objective 'hubr'"):
        objectives.resolve("hubr")
