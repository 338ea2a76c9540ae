"""Transformers: a decoder-only language model, a text classifier and a Vision Transformer.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); S key positions (a KV cache's buffer length); D model width (an
RNN's hidden state); H query heads; G key/value heads (G divides H); Dh head dim; F features other
than the model width (an MLP's hidden units, a flattened image, an RNN's per-step input); V
vocabulary; K classes; L layers; M longest sequence (max_len); Hi image height; Wi image width; C
channels; P patches; Q values per patch (patch x patch x C).

Every parameter carries logical axis names ("embed", "mlp", "heads", "kv", "head_dim", "vocab",
"max_len", "patch", "classes", and "layers" for the depth axis of scanned blocks); a rules table
in the parallel layer maps them to mesh axes, so this file never mentions a device mesh.

All three share one pre-norm block (x + Attn(Norm(x)), then x + MLP(Norm(x))) and one `Stack`
of them ending in a final norm. `scan_layers` compiles the block once and scans it over depth
(parameters stacked on a leading "layers" axis); unrolled and scanned are the same function of
the same parameters, laid out differently. Activations are computed in `dtype`, parameters
stored in `param_dtype`; logits are always returned in float32.

The language model decodes through an explicit KV cache (`init_cache`, `decode`): a pure value
passed in and returned, never a mutable collection hidden in the module.

One file per job, all re-exported here:
  transformer_config.py  the configs (TransformerCore and the three models' own fields)
  transformer_blocks.py  Mlp, Block, Stack and the small helpers the models share
  transformer_lm.py      TransformerLM (forward pass and KV-cache decode)
  kv_cache.py            KVCache and the empty cache
  transformer_heads.py   ClassHead, TransformerClassifier, ViT
  attention.py, positional.py  attention and position encodings
"""

# The transformer family lives in one file per job; this module keeps their names importable
# from one place (`from jaxmodels.models.transformer import TransformerLM`).
from jaxmodels.models.kv_cache import KVCache
from jaxmodels.models.transformer_blocks import Block, Mlp, Stack
from jaxmodels.models.transformer_config import (TransformerClassifierConfig, TransformerCore, TransformerLMConfig,
                                                 ViTConfig)
from jaxmodels.models.transformer_heads import ClassHead, TransformerClassifier, ViT
from jaxmodels.models.transformer_lm import TransformerLM

__all__ = ["Block", "ClassHead", "KVCache", "Mlp", "Stack", "TransformerClassifier",
           "TransformerClassifierConfig", "TransformerCore", "TransformerLM", "TransformerLMConfig",
           "ViT", "ViTConfig"]
