"""softmax(QK^T * scale) V written out with einsums, and a blocked causal form that skips the
blocks above the diagonal; both equal to `jax.nn.dot_product_attention` (values and gradients,
tests/test_attention_ops.py) and chosen by `model.attention` (models/attention.py).

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); S key positions (a KV cache's buffer length); H query heads; G
key/value heads (G divides H); R query heads per key/value head (H/G); Dh head dim.

Why they exist: on CPU, attention alone (forward+backward, B=16, T=256, 6 heads of 64, causal)
took 46 ms as these head-major einsums, 40 ms blocked (the causal product does about twice the
work it needs once T spans several blocks) and 35-38 ms blocked with the hand-written backward,
against 87 ms through `jax.nn.dot_product_attention`'s generic XLA path (2-core Intel Xeon,
2026-12-04). In a whole GPT training step the gain shrinks to what attention's share allows:
1.14-1.31x (benchmarks/transformer_levers.py). On accelerators `jax.nn.dot_product_attention`
can dispatch to fused kernels, which these never do; `model.attention="auto"` picks by backend.

Numerics follow `jax.nn.dot_product_attention`: logits accumulated and softmaxed in float32
whatever the input dtype, masked logits set to a large negative finite number (so a fully
masked row averages the values instead of producing NaN), probabilities cast back to the value
dtype for the second product. One difference: the scale multiplies Q (in Q's dtype) before the
product, not the float32 logits after it, which is exact for 1/sqrt(Dh) with Dh a power of 4 and
otherwise differs by rounding.

`manual_vjp=True` runs the same forward under a hand-written backward (`_attention_bwd`), the
FlashAttention-style derivation: the probabilities P are saved rather than recomputed; the
softmax backward's per-row term sum_s P*dP becomes sum_d dO*O, a reduction over Dh instead of
over all S keys; and the mask enters as an add, since a masked probability is exactly 0 in any
row that has a key, so only rows with no key at all need their gradient zeroed (one select on a
[.., T, 1] flag). Values and gradients equal `jax.nn.dot_product_attention`'s
(tests/test_attention_ops.py).
"""

import functools

import jax
import jax.numpy as jnp


_BIG_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)  # jax.nn.dot_product_attention's


def _grouped_mask(mask, g: int):
    """A bool mask broadcastable to [B, H, T, S] as one broadcastable to [B, G, H/G, T, S]."""
    b, h, t, s = mask.shape
    if h == 1:
        return mask[:, :, None]
    return mask.reshape(b, g, h // g, t, s)


def _head_major(q_BxTxHxDh, k_BxSxGxDh, v_BxSxGxDh, scale: float | None):
    """Q as [B, G, R*T, Dh] (the query already times `scale`, default 1/sqrt(Dh)), K and V as
    [B, G, S, Dh].

    Why head-major: XLA's CPU batched dot wants its batch axes leading. With the heads in the
    middle ([B, T, H, Dh]) it copies per head inside the dot; on the 6x384 GPT's attention that
    made the forward about 2.5x slower than transposing once here. Why R folded into the query
    axis: the R query heads of a group share its K and V, so they are just more queries of one
    [R*T, S] product, and 4-D dots ran fwd+bwd 1.3x faster than the same with a size-1 R axis.
    Why scale Q, not the logits: a multiply fused between the logits dot and the mask kept XLA
    from fusing the softmax well (12 ms instead of 3 on [16, 6, 256, 256]), and Q is S/Dh times
    smaller than the logits."""
    b, t, h, dh = q_BxTxHxDh.shape
    g = k_BxSxGxDh.shape[2]
    scale = dh ** -0.5 if scale is None else scale
    # Query head n uses key/value head n // (H/G), as jax.nn.dot_product_attention groups them.
    q_BxTxGxRxDh = (q_BxTxHxDh * jnp.asarray(scale, q_BxTxHxDh.dtype)).reshape(b, t, g, h // g, dh)
    q_BxGxRTxDh = q_BxTxGxRxDh.transpose(0, 2, 3, 1, 4).reshape(b, g, (h // g) * t, dh)
    return q_BxGxRTxDh, k_BxSxGxDh.transpose(0, 2, 1, 3), v_BxSxGxDh.transpose(0, 2, 1, 3)


def _token_major(out_BxGxRTxDh, t: int):
    b, g, rt, dh = out_BxGxRTxDh.shape
    return out_BxGxRTxDh.reshape(b, g, rt // t, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, g * rt // t, dh)


def _keep(mask, causal: bool, t: int, s: int, g: int, r: int, query_offset: int):
    """Which logits count, as bool broadcastable to [B, G, R*T, S]; None for all of them."""
    keep = None
    if mask is not None:
        keep = _grouped_mask(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), g)
    if causal:
        causal_1x1x1xTxS = (jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + query_offset)[None, None, None]
        keep = causal_1x1x1xTxS if keep is None else keep & causal_1x1x1xTxS
    if keep is None:
        return None
    kb, kg, kr, kt, ks = keep.shape
    if r == 1:
        return keep.reshape(kb, kg, kt, ks)
    if kr == 1 and kt == 1:  # the same for every query: no need to spell out R*T rows
        return keep.reshape(kb, kg, 1, ks)
    return jnp.broadcast_to(keep, (kb, kg, r, t, ks)).reshape(kb, kg, r * t, ks)


def _core(q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, keep, *, padded: bool, manual_vjp: bool):
    if manual_vjp:
        return _attention_with_vjp(q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, keep, padded)
    # The same forward, differentiated by JAX. With a padding mask a row may have no key at all;
    # the select form's transpose sends such a row no gradient (the add form's would), so it
    # masks by select then; causal alone always keeps the diagonal and gets the faster add.
    return _attention_fwd(q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, keep, padded, additive=not padded)[0]


def einsum_attention(q_BxTxHxDh: jax.Array, k_BxSxGxDh: jax.Array, v_BxSxGxDh: jax.Array, *,
                     mask: jax.Array | None = None, causal: bool = False, scale: float | None = None,
                     query_offset: int = 0, manual_vjp: bool = False) -> jax.Array:
    """Attention as two head-major einsums over [B, G, R*T, S] logits; returns out_BxTxHxDh.

    `mask` (bool, broadcastable to [B, H, T, S], True = may attend) and `causal` (query t sees
    keys s <= t + query_offset) combine; `scale` defaults to 1/sqrt(Dh). K/V may have fewer heads
    than Q (grouped-query attention): H must be a multiple of G."""
    t = q_BxTxHxDh.shape[1]
    s, g = k_BxSxGxDh.shape[1], k_BxSxGxDh.shape[2]
    keep = _keep(mask, causal, t, s, g, q_BxTxHxDh.shape[2] // g, query_offset)
    out_BxGxRTxDh = _core(*_head_major(q_BxTxHxDh, k_BxSxGxDh, v_BxSxGxDh, scale), keep,
                          padded=mask is not None, manual_vjp=manual_vjp)
    return _token_major(out_BxGxRTxDh, t)


def blocked_causal_attention(q_BxTxHxDh: jax.Array, k_BxSxGxDh: jax.Array, v_BxSxGxDh: jax.Array, *,
                             mask: jax.Array | None = None, scale: float | None = None,
                             block: int = 128, manual_vjp: bool = False) -> jax.Array:
    """Causal self-attention (T == S, queries at positions 0..T-1) by blocks of `block` queries.

    Query block i attends to keys 0 .. (i+1)*block - 1 only: the fully masked blocks right of the
    diagonal are never computed, about half the work at T >> block. Each block is an exact
    softmax over its own key prefix (no running maximum needed: the prefix holds every key the
    block may see). `mask` as in `einsum_attention`, on top of causality."""
    t, dh = q_BxTxHxDh.shape[1], q_BxTxHxDh.shape[3]
    s, g = k_BxSxGxDh.shape[1], k_BxSxGxDh.shape[2]
    if t != s:
        raise ValueError(f"blocked causal attention needs as many queries as keys, got T={t}, S={s}")
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    # One transpose for all blocks; a block takes its queries from each of the R heads' rows.
    r = q_BxTxHxDh.shape[2] // g
    q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh = _head_major(q_BxTxHxDh, k_BxSxGxDh, v_BxSxGxDh, scale)
    q_BxGxRxTxDh = q_BxGxRTxDh.reshape(q_BxTxHxDh.shape[0], g, r, t, dh)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        block_mask = None
        if mask is not None:
            block_mask = mask[:, :, start:end] if mask.shape[2] > 1 else mask
            block_mask = block_mask[..., :end] if mask.shape[3] > 1 else block_mask
        keep = _keep(block_mask, True, end - start, end, g, r, start)
        q_block = q_BxGxRxTxDh[:, :, :, start:end].reshape(q_BxGxRxTxDh.shape[0], g, r * (end - start), dh)
        out = _core(q_block, k_BxGxSxDh[:, :, :end], v_BxGxSxDh[:, :, :end], keep,
                    padded=mask is not None, manual_vjp=manual_vjp)
        outs.append(out.reshape(out.shape[0], g, r, end - start, dh))
    out_BxGxRxTxDh = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return _token_major(out_BxGxRxTxDh.reshape(out_BxGxRxTxDh.shape[0], g, r * t, dh), t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention_with_vjp(q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, keep, padded):
    return _attention_fwd(q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, keep, padded)[0]


def _attention_fwd(q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, keep, padded, additive=True):
    logits_BxGxRTxS = jnp.einsum("bgtd,bgsd->bgts", q_BxGxRTxDh, k_BxGxSxDh,
                                  preferred_element_type=jnp.float32)
    if keep is not None:
        # Adding the big negative to a masked logit gives exactly the big negative in float32
        # (a logit is far below its half ulp), so both forms give the same numbers; the add
        # fused better than the select on CPU (2.3 vs 3.2 ms on [16, 6, 256, 256]). Its
        # autodiff would pass gradient into a row with no key, so `_core` differentiates the
        # select whenever a padding mask may leave such rows.
        if additive:
            logits_BxGxRTxS = logits_BxGxRTxS + jnp.where(keep, 0.0, _BIG_NEGATIVE)
        else:
            logits_BxGxRTxS = jnp.where(keep, logits_BxGxRTxS, _BIG_NEGATIVE)
    probs_BxGxRTxS = jax.nn.softmax(logits_BxGxRTxS, axis=-1).astype(v_BxGxSxDh.dtype)
    out_BxGxRTxDh = jnp.einsum("bgts,bgsd->bgtd", probs_BxGxRTxS, v_BxGxSxDh)
    # The mask's reduction to "has this row any key" is all the backward needs of it.
    has_key = None if keep is None or not padded else jnp.any(keep, axis=-1, keepdims=True)
    return out_BxGxRTxDh, (q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, has_key, probs_BxGxRTxS, out_BxGxRTxDh)


def _attention_bwd(padded, residuals, dout_BxGxRTxDh):
    del padded  # already folded into has_key
    q_BxGxRTxDh, k_BxGxSxDh, v_BxGxSxDh, has_key, probs_BxGxRTxS, out_BxGxRTxDh = residuals
    dv_BxGxSxDh = jnp.einsum("bgts,bgtd->bgsd", probs_BxGxRTxS, dout_BxGxRTxDh)
    dprobs_BxGxRTxS = jnp.einsum("bgtd,bgsd->bgts", dout_BxGxRTxDh, v_BxGxSxDh,
                                  preferred_element_type=jnp.float32)
    # The softmax backward needs sum_s P_ts dP_ts per row; since dP = dO V^T and O = P V it is
    # also sum_d dO_td O_td, a reduction over Dh instead of over all S keys.
    row_BxGxRTx1 = jnp.sum(dout_BxGxRTxDh.astype(jnp.float32) * out_BxGxRTxDh.astype(jnp.float32),
                            axis=-1, keepdims=True)
    # A masked logit's probability is exactly 0 in any row with a key, so its gradient is 0
    # here with no select; a row with no key at all averages the values whatever the logits,
    # so none of its gradient may reach Q or K (what the select of the autodiff form gives).
    dlogits_BxGxRTxS = probs_BxGxRTxS.astype(jnp.float32) * (dprobs_BxGxRTxS - row_BxGxRTx1)
    if has_key is not None:
        dlogits_BxGxRTxS = jnp.where(has_key, dlogits_BxGxRTxS, 0.0)
    dlogits_BxGxRTxS = dlogits_BxGxRTxS.astype(q_BxGxRTxDh.dtype)
    dq_BxGxRTxDh = jnp.einsum("bgts,bgsd->bgtd", dlogits_BxGxRTxS, k_BxGxSxDh)
    dk_BxGxSxDh = jnp.einsum("bgts,bgtd->bgsd", dlogits_BxGxRTxS, q_BxGxRTxDh)
    return dq_BxGxRTxDh, dk_BxGxSxDh, dv_BxGxSxDh, None


_attention_with_vjp.defvjp(_attention_fwd, _attention_bwd)
