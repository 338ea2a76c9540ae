"""models/layer_norm.py: the same function and parameters as flax.linen.LayerNorm, values and
gradients, in float32 and bfloat16, and accurate where flax's one-pass variance is not."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models import layer_norm


def _inputs(shape, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * 2.0 + offset
    dy = rng.standard_normal(shape).astype(np.float32)
    d = shape[-1]
    params = {"scale": rng.standard_normal(d).astype(np.float32),
              "bias": rng.standard_normal(d).astype(np.float32)}
    return jnp.asarray(x), jnp.asarray(dy), jax.tree.map(jnp.asarray, params)


def _value_and_grads(module, params, x, dy):
    y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, x)
    dparams, dx = vjp(dy.astype(y.dtype))
    return y, dparams, dx


@pytest.mark.parametrize("shape", [(4, 7, 64), (3, 128), (2, 3, 5, 16), (6, 1)])
def test_equals_flax_layer_norm_in_value_and_gradient(shape):
    x, dy, params = _inputs(shape)
    # flax's two-pass variance as the reference: the same function, computed the textbook way.
    ref = nn.LayerNorm(use_fast_variance=False)
    ours = layer_norm.LayerNorm()
    y_ref, dp_ref, dx_ref = _value_and_grads(ref, params, x, dy)
    y, dp, dx = jax.jit(lambda p, x, dy: _value_and_grads(ours, p, x, dy))(params, x, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(dp[name], dp_ref[name], rtol=1e-4, atol=1e-4)


def test_parameters_are_flax_layer_norms():
    """Names, shapes, dtypes and initial values: a checkpoint of either loads into the other."""
    x = jnp.ones((2, 5, 24))
    for param_dtype in (jnp.float32, jnp.bfloat16):
        a = nn.LayerNorm(param_dtype=param_dtype).init(jax.random.key(0), x)
        b = layer_norm.LayerNorm(param_dtype=param_dtype).init(jax.random.key(0), x)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert u.shape == v.shape and u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


def test_large_mean_rows_keep_their_variance():
    """Rows whose mean is 10^4 spreads: flax's default one-pass variance (E[x^2] - E[x]^2 in
    float32) loses the spread there; the shifted one-pass form keeps it."""
    x, dy, params = _inputs((8, 256), offset=2e4)
    exact = np.asarray(x, np.float64)
    exact = (exact - exact.mean(-1, keepdims=True)) / np.sqrt(exact.var(-1, keepdims=True) + 1e-6)
    exact = exact * np.asarray(params["scale"], np.float64) + np.asarray(params["bias"], np.float64)
    ours = layer_norm.LayerNorm().apply({"params": params}, x)
    fast = nn.LayerNorm().apply({"params": params}, x)  # use_fast_variance=True, flax's default
    err_ours = np.max(np.abs(np.asarray(ours, np.float64) - exact))
    err_fast = np.max(np.abs(np.asarray(fast, np.float64) - exact))
    assert err_ours < 1e-2, err_ours
    assert err_fast > 10 * err_ours, (err_fast, err_ours)  # so this test sees the difference


def test_bfloat16_compute_returns_bfloat16_close_to_float32():
    x, dy, params = _inputs((4, 9, 32))
    xb = x.astype(jnp.bfloat16)
    y32, dp32, dx32 = _value_and_grads(layer_norm.LayerNorm(), params, xb.astype(jnp.float32), dy)
    yb, dpb, dxb = _value_and_grads(layer_norm.LayerNorm(dtype=jnp.bfloat16), params, xb, dy)
    assert yb.dtype == jnp.bfloat16 and dxb.dtype == jnp.bfloat16
    assert dpb["scale"].dtype == jnp.float32  # gradients in the parameters' dtype
    # The arithmetic is float32 on the same (bf16-representable) input: only the output and the
    # incoming bf16 cotangent round (relative 2^-8 each).
    np.testing.assert_allclose(np.asarray(yb, np.float32), y32, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(dxb, np.float32), dx32, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(dpb["scale"], dp32["scale"], rtol=2e-2, atol=2e-2)


def test_constant_rows_normalise_to_the_bias():
    """Variance 0 (rounding may make it a hair negative): rsqrt(epsilon), no NaN."""
    x = jnp.full((3, 16), 7.25)
    params = {"scale": jnp.full((16,), 2.0), "bias": jnp.arange(16.0)}
    y, dp, dx = _value_and_grads(layer_norm.LayerNorm(), params, x, jnp.ones((3, 16)))
    np.testing.assert_allclose(y, np.broadcast_to(np.arange(16.0), (3, 16)), atol=1e-6)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dp["scale"]))
