import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import models

CONFIGS = [
    models.SeedCNNConfig(),
    models.BatchNormCNNConfig(block_filters=(4, 8), hidden=16),
    models.MLPConfig(hidden=(16, 8)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.kind)
@pytest.mark.parametrize("hw", [28, 8])
def test_output_shape_and_dtype(cfg, hw):
    model = models.build(cfg)
    x = jnp.ones((3, hw, hw, 1), jnp.float32)
    variables = nn.meta.unbox(model.init(jax.random.key(0), x))
    logits = model.apply(variables, x)
    assert logits.shape == (3, cfg.num_classes)
    assert logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_seed_cnn_matches_the_source_architecture():
    model = models.build(models.SeedCNNConfig())
    variables = nn.meta.unbox(model.init(jax.random.key(0), jnp.ones((1, 28, 28, 1))))
    shapes = jax.tree.map(jnp.shape, variables["params"])
    # Conv 3x3, 1 -> 32 channels; max-pool halves 28 -> 14; dense from 14*14*32 to 10.
    assert shapes == {"conv": {"kernel": (3, 3, 1, 32), "bias": (32,)},
                      "head": {"kernel": (14 * 14 * 32, 10), "bias": (10,)}}
    assert set(variables) == {"params"}


def test_seed_cnn_against_numpy_reference():
    """Forward pass against an independent NumPy implementation of conv/ReLU/pool/dense."""
    model = models.build(models.SeedCNNConfig(filters=4))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
    params = nn.meta.unbox(model.init(jax.random.key(1), jnp.asarray(x)))["params"]
    k = np.asarray(params["conv"]["kernel"])
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros((2, 6, 6, 4), np.float32)
    for i in range(6):
        for j in range(6):
            conv[:, i, j, :] = np.einsum("bhwc,hwcf->bf", xp[:, i:i + 3, j:j + 3, :], k)
    h = np.maximum(conv + np.asarray(params["conv"]["bias"]), 0)
    pooled = h.reshape(2, 3, 2, 3, 2, 4).max(axis=(2, 4))
    ref = pooled.reshape(2, -1) @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
    np.testing.assert_allclose(model.apply({"params": params}, jnp.asarray(x)), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.kind)
def test_every_parameter_has_logical_axis_names(cfg):
    model = models.build(cfg)
    boxed = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for box in leaves:
        assert len(box.names) == box.value.ndim


def test_batchnorm_running_stats_in_train_only():
    cfg = models.BatchNormCNNConfig(block_filters=(4,), convs_per_block=1, hidden=8, dropout=0.0)
    model = models.build(cfg)
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1)) * 3 + 1
    variables = nn.meta.unbox(model.init(jax.random.key(1), x))
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["bn0_0"]["mean"]
    after = updated["batch_stats"]["bn0_0"]["mean"]
    assert not np.allclose(before, after)
    # In eval mode an example's output uses running statistics: it cannot depend on the rest of
    # the batch. In train mode it does (batch statistics).
    full_eval = model.apply(variables, x, train=False)
    alone_eval = model.apply(variables, x[:1], train=False)
    np.testing.assert_allclose(full_eval[:1], alone_eval, rtol=1e-5, atol=1e-5)
    full_train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    half_train, _ = model.apply(variables, x[:4], train=True, mutable=["batch_stats"])
    assert not np.allclose(full_train[:4], half_train, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 1)])
def test_max_pool_equals_flax_reduce_window(shape):
    from jaxmodels.models import layers
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(layers.max_pool(x, 2), nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("spec,x_shape,w_shape,contract", [
    ("btd,df->btf", (2, 5, 6), (6, 7), 1),
    ("btd,dnk->btnk", (2, 5, 6), (6, 3, 4), 1),
    ("btnk,nkd->btd", (2, 5, 3, 4), (3, 4, 6), 2),
    ("bd,dk->bk", (3, 6), (6, 2), 1),
])
def test_rows_dot_equals_the_einsum_in_value_and_gradient(spec, x_shape, w_shape, contract):
    from jaxmodels.models import layers
    kx, kw = jax.random.split(jax.random.key(1))
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    ours = lambda x, w: layers.rows_dot(x, w, contract=contract)  # noqa: E731
    ref = lambda x, w: jnp.einsum(spec, x, w)  # noqa: E731
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    # Weight the output so every element's gradient differs.
    cot = jax.random.normal(jax.random.key(2), ref(x, w).shape)
    g_ours = jax.grad(lambda x, w: (ours(x, w) * cot).sum(), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: (ref(x, w) * cot).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
