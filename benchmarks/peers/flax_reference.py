"""Raw Flax Linen + Optax: the models as a researcher writes them without a framework, and one
`jax.jit` train step with donated parameters and optimizer state.

Same functions as jaxmodels' models (same layers, widths, biases, tied embeddings, learned
positions, Adam/AdamW with clipping and the schedule of the experiment file), written with
Flax's stock layers: `nn.max_pool` in the CNN, `nn.RNN(nn.OptimizedLSTMCell)` for the LSTM,
`jax.nn.dot_product_attention` in the transformers. Shapes: B batch, T positions, D width,
H heads, Dh head dim, V vocabulary.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class CNN(nn.Module):
    filters: int
    classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.filters, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


class Block(nn.Module):
    """Pre-LayerNorm block; no biases on the projections, as in jaxmodels."""

    width: int
    heads: int
    ff: int
    causal: bool

    @nn.compact
    def __call__(self, x):
        dh = self.width // self.heads
        h = nn.LayerNorm()(x)
        q, k, v = (nn.DenseGeneral((self.heads, dh), use_bias=False, name=n)(h) for n in "qkv")
        a = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False, name="out")(a)
        h = nn.gelu(nn.Dense(self.ff, use_bias=False)(nn.LayerNorm()(x)))
        return x + nn.Dense(self.width, use_bias=False)(h)


class GPT(nn.Module):
    vocab: int
    seq_len: int
    layers: int
    width: int
    heads: int

    @nn.compact
    def __call__(self, tokens_BxT):
        embed = nn.Embed(self.vocab, self.width, embedding_init=nn.initializers.normal(0.02))
        pos = self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.width))
        x = embed(tokens_BxT) + pos[None, : tokens_BxT.shape[1]]
        for _ in range(self.layers):
            x = Block(self.width, self.heads, 4 * self.width, causal=True)(x)
        return embed.attend(nn.LayerNorm()(x))  # tied output layer


class LSTM(nn.Module):
    vocab: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, tokens_BxT):
        x = nn.Embed(self.vocab, self.embed)(tokens_BxT)
        x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
        return nn.Dense(self.vocab)(x)


class ViT(nn.Module):
    classes: int
    patch: int
    layers: int
    width: int
    heads: int
    ff: int

    @nn.compact
    def __call__(self, images):
        b, hi, wi, c = images.shape
        p = self.patch
        x = images.reshape(b, hi // p, p, wi // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = nn.Dense(self.width)(x.reshape(b, (hi // p) * (wi // p), p * p * c))
        x = x + self.param("pos", nn.initializers.normal(0.02), x.shape[1:])[None]
        for _ in range(self.layers):
            x = Block(self.width, self.heads, self.ff, causal=False)(x)
        return nn.Dense(self.classes)(nn.LayerNorm()(x).mean(axis=1))


def build(family: str, shape: dict, outputs: int) -> nn.Module:
    if family == "cnn":
        return CNN(shape["filters"], outputs)
    if family == "gpt":
        return GPT(outputs, shape["seq_len"], shape["layers"], shape["width"], shape["heads"])
    if family == "lstm":
        return LSTM(outputs, shape["embed"], shape["hidden"])
    if family == "vit":
        return ViT(outputs, shape["patch"], shape["layers"], shape["width"], shape["heads"], shape["ff"])
    raise ValueError(f"unknown family {family!r}")


def optimizer(spec: dict, steps: int) -> optax.GradientTransformation:
    """The experiment file's optimizer, from the OptimizerConfig fields in `spec`."""
    lr = spec["learning_rate"]
    if spec["schedule"] == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, spec["warmup_steps"],
                                                max(steps, spec["warmup_steps"] + 1),
                                                lr * spec["final_lr_fraction"])
    if spec["name"] == "adamw":
        tx = optax.adamw(lr, b1=spec["b1"], b2=spec["b2"], eps=spec["eps"],
                         weight_decay=spec["weight_decay"],
                         mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
    elif spec["name"] == "adam":
        tx = optax.adam(lr, b1=spec["b1"], b2=spec["b2"], eps=spec["eps"])
    else:
        raise ValueError(f"the Flax peer has no optimizer {spec['name']!r}")
    if spec["grad_clip_norm"] is not None:
        tx = optax.chain(optax.clip_by_global_norm(spec["grad_clip_norm"]), tx)
    return tx


def init(model: nn.Module, tx, example: np.ndarray, seed: int = 0):
    """(params, opt_state), made by one jitted call: eagerly, every initializer would be a
    compile of its own (tens of them, seconds on a small CPU)."""

    def make(key, x):
        params = model.init(key, x)["params"]
        return params, tx.init(params)

    return jax.jit(make)(jax.random.key(seed), jnp.asarray(example))


def count(params) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def train_step(model: nn.Module, tx):
    """jit(step)(params, opt_state, inputs, targets) -> (params, opt_state, loss), the first
    two donated."""

    def loss_fn(params, inputs, targets):
        logits = model.apply({"params": params}, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))
