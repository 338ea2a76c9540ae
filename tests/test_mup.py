"""muP: roles and learning-rate multipliers, the optax transform, equality with the standard
parametrization at base width, and the coordinate check itself (logits flat in width under muP,
growing under the standard parametrization)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
import pytest
from flax import traverse_util

from jaxmodels import cli, data, models, runtime
from jaxmodels.config import Config, ConfigError, DataConfig, OptimizerConfig
from jaxmodels.models import MLPConfig, TransformerLMConfig, ViTConfig
from jaxmodels.scaling import coordcheck
from jaxmodels.training import mup, optim, tasks
from jaxmodels.training.state import abstract_variables

IMAGE = jnp.zeros((1, 8, 8, 1))
TOKENS = jnp.zeros((1, 8), jnp.int32)


def _lm(**kw) -> TransformerLMConfig:
    base = dict(num_layers=1, num_heads=2, d_model=32, max_len=8, positional="rope",
                tie_embeddings=False, vocab_size=16, base_width=32)
    return TransformerLMConfig(**{**base, **kw})


def _multipliers(cfg, example, optimizer="adam"):
    return mup.lr_multipliers(cfg, optimizer, models.build(cfg), example)


# ---------------------------------------------------------------------------------------------
# Roles and multipliers (shapes only: nothing is compiled).


def test_mlp_multipliers_by_role():
    cfg = MLPConfig(hidden=(256, 256), parametrization="mup", base_width=64)
    adam = _multipliers(cfg, IMAGE)
    # first layer (fixed fan-in) and biases: vector-like; dense1: hidden; the head: vector-like
    # (its 1/m is in the forward pass).
    assert adam == {"dense0": {"kernel": 1.0, "bias": 1.0}, "dense1": {"kernel": 0.25, "bias": 1.0},
                    "head": {"kernel": 1.0, "bias": 1.0}}
    sgd = _multipliers(cfg, IMAGE, "sgd")
    assert sgd == {"dense0": {"kernel": 4.0, "bias": 4.0}, "dense1": {"kernel": 1.0, "bias": 4.0},
                   "head": {"kernel": 4.0, "bias": 1.0}}  # the 10-class bias grows in no dimension


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_transformer_multipliers_by_role(scan):
    cfg = _lm(d_model=128, num_layers=2, positional="learned", scan_layers=scan,
              parametrization="mup")
    mult = _multipliers(cfg, TOKENS)
    blocks = [mult["stack"]["blocks"]] if scan else [mult["stack"][f"block_{i}"] for i in range(2)]
    for block in blocks:  # the scanned "layers" axis does not count as a width axis
        assert block["attn"] == {"query": 0.25, "key": 0.25, "value": 0.25, "out": 0.25}
        assert block["mlp"] == {"up": 0.25, "down": 0.25}
        assert block["attn_norm"] == {"scale": 1.0, "bias": 1.0}
    assert mult["embed"] == {"embedding": 1.0} and mult["positions"] == {"embedding": 1.0}
    assert mult["head"] == 1.0 and mult["stack"]["final_norm"] == {"scale": 1.0, "bias": 1.0}


def test_vit_roles_and_standard_gets_no_multipliers():
    cfg = ViTConfig(num_layers=1, num_heads=2, d_model=64, patch_size=4, max_len=8,
                    parametrization="mup", base_width=32)
    roles = mup.roles(abstract_variables(models.build(cfg), IMAGE)["params"], cfg.width_axes)
    assert roles["patch_kernel"] == "vector" and roles["head"] == {"kernel": "vector", "bias": "fixed"}
    assert roles["stack"]["block_0"]["mlp"] == {"up": "hidden", "down": "hidden"}
    assert _multipliers(dataclasses.replace(cfg, parametrization="standard"), IMAGE) is None


# ---------------------------------------------------------------------------------------------
# The optax transform.

PARAMS = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.array([0.5, -1.0, 2.0])}
GRADS = {"w": jnp.array([[0.3, -0.2, 0.1], [1.0, 2.0, -3.0]]), "b": jnp.array([0.1, 0.0, -0.4])}
MULT = {"w": 0.125, "b": 3.0}


@pytest.mark.parametrize("name", ["sgd", "adam", "lion"])
def test_multipliers_scale_updates_exactly(name):
    cfg = OptimizerConfig(name=name, learning_rate=0.01, momentum=0.9 if name == "sgd" else 0.0)
    plain, _ = optim.make(cfg, 10)
    scaled, _ = optim.make(cfg, 10, lr_multipliers=MULT)
    s_plain, s_scaled = plain.init(PARAMS), scaled.init(PARAMS)
    for _ in range(2):  # the second step sees momentum: the state is not rescaled
        u_plain, s_plain = plain.update(GRADS, s_plain, PARAMS)
        u_scaled, s_scaled = scaled.update(GRADS, s_scaled, PARAMS)
        for k in PARAMS:
            np.testing.assert_array_equal(u_scaled[k], u_plain[k] * MULT[k])


def test_adamw_multipliers_leave_the_decay_unscaled():
    cfg = OptimizerConfig(name="adamw", learning_rate=0.01, weight_decay=0.5)
    tx, _ = optim.make(cfg, 10, lr_multipliers=MULT)
    direction = optax.scale_by_adam()
    u, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    d, _ = direction.update(GRADS, direction.init(PARAMS), PARAMS)
    # The matrix decays at lr x wd whatever its multiplier; the bias is not decayed.
    np.testing.assert_allclose(u["w"], -0.01 * (MULT["w"] * d["w"] + 0.5 * PARAMS["w"]), rtol=1e-6)
    np.testing.assert_allclose(u["b"], -0.01 * MULT["b"] * d["b"], rtol=1e-6)


@pytest.mark.parametrize("name, reference", [("adamw", optax.adamw), ("lion", optax.lion)])
def test_without_multipliers_the_optimizer_is_optax_own(name, reference):
    # The chain with its values as constants; optim.make's injected one equals it
    # (tests/test_runtime_hparams.py).
    tx, schedule = optim.make_baked(OptimizerConfig(name=name, learning_rate=0.01, weight_decay=0.5), 10)
    ref = reference(schedule, weight_decay=0.5, mask=optim.decay_mask)
    state, ref_state = tx.init(PARAMS), ref.init(PARAMS)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    u, _ = tx.update(GRADS, state, PARAMS)
    u_ref, _ = ref.update(GRADS, ref_state, PARAMS)
    jax.tree.map(np.testing.assert_array_equal, u, u_ref)


# ---------------------------------------------------------------------------------------------
# The models: muP is the standard model with rescaled weights (exactly the same at base width).


def _readout(cfg) -> tuple[str, ...]:
    return ("head", "kernel") if isinstance(cfg, MLPConfig) else ("head",)


def _as_standard(cfg, params):
    """Standard-parametrization params computing what the muP model computes with `params`:
    the readout times base/width, the queries times the ratio of the attention scales."""
    flat = traverse_util.flatten_dict(params)
    flat[_readout(cfg)] = flat[_readout(cfg)] * (cfg.base_width / cfg.width)
    if not isinstance(cfg, MLPConfig):
        query = ("stack", "block_0", "attn", "query")
        flat[query] = flat[query] * (cfg.attention_scale * cfg.head_dim ** 0.5)
    return traverse_util.unflatten_dict(flat)


def _pair(kind: str, factor: int):
    """(muP config, standard config, input) at `factor` times the base width."""
    rng = np.random.default_rng(0)
    if kind == "mlp":
        cfg = MLPConfig(hidden=(16 * factor,) * 2, parametrization="mup", base_width=16)
        x = jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32)
    else:
        cfg = _lm(d_model=32 * factor, parametrization="mup")
        x = jnp.asarray(rng.integers(0, 16, (2, 8)), jnp.int32)
    return cfg, dataclasses.replace(cfg, parametrization="standard"), x


def _random_params(model, x):
    # numpy draws: no PRNG kernels to compile
    rng = np.random.default_rng(1)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x))["params"]
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_mup_at_base_width_is_the_standard_model(kind):
    mup_cfg, std_cfg, x = _pair(kind, 1)
    mup_model, std_model = models.build(mup_cfg), models.build(std_cfg)
    params = _random_params(std_model, x)
    # The same function of the same parameters, bit for bit, trained the same way.
    np.testing.assert_array_equal(jax.jit(mup_model.apply)({"params": params}, x),
                                  jax.jit(std_model.apply)({"params": params}, x))
    assert set(jax.tree.leaves(_multipliers(mup_cfg, x))) == {1.0}


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_mup_is_the_standard_model_with_rescaled_weights(kind):
    mup_cfg, std_cfg, x = _pair(kind, 4)
    mup_model, std_model = models.build(mup_cfg), models.build(std_cfg)
    params = _random_params(std_model, x)
    got = jax.jit(mup_model.apply)({"params": params}, x)
    std_apply = jax.jit(std_model.apply)
    np.testing.assert_allclose(got, std_apply({"params": _as_standard(mup_cfg, params)}, x),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, std_apply({"params": params}, x), rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# The coordinate check.

WIDTHS = (64, 128, 256, 512, 1024)


@pytest.fixture(scope="module")
def mlp_coords(mnist):
    """Output and hidden RMS over 3 Adam steps (lr 1e-2) on the same MNIST batches: muP at
    widths 64..1024 (base 64), standard at 64, 256, 1024."""
    images, labels = mnist.splits["train"]
    it = data.TrainBatches(images, labels, batch_size=64, seed=0, mean=mnist.mean, std=mnist.std)
    batches = [next(it) for _ in range(4)]
    config = Config(model=MLPConfig(hidden=(64, 64, 64), base_width=64),
                    optimizer=OptimizerConfig(name="adam", learning_rate=1e-2))
    out = {}
    for p, widths in (("mup", WIDTHS), ("standard", (64, 256, 1024))):
        cfg = dataclasses.replace(config, model=dataclasses.replace(config.model, parametrization=p))
        out[p] = coordcheck.coord_data(coordcheck.configs_at(cfg, widths), batches, steps=3)
    return out


def test_mlp_coordinates_are_width_independent_under_mup(mlp_coords):
    d = mlp_coords["mup"]
    assert d.layers == ("dense0", "dense1", "dense2", "head")  # the head's output is the model's
    rms = d.rms[:, 1:, :]  # steps 1..3 (the zero-initialised readout is 0 at step 0)
    ratio = rms.max(axis=0) / rms.min(axis=0)  # [step, layer]
    assert np.all(ratio <= 2.0), ratio
    assert np.all(d.rms[:, 3, -1] > 0.1)  # the logits did move


def test_mup_changes_no_init_but_the_readout(mlp_coords):
    # Same seed, same widths: the hidden layers' outputs at step 0 (which depend on nothing but
    # their initial weights) agree, and only the readout differs (zero under muP).
    mup_d, std_d = mlp_coords["mup"], mlp_coords["standard"]
    rows = [mup_d.widths.index(w) for w in std_d.widths]
    np.testing.assert_allclose(mup_d.rms[rows, 0, :3], std_d.rms[:, 0, :3], rtol=1e-6)
    assert np.all(std_d.rms[:, 0, -1] > 0.1) and np.all(mup_d.rms[:, 0, -1] == 0.0)


def test_mlp_logits_grow_with_width_under_standard(mlp_coords):
    logits = mlp_coords["standard"].rms[:, 1:, -1]  # [width, step 1..3]
    # One Adam step moves every readout weight by ~lr in a direction aligned with its input,
    # so the logits move ~lr x width: 16x the width gave 11-80x the logits at steps 1-3.
    assert np.all(np.diff(logits, axis=0) > 0), logits
    assert np.all(logits[-1] / logits[0] > 4.0), logits


def test_transformer_coordinates_are_width_independent_under_mup():
    """d_model 64 and 512 (4 heads) on real Shakespeare windows. The standard model is left to
    `jaxmodels coordcheck --compare` (it compiles as slowly): there the block output grew 15x and
    the logits 2.2x over the same 3 steps, so a wrong multiplier cannot pass this test."""
    data_cfg = DataConfig(dataset="shakespeare", seq_len=8, batch_size=4, eval_split="validation")
    task = tasks.build(data_cfg)
    it = task.train_batches(0)
    batches = [next(it) for _ in range(4)]
    model = TransformerLMConfig(num_layers=1, num_heads=4, d_model=64, max_len=8, positional="rope",
                                tie_embeddings=False, vocab_size=task.num_outputs,
                                parametrization="mup", base_width=64)
    cfg = Config(model=model, data=data_cfg, optimizer=OptimizerConfig(name="adam", learning_rate=1e-2))
    d = coordcheck.coord_data(coordcheck.configs_at(cfg, (64, 512)), batches, steps=3)
    out = d.layers.index("output")
    assert np.all(d.rms[:, 0, out] == 0.0)  # the zero-initialised readout
    rms = d.rms[:, 1:, :]
    # Every layer within 1.5x between the widths after each step (measured <= 1.3x).
    assert np.all(rms.max(axis=0) / rms.min(axis=0) <= 1.5), rms
    assert np.all(rms[:, -1, out] > 0.5)  # the logits did move


# ---------------------------------------------------------------------------------------------
# Mistakes are one line, before anything compiles.


def _cli_error(capsys, monkeypatch, argv) -> str:
    # In this process conftest started JAX before cli.main, so the CLI would first say (once per
    # process) that its XLA CPU flags cannot apply: a line a shell run never prints, and which
    # made this test fail when it ran first in its worker.
    monkeypatch.setenv(runtime.FLAGS_ENV, "0")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxmodels: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["experiments/configs/mup_mlp_mnist.py", "--widths", "64,x"], "comma-separated integers"),
    (["experiments/configs/mup_mlp_mnist.py", "--widths", "64"], "at least two"),
    (["experiments/configs/mup_mlp_mnist.py", "optimizer.name=adafactor"], "no muP learning-rate rule"),
    (["experiments/configs/mup_gpt_shakespeare.py", "--widths", "64,100"], "width 100"),
    (["experiments/configs/seed_cnn_mnist.py"], "got model kind seed_cnn"),
    (["experiments/configs/mup_mlp_mnist.py", "--steps", "0"], "--steps 0"),
])
def test_coordcheck_mistakes_are_one_line(capsys, monkeypatch, argv, expected):
    monkeypatch.setattr(tasks, "build", lambda *a: pytest.fail("loaded data despite the error"))
    assert expected in _cli_error(capsys, monkeypatch, ["coordcheck", *argv])


@pytest.mark.parametrize("model, expected", [
    (MLPConfig(hidden=(64, 32), parametrization="mup"), "model.hidden must repeat one width"),
    (MLPConfig(base_width=0), "model.base_width must be positive"),
    (TransformerLMConfig(base_width=-1), "model.base_width must be positive"),
])
def test_config_problems(model, expected):
    with pytest.raises(ConfigError, match=expected):
        Config(model=model)
