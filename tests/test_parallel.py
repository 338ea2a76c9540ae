"""Sharded training equals one-device training; the rules table places what it says; mistakes in
the mesh are one-line errors before anything compiles.

Every model here is tiny (a few thousand parameters) so that compiling for 8 simulated CPU
devices dominates; compiled steps are shared through a module-level cache. Tolerance: float32
reductions split over devices add in another order, so losses and parameters after 3 Adam steps
agree to rtol 1e-4 / atol 1e-5 rather than bit for bit.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxmodels import config as C
from jaxmodels import models
from jaxmodels.config import OptimizerConfig, ParallelConfig
from jaxmodels.errors import ConfigError, UserError
from jaxmodels.parallel import mesh as mesh_lib
from jaxmodels.parallel import sharding as sharding_lib
from jaxmodels.training import loop, optim

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8,
                                reason="needs 8 devices (tests/conftest.py simulates 8 CPU devices)")

RTOL, ATOL = 1e-4, 1e-5
STEPS = 3
BATCH = 16

FAMILIES = {
    "cnn": (models.SeedCNNConfig(filters=8), "image"),
    "mlp": (models.MLPConfig(hidden=(32,)), "image"),
    "rnn": (models.RNNLMConfig(cell="lstm", hidden=16, embed_dim=16, vocab_size=32), "tokens"),
    "transformer": (models.TransformerLMConfig(num_layers=2, num_heads=4, d_model=16, d_ff=32,
                                               max_len=16, vocab_size=32), "tokens"),
}
# Per preset: the mesh on 8 devices. The tensor preset is given 4-way tensor parallelism so that
# "data" still splits the batch 2 ways (both kinds of split in one run).
PRESETS = {
    "data": ParallelConfig(preset="data"),
    "fsdp": ParallelConfig(preset="fsdp"),
    "tensor": ParallelConfig(preset="tensor", tensor=4),
    "fsdp_tensor": ParallelConfig(preset="fsdp_tensor"),
}
ONE_DEVICE = ParallelConfig(preset="data", data=1)


def _example(kind):
    return jnp.zeros((1, 8, 8, 1)) if kind == "image" else jnp.zeros((1, 8), jnp.int32)


def _batches(kind, n=STEPS, batch=BATCH):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        if kind == "image":
            inputs = rng.normal(size=(batch, 8, 8, 1)).astype(np.float32)
            targets = rng.integers(0, 10, size=batch).astype(np.int32)
        else:
            inputs = rng.integers(0, 32, size=(batch, 8)).astype(np.int32)
            targets = rng.integers(0, 32, size=(batch, 8)).astype(np.int32)
        out.append({"inputs": inputs, "targets": targets, "mask": np.ones(targets.shape, np.float32)})
    return out


@functools.cache
def _compiled(family, parallel, opt=OptimizerConfig(name="adam", learning_rate=1e-2), microbatches=1):
    cfg, kind = FAMILIES[family]
    model = models.build(cfg)
    tx, schedule = optim.make(opt, total_steps=100)
    devices = jax.devices()[:1] if parallel == ONE_DEVICE else None
    mesh = mesh_lib.make_mesh(parallel, devices=devices)
    c = loop.compile_steps(model, tx, schedule, _example(kind), parallel, mesh,
                           microbatches=microbatches)
    return mesh, c


def _run(family, parallel, **kw):
    """(losses, final state) of STEPS train steps from the seed-0 init."""
    mesh, c = _compiled(family, parallel, **kw)
    state = c.init_fn()
    losses = []
    for batch in _batches(FAMILIES[family][1]):
        state, metrics = c.train_step(state, jax.device_put(batch, c.batch_sharding))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


@functools.cache
def _reference(family):
    losses, state = _run(family, ONE_DEVICE)
    return losses, jax.device_get(state)


# The CNN has neither heads nor MLP hidden units: the tensor preset would only replicate it.
CASES = [(f, p) for f in FAMILIES for p in PRESETS if not (f == "cnn" and p == "tensor")]


@pytest.mark.parametrize("family, preset", CASES)
def test_sharded_training_equals_one_device(family, preset):
    ref_losses, ref_state = _reference(family)
    losses, state = _run(family, PRESETS[preset])
    assert len(state.params) and state.step == STEPS
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(jax.device_get(state.params), ref_state.params, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(jax.device_get(state.opt_state), ref_state.opt_state,
                                rtol=RTOL, atol=ATOL)
    # The state stays where the rules put it: nothing was gathered onto one device.
    _, c = _compiled(family, PRESETS[preset])
    chex.assert_trees_all_equal_structs(state, c.state_sharding)
    for arr, want in zip(jax.tree.leaves(state), jax.tree.leaves(c.state_sharding)):
        assert arr.sharding.is_equivalent_to(want, arr.ndim)


def _specs(family, preset):
    _, c = _compiled(family, PRESETS[preset])
    return jax.tree.map(lambda s: s.spec, c.state_sharding)


def test_transformer_partition_specs_follow_the_rules_table():
    attn = lambda specs: specs.params["stack"]["block_0"]["attn"]  # noqa: E731
    mlp = lambda specs: specs.params["stack"]["block_0"]["mlp"]  # noqa: E731
    data, fsdp = _specs("transformer", "data"), _specs("transformer", "fsdp")
    tensor, both = _specs("transformer", "tensor"), _specs("transformer", "fsdp_tensor")
    assert all(s == P() for s in jax.tree.leaves(data.params, is_leaf=lambda x: isinstance(x, P)))
    # query (embed, heads, head_dim): fsdp splits the width, tensor the heads.
    assert attn(fsdp)["query"] == P("fsdp")
    assert attn(tensor)["query"] == P(None, "tensor")
    assert attn(both)["query"] == P("fsdp", "tensor")
    # out (heads, head_dim, embed): Megatron's row-parallel half.
    assert attn(tensor)["out"] == P("tensor")
    assert attn(both)["out"] == P("tensor", None, "fsdp")
    # MLP up (embed, mlp) column-parallel, down (mlp, embed) row-parallel.
    assert mlp(tensor)["up"] == P(None, "tensor") and mlp(tensor)["down"] == P("tensor")
    assert fsdp.params["embed"]["embedding"] == P(None, "fsdp")
    # ZeRO-3: Adam's moments are sharded exactly like the parameters; step counts replicated.
    # (optim.make's chain sits inside optax.inject_hyperparams: its scalars replicated too.)
    adam = fsdp.opt_state.inner_state[0]
    assert adam.mu == fsdp.params and adam.nu == fsdp.params and adam.count == P()
    assert all(spec == P() for spec in fsdp.opt_state.hyperparams.values())


def test_fsdp_divides_the_per_device_bytes():
    _, data = _compiled("transformer", PRESETS["data"])
    _, fsdp = _compiled("transformer", PRESETS["fsdp"])
    r = data.report
    assert r.params_bytes_per_device == r.params_bytes
    assert r.opt_state_bytes_per_device == r.opt_state_bytes
    r = fsdp.report
    # LayerNorm biases and scales shard too (their "embed" divides by 8): everything is split
    # except Adam's step count.
    assert r.params_bytes_per_device * 8 == r.params_bytes
    assert r.opt_state_bytes_per_device < r.opt_state_bytes / 7


def test_gradient_accumulation_under_sharding_equals_one_big_batch():
    # SGD: the update is linear in the gradient, so parameters compare the gradients.
    sgd = OptimizerConfig(name="sgd", learning_rate=0.5)
    big_losses, big = _run("mlp", ONE_DEVICE, opt=sgd)
    micro_losses, micro = _run("mlp", PRESETS["fsdp"], opt=sgd, microbatches=2)
    np.testing.assert_allclose(micro_losses, big_losses, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(jax.device_get(micro.params), jax.device_get(big.params),
                                rtol=RTOL, atol=ATOL)


def test_indivisible_dimension_is_replicated_and_reported():
    # MLP head bias has 10 classes: not divisible by 8 fsdp devices.
    _, c = _compiled("mlp", PRESETS["fsdp"])
    assert c.state_sharding.params["head"]["bias"].spec == P()
    assert any(f.startswith("head/bias: classes=10") for f in c.report.fallbacks)


def _mlp_shardings(parallel):
    model = models.build(models.MLPConfig(hidden=(30,)))  # 30 hidden units: 8 does not divide
    tx, _ = optim.make(OptimizerConfig(), total_steps=10)
    example = jnp.zeros((1, 3, 3, 1))  # 9 inputs: 8 does not divide either
    init = lambda: loop.init_state(model, tx, example, 0)  # noqa: E731
    return sharding_lib.state_shardings(
        jax.eval_shape(init), loop.abstract_variables(model, example)["params"],
        mesh_lib.make_mesh(parallel), parallel.preset,
        threshold_bytes=parallel.replication_threshold_bytes, strict=parallel.strict)


def test_large_replicated_parameter_warns_and_strict_raises():
    loose = ParallelConfig(preset="fsdp", replication_threshold_bytes=1000)
    with pytest.warns(UserWarning, match=r"dense0/kernel \(9, 30\)"):
        _, report = _mlp_shardings(loose)
    assert any("dense0/kernel" in r for r in report.replicated_large)
    with pytest.raises(ConfigError, match="parallel.strict=true"):
        _mlp_shardings(ParallelConfig(preset="fsdp", replication_threshold_bytes=1000, strict=True))


def test_heads_not_divisible_by_tensor_axis_is_an_error_before_compile():
    model = models.build(FAMILIES["transformer"][0])  # 4 heads
    tx, _ = optim.make(OptimizerConfig(), total_steps=10)
    parallel = ParallelConfig(preset="tensor", tensor=8)
    with pytest.raises(UserError, match=r"heads=4, not divisible .* set parallel.tensor to a divisor of 4"):
        loop.compile_steps(model, tx, lambda s: 1e-3, _example("tokens"), parallel,
                           mesh_lib.make_mesh(parallel))


@pytest.mark.parametrize("parallel, message", [
    (ParallelConfig(data=3), r"needs 3 devices but 8 are available .*set one of them to -1"),
    (ParallelConfig(preset="fsdp_tensor", tensor=3), r"cannot fill 8 devices"),
])
def test_mesh_that_does_not_match_the_devices_is_one_line(parallel, message):
    with pytest.raises(UserError, match=message) as e:
        mesh_lib.make_mesh(parallel)
    assert "\n" not in str(e.value)


def test_mesh_shapes_of_the_presets():
    shape = lambda **kw: mesh_lib.mesh_shape(ParallelConfig(**kw), 8)  # noqa: E731
    assert shape() == {"data": 8, "fsdp": 1, "tensor": 1}
    assert shape(preset="fsdp") == {"data": 1, "fsdp": 8, "tensor": 1}
    assert shape(preset="tensor") == {"data": 1, "fsdp": 1, "tensor": 8}
    assert shape(preset="fsdp_tensor") == {"data": 1, "fsdp": 4, "tensor": 2}
    # Overriding the preset's free axis: "data" takes the remaining devices.
    assert shape(preset="tensor", tensor=2) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert shape(preset="fsdp", fsdp=-1, data=2) == {"data": 2, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize("override, message", [
    ("parallel.tensor=2", "parallel.tensor=2 is unused by parallel.preset=data"),
    ("parallel.data=-1 parallel.fsdp=-1", "parallel.data/fsdp/tensor may hold -1"),
    ("parallel.fsdp=0", "parallel.fsdp must be positive"),
])
def test_parallel_config_validation(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        C.apply_overrides(C.Config(), override.split())


def test_batch_not_divisible_by_data_axis_is_an_error_before_compile():
    config = C.apply_overrides(C.Config(), ["data.dataset=digits", "data.batch_size=12",
                                            "train.steps=1", "optimizer.schedule=constant"])
    with pytest.raises(UserError, match=r"data.batch_size=12 is not divisible by the 8 data-parallel devices.*data.batch_size=16"):
        loop.setup(config)


def _uneven_batches():
    # Shards hold different numbers of masked-out targets: a mean of shard means would be wrong.
    batches = _batches("image")
    for b in batches:
        b["mask"][:5] = 0.0
    return batches


@functools.cache
def _mlp_step(axis_name=None):
    model = models.build(FAMILIES["mlp"][0])
    tx, schedule = optim.make(OptimizerConfig(name="adam", learning_rate=1e-2), total_steps=100)
    from jaxmodels.training import step as step_lib
    # Host copies: the donating steps below must not delete the shared initial state.
    return (jax.device_get(loop.init_state(model, tx, _example("image"), 0)),
            step_lib.make_train_step(model, tx, schedule=schedule, axis_name=axis_name))


def _loop(step, state, batches):
    losses = []
    for b in batches:
        state, m = step(state, b)
        losses.append(float(np.asarray(m["loss"]).reshape(-1)[0]))
    return np.array(losses), state


def test_shard_map_and_pmap_steps_equal_the_jit_step():
    state, plain = _mlp_step()
    ref_losses, ref = _loop(jax.jit(plain), state, _uneven_batches())
    _, per_shard = _mlp_step("data")
    mesh = mesh_lib.make_mesh(ParallelConfig())  # 8 on "data"
    losses, out = _loop(mesh_lib.shard_map_step(per_shard, mesh), state, _uneven_batches())
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(jax.device_get(out.params), ref.params, rtol=RTOL, atol=ATOL)

    # A user's pmap: leading axis of 8 on both state (replicated) and batch (split).
    pmapped = jax.pmap(per_shard, axis_name="data")
    replicated = jax.tree.map(lambda x: np.broadcast_to(x, (8, *np.shape(x))), state)
    split = [jax.tree.map(lambda x: x.reshape(8, -1, *x.shape[1:]), b) for b in _uneven_batches()]
    losses, out = _loop(pmapped, replicated, split)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], jax.device_get(out.params)),
                                ref.params, rtol=RTOL, atol=ATOL)


def test_data_parallel_accumulation_moves_only_gradients():
    # Strided micro-batches keep every device's rows local: the only collectives in the compiled
    # step are the gradient (and metric) all-reduces, no gathering of the batch.
    import re

    _, c = _compiled("mlp", PRESETS["data"], opt=OptimizerConfig(name="sgd", learning_rate=0.5),
                     microbatches=2)
    state = jax.eval_shape(c.init_fn)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batches("image", 1)[0])
    hlo = c.train_step.lower(state, batch).compile().as_text()
    ops = set(re.findall(r"(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)", hlo))
    assert ops == {"all-reduce"}


def test_activations_are_constrained_by_the_preset():
    """Under tensor parallelism the traced step pins attention heads and MLP hidden units to the
    tensor axis and the batch to data; under data parallelism no activation names "tensor"."""

    def constraints(preset):
        _, c = _compiled("transformer", PRESETS[preset])
        state = jax.eval_shape(c.init_fn)
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batches("tokens", 1)[0])
        text = c.train_step.lower(state, batch).as_text()
        return [line for line in text.splitlines() if "sharding_constraint" in line]

    tensor = constraints("tensor")
    assert any('[{"data"}, {}, {"tensor"}, {}]' in l for l in tensor), tensor[:5]  # q, attention out
    assert any('[{"data"}, {}, {"tensor"}]' in l for l in tensor)  # MLP hidden units
    assert any('[{"data"}, {}, {}]' in l for l in tensor)  # the residual stream: batch only
    data = constraints("data")
    # (MLIR types read "tensor<...>": look for the mesh axis, quoted.)
    assert data and not any('{"tensor"}' in l for l in data)
    # Outside the training loop the names are inert: a plain apply works without any mesh.
    model = models.build(FAMILIES["transformer"][0])
    variables = model.init(jax.random.key(0), jnp.zeros((2, 8), jnp.int32))
    assert model.apply(variables, jnp.zeros((2, 8), jnp.int32)).shape == (2, 8, 32)


# ---------------------------------------------------------------------------------------------
# Parameters that name no logical axes: the default rule (rules.default_spec)


class UnnamedMLP(nn.Module):
    """A user's model as written without this framework in mind: plain nn.Dense, no names."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x.reshape(x.shape[0], -1)  # 64 features
        x = nn.relu(nn.Dense(512, name="up")(x))  # kernel (64, 512): 128 KiB
        x = nn.relu(nn.Dense(128, name="down")(x))  # kernel (512, 128): 256 KiB
        return nn.Dense(10, name="head")(x)  # kernel (128, 10): 5 KiB, under the threshold


def _pure_init(key, example):
    """A pure init/apply pair as a user writes it: the params are a dict of plain arrays. 64
    logits, of which the 10 classes of the test batches are the first."""
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (64, 512)) / 8.0, "b1": jnp.zeros((512,)),
            "w2": jax.random.normal(k2, (512, 64)) / 16.0, "b2": jnp.zeros((64,))}


def _pure_apply(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


PURE = (_pure_init, _pure_apply)
_USER_MODELS = {"unnamed_mlp": UnnamedMLP(), "pure": PURE}

UNNAMED_SPECS = {
    # Largest divisible dimension (ties to the later one): the MLP's 512 hidden units, which is
    # Megatron's column (up) then row (down) split under tensor.
    "fsdp": {"up": P(None, "fsdp"), "down": P("fsdp"), "head": P()},
    "tensor": {"up": P(None, "tensor"), "down": P("tensor"), "head": P()},
    # Tensor first, then fsdp on another dimension.
    "fsdp_tensor": {"up": P("fsdp", "tensor"), "down": P("tensor", "fsdp"), "head": P()},
    "data": {"up": P(), "down": P(), "head": P()},
}
PURE_SPECS = {
    "fsdp": {"w1": P(None, "fsdp"), "w2": P("fsdp"), "b1": P(), "b2": P()},
    "tensor": {"w1": P(None, "tensor"), "w2": P("tensor"), "b1": P(), "b2": P()},
    "fsdp_tensor": {"w1": P("fsdp", "tensor"), "w2": P("tensor", "fsdp"), "b1": P(), "b2": P()},
    "data": {"w1": P(), "w2": P(), "b1": P(), "b2": P()},
}


@functools.cache
def _compiled_user(family, parallel):
    model = _USER_MODELS[family]
    # SGD: parameters then compare gradients; Adam would turn float32 reduction-order noise in
    # near-zero gradient entries into whole learning-rate steps.
    tx, schedule = optim.make(OptimizerConfig(name="sgd", learning_rate=0.5), total_steps=100)
    devices = jax.devices()[:1] if parallel == ONE_DEVICE else None
    mesh = mesh_lib.make_mesh(parallel, devices=devices)
    return mesh, loop.compile_steps(model, tx, schedule, _example("image"), parallel, mesh)


def _run_user(family, parallel):
    _, c = _compiled_user(family, parallel)
    state = c.init_fn()
    losses = []
    for batch in _batches("image"):
        state, metrics = c.train_step(state, jax.device_put(batch, c.batch_sharding))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state, c


@pytest.mark.parametrize("preset", ["fsdp", "tensor", "fsdp_tensor", "data"])
@pytest.mark.parametrize("family", ["unnamed_mlp", "pure"])
def test_unnamed_parameters_follow_the_default_rule_and_train_like_one_device(family, preset):
    _, c = _compiled_user(family, PRESETS[preset])
    params = c.state_sharding.params
    if family == "unnamed_mlp":
        got = {layer: params[layer]["kernel"].spec for layer in ("up", "down", "head")}
        assert all(params[layer]["bias"].spec == P() for layer in ("up", "down", "head"))
        assert got == UNNAMED_SPECS[preset]
    else:
        assert {k: s.spec for k, s in params.items()} == PURE_SPECS[preset]
    r = c.report
    n_split = 0 if preset == "data" else 2
    assert r.by_name == {"count": 0, "bytes": 0}
    assert r.by_default["count"] == n_split and r.replicated["count"] == r.unnamed - n_split
    assert r.by_default["bytes"] + r.replicated["bytes"] == r.params_bytes
    if preset != "data":
        assert "nn.with_logical_partitioning(init, (\"embed\", \"mlp\"))" in r.describe()
        assert r.params_bytes_per_device < r.params_bytes / 3

    ref_losses, ref_state, _ = _run_user(family, ONE_DEVICE)
    losses, state, _ = _run_user(family, PRESETS[preset])
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(ref_state.params),
                                rtol=RTOL, atol=ATOL)
    for arr, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        assert arr.sharding.is_equivalent_to(want, arr.ndim)


def test_state_shardings_take_plain_shape_dtype_structs():
    # A pure-function model's params as jax.ShapeDtypeStructs, no boxes and no boxed tree.
    tx, _ = optim.make(OptimizerConfig(name="adam"), total_steps=10)
    init = lambda: loop.init_state(PURE, tx, _example("image"), 0)  # noqa: E731
    shapes = jax.eval_shape(init)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes.params))
    mesh = mesh_lib.make_mesh(PRESETS["fsdp"])
    shardings, report = sharding_lib.state_shardings(shapes, None, mesh, "fsdp")
    assert {k: s.spec for k, s in shardings.params.items()} == PURE_SPECS["fsdp"]
    assert report.by_default == {"count": 2, "bytes": (64 * 512 + 512 * 64) * 4}
    # Adam's moments follow the parameters they mirror.
    specs = lambda tree: jax.tree.map(lambda s: s.spec, tree)  # noqa: E731
    adam = shardings.opt_state.inner_state[0]  # optim.make's chain, inside inject_hyperparams
    assert specs(adam.mu) == specs(adam.nu) == specs(shardings.params)
    # The same tree passed explicitly as the "boxed" one, and a threshold that keeps all whole.
    same, _ = sharding_lib.state_shardings(shapes, shapes.params, mesh, "fsdp")
    assert same == shardings
    whole, report = sharding_lib.state_shardings(shapes, None, mesh, "fsdp",
                                                 default_min_bytes=1 << 30)
    assert all(s.spec == P() for s in whole.params.values()) and report.by_default["count"] == 0


def test_named_and_unnamed_parameters_in_one_model_are_counted_apart():
    class Mixed(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            x = x.reshape(x.shape[0], -1)
            x = nn.Dense(512, kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "mlp")), name="named")(x)
            return nn.Dense(256, name="plain")(x)

    tx, _ = optim.make(OptimizerConfig(), total_steps=10)
    model = Mixed()
    shapes = jax.eval_shape(lambda: loop.init_state(model, tx, _example("image"), 0))
    shardings, report = sharding_lib.state_shardings(
        shapes, loop.abstract_variables(model, _example("image"))["params"],
        mesh_lib.make_mesh(PRESETS["tensor"]), "tensor")
    # Named: the table's ("mlp", "tensor"); unnamed: largest divisible dimension, 512.
    assert shardings.params["named"]["kernel"].spec == P(None, "tensor")
    assert shardings.params["plain"]["kernel"].spec == P("tensor")
    assert report.by_name == {"count": 1, "bytes": 64 * 512 * 4}
    assert report.by_default == {"count": 1, "bytes": 512 * 256 * 4}
    assert report.unnamed == 3  # the plain kernel and both biases (the named layer's bias too)


@pytest.mark.parametrize("shape, preset, mesh, want", [
    ((1024, 96), "fsdp", {"fsdp": 8}, P("fsdp")),
    ((96, 1024), "fsdp", {"fsdp": 8}, P(None, "fsdp")),
    ((256, 256), "fsdp", {"fsdp": 8}, P(None, "fsdp")),  # tie: the later (output) dimension
    ((1001, 99), "fsdp", {"fsdp": 8}, P()),  # nothing divides: replicated
    ((1001, 96), "fsdp", {"fsdp": 8}, P(None, "fsdp")),  # the largest that divides
    ((3, 3, 64, 128), "tensor", {"tensor": 4}, P(None, None, None, "tensor")),  # conv filters
    ((512, 128), "fsdp_tensor", {"fsdp": 4, "tensor": 2}, P("tensor", "fsdp")),
    ((512, 128), "data", {"data": 8}, P()),
    ((8192,), "fsdp", {"fsdp": 8}, P()),  # 32 KiB: under the threshold
    ((1 << 15,), "fsdp", {"fsdp": 8}, P("fsdp")),  # 128 KiB vector: over it
])
def test_default_rule(shape, preset, mesh, want):
    from jaxmodels.parallel import rules

    mesh_shape = {"data": 1, "fsdp": 1, "tensor": 1, **mesh}
    nbytes = int(np.prod(shape)) * 4
    assert rules.default_spec(shape, nbytes, preset, mesh_shape) == want


def test_presets_degrade_to_the_devices_present_and_say_so():
    # The free Colab TPU is one chip: a preset's own sizes shrink to what the devices allow
    # (an explicit size never does), and the start-up line and plan say what was lost.
    shape = lambda n, **kw: mesh_lib.mesh_shape(ParallelConfig(**kw), n)  # noqa: E731
    assert shape(1, preset="fsdp_tensor") == {"data": 1, "fsdp": 1, "tensor": 1}
    assert shape(2, preset="fsdp_tensor") == {"data": 1, "fsdp": 1, "tensor": 2}
    assert shape(3, preset="fsdp_tensor") == {"data": 1, "fsdp": 3, "tensor": 1}
    assert mesh_lib.degraded("fsdp_tensor", shape(3, preset="fsdp_tensor")) == "the preset's tensor=2 is tensor=1 here"
    assert "shards nothing" in mesh_lib.degraded("fsdp", shape(1, preset="fsdp"))
    assert mesh_lib.degraded("fsdp_tensor", shape(8, preset="fsdp_tensor")) is None
    assert mesh_lib.degraded("data", shape(1)) is None
    with pytest.raises(UserError, match="cannot fill 1 devices"):
        shape(1, preset="fsdp_tensor", tensor=2)
    mesh = mesh_lib.make_mesh(ParallelConfig(preset="fsdp_tensor", devices=1))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
