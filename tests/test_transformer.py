"""Transformers: shapes and logical names, causality, padding, positional encodings against NumPy,
scan/remat/bf16 equivalences, and KV-cache decoding against full recomputation.

Compiling is the cost on CPU (seconds per program, more for random initialisers), so models are
tiny, jitted functions are shared through `functools.cache` and compiled at XLA's backend
optimisation level 0 (half the compile time; every property tested holds at any level), and most
tests use `random_params`: NumPy draws in the exact structure `model.init` produces (obtained by
`jax.eval_shape`, which traces init without compiling it). Equivalences hold for any parameters,
and non-trivial norm scales and biases make them stricter than an init would. One test runs the
real initialisers.
"""

import collections
import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models import attention, positional
from jaxmodels.models import transformer as tf

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

B, T, VOCAB = 2, 8, 13
PROMPT, BUFFER = 3, 10  # decoding: prompt length, cache length (> T: some slots stay unfilled)

TINY = dict(num_layers=2, num_heads=4, d_model=16, max_len=16)


def lm_config(**overrides) -> tf.TransformerLMConfig:
    return tf.TransformerLMConfig(**{**TINY, "vocab_size": VOCAB, **overrides})


# rope with GQA, swiglu, rmsnorm and an untied head; the absolute encodings with the defaults.
LM_VARIANTS = {
    "rope": dict(positional="rope", num_kv_heads=2, mlp="swiglu", norm="rmsnorm", tie_embeddings=False),
    "learned": dict(positional="learned"),
    "sinusoidal": dict(positional="sinusoidal", num_kv_heads=1),
}


def random_params(model: nn.Module, *example, seed: int = 0):
    """Parameters shaped exactly as `model.init` makes them, drawn with NumPy."""
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *example))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if name == "scale":
            value = 1.0 + 0.2 * rng.standard_normal(s.shape)
        elif name in ("bias", "patch_bias", "cls"):
            value = 0.2 * rng.standard_normal(s.shape)
        else:
            value = 0.3 * rng.standard_normal(s.shape)
        return jnp.asarray(value, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def restack(unrolled, num_layers: int):
    """Unrolled block_0..block_{L-1} parameters in the scanned layout: one "blocks" entry whose
    leaves carry a leading layer axis."""
    stack = dict(unrolled["stack"])
    blocks = [stack.pop(f"block_{i}") for i in range(num_layers)]
    stack["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return {**unrolled, "stack": stack}


def tokens(seed: int, shape=(B, T)) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


@dataclasses.dataclass
class LMFunctions:
    model: tf.TransformerLM
    params: dict
    forward: Callable
    decode: Callable
    traces: collections.Counter


@functools.cache
def lm_functions(cfg: tf.TransformerLMConfig) -> LMFunctions:
    """The jitted forward and decode of `cfg`, with a trace counter keyed by name and length.

    Parameters are drawn once for the unrolled layout and restacked when scan_layers, so the
    scanned and unrolled models of one variant are the same function.
    """
    model = tf.TransformerLM(cfg)
    unrolled = tf.TransformerLM(dataclasses.replace(cfg, scan_layers=False, remat=False))
    params = random_params(unrolled, tokens(0))
    if cfg.scan_layers:
        params = restack(params, cfg.num_layers)
    traces = collections.Counter()

    def forward(params, tokens_BxT):
        traces["forward", tokens_BxT.shape[1]] += 1
        return model.apply({"params": params}, tokens_BxT)

    def decode(params, tokens_BxT, cache):
        traces["decode", tokens_BxT.shape[1]] += 1
        return model.apply({"params": params}, tokens_BxT, cache, method="decode")

    return LMFunctions(model, params, jit(forward), jit(decode), traces)


def boxed_leaves(model, *example):
    boxed = jax.eval_shape(model.init, jax.random.key(0), *example)["params"]
    return jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, logical names.

LOGICAL_NAMES = {"embed", "mlp", "heads", "kv", "head_dim", "vocab", "max_len", "patch", "classes", "layers"}
IMAGES = jnp.zeros((B, 8, 8, 3), jnp.float32)

SHAPE_CASES = {
    **{f"lm_{k}": (lm_config(**v), tokens(0), (B, T, VOCAB)) for k, v in LM_VARIANTS.items()},
    "lm_scan_remat": (lm_config(scan_layers=True, remat=True, num_kv_heads=2), tokens(0), (B, T, VOCAB)),
    "classifier": (tf.TransformerClassifierConfig(**TINY, vocab_size=VOCAB, num_classes=3), tokens(0),
                   (B, 3)),
    "classifier_rope_scan": (tf.TransformerClassifierConfig(**TINY, vocab_size=VOCAB, positional="rope",
                                                            scan_layers=True), tokens(0), (B, 2)),
    "vit_mean": (tf.ViTConfig(**TINY, num_classes=5), IMAGES, (B, 5)),
    "vit_cls_scan": (tf.ViTConfig(**TINY, pool="cls", scan_layers=True, num_kv_heads=1), IMAGES, (B, 10)),
}
MODULES = {tf.TransformerLMConfig: tf.TransformerLM, tf.TransformerClassifierConfig: tf.TransformerClassifier,
           tf.ViTConfig: tf.ViT}


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_output_shape_dtype_and_logical_names(case):
    cfg, example, expected = SHAPE_CASES[case]
    model = MODULES[type(cfg)](cfg)
    variables = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), example))
    assert set(variables) == {"params"}
    logits = jax.eval_shape(model.apply, variables, example)
    assert logits.shape == expected and logits.dtype == jnp.float32

    leaves = boxed_leaves(model, example)
    assert leaves and all(isinstance(box, nn.LogicallyPartitioned) for _, box in leaves)
    for path, box in leaves:
        assert len(box.names) == box.value.ndim, path
        assert set(box.names) <= LOGICAL_NAMES, (path, box.names)
        assert box.value.dtype == jnp.float32
        scanned = any(getattr(k, "key", None) == "blocks" for k in path)
        assert (box.names[0] == "layers") == scanned, (path, box.names)
        if scanned:
            assert box.value.shape[0] == cfg.num_layers


def test_grouped_query_attention_has_fewer_kv_heads():
    model = tf.TransformerLM(lm_config(num_kv_heads=1))
    shapes = jax.eval_shape(model.init, jax.random.key(0), tokens(0))["params"]["stack"]["block_0"]["attn"]
    shapes = nn.meta.unbox(shapes)
    assert shapes["query"].shape == (16, 4, 4)
    assert shapes["key"].shape == shapes["value"].shape == (16, 1, 4)


def test_real_init_is_finite_and_predicts_near_uniform():
    """The actual initialisers (jitted: the same program init_state compiles): small embeddings
    make the initial next-token distribution close to uniform, i.e. the loss close to log V."""
    model = tf.TransformerLM(lm_config(num_layers=1, scan_layers=True))
    variables = nn.meta.unbox(jit(model.init)(jax.random.key(0), tokens(0)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(variables))
    log_probs = jax.nn.log_softmax(model.apply(variables, tokens(1)))
    assert abs(float(-jnp.mean(log_probs)) - np.log(VOCAB)) < 0.05


def test_param_dtype_and_cache_dtype_follow_the_config():
    cfg = lm_config(dtype="bfloat16", param_dtype="bfloat16")
    model = tf.TransformerLM(cfg)
    variables = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens(0)))
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.bfloat16)}
    assert jax.eval_shape(model.apply, variables, tokens(0)).dtype == jnp.float32
    cache = jax.eval_shape(lambda: model.apply(variables, B, BUFFER, method="init_cache"))
    assert {x.dtype for x in jax.tree.leaves((cache.k, cache.v))} == {jnp.dtype(jnp.bfloat16)}
    assert cache.index.dtype == jnp.int32 and cache.index.shape == ()


def test_user_errors_are_clear():
    with pytest.raises(ValueError, match="patch_size=3 must divide the image size 8x8"):
        jax.eval_shape(tf.ViT(tf.ViTConfig(**TINY, patch_size=3)).init, jax.random.key(0), IMAGES)
    with pytest.raises(ValueError, match="longer than model.max_len=4"):
        jax.eval_shape(tf.TransformerLM(lm_config(max_len=4)).init, jax.random.key(0), tokens(0))
    with pytest.raises(ValueError, match="vocab_size is None"):
        jax.eval_shape(tf.TransformerLM(lm_config(vocab_size=None)).init, jax.random.key(0), tokens(0))


# ---------------------------------------------------------------------------------------------
# Masks: causality, padding.


def test_lm_is_causal_by_gradients():
    """d logits_t / d embedding_s is exactly zero for every s > t and nonzero for every s <= t."""
    fns = lm_functions(lm_config(**LM_VARIANTS["rope"], scan_layers=True))
    x_1xTxD = jax.random.normal(jax.random.key(0), (1, T, 16))
    readout_V = jax.random.normal(jax.random.key(1), (VOCAB,))

    def scores_T(x):
        logits = fns.model.apply({"params": fns.params}, x, method="from_embeddings")
        return logits[0] @ readout_V

    jac_Tx1xTxD = jit(jax.jacrev(scores_T))(x_1xTxD)
    influence_TxT = np.abs(np.asarray(jac_Tx1xTxD)).sum(axis=(1, 3))
    assert np.all(influence_TxT[np.triu_indices(T, 1)] == 0.0)
    assert np.all(influence_TxT[np.tril_indices(T)] > 0.0)


def test_classifier_with_padding_equals_the_unpadded_sequence():
    cfg = tf.TransformerClassifierConfig(**TINY, vocab_size=VOCAB, num_classes=3, pad_id=0,
                                         positional="rope", num_kv_heads=2, scan_layers=True)
    model = tf.TransformerClassifier(cfg)
    rng = np.random.default_rng(0)
    real = rng.integers(1, VOCAB, (B, T))
    real[0, 5:] = 0  # row 0: five tokens then three pads; row 1: no padding
    real = jnp.asarray(real, jnp.int32)
    params = random_params(model, real)
    apply = jit(lambda x: model.apply({"params": params}, x))
    padded = apply(real)
    np.testing.assert_allclose(padded[0], apply(real[:1, :5])[0], rtol=1e-5, atol=1e-5)
    # The equality is not vacuous: a real token matters.
    assert not np.allclose(padded[0], apply(real.at[0, 2].set(real[0, 2] % (VOCAB - 1) + 1))[0], atol=1e-4)


def numpy_attention(x, p, mask, num_kv_heads):
    """Independent reference: explicit loops over batch and query heads; query head n reads kv
    head n // (H/K)."""
    q = np.einsum("btd,dnk->btnk", x, p["query"])
    k = np.einsum("btd,dnk->btnk", x, p["key"])
    v = np.einsum("btd,dnk->btnk", x, p["value"])
    b_, t_, h, dh = q.shape
    out = np.zeros_like(q)
    for b in range(b_):
        for n in range(h):
            g = n // (h // num_kv_heads)
            logits = q[b, :, n] @ k[b, :, g].T / np.sqrt(dh)
            logits = np.where(mask[b], logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            out[b, :, n] = (w / w.sum(-1, keepdims=True)) @ v[b, :, g]
    return np.einsum("btnk,nkd->btd", out, p["out"])


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_attention_against_numpy_and_padded_keys_get_no_weight(num_kv_heads):
    cfg = tf.TransformerCore(num_heads=4, num_kv_heads=num_kv_heads, d_model=16)
    module = attention.Attention(cfg)
    x = jax.random.normal(jax.random.key(0), (B, 6, 16))
    positions = jnp.arange(6)[None, :]
    real_BxS = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    padding = real_BxS[:, None, None, :]
    params = random_params(module, x, positions)

    @jit
    def run(x):
        return (module.apply({"params": params}, x, positions, mask=padding)[0],
                module.apply({"params": params}, x, positions, causal=True)[0])

    padded, causal = run(x)
    p, x_np = jax.tree.map(np.asarray, params), np.asarray(x)
    tril_BxTxS = np.broadcast_to(np.tril(np.ones((6, 6), bool)), (B, 6, 6))
    np.testing.assert_allclose(padded, numpy_attention(x_np, p, np.asarray(padding[:, 0]), num_kv_heads),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(causal, numpy_attention(x_np, p, tril_BxTxS, num_kv_heads),
                               rtol=1e-4, atol=1e-5)
    # Rewriting the padded positions of row 0 leaves its real positions exactly unchanged.
    moved, _ = run(x.at[0, 4:].set(100.0))
    np.testing.assert_array_equal(moved[0, :4], padded[0, :4])
    np.testing.assert_array_equal(moved[1], padded[1])


# ---------------------------------------------------------------------------------------------
# Positional encodings against NumPy.


sinusoidal = jit(positional.sinusoidal, static_argnums=1)
rope = jit(positional.rope)


def test_sinusoidal_against_the_paper_formula():
    pos = np.array([0, 1, 5, 37, 255])
    for d in (8, 7):
        expected = np.zeros((len(pos), d))
        for j in range(d):
            angle = pos / 10000.0 ** (2 * (j // 2) / d)
            expected[:, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
        np.testing.assert_allclose(sinusoidal(jnp.asarray(pos), d), expected, rtol=1e-5, atol=1e-5)
    assert sinusoidal(jnp.zeros((2, 3), jnp.int32), 6).shape == (2, 3, 6)
    # Position 0 is (0, 1, 0, 1, ...): sine on even dimensions, cosine on odd.
    np.testing.assert_array_equal(sinusoidal(jnp.array([0]), 4), [[0.0, 1.0, 0.0, 1.0]])


def numpy_rope(x, pos, base=10000.0):
    """Rotate-half RoPE, pair by pair: dimension j is rotated together with j + Dh/2."""
    out = np.empty_like(x)
    half = x.shape[-1] // 2
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for j in range(half):
                theta = pos[b, t] * base ** (-2.0 * j / x.shape[-1])
                a, c = x[b, t, :, j], x[b, t, :, j + half]
                out[b, t, :, j] = a * np.cos(theta) - c * np.sin(theta)
                out[b, t, :, j + half] = c * np.cos(theta) + a * np.sin(theta)
    return out


def test_rope_against_numpy_and_its_properties():
    # By hand: Dh=4, position 1, x = e0: frequencies 1 and 1/100, e0 rotates toward e2 by 1 rad.
    e0 = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    np.testing.assert_allclose(rope(e0, jnp.array([[1]]))[0, 0, 0], [np.cos(1), 0, np.sin(1), 0], atol=1e-6)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 200, (2, 5))
    rotated = rope(jnp.asarray(x), jnp.asarray(pos))
    np.testing.assert_allclose(rotated, numpy_rope(x, pos), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)

    # q(p) . k(p') depends on p - p' only: shift both positions by the same amount.
    q, k = jnp.asarray(x[:1, :1]), jnp.asarray(x[1:, :1])

    def score(p, p2):
        return jnp.sum(rope(q, jnp.array([[p]])) * rope(k, jnp.array([[p2]])), axis=-1)

    for shift in (1, 17, 150):
        np.testing.assert_allclose(score(7 + shift, 3 + shift), score(7, 3), rtol=1e-4, atol=1e-4)
    assert not np.allclose(score(7, 3), score(7, 4), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Equivalences: scan, remat, bf16.


def test_scanned_layers_equal_unrolled_layers():
    """Same parameters, restacked: the same logits; and init lays scanned parameters out exactly
    as the restacking does."""
    unrolled = lm_functions(lm_config(**LM_VARIANTS["rope"]))
    scanned = lm_functions(lm_config(**LM_VARIANTS["rope"], scan_layers=True))
    x = tokens(1)
    np.testing.assert_allclose(scanned.forward(scanned.params, x), unrolled.forward(unrolled.params, x),
                               rtol=1e-5, atol=1e-5)
    init_shapes = nn.meta.unbox(jax.eval_shape(scanned.model.init, jax.random.key(0), x))["params"]
    assert jax.tree.map(lambda s: (s.shape, s.dtype), init_shapes) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), scanned.params)


@functools.cache
def lm_loss_and_grad(cfg):
    model = tf.TransformerLM(cfg)

    def loss(params, tokens_BxT):
        logits = model.apply({"params": params}, tokens_BxT[:, :-1], train=True)
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, tokens_BxT[:, 1:, None], axis=-1))

    return jit(jax.value_and_grad(loss)), loss


def test_remat_equals_plain_values_and_grads():
    """Remat inside a scan (the combination whose static arguments and CSE setting can go wrong)
    against the plain unrolled model: same loss, same gradients once restacked. Gradients take
    the most compile time, so the unrolled remat model is only traced."""
    plain_cfg = lm_config(**LM_VARIANTS["learned"])
    remat_cfg = dataclasses.replace(plain_cfg, remat=True, scan_layers=True)
    params = lm_functions(plain_cfg).params
    x = tokens(2)
    loss, grads = lm_loss_and_grad(plain_cfg)[0](params, x)
    remat_value, remat_grads = lm_loss_and_grad(remat_cfg)[0](restack(params, 2), x)
    np.testing.assert_allclose(remat_value, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 remat_grads, restack(grads, 2))
    # Remat is really there, scanned or not: the traced forward holds a checkpoint primitive.
    unrolled_remat_cfg = dataclasses.replace(remat_cfg, scan_layers=False)
    for cfg, p in ((remat_cfg, restack(params, 2)), (unrolled_remat_cfg, params)):
        program = str(jax.make_jaxpr(lm_loss_and_grad(cfg)[1])(p, x))
        assert "remat" in program or "checkpoint" in program


def test_bfloat16_compute_stays_close_to_float32():
    """Same float32 parameters, activations in bfloat16 (8 mantissa bits: ~0.4% per rounding).
    Through two blocks the logits stay within 5% of their float32 range."""
    f32 = lm_functions(lm_config(**LM_VARIANTS["rope"]))
    bf16 = lm_functions(lm_config(**LM_VARIANTS["rope"], dtype="bfloat16"))
    x = tokens(3)
    ref = np.asarray(f32.forward(f32.params, x))
    out = bf16.forward(f32.params, x)
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    assert np.abs(np.asarray(out) - ref).max() <= 0.05 * np.abs(ref).max()
    assert np.mean(np.argmax(out, -1) == np.argmax(ref, -1)) >= 0.8


def test_dropout_only_in_training_and_from_the_dropout_rng():
    cfg = lm_config(dropout=0.5)
    model = tf.TransformerLM(cfg)
    params = random_params(model, tokens(0))
    x = tokens(4)

    @jit
    def run(seed):
        train = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(seed)})
        return train, model.apply({"params": params}, x)

    a, evaluated = run(0)
    b, _ = run(1)
    assert not np.allclose(a, b)
    assert not np.allclose(a, evaluated)
    no_dropout = lm_functions(dataclasses.replace(cfg, dropout=0.0))
    np.testing.assert_allclose(evaluated, no_dropout.forward(params, x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Decoding with the KV cache.


def garbage_cache(fns, seed: int):
    """An empty cache whose unfilled slots hold large random values: masking must hide them."""
    cache = fns.model.apply({"params": fns.params}, B, BUFFER, method="init_cache")
    rng = np.random.default_rng(seed)

    def noise(a):
        return jnp.asarray(100.0 * rng.standard_normal(a.shape), a.dtype)

    return cache.replace(k=jax.tree.map(noise, cache.k), v=jax.tree.map(noise, cache.v))


# Every positional encoding and both layouts, without the full product: the encoding is added
# before the stack, so the two choices do not interact, and each case costs three compilations.
# "levers": the CPU options: the full pass runs blocked causal attention (blocks of 4 over T), the
# cached decode einsum attention over the buffer, both with fused projections.
DECODE_VARIANTS = {**LM_VARIANTS, "levers": dict(LM_VARIANTS["rope"], attention="blocked", attention_block=4,
                                                 fused_projections=True)}
DECODE_CASES = [("rope", False), ("rope", True), ("learned", False), ("sinusoidal", True), ("levers", False)]


@pytest.mark.parametrize("variant, scan", DECODE_CASES,
                         ids=[f"{v}-{'scanned' if s else 'unrolled'}" for v, s in DECODE_CASES])
def test_kv_cache_decoding_equals_full_recomputation(variant, scan):
    fns = lm_functions(lm_config(**DECODE_VARIANTS[variant], scan_layers=scan))
    x = tokens(5)
    full = fns.forward(fns.params, x)

    # Prefill the first PROMPT tokens, then one token per call.
    logits, cache = fns.decode(fns.params, x[:, :PROMPT], garbage_cache(fns, 0))
    pieces = [logits]
    for t in range(PROMPT, T):
        logits, cache = fns.decode(fns.params, x[:, t:t + 1], cache)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(cache.index) == T
    per_layer = (B, BUFFER, fns.model.config.kv_heads, 4)
    if scan:
        assert cache.k.shape == cache.v.shape == (2, *per_layer)
    else:
        assert len(cache.k) == len(cache.v) == 2
        assert all(a.shape == per_layer for a in (*cache.k, *cache.v))

    # Greedy generation: through the cache, and by recomputing the whole prefix every step. The
    # recomputation runs on a fixed [B, T] buffer (one compiled program) whose not-yet-generated
    # tail cannot matter, by causality (tested above).
    n_new = T - PROMPT
    logits, cache = fns.decode(fns.params, x[:, :PROMPT], garbage_cache(fns, 1))
    generated = [jnp.argmax(logits[:, -1], axis=-1)]
    for _ in range(n_new - 1):
        logits, cache = fns.decode(fns.params, generated[-1][:, None], cache)
        generated.append(jnp.argmax(logits[:, -1], axis=-1))
    buffer = np.zeros((B, T), np.int32)
    buffer[:, :PROMPT] = x[:, :PROMPT]
    for t in range(PROMPT - 1, T - 1):
        buffer[:, t + 1] = np.argmax(fns.forward(fns.params, jnp.asarray(buffer))[:, t], axis=-1)
    np.testing.assert_array_equal(np.stack(generated, axis=1), buffer[:, PROMPT:])

    # One compiled program per shape, whatever the (traced) cache index.
    assert fns.traces["decode", 1] == 1 and fns.traces["decode", PROMPT] == 1
    assert fns.traces["forward", T] == 1


def test_jitted_forward_does_not_retrace():
    fns = lm_functions(lm_config(**LM_VARIANTS["learned"]))
    fns.forward(fns.params, tokens(6)).block_until_ready()
    fns.forward(fns.params, tokens(7)).block_until_ready()
    assert fns.traces["forward", T] == 1


# ---------------------------------------------------------------------------------------------
# Config checks.


@pytest.mark.parametrize("overrides, field, message", [
    (dict(num_heads=3), "num_heads", "must divide d_model=16, got 3"),
    (dict(num_kv_heads=3), "num_kv_heads", "must divide num_heads=4, got 3"),
    (dict(num_heads=8, positional="rope", d_model=24), "positional",
     "rope needs an even head dim, got d_model/num_heads=3"),
    (dict(dropout=1.0), "dropout", "must be in [0, 1), got 1.0"),
    (dict(num_layers=0), "num_layers", "must be positive, got 0"),
    (dict(d_ff=-1), "d_ff", "must be positive or none, got -1"),
    (dict(vocab_size=0), "vocab_size", "must be positive or none, got 0"),
])
def test_config_problems(overrides, field, message):
    assert (field, message) in lm_config(**overrides).problems()


def test_registered_and_configurable_by_flat_overrides():
    import json

    from jaxmodels import config as C
    from jaxmodels import models, registry
    from jaxmodels.errors import ConfigError

    for config_cls, module_cls in MODULES.items():
        assert registry.MODELS[config_cls.kind].build is module_cls
        assert models.config_class(config_cls.kind) is config_cls
    cfg = C.apply_overrides(C.Config(model=tf.TransformerLMConfig()), [
        "model.num_layers=6", "model.num_kv_heads=2", "model.positional=rope", "model.scan_layers=true",
        "model.dtype=bfloat16", "model.vocab_size=none"])
    assert cfg.model == tf.TransformerLMConfig(num_layers=6, num_kv_heads=2, positional="rope",
                                               scan_layers=True, dtype="bfloat16")
    assert C.from_dict(json.loads(C.to_json(cfg))) == cfg
    with pytest.raises(ConfigError, match=r"model.num_kv_heads must divide num_heads=4, got 3"):
        C.apply_overrides(cfg, ["model.num_kv_heads=3"])
    with pytest.raises(ConfigError, match="model.pool='max' is not one of cls, mean"):
        C.apply_overrides(C.Config(model=tf.ViTConfig()), ["model.pool=max"])


def test_valid_configs_have_no_problems_and_sizes_resolve():
    assert lm_config(vocab_size=None).problems() == []
    assert tf.ViTConfig().problems() == [] and tf.TransformerClassifierConfig().problems() == []
    assert tf.ViTConfig(patch_size=0).problems() == [("patch_size", "must be positive, got 0")]
    assert lm_config(d_model=128).ff_width == 512
    assert lm_config(d_model=128, mlp="swiglu").ff_width == 344  # 8/3 * 128 = 341.3, up to a multiple of 8
    assert lm_config(d_model=128, mlp="swiglu", d_ff=100).ff_width == 100
    assert lm_config(num_kv_heads=None).kv_heads == 4


# ---------------------------------------------------------------------------------------------
# Under the framework's one train step.


def test_the_train_step_fits_one_batch():
    """The call contract the step relies on (inputs [B, T] -> logits [B, T, V] for targets
    [B, T], dropout from the "dropout" rng): Adam memorises one batch of random tokens."""
    import optax

    from jaxmodels.training import step as step_lib
    from jaxmodels.training.state import TrainState

    model = tf.TransformerLM(lm_config(positional="rope", scan_layers=True, dropout=0.1))
    x = tokens(8, (4, T + 1))
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "mask": jnp.ones((4, T), jnp.float32)}
    params = random_params(model, batch["inputs"])
    tx = optax.adam(1e-2)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       model_state={}, rng=jax.random.key_data(jax.random.key(0)),
                       loss_stats=jnp.zeros((3,), jnp.float32))
    train_step = jit(step_lib.make_train_step(model, tx, schedule=lambda step: 1e-2))
    losses = []
    for _ in range(40):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.25 * losses[0], losses
