"""The language model's explicit KV cache: a pure value passed into `TransformerLM.decode` and
returned, never a mutable collection hidden in the module.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; S key positions (a KV
cache's buffer length); G key/value heads (G divides H); Dh head dim; L layers.
"""

import flax
import jax
import jax.numpy as jnp

from jaxmodels.models.transformer_config import TransformerCore


@flax.struct.dataclass
class KVCache:
    """Keys and values of the positions decoded so far, and how many there are.

    k, v: per layer [B, S, G, Dh] in the compute dtype, S = the buffer length given to
    `init_cache`: a tuple of L arrays when unrolled, one array [L, B, S, G, Dh] when scan_layers.
    index: int32 scalar, the number of filled positions (the next position to write).
    """

    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array
    index: jax.Array


def empty(cfg: TransformerCore, batch_size: int, max_len: int) -> KVCache:
    """An empty cache with room for `max_len` positions, laid out as `cfg.scan_layers` needs."""
    shape = (batch_size, max_len, cfg.kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype)
    if cfg.scan_layers:
        k = jnp.zeros((cfg.num_layers, *shape), dtype)
        v = jnp.zeros((cfg.num_layers, *shape), dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(k=k, v=v, index=jnp.zeros((), jnp.int32))
