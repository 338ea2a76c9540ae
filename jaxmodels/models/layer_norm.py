"""LayerNorm over the last axis, with its row statistics taken in one pass each way.

The same function as `flax.linen.LayerNorm` (parameters "scale" and "bias" of shape [D], so
checkpoints of either load into the other; statistics and arithmetic in float32 whatever the
compute dtype, the result in `dtype`), written for XLA's CPU backend:

- Forward, the row's sum and sum of squares come from one variadic reduction, of x minus the row's
  first entry. The shift keeps the one-pass variance E[(x-k)^2] - E[x-k]^2 accurate when the
  mean is large against the spread (flax's default "fast variance", E[x^2] - E[x]^2, loses it):
  any k near the mean does, and an entry of the row is within a few standard deviations of it.
- Backward, written out (Ba et al., 2016): dx = r (g - mean(g) - x^ mean(g x^)) with g = dy scale,
  its two row means again one variadic reduction; x^ and r are saved from the forward.

Why: with `--xla_cpu_experimental_ynn_fusion_type=dot,reduce` (runtime.CPU_FLAGS) XLA hands every
single-operand reduction to YNN as a fusion of its own, and for short rows those ran slower than
XLA's own fused row reduction: on the ViT's [6272, 64] activations, four pre-norm blocks' norms
cost 5.6 ms of a forward+backward in flax's form and 2.7 ms in this one; the ViT's training step
(benchmarks/step_ablation.py's shape) went from 82 to 76 ms. A variadic reduction is one XLA
fuses itself. Other backends get the same arithmetic.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _row_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of a, sum of b) over the last axis, as one reduction over both."""
    zero = jnp.zeros((), a.dtype)
    return jax.lax.reduce((a, b), (zero, zero), lambda p, q: (p[0] + q[0], p[1] + q[1]),
                          (a.ndim - 1,))


def _row(v: jax.Array, ndim: int) -> jax.Array:
    """A [D] parameter as float32 [1, ..., 1, D]."""
    return v.astype(jnp.float32).reshape((1,) * (ndim - 1) + v.shape)


def _forward(x, scale, bias, epsilon):
    x32 = x.astype(jnp.float32)
    d = x.shape[-1]
    shifted = x32 - x32[..., :1]
    s1, s2 = _row_sums(shifted, shifted * shifted)
    mean_shifted = (s1 / d)[..., None]
    # Rounding can leave a constant row's variance a hair below 0; flax clips it the same way.
    var = jnp.maximum((s2 / d)[..., None] - mean_shifted * mean_shifted, 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    x_hat = (shifted - mean_shifted) * rstd
    y = x_hat * _row(scale, x.ndim) + _row(bias, x.ndim)
    return y, (x_hat, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis, in float32."""
    return _forward(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
    y, (x_hat, rstd) = _forward(x, scale, bias, epsilon)
    # Zero-size arrays stand in for the input dtypes (residuals must be arrays).
    dtypes = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), scale.dtype), jnp.zeros((0,), bias.dtype))
    return y, (x_hat, rstd, scale, dtypes)


def _layer_norm_bwd(epsilon, residuals, dy):
    del epsilon  # inside rstd
    x_hat, rstd, scale, (x_like, scale_like, bias_like) = residuals
    dy = dy.astype(jnp.float32)
    g = dy * _row(scale, dy.ndim)
    d = x_hat.shape[-1]
    sum_g, sum_g_x_hat = _row_sums(g, g * x_hat)
    dx = rstd * (g - (sum_g / d)[..., None] - x_hat * (sum_g_x_hat / d)[..., None])
    rows = tuple(range(dy.ndim - 1))
    return (dx.astype(x_like.dtype), jnp.sum(dy * x_hat, axis=rows).astype(scale_like.dtype),
            jnp.sum(dy, axis=rows).astype(bias_like.dtype))


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """`layer_norm` with learned "scale" and "bias" over the last axis, flax.linen.LayerNorm's
    parameters and defaults (epsilon 1e-6); the result in `dtype` (None: x's dtype)."""

    epsilon: float = 1e-6
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", self.scale_init, (d,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (d,), self.param_dtype)
        return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype or x.dtype)
