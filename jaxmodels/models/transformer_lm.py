"""The decoder-only (GPT-style) language model, with decoding through an explicit KV cache
(`init_cache`, `decode`; the cache itself is in kv_cache.py).

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); S key positions (a KV cache's buffer length); D model width (an
RNN's hidden state); V vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models import attention, kv_cache, layers, positional
from jaxmodels.models.transformer_blocks import (Stack, check_length, check_vocab, param, positions_row,
                                                 readout_init, token_embedding)
from jaxmodels.models.transformer_config import TransformerLMConfig


class TransformerLM(nn.Module):
    """Next-token language model: tokens_BxT (int32) -> logits_BxTxV (float32), causal.

    Decoding: `cache = model.apply(variables, B, S, method="init_cache")`, then repeatedly
    `logits, cache = model.apply(variables, tokens_BxT, cache, method="decode")` with the prompt
    (prefill) and then one token at a time. Each call sees exactly what a full forward pass over
    the whole prefix would; the cache's `index` is traced, so one jitted decode serves every step.
    """

    config: TransformerLMConfig

    def setup(self):
        cfg = self.config
        check_vocab(cfg)
        self.embed = token_embedding(cfg, "embed")
        self.positions = positional.AbsolutePositions(cfg)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.stack = Stack(cfg)
        if not cfg.tie_embeddings:
            self.head = param(self, "head", readout_init(cfg), ("embed", "vocab"),
                              (cfg.d_model, cfg.vocab_size))

    def __call__(self, tokens_BxT: jax.Array, *, train: bool = False) -> jax.Array:
        return self.from_embeddings(self.embed(tokens_BxT), train=train)

    def from_embeddings(self, x_BxTxD: jax.Array, *, train: bool = False) -> jax.Array:
        """The model after the token lookup, at positions 0..T-1: the continuous input that
        gradient checks (causality) differentiate with respect to."""
        check_length(self.config, x_BxTxD.shape[1])
        logits, _ = self._forward(x_BxTxD, positions_row(x_BxTxD.shape[1]), causal=True, train=train)
        return logits

    def init_cache(self, batch_size: int, max_len: int) -> kv_cache.KVCache:
        """An empty cache with room for `max_len` positions."""
        cfg = self.config
        check_length(cfg, max_len)
        return kv_cache.empty(cfg, batch_size, max_len)

    def decode(self, tokens_BxT: jax.Array, cache: kv_cache.KVCache) -> tuple[jax.Array, kv_cache.KVCache]:
        """Logits of T new tokens at positions index..index+T-1, and the cache with them added.

        T is the prompt length for prefill or 1 per step. The cache must have room for them:
        past the buffer, XLA clamps the write position and the result is wrong, not an error
        (a traced index cannot be checked here).
        """
        t = tokens_BxT.shape[1]
        query_positions_T = cache.index + jnp.arange(t, dtype=jnp.int32)
        buffer_len = jax.tree.leaves(cache.k)[0].shape[-3]
        mask = attention.causal_mask_over_buffer(query_positions_T, buffer_len)
        logits, (k, v) = self._forward(
            self.embed(tokens_BxT), query_positions_T[None, :], mask=mask, kv=(cache.k, cache.v),
            index=cache.index, train=False)
        return logits, kv_cache.KVCache(k=k, v=v, index=cache.index + t)

    def _forward(self, x_BxTxD, positions_BxT, *, mask=None, causal=False, kv=None, index=None,
                 train=False):
        x_BxTxD = self.positions(x_BxTxD, positions_BxT)
        x_BxTxD = self.embed_dropout(x_BxTxD, deterministic=not train)
        x_BxTxD, kv = self.stack(x_BxTxD, positions_BxT, mask=mask, causal=causal, kv=kv,
                                 index=index, train=train)
        # Accumulated and returned in float32: nn.Embed.attend would round the logits to the
        # compute dtype, and bfloat16 logits of a large vocabulary are too coarse for the loss.
        w_DxV = self.embed.embedding.T if self.config.tie_embeddings else self.head
        if self.config.readout_scale is not None:
            # muP's readout multiplier. Tied, the embedding keeps its width-independent init and
            # plain learning rate as an input weight; as the readout it is seen through 1/m.
            x_BxTxD = x_BxTxD * self.config.readout_scale
        logits_BxTxV = layers.rows_dot(x_BxTxD, w_DxV.astype(x_BxTxD.dtype),
                                       preferred_element_type=jnp.float32)
        return logits_BxTxV, kv
