"""Sampling: logit filters against NumPy, cached generation == full recomputation, one compile."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import generate as gen
from jaxmodels import models


def test_top_k_and_top_p_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 11)).astype(np.float32)
    for k, p in [(0, 1.0), (3, 1.0), (0, 0.5), (4, 0.3), (1, 1.0), (0, 1e-6)]:
        out = np.asarray(gen.filter_logits(jnp.asarray(logits), jnp.int32(k), jnp.float32(p)))
        for row, got in zip(logits, out):
            order = np.argsort(-row)
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            keep = np.zeros(len(row), bool)
            mass = 0.0
            for rank, idx in enumerate(order):
                if (k == 0 or rank < k) and (rank == 0 or mass < p):
                    keep[idx] = True
                mass += probs[idx]
            np.testing.assert_array_equal(np.isfinite(got), keep, err_msg=f"k={k} p={p}")
            np.testing.assert_array_equal(got[keep], row[keep])


def test_temperature_zero_is_argmax_and_sampling_follows_the_seed():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(64, 7)), jnp.float32)
    greedy = gen.sample_token(logits, jax.random.key(0), jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    np.testing.assert_array_equal(greedy, jnp.argmax(logits, -1))
    a = gen.sample_token(logits, jax.random.key(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
    b = gen.sample_token(logits, jax.random.key(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
    c = gen.sample_token(logits, jax.random.key(1), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    top1 = gen.sample_token(logits, jax.random.key(2), jnp.float32(5.0), jnp.int32(1), jnp.float32(1.0))
    np.testing.assert_array_equal(top1, jnp.argmax(logits, -1))


LMS = {
    "transformer": models.TransformerLMConfig(vocab_size=13, num_layers=2, num_heads=2, d_model=16, max_len=32),
    "transformer_rope_scan": models.TransformerLMConfig(vocab_size=13, num_layers=2, num_heads=2, d_model=16,
                                                        max_len=32, positional="rope", scan_layers=True),
    "lstm": models.RNNLMConfig(vocab_size=13, cell="lstm", hidden=16, embed_dim=8),
    "gru": models.RNNLMConfig(vocab_size=13, cell="gru", hidden=16, embed_dim=8, num_layers=2),
}


@pytest.mark.parametrize("name", list(LMS))
def test_cached_greedy_generation_equals_full_recomputation(name):
    model = models.build(LMS[name])
    variables = nn.meta.unbox(model.init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32)))
    # Scale up the parameters a little so greedy paths are not dominated by ties.
    variables = jax.tree.map(lambda x: x * 3.0, variables)
    context = 32 if name.startswith("transformer") else None
    generate = gen.make_generate(model, buffer_len=32, context=context)
    forward = jax.jit(model.apply)
    prompts = [[1, 5, 2], [7, 7, 7, 3, 9, 0, 4]]
    for prompt in prompts:
        buf = jnp.zeros((1, 32), jnp.int32).at[0, :len(prompt)].set(jnp.asarray(prompt))
        out = generate(variables, buf, jnp.int32(len(prompt)), jnp.int32(12), jax.random.key(0),
                       jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
        # Reference: re-run the whole sequence through the plain forward pass for every token.
        # The models are causal, so padding the sequence to a fixed 32 changes no logit at or
        # before its end, and one compiled forward serves every length.
        seq = list(prompt)
        for _ in range(12):
            padded = jnp.zeros((1, 32), jnp.int32).at[0, :len(seq)].set(jnp.asarray(seq))
            logits = forward(variables, padded)
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        assert list(np.asarray(out[0, :len(seq)])) == seq
        assert not np.asarray(out[0, len(seq):]).any()
    # Two prompt lengths, one compiled program.
    assert generate._cache_size() == 1



def test_transformer_slides_its_context_past_max_len():
    """Past max_len the cache is rebuilt from the last max_len // 2 tokens; every token must be
    the greedy choice given exactly the context that policy leaves the model."""
    cfg = models.TransformerLMConfig(vocab_size=11, num_layers=1, num_heads=2, d_model=16,
                                     max_len=8, positional="rope")
    model = models.build(cfg)
    variables = jax.tree.map(lambda x: x * 3.0, nn.meta.unbox(model.init(jax.random.key(5), jnp.zeros((1, 8), jnp.int32))))
    generate = gen.make_generate(model, buffer_len=64, context=8)
    prompt = [3, 1, 4]
    buf = jnp.zeros((1, 64), jnp.int32).at[0, :3].set(jnp.asarray(prompt))
    out = list(np.asarray(generate(variables, buf, jnp.int32(3), jnp.int32(30), jax.random.key(0),
                                   jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))[0, :33]))
    forward = jax.jit(model.apply)
    seq, start = list(prompt), 0
    for i in range(32):
        if i - start >= 8:  # the cache holds positions start..i-1: full
            start = i - 4 + 1
        if i + 1 < len(seq):
            continue  # still inside the prompt
        window = seq[start:i + 1]
        padded = jnp.zeros((1, 8), jnp.int32).at[0, :len(window)].set(jnp.asarray(window))
        seq.append(int(jnp.argmax(forward(variables, padded)[0, len(window) - 1])))
    assert out == seq
