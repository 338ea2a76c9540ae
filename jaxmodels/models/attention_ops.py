"""softmax(QK^T * scale) V written out with einsums, and a blocked causal form that skips the
blocks above the diagonal; both equal to `jax.nn.dot_product_attention` (values and gradients,
tests/test_attention_ops.py) and chosen by `model.attention` (models/attention.py).

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); S key positions (a KV cache's buffer length); H query heads; G
key/value heads (G divides H); R query heads per key/value head (H/G); Dh head dim.

Why they exist: on CPU, attention alone (forward+backward, B=16, T=256, 6 heads of 64) ran
1.2-1.5x faster as these two einsums than through `jax.nn.dot_product_attention`'s generic XLA
path, and 1.4-1.7x faster blocked (the causal product does about twice the work it needs once T
spans several blocks); measured on a shared, heavily loaded 2-core machine, so ranges are wide.
In a whole GPT training step the gain shrinks to what attention's share allows
(benchmarks/transformer_levers.py). On accelerators `jax.nn.dot_product_attention` can dispatch
to fused kernels, which these never do.

Numerics follow `jax.nn.dot_product_attention`: logits accumulated and softmaxed in float32
whatever the input dtype, masked logits set to a large negative finite number (so a fully
masked row averages the values instead of producing NaN), probabilities cast back to the value
dtype for the second product.
"""

import jax
import jax.numpy as jnp


def _masked_softmax(logits_BxGxRxTxS: jax.Array, keep) -> jax.Array:
    if keep is not None:
        big_negative = jnp.asarray(-0.7 * jnp.finfo(jnp.float32).max, jnp.float32)
        logits_BxGxRxTxS = jnp.where(keep, logits_BxGxRxTxS, big_negative)
    return jax.nn.softmax(logits_BxGxRxTxS, axis=-1)


def _grouped_mask(mask, g: int):
    """A bool mask broadcastable to [B, H, T, S] as one broadcastable to [B, G, H/G, T, S]."""
    b, h, t, s = mask.shape
    if h == 1:
        return mask[:, :, None]
    return mask.reshape(b, g, h // g, t, s)


def einsum_attention(q_BxTxHxDh: jax.Array, k_BxSxGxDh: jax.Array, v_BxSxGxDh: jax.Array, *,
                     mask: jax.Array | None = None, causal: bool = False, scale: float | None = None,
                     query_offset: int = 0) -> jax.Array:
    """Attention as two einsums over [B, G, H/G, T, S] logits; returns out_BxTxHxDh.

    `mask` (bool, broadcastable to [B, H, T, S], True = may attend) and `causal` (query t sees
    key s iff s <= t + query_offset) combine as in `jax.nn.dot_product_attention`, whose
    `is_causal` is this with query_offset 0."""
    b, t, h, dh = q_BxTxHxDh.shape
    s, g = k_BxSxGxDh.shape[1], k_BxSxGxDh.shape[2]
    scale = dh ** -0.5 if scale is None else scale
    # Query head n uses key/value head n // (H/G), as jax.nn.dot_product_attention groups them;
    # the group axis R is size 1 for multi-head attention, which XLA drops.
    q_BxTxGxRxDh = q_BxTxHxDh.reshape(b, t, g, h // g, dh)
    logits_BxGxRxTxS = jnp.einsum("btgrd,bsgd->bgrts", q_BxTxGxRxDh, k_BxSxGxDh,
                                  preferred_element_type=jnp.float32) * jnp.float32(scale)
    keep = None
    if mask is not None:
        keep = _grouped_mask(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), g)
    if causal:
        causal_1x1x1xTxS = (jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + query_offset)[None, None, None]
        keep = causal_1x1x1xTxS if keep is None else keep & causal_1x1x1xTxS
    probs_BxGxRxTxS = _masked_softmax(logits_BxGxRxTxS, keep).astype(v_BxSxGxDh.dtype)
    out_BxTxGxRxDh = jnp.einsum("bgrts,bsgd->btgrd", probs_BxGxRxTxS, v_BxSxGxDh)
    return out_BxTxGxRxDh.reshape(b, t, h, dh)


def blocked_causal_attention(q_BxTxHxDh: jax.Array, k_BxSxGxDh: jax.Array, v_BxSxGxDh: jax.Array, *,
                             mask: jax.Array | None = None, scale: float | None = None,
                             block: int = 128) -> jax.Array:
    """Causal self-attention (T == S, queries at positions 0..T-1) by blocks of `block` queries.

    Query block i attends to keys 0 .. (i+1)*block - 1 only: the fully masked blocks right of the
    diagonal are never computed, about half the work at T >> block. Each block is an exact
    softmax over its own key prefix (no running maximum needed: the prefix holds every key the
    block may see). `mask` as in `einsum_attention`, on top of causality."""
    t, s = q_BxTxHxDh.shape[1], k_BxSxGxDh.shape[1]
    if t != s:
        raise ValueError(f"blocked causal attention needs as many queries as keys, got T={t}, S={s}")
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        block_mask = None
        if mask is not None:
            block_mask = mask[:, :, start:end] if mask.shape[2] > 1 else mask
            block_mask = block_mask[..., :end] if mask.shape[3] > 1 else block_mask
        outs.append(einsum_attention(q_BxTxHxDh[:, start:end], k_BxSxGxDh[:, :end], v_BxSxGxDh[:, :end],
                                     mask=block_mask, causal=True, scale=scale, query_offset=start))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
