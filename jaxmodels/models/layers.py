"""Small shared pieces: layers that carry logical axis names, and config checks.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; Hi image height; Wi
image width; C channels.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, name: str | None = None,
          kernel_init=nn.initializers.lecun_normal(), dtype=None,
          param_dtype=jnp.float32) -> nn.Dense:
    """A Dense layer whose kernel is named `axes` (in, out) and whose bias is named `axes[1]`,
    computed in `dtype` (None: the promoted dtype of input and parameters), its parameters stored
    in `param_dtype`."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


def conv(features: int, kernel_size: int, *, use_bias: bool = True, name: str | None = None,
         dtype=None, param_dtype=jnp.float32) -> nn.Conv:
    """A 'same'-padded 2-D convolution with logical names (kh, kw, conv_in, conv_out), computed in
    `dtype`, its parameters stored in `param_dtype`."""
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding="SAME",
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


def rows_dot(x: jax.Array, w: jax.Array, contract: int = 1, **dot_kwargs) -> jax.Array:
    """x [..., C1..Ck] contracted with w [C1..Ck, O...] -> [..., O...], as one 2-D matmul.

    The einsum "btd,df->btf" is the same product, but XLA's CPU backend computes its weight
    gradient (a contraction over both B and T) by first copying the [B, T, F] activation gradient
    into a transposed [F, B*T] buffer. On rows flattened to [B*T, D] the gradient is a plain
    transposed-operand matmul with no copy: a GPT MLP's forward+backward at B16 T256 D384 took
    111 ms instead of 144 (benchmarks/transformer_levers.py has the whole-step row). `dot_kwargs`
    go to jnp.dot (e.g. preferred_element_type).
    """
    lead, cin = x.shape[:x.ndim - contract], math.prod(x.shape[x.ndim - contract:])
    y = jnp.dot(x.reshape(-1, cin), w.reshape(cin, -1), **dot_kwargs)
    return y.reshape(*lead, *w.shape[contract:])


def positive(cfg, *names: str) -> list[tuple[str, str]]:
    """(field, message) for each named field of `cfg` that is not a positive number."""
    return [(n, f"must be positive, got {getattr(cfg, n)}") for n in names if getattr(cfg, n) <= 0]


def max_pool(x_BxHixWixC, window: int = 2):
    """Non-overlapping max-pool (stride == window, 'VALID': a trailing odd row/column is dropped).

    Written as an element-wise maximum of window**2 strided slices rather than `nn.max_pool`:
    the same values, but XLA's CPU gradient of `reduce_window` (select-and-scatter) is about 10x
    slower, and it dominated the classic CNN's step time.
    """
    _, h, w, _ = x_BxHixWixC.shape
    h_out, w_out = h // window, w // window
    out = None
    for i in range(window):
        for j in range(window):
            part = x_BxHixWixC[:, i:h_out * window:window, j:w_out * window:window, :]
            out = part if out is None else jnp.maximum(out, part)
    return out


def constrain(x, names: tuple[str | None, ...]):
    """Names the axes of an activation ("act_batch", "act_heads", "act_mlp", or None).

    The training loop traces steps under a rules table and an abstract mesh, which turn the
    names into a sharding constraint that keeps activations split the way the preset intends
    (by batch, and by heads or hidden units under tensor parallelism) instead of leaving the
    layout to propagation. Outside such a context (a plain `model.apply`) it returns `x`.
    """
    return nn.with_logical_constraint(x, names)
