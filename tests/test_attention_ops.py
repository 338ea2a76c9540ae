"""The CPU levers of the transformer keep results equal: the einsum and blocked attention equal
`jax.nn.dot_product_attention` (values and gradients, causal and padded, multi-head and grouped),
and fused projections equal separate ones once the parameters are mapped (`fuse_params`)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels import models
from jaxmodels.models import attention_ops
from jaxmodels.models.fused_params import fuse_params

B, T, DH = 2, 10, 8
RNG = np.random.default_rng(0)
# Right padding of different lengths (7 and 10 real keys), as the classifier pads.
PAD_MASK = jnp.asarray(np.arange(T)[None, :] < np.array([7, 10])[:, None])[:, None, None, :]


def _qkv(h, g):
    return tuple(jnp.asarray(RNG.normal(size=(B, T, n, DH)), jnp.float32) for n in (h, g, g))


CASES = {  # (query heads, key/value heads, causal, padding mask)
    "causal_mha": (4, 4, True, None),
    "causal_padded_gqa": (4, 2, True, PAD_MASK),
    "padded_mqa": (4, 1, False, PAD_MASK),
    # The first sequence has no real key at all: every row of it is fully masked, which
    # averages the values (no NaN) and must send no gradient to its queries and keys.
    "empty_rows": (4, 4, False, jnp.asarray(np.arange(T)[None, :] < np.array([0, 6])[:, None])[:, None, None, :]),
}


def _value_and_grads(fn, q, k, v, cotangent):
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent), argnums=(0, 1, 2)))(q, k, v)


# Blocked attention is causal only (the model runs einsum otherwise). "_vjp": the same forward
# with the hand-written backward pass (attention_ops._attention_bwd).
IMPL_CASES = [(impl, case) for impl in ("einsum", "blocked", "einsum_vjp", "blocked_vjp") for case in CASES
              if impl.startswith("einsum") or CASES[case][2]]


@pytest.mark.parametrize("impl,case", IMPL_CASES)
def test_attention_equals_dot_product_attention(impl, case):
    h, g, causal, mask = CASES[case]
    q, k, v = _qkv(h, g)
    cotangent = jnp.asarray(RNG.normal(size=q.shape), jnp.float32)
    scale = 0.3  # not 1/sqrt(Dh): the scale argument must be honoured (muP passes its own)
    ref = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, scale=scale), q, k, v, cotangent)
    vjp = impl.endswith("_vjp")
    if impl.startswith("einsum"):
        fn = lambda q, k, v: attention_ops.einsum_attention(q, k, v, mask=mask, causal=causal, scale=scale,
                                                            manual_vjp=vjp)
    else:  # a block of 4 over T=10: two full blocks and a ragged last one
        fn = lambda q, k, v: attention_ops.blocked_causal_attention(q, k, v, mask=mask, scale=scale, block=4,
                                                                    manual_vjp=vjp)
    got = _value_and_grads(fn, q, k, v, cotangent)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1], ref[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_blocked_attention_never_sees_future_keys():
    # Gradients wrt keys after the last query of a block must be zero for that block's queries:
    # a property, independent of the reference above.
    q, k, v = _qkv(2, 2)
    grad_k = jax.jit(jax.grad(lambda k: jnp.sum(attention_ops.blocked_causal_attention(q, k, v, block=4)[:, :4])))(k)
    assert float(jnp.max(jnp.abs(grad_k[:, 4:]))) == 0.0
    assert float(jnp.max(jnp.abs(grad_k[:, :4]))) > 0.0


# One scanned layer: the stacked leading axis that fuse_params must carry, at one layer's compile.
LM = models.TransformerLMConfig(num_layers=1, num_heads=4, num_kv_heads=2, d_model=16, max_len=16,
                                vocab_size=11, mlp="swiglu", positional="rope", scan_layers=True)
TOKENS = jnp.asarray(RNG.integers(0, 11, size=(2, 12)), jnp.int32)


def _lm_loss_and_grads(cfg, params):
    model = models.build(cfg)

    def loss(p):
        logits = model.apply({"params": p}, TOKENS)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], TOKENS[:, 1:]).mean(), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.fixture(scope="module")
def lm_reference():
    # Shapes from a traced (not compiled) init, values from NumPy: compiling init costs more
    # than the test, and any well-scaled values compare the layouts.
    shapes = nn.meta.unbox(jax.eval_shape(models.build(LM).init, jax.random.key(0), TOKENS)["params"])
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: (rng.normal(size=a.shape) / np.sqrt(a.shape[-1])).astype(np.float32), shapes)
    return params, _lm_loss_and_grads(LM, params)


@pytest.mark.parametrize("attention,fused", [("einsum", True), ("blocked", False), ("blocked_vjp", True)])
def test_lm_levers_keep_logits_and_gradients(lm_reference, attention, fused):
    params, ((ref_loss, ref_logits), ref_grads) = lm_reference
    cfg = dataclasses.replace(LM, attention=attention, attention_block=4, fused_projections=fused)
    mapped = fuse_params(params) if fused else params
    (loss, logits), grads = _lm_loss_and_grads(cfg, mapped)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    # The map is linear (a reshape and a concatenation), so it maps the gradients too.
    expected = fuse_params(ref_grads) if fused else ref_grads
    assert jax.tree.structure(grads) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_layout_is_what_init_creates():
    # fuse_params must produce exactly the shapes (and names) a fused model initialises with.
    cfg = dataclasses.replace(LM, fused_projections=True)
    fused_init = jax.eval_shape(models.build(cfg).init, jax.random.key(0), TOKENS)["params"]
    separate = jax.eval_shape(models.build(LM).init, jax.random.key(0), TOKENS)["params"]
    mapped = jax.eval_shape(fuse_params, nn.meta.unbox(separate))
    assert jax.tree.map(lambda s: s.shape, nn.meta.unbox(fused_init)) == jax.tree.map(lambda s: s.shape, mapped)



@pytest.mark.parametrize("preset", ["tensor", "fsdp_tensor"])
def test_fused_parameters_shard_like_the_separate_ones(preset):
    # Under tensor parallelism each device must hold the queries, keys and values of the same
    # heads (and the gate and up columns of the same hidden units): the fused matrix splits over
    # "tensor" on its key/value-head (hidden-unit) axis, as the separate ones split theirs.
    from jaxmodels.parallel import rules

    mesh = {"data": 1, "fsdp": 2, "tensor": 2}

    def block_specs(cfg):
        boxed = jax.eval_shape(models.build(cfg).init, jax.random.key(0), TOKENS)["params"]["stack"]["blocks"]
        return {name: (tuple(b.names), tuple(rules.mesh_spec(b.names, b.value.shape, preset, mesh)[0]))
                for part in ("attn", "mlp") for name, b in boxed[part].items()}

    def axis_of(names_and_spec, mesh_axis):
        names, spec = names_and_spec
        return [names[i] for i, s in enumerate(spec) if s == mesh_axis or (isinstance(s, tuple) and mesh_axis in s)]

    separate = block_specs(LM)
    fused = block_specs(dataclasses.replace(LM, fused_projections=True))
    assert axis_of(fused["qkv"], "tensor") == axis_of(separate["key"], "tensor") == ["kv"]
    assert axis_of(separate["query"], "tensor") == ["heads"]
    assert axis_of(fused["gate_up"], "tensor") == axis_of(separate["gate"], "tensor") == ["mlp"]
    assert axis_of(fused["qkv"], "fsdp") == axis_of(separate["query"], "fsdp")
