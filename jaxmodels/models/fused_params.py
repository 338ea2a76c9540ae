"""Converts transformer parameters from the separate projection layout to the fused one
(`model.fused_projections=true`, models/attention.py and transformer_blocks.py): the same function,
so a model trained with separate projections keeps its outputs after `fuse_params`.

Shape names (the package glossary in jaxmodels/models/__init__.py): D model width (an RNN's hidden
state); H query heads; G key/value heads (G divides H); R query heads per key/value head (H/G); Dh
head dim; F features other than the model width (an MLP's hidden units, a flattened image, an RNN's
per-step input); L layers.

Leading axes (the stacked "layers" axis of `scan_layers`) pass through: every rule below reads
shapes from the end.
"""

from typing import Any

import jax.numpy as jnp


def _fuse_attention(p: dict) -> dict:
    q_LxDxHxDh, k_LxDxGxDh, v_LxDxGxDh = p.pop("query"), p.pop("key"), p.pop("value")
    *lead, d, h, dh = q_LxDxHxDh.shape
    g = k_LxDxGxDh.shape[-2]
    q_LxDxGxRxDh = q_LxDxHxDh.reshape(*lead, d, g, h // g, dh)
    p["qkv"] = jnp.concatenate([q_LxDxGxRxDh, k_LxDxGxDh[..., None, :], v_LxDxGxDh[..., None, :]], axis=-2)
    return p


def _fuse_gate_up(p: dict) -> dict:
    p["gate_up"] = jnp.stack([p.pop("gate"), p.pop("up")], axis=-2)  # [..., D, 2, F]: gate, then up
    return p


def fuse_params(params: Any) -> Any:
    """`params` (a nested dict, as `model.init(...)["params"]` with the boxes removed) with every
    attention's "query", "key", "value" replaced by "qkv", and every SwiGLU MLP's "gate" and "up"
    by "gate_up". Everything else is returned as it is."""
    if not isinstance(params, dict):
        return params
    out = {name: fuse_params(sub) for name, sub in params.items()}
    if {"query", "key", "value"} <= set(out):
        out = _fuse_attention(out)
    if {"gate", "up", "down"} <= set(out):
        out = _fuse_gate_up(out)
    return out
