"""Position encodings: sinusoidal and learned (added to the input), rotary (applied to q and k).

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); D model width (an RNN's hidden state); H query heads; G
key/value heads (G divides H); N heads of either kind (H or G); Dh head dim; M longest sequence
(max_len).

Positions are always explicit
int arrays rather than implied by an array's length, so a decoder that resumes at an offset
(the KV cache) encodes position `index + t`, not `t`.
"""

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # the config lives with the models; importing it here would be circular
    from jaxmodels.models.transformer_config import TransformerCore

ROPE_BASE = 10000.0


def _angles(positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """positions[..., None] * inv_freq, written with explicit ranks (strict rank promotion)."""
    p = positions.astype(jnp.float32)
    return p[..., None] * inv_freq.reshape((1,) * p.ndim + inv_freq.shape)


def sinusoidal(positions: jax.Array, d: int) -> jax.Array:
    """The original Transformer encoding (Vaswani et al., 2017), float32 [..., d] for int [...].

    PE[p, 2i] = sin(p / 10000^(2i/d)) and PE[p, 2i+1] = cos(p / 10000^(2i/d)): sine on even
    dimensions, cosine on odd ones, interleaved. An odd `d` drops the last cosine.
    """
    half = (d + 1) // 2
    inv_freq = 10000.0 ** (-2.0 * jnp.arange(half, dtype=jnp.float32) / d)
    angles = _angles(positions, inv_freq)
    pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return pe.reshape(*angles.shape[:-1], 2 * half)[..., :d]


def rope(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, base: float = ROPE_BASE) -> jax.Array:
    """Rotary position embedding (Su et al., 2021), rotate-half convention (GPT-NeoX, LLaMA).

    Dimension j < Dh/2 is paired with j + Dh/2 and the pair is rotated by the angle
    position * base^(-2j/Dh). Rotations compose, so q(p)·k(p') depends on p - p' only. Computed in
    float32 (angles of long positions need the precision) and returned in x's dtype.
    `positions_BxT` may have a leading 1 to share positions across the batch.
    """
    dh = x_BxTxNxDh.shape[-1]
    if dh % 2:
        raise ValueError(f"rotary embedding needs an even head dimension, got {dh}")
    inv_freq = base ** (-2.0 * jnp.arange(dh // 2, dtype=jnp.float32) / dh)
    angles_BxTx1xDh = jnp.concatenate([_angles(positions_BxT, inv_freq)] * 2, axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BxTx1xDh), jnp.sin(angles_BxTx1xDh)
    x = x_BxTxNxDh.astype(jnp.float32)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    rotated_half = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated_half * sin).astype(x_BxTxNxDh.dtype)


class AbsolutePositions(nn.Module):
    """Adds the absolute encoding to the input stream: a learned [M, D] table or the sinusoids.

    The identity for "rope", whose positions enter inside attention instead.
    """

    config: "TransformerCore"

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.positional == "rope":
            return x_BxTxD
        if cfg.positional == "sinusoidal":
            pe_BxTxD = sinusoidal(positions_BxT, cfg.d_model)
        else:
            table_MxD = self.param(
                "embedding",
                nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("max_len", "embed")),
                (cfg.max_len, cfg.d_model),
                jnp.dtype(cfg.param_dtype),
            )
            # "fill" makes a position past max_len NaN instead of silently reusing the last row.
            pe_BxTxD = jnp.take(table_MxD, positions_BxT, axis=0, mode="fill")
        return x_BxTxD + pe_BxTxD.astype(x_BxTxD.dtype)
