"""FLOP and parameter accounting against the real models and XLA; the peak table and CPU probe.

Three references for `flops.account`:
  - parameter counts: the initialised models' leaf sizes, exactly;
  - matmul FLOPs: every dot_general and convolution in the traced train step (JAX's own autodiff,
    so the skipped input gradient of the data and remat's recomputation come from JAX, not from
    us), loop bodies times their trip count: exactly equal, for every family;
  - XLA's `cost_analysis()` of the compiled train step (one device, plain SGD so the update stays
    small), within a tolerance, after reconciling with formulas written out here where XLA counts
    differently from the model-FLOP convention:
      causal attention: XLA computes the full T x T square (forward and backward), we count T(T+1)/2;
      'same' convolutions: XLA skips the multiply-adds that land on zero padding, we count them;
      RNN time steps run in a while loop, whose body XLA counts once: the recurrent matmul once.
    What remains is elementwise work (norms, activations, softmax, loss, the SGD update, the step's
    norm metrics), which XLA counts and we do not. With the sizes below (matmuls dominate) XLA lands
    between 0 % and +10 % above us (measured: +2 % to +8 %).
"""

import dataclasses
import functools
import json
import math
import warnings

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import models as M
from jaxmodels.config import OptimizerConfig, ParallelConfig
from jaxmodels.errors import ConfigError
from jaxmodels.accounting import flops, hardware, xla_flops
from jaxmodels.training import optim
from jaxmodels.training import state as state_lib
from jaxmodels.training import step as step_lib

XLA_TOLERANCE = (0.99, 1.10)  # xla / reconciled analytic: XLA adds elementwise work, never fewer matmuls


def _is_token_model(cfg) -> bool:
    return hasattr(cfg, "vocab_size")


def _input_dtype(cfg):
    return jnp.int32 if _is_token_model(cfg) else jnp.float32


# ---------------------------------------------------------------------------------------------
# Parameter counts


PARAM_CASES = [
    (M.SeedCNNConfig(), (28, 28, 1)),
    (M.SeedCNNConfig(filters=5, kernel_size=5, num_classes=3), (13, 9, 3)),  # odd sizes: pool floors
    (M.BatchNormCNNConfig(), (28, 28, 1)),
    (M.BatchNormCNNConfig(block_filters=(4, 6, 8), convs_per_block=1, hidden=7), (17, 16, 3)),
    (M.MLPConfig(hidden=(16, 8)), (8, 8, 1)),
    (M.RNNLMConfig(cell="lstm", hidden=12, num_layers=2, vocab_size=11, embed_dim=5), (7,)),
    (M.RNNLMConfig(cell="gru", hidden=12, num_layers=2, vocab_size=11, embed_dim=5), (7,)),
    (M.RNNClassifierConfig(cell="elman", hidden=9, num_layers=3), (6, 5, 2)),
    (M.RNNClassifierConfig(cell="gru", hidden=9), (7, 3)),
    (M.TransformerLMConfig(num_layers=2, num_heads=4, d_model=16, max_len=12, vocab_size=13,
                           tie_embeddings=False), (12,)),
    (M.TransformerLMConfig(num_layers=2, num_heads=4, num_kv_heads=2, d_model=16, max_len=12, vocab_size=13,
                           positional="rope", mlp="swiglu", norm="rmsnorm", scan_layers=True, remat=True), (10,)),
    (M.TransformerClassifierConfig(num_layers=1, num_heads=2, d_model=8, max_len=9, vocab_size=7,
                                   positional="sinusoidal", num_classes=3), (9,)),
    (M.ViTConfig(num_layers=1, num_heads=2, d_model=8, max_len=20, patch_size=4, pool="cls"), (8, 12, 1)),
    (M.ViTConfig(num_layers=2, num_heads=2, d_model=8, max_len=20, patch_size=2, mlp="swiglu", d_ff=12),
     (4, 6, 3)),
]


@pytest.mark.parametrize("cfg, shape", PARAM_CASES, ids=lambda x: getattr(x, "kind", str(x)))
def test_parameter_counts_equal_the_initialised_model(cfg, shape):
    model = M.build(cfg)
    example = jnp.zeros((1, *shape), _input_dtype(cfg))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
    leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(variables["params"]))
    sizes = {jax.tree_util.keystr(path): int(np.prod(leaf.shape)) for path, leaf in leaves}
    # Looked-up tables: token embeddings and learned positions ("embedding"), ViT's class token.
    lookup = sum(n for path, n in sizes.items() if path.endswith(("['embedding']", "['cls']")))
    acc = flops.account(cfg, shape)
    assert acc.params == sum(sizes.values())
    assert acc.non_embedding_params == acc.params - lookup


# ---------------------------------------------------------------------------------------------
# Training FLOPs, exactly: the matrix products of the traced train step


def _matmul_flops(jaxpr, repeat: int = 1) -> int:
    """2 x multiply-adds of every dot_general and convolution in `jaxpr`, loop bodies times their
    trip count: an independent count of exactly what the analytic formulas claim to count."""
    total = 0
    for eqn in jaxpr.eqns:
        out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += repeat * 2 * out * math.prod(lhs[d] for d in contracting)
        elif eqn.primitive.name == "conv_general_dilated":
            # Each output sums over the kernel's input features and window (rhs_spec: out, in, spatial...).
            rhs, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
            total += repeat * 2 * out * math.prod(rhs[d] for d in spec[1:])
        inner = repeat * eqn.params["length"] if eqn.primitive.name == "scan" else repeat
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _matmul_flops(sub.jaxpr, inner)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _matmul_flops(sub, inner)
    return total


def _step_and_shapes(cfg, shape, batch):
    """The real train step (plain SGD) and the abstract state and batch it takes."""
    model = M.build(cfg)
    tx, schedule = optim.make(OptimizerConfig(name="sgd", learning_rate=0.1), 10)
    dtype = _input_dtype(cfg)
    state = jax.eval_shape(lambda: state_lib.init_state(model, tx, jnp.zeros((1, *shape), dtype), 0))
    targets = (batch, shape[0]) if isinstance(cfg, (M.TransformerLMConfig, M.RNNLMConfig)) else (batch,)
    batch_shapes = {"inputs": jax.ShapeDtypeStruct((batch, *shape), dtype),
                    "targets": jax.ShapeDtypeStruct(targets, jnp.int32),
                    "mask": jax.ShapeDtypeStruct(targets, jnp.float32)}
    return step_lib.make_train_step(model, tx, schedule=schedule), state, batch_shapes


@pytest.mark.parametrize("cfg, shape", PARAM_CASES, ids=lambda x: getattr(x, "kind", str(x)))
def test_hardware_flops_equal_the_matmuls_of_the_traced_train_step(cfg, shape):
    """Exact, for every family, with remat (the scanned LM case) and without: what JAX's autodiff
    emits (no input gradient for the data, recomputation under remat) is what we count."""
    batch = 3
    step, state, batch_shapes = _step_and_shapes(cfg, shape, batch)
    traced = _matmul_flops(jax.make_jaxpr(step)(state, batch_shapes).jaxpr)
    acc = flops.account(cfg, shape)
    expected = acc.hardware_flops_per_example
    if isinstance(cfg, M.TransformerLMConfig):  # the masked half of the square, in every forward-equivalent
        t = shape[0]
        expected += (4 if cfg.remat else 3) * cfg.num_layers * 4 * cfg.num_heads * cfg.head_dim * (
            t * t - t * (t + 1) // 2)
    if isinstance(cfg, M.TransformerClassifierConfig):  # mean pooling is an einsum: forward and dx
        expected += 2 * 2 * shape[0] * cfg.d_model
    assert traced == batch * expected
    assert (acc.hardware_flops_per_example > acc.model_flops_per_example) == bool(getattr(cfg, "remat", False))


# ---------------------------------------------------------------------------------------------
# Training FLOPs against XLA


@functools.cache
def _xla_flops(cfg, shape: tuple[int, ...], batch: int, optimized: bool = True) -> float:
    """XLA's FLOPs of one compiled (never run) train step on one device, plain SGD; with
    `optimized=False`, of the program as lowered, before XLA's passes."""
    step, state, batch_shapes = _step_and_shapes(cfg, shape, batch)
    lowered = jax.jit(step).lower(state, batch_shapes)
    return flops.compiled_flops(lowered.compile() if optimized else lowered)


def _same_conv_taps(n: int, k: int) -> int:
    """(output, tap) pairs along one axis of a stride-1 'same' convolution that land inside the input."""
    lo = (k - 1) // 2
    return sum(min(n, i - lo + k) - max(0, i - lo) for i in range(n))


def _padding_skipped_by_xla(fan_in: int, fan_out: int, h: int, w: int, k: int, factor: int) -> int:
    """Training FLOPs of the zero-padding taps of one conv layer, which XLA does not count."""
    return factor * 2 * fan_in * fan_out * (k * k * h * w - _same_conv_taps(h, k) * _same_conv_taps(w, k))


def _causal_square_counted_by_xla(cfg, t: int) -> int:
    """Training FLOPs of the masked half of causal attention, which XLA computes and we do not."""
    masked_pairs = t * t - t * (t + 1) // 2
    return 3 * cfg.num_layers * 2 * (2 * cfg.num_heads * cfg.head_dim) * masked_pairs


def _assert_close_to_xla(cfg, shape, batch, expected_per_example, upper=XLA_TOLERANCE[1]):
    ratio = _xla_flops(cfg, shape, batch) / (batch * expected_per_example)
    assert XLA_TOLERANCE[0] <= ratio <= upper, f"XLA / analytic = {ratio:.4f}"


def test_cnn_flops_match_xla_with_its_padding_convention():
    cfg, shape = M.SeedCNNConfig(filters=32, kernel_size=5), (12, 12, 8)
    acc = flops.account(cfg, shape)
    # The first conv reads the images: no input gradient, 2x its forward.
    skipped = _padding_skipped_by_xla(8, 32, 12, 12, 5, factor=2)
    _assert_close_to_xla(cfg, shape, 4, acc.model_flops_per_example - skipped)

    cfg, shape = M.BatchNormCNNConfig(block_filters=(16, 32), hidden=32, dropout=0.0), (12, 12, 4)
    acc = flops.account(cfg, shape)
    skipped, (h, c), first = 0, (12, 4), True
    for f in cfg.block_filters:
        for _ in range(cfg.convs_per_block):
            skipped += _padding_skipped_by_xla(c, f, h, h, 3, factor=2 if first else 3)
            c, first = f, False
        h //= 2
    _assert_close_to_xla(cfg, shape, 4, acc.model_flops_per_example - skipped)


def test_mlp_flops_match_xla():
    # 6 FLOPs per parameter per example: the batch must be large for the update to be negligible.
    cfg, shape = M.MLPConfig(hidden=(256, 256)), (16, 16, 1)
    _assert_close_to_xla(cfg, shape, 128, flops.account(cfg, shape).model_flops_per_example)


@pytest.mark.parametrize("cfg, shape, batch", [
    (M.RNNLMConfig(cell="lstm", hidden=128, num_layers=2, vocab_size=32, embed_dim=32), (16,), 16),
    (M.RNNClassifierConfig(cell="gru", hidden=128), (8, 16), 32),
], ids=["lstm_lm", "gru_classifier"])
def test_rnn_flops_match_xla_counting_the_loop_body_once(cfg, shape, batch):
    acc = flops.account(cfg, shape)
    t = shape[0]
    # Both gate matmuls of every layer run in the loop body (models/rnn.py), which XLA counts
    # once: take T - 1 steps of them out. Each is 3x its forward in training, 2x where it reads
    # the data (no input gradient: the classifier's image rows).
    per_step = sum(term.forward_flops // t * (2 if term.reads_data else 3) for term in acc.terms
                   if term.name.endswith((" input", " recurrent")))
    assert acc.tokens_per_example == (t if isinstance(cfg, M.RNNLMConfig) else 1)
    # What is left is one step's matmuls beside the head, so one step's elementwise gate work
    # (which XLA counts and the formula does not) weighs more than in a whole network: up to 12 %.
    _assert_close_to_xla(cfg, shape, batch, acc.model_flops_per_example - (t - 1) * per_step,
                         upper=1.12)


# A context long against the width (T = 4 D): attention is 24 % of the training FLOPs, so counting
# the full square instead of the causal half would be ~20 % off, far outside the tolerance. One
# head (Dh = 32) keeps the softmax's elementwise work small next to the attention matmuls.
LM = M.TransformerLMConfig(num_layers=2, num_heads=1, d_model=32, max_len=128, vocab_size=64)


def test_transformer_lm_flops_match_xla_with_causal_attention_halved():
    t = 128
    acc = flops.account(LM, (t,))
    assert acc.tokens_per_example == t
    _assert_close_to_xla(LM, (t,), 4, acc.model_flops_per_example + _causal_square_counted_by_xla(LM, t))


def test_remat_adds_the_recomputed_forward_that_xla_sees():
    t, batch = 128, 4
    remat = dataclasses.replace(LM, remat=True)
    plain_acc, remat_acc = flops.account(LM, (t,)), flops.account(remat, (t,))
    assert plain_acc.hardware_flops_per_example == plain_acc.model_flops_per_example
    assert remat_acc.model_flops_per_example == plain_acc.model_flops_per_example
    assert remat_acc.hardware_flops_per_example > remat_acc.model_flops_per_example
    assert flops.account(remat, (t,), remat=False) == plain_acc  # "what if" overrides the config

    # The recomputed attention is the full square in XLA too: one forward's worth of it.
    recompute_in_xla = (remat_acc.hardware_flops_per_example - remat_acc.model_flops_per_example
                        + _causal_square_counted_by_xla(LM, t) // 3)
    # The program as lowered, before XLA's passes: the CPU compiler drops the optimization
    # barriers that keep the recomputation apart ("cse_barrier_expander") before its CSE, which
    # then merges whatever recomputed subgraph is written exactly like its forward (with
    # models/layer_norm.py's custom VJP, the attention). What the compiled CPU step recomputes
    # is thus up to XLA; what remat asks for, and what the formula counts, is this.
    extra = (_xla_flops(remat, (t,), batch, optimized=False)
             - _xla_flops(LM, (t,), batch, optimized=False))
    ratio = extra / (batch * recompute_in_xla)
    # Recomputing the MLP down projection too would put this near 0.7.
    assert XLA_TOLERANCE[0] <= ratio <= XLA_TOLERANCE[1], f"XLA's extra / analytic recompute = {ratio:.4f}"


@pytest.mark.parametrize("cfg, shape", [
    (M.TransformerClassifierConfig(num_layers=1, num_heads=4, num_kv_heads=2, d_model=64, max_len=32,
                                   vocab_size=64, mlp="swiglu", norm="rmsnorm"), (32,)),
    (M.ViTConfig(num_layers=1, num_heads=4, d_model=64, max_len=17, patch_size=4, pool="cls"), (16, 16, 3)),
], ids=["gqa_swiglu_classifier", "vit"])
def test_bidirectional_transformer_flops_match_xla(cfg, shape):
    acc = flops.account(cfg, shape)
    assert acc.tokens_per_example == 1
    _assert_close_to_xla(cfg, shape, 4, acc.model_flops_per_example)


def test_describe_is_one_line_with_the_numbers():
    assert flops.describe(flops.account(M.SeedCNNConfig(), (28, 28, 1))) == (
        "seed_cnn: 63k params (63k non-embedding), 1.28 MFLOP/example training (forward 577 kFLOP)")
    remat = M.TransformerLMConfig(num_layers=4, num_heads=4, d_model=128, max_len=64, vocab_size=85,
                                  positional="rope", remat=True)
    # Remat re-runs 4 x (q/k/v 98,304 + out 32,768 + up 131,072 + causal attention 16,640) FLOPs a token.
    line = flops.describe(flops.account(remat, (64,)))
    assert line == ("transformer_lm: 800k params (789k non-embedding), 4.98 MFLOP/token training "
                    "(forward 1.66 MFLOP), 6.1 MFLOP/token on hardware with remat")


@pytest.mark.parametrize("cfg, shape, kwargs, message", [
    (M.SeedCNNConfig(), (28, 28), {}, r"expected one image \(H, W, C\)"),
    (M.MLPConfig(), (0, 3), {}, "positive ints"),
    (M.SeedCNNConfig(filters=0), (28, 28, 1), {}, "model.filters must be positive"),
    (M.TransformerLMConfig(), (8,), {}, "model.vocab_size is none .* resolve it"),
    (M.TransformerLMConfig(max_len=8, vocab_size=5), (9,), {}, "longer than model.max_len=8: raise"),
    (M.ViTConfig(patch_size=5), (28, 28, 1), {}, "model.patch_size=5 must divide"),
    (M.BatchNormCNNConfig(block_filters=(4, 4, 4)), (4, 4, 1), {}, "too small .* fewer model.block_filters"),
    (M.SeedCNNConfig(), (28, 28, 1), {"remat": True}, "has no remat"),
    (object(), (1,), {}, "no FLOP accounting for object"),
])
def test_bad_input_is_a_one_line_config_error(cfg, shape, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        flops.account(cfg, shape, **kwargs)
    assert "\n" not in str(info.value)


class Compiled:
    """A stand-in for a compiled step: cost_analysis() returns (or raises) what it was given."""

    def __init__(self, result):
        self.result = result

    def cost_analysis(self):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_compiled_flops_reads_every_cost_analysis_shape():
    assert flops.compiled_flops(Compiled({"flops": 7.0})) == 7.0
    assert flops.compiled_flops(Compiled([{"flops": 5.0}])) == 5.0  # JAX before 0.4.30
    assert flops.compiled_flops(Compiled(None)) is None
    assert flops.compiled_flops(Compiled(NotImplementedError())) is None


# ---------------------------------------------------------------------------------------------
# Peaks and MFU


class FakeDevice:
    def __init__(self, device_kind: str, platform: str = "gpu"):
        self.device_kind, self.platform = device_kind, platform


@pytest.mark.parametrize("kind, platform, per_device", [
    ("TPU v2", "tpu", 22.5e12),  # two TensorCores, two devices, per chip
    ("TPU v3", "tpu", 61.5e12),
    ("TPU v4", "tpu", 275e12),
    ("TPU v5 lite", "tpu", 197e12),
    ("TPU v5", "tpu", 459e12),
    ("TPU v6 lite", "tpu", 918e12),
    ("NVIDIA A100-SXM4-40GB", "gpu", 312e12),
    ("NVIDIA A100 80GB PCIe", "gpu", 312e12),
    ("NVIDIA H100 80GB HBM3", "gpu", 989.5e12),
    ("NVIDIA H100 PCIe", "gpu", 756.5e12),
    ("NVIDIA H200", "gpu", 989.5e12),
    ("NVIDIA B200", "gpu", 2.25e15),
])
def test_known_device_kinds_map_to_the_table(kind, platform, per_device):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peak = hardware.peak_flops(FakeDevice(kind, platform))
    assert peak.flops_per_s == per_device
    assert "dense bf16" in peak.name and peak.source


@pytest.mark.parametrize("kind", ["NVIDIA H100 NVL", "TPU v4 lite", "Imaginary Accelerator 9000"])
def test_unknown_device_warns_once_and_invents_nothing(kind, recwarn):
    device = FakeDevice(kind)
    assert hardware.peak_flops(device) is None
    assert hardware.peak_flops(device) is None
    messages = [str(w.message) for w in recwarn]
    assert len(messages) == 1 and repr(kind) in messages[0], messages


@pytest.fixture
def fake_probe(monkeypatch, tmp_path):
    """A cache in tmp_path and a probe that counts its calls instead of measuring."""
    monkeypatch.setenv("JAXMODELS_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def probe(*args, **kwargs):
        calls.append(args)
        return getattr(probe, "value", 8e10)

    monkeypatch.setattr(hardware, "measure_matmul_flops", probe)
    return calls


def test_cpu_peak_is_measured_once_then_read_from_the_cache(fake_probe, tmp_path, monkeypatch):
    cpu = jax.local_devices(backend="cpu")[0]
    n = len(jax.local_devices(backend="cpu"))
    first = hardware.peak_flops(cpu)
    assert len(fake_probe) == 1
    assert first.flops_per_s == 8e10 / n  # the probe runs on all n devices at once
    record, = json.loads((tmp_path / "cache" / hardware.CACHE_FILE).read_text())["records"]
    assert record["flops_per_s"] == 8e10 and record["jax"] == jax.__version__ and record["devices"] == n

    assert hardware.peak_flops(cpu) == first
    assert len(fake_probe) == 1  # read back, not measured again

    monkeypatch.setattr(hardware, "_cpu_model", lambda: "Another CPU")  # another machine, same cache
    hardware.peak_flops(cpu)
    assert len(fake_probe) == 2
    records = json.loads((tmp_path / "cache" / hardware.CACHE_FILE).read_text())["records"]
    assert sorted(r["cpu"] for r in records) == sorted([record["cpu"], "Another CPU"])


def test_remeasuring_keeps_the_higher_value(fake_probe, monkeypatch):
    # A busy machine measures low: a second measurement can only raise the ceiling.
    n = len(jax.local_devices(backend="cpu"))
    assert hardware.cpu_peak().flops_per_s == 8e10 / n
    monkeypatch.setattr(hardware.measure_matmul_flops, "value", 9e10, raising=False)
    assert hardware.cpu_peak(remeasure=True).flops_per_s == 9e10 / n
    monkeypatch.setattr(hardware.measure_matmul_flops, "value", 5e10, raising=False)
    assert hardware.cpu_peak(remeasure=True).flops_per_s == 9e10 / n
    assert hardware.cpu_peak().flops_per_s == 9e10 / n
    assert len(fake_probe) == 3


def test_unwritable_or_corrupt_cache_warns_and_uses_the_measurement(fake_probe, tmp_path, monkeypatch):
    cpu = jax.local_devices(backend="cpu")[0]
    n = len(jax.local_devices(backend="cpu"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("JAXMODELS_CACHE_DIR", str(blocker / "cache"))  # a folder inside a file
    with pytest.warns(UserWarning, match="could not write the matmul-peak cache"):
        assert hardware.peak_flops(cpu).flops_per_s == 8e10 / n

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / hardware.CACHE_FILE).write_text("{not json")
    monkeypatch.setenv("JAXMODELS_CACHE_DIR", str(corrupt))
    with pytest.warns(UserWarning, match="unreadable matmul-peak cache"):
        hardware.peak_flops(cpu)
    assert json.loads((corrupt / hardware.CACHE_FILE).read_text())["records"][0]["flops_per_s"] == 8e10


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXMODELS_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hardware.cache_dir() == tmp_path / "home" / ".cache" / "jaxmodels"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert hardware.cache_dir() == tmp_path / "home" / ".cache" / "jaxmodels"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hardware.cache_dir() == tmp_path / "xdg" / "jaxmodels"
    monkeypatch.setenv("JAXMODELS_CACHE_DIR", str(tmp_path / "mine"))
    assert hardware.cache_dir() == tmp_path / "mine"


def test_the_real_probe_measures_a_plausible_rate():
    # 2 * 128^3 FLOPs a device: a mistake in the count or the clock is off by orders of magnitude.
    rate = hardware.measure_matmul_flops(128, 3, devices=jax.local_devices(backend="cpu")[:2])
    assert 1e8 < rate < 1e13


def test_mfu():
    peak = hardware.Peak(1e12, "test", "test")
    assert hardware.mfu(2e12, 1.0, 4, peak) == pytest.approx(0.5)
    assert hardware.mfu(3e12, 0.5, 12, peak) == pytest.approx(0.5)
    assert hardware.mfu(1e12, 1.0, 1, None) is None
    with pytest.raises(ValueError):
        hardware.mfu(1e12, 0.0, 1, peak)


# ---------------------------------------------------------------------------------------------
# XLA's FLOPs of any model (accounting/xla_flops.py), as the loop uses them for models without
# a formula: raw, no reconciliation, against the analytic model FLOPs of the built-in families.

XLA_RAW_TOLERANCE = 0.15
# Matmul-dominated shapes (XLA's elementwise work is then a few per cent). Measured XLA /
# analytic: cnn 1.03, mlp 1.02, gpt 1.05, vit 1.04 (see the report in benchmarks/flops_vs_xla.py).
# The classic CNN on its own MNIST shape (28, 28, 1) is 1.37: with one input channel a 3x3 conv
# does 9 multiply-adds per output, as few as the bias, ReLU, pooling and their gradients that XLA
# adds. The LSTM is compared separately below.
XLA_RAW_CASES = [
    (M.SeedCNNConfig(), (32, 32, 16), 16),
    (M.MLPConfig(hidden=(256, 256)), (28, 28, 1), 128),
    (M.TransformerLMConfig(num_layers=2, num_heads=4, d_model=128, max_len=32, vocab_size=256), (32,), 8),
    (M.ViTConfig(num_layers=2, num_heads=4, d_model=128, max_len=17, patch_size=4, pool="cls"),
     (16, 16, 3), 8),
]


def _xla_per_example(cfg, shape, batch):
    step, state, batch_shapes = _step_and_shapes(cfg, shape, batch)
    return xla_flops.train_flops_per_example(jax.jit(step), state, batch_shapes, batch_size=batch)


@pytest.mark.parametrize("cfg, shape, batch", XLA_RAW_CASES, ids=lambda x: getattr(x, "kind", None))
def test_xla_flops_per_example_are_within_15_percent_of_the_formulas(cfg, shape, batch):
    xf = _xla_per_example(cfg, shape, batch)
    assert xf.reason is None and xf.while_loops == 0 and xf.devices == 1
    ratio = xf.per_example / flops.account(cfg, shape).model_flops_per_example
    assert abs(ratio - 1) <= XLA_RAW_TOLERANCE, f"XLA / analytic = {ratio:.4f}"
    assert xf.per_step == pytest.approx(xf.per_example * batch)


def test_xla_flops_of_an_lstm_are_a_lower_bound_that_says_so():
    # The gate matmuls run in a while loop over time steps, whose body XLA counts once: the raw
    # figure is far below the formula (measured 0.27 here) and is flagged as a lower bound.
    # Reconciled (both gate matmuls counted once, as XLA does) it is within 15 %.
    cfg, shape, batch = M.RNNLMConfig(cell="lstm", hidden=128, vocab_size=256, embed_dim=128), (16,), 16
    xf = _xla_per_example(cfg, shape, batch)
    assert xf.while_loops >= 1 and "lower bound" in xf.reason
    analytic = flops.account(cfg, shape).model_flops_per_example
    assert xf.per_example < 0.85 * analytic
    t, gates = shape[0], 4 * cfg.hidden
    once = analytic - (t - 1) * 3 * 2 * (cfg.hidden + cfg.embed_dim) * gates
    assert abs(xf.per_example / once - 1) <= XLA_RAW_TOLERANCE, f"{xf.per_example / once:.4f}"


def test_xla_flops_take_a_jitted_lowered_or_compiled_step():
    cfg, shape, batch = XLA_RAW_CASES[1]
    step, state, batch_shapes = _step_and_shapes(cfg, shape, batch)
    lowered = jax.jit(step).lower(state, batch_shapes)
    a = xla_flops.train_flops_per_example(jax.jit(step), state, batch_shapes, batch_size=batch)
    b = xla_flops.train_flops_per_example(lowered, batch_size=batch)
    c = xla_flops.train_flops_per_example(lowered.compile(), batch_size=batch)
    assert a == b == c and a.per_example > 0
    # Twice the examples in one call: the same per-example figure, not twice it.
    step2, state2, batch2 = _step_and_shapes(cfg, shape, 2 * batch)
    d = xla_flops.train_flops_per_example(jax.jit(step2), state2, batch2, batch_size=2 * batch)
    assert d.per_example == pytest.approx(a.per_example, rel=0.02)
    with pytest.raises(TypeError, match="only with a jitted step"):
        xla_flops.train_flops_per_example(lowered, state, batch_size=batch)
    with pytest.raises(ValueError, match="multiple of microbatches"):
        xla_flops.train_flops_per_example(lowered, batch_size=batch, microbatches=3)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("parallel", [ParallelConfig(preset="fsdp"), ParallelConfig(preset="tensor", tensor=4)],
                         ids=["fsdp", "tensor"])
def test_xla_flops_of_a_sharded_step_count_every_device(parallel):
    # XLA analyses the per-device program: scaled by the device count it is the one-device count
    # (up to the work replicated on every device, a few per cent here).
    from jaxmodels.parallel import mesh as mesh_lib
    from jaxmodels.training import loop

    cfg, shape, batch = XLA_RAW_CASES[1]
    one = _xla_per_example(cfg, shape, batch)
    tx, schedule = optim.make(OptimizerConfig(name="sgd", learning_rate=0.1), 10)
    mesh = mesh_lib.make_mesh(parallel)
    c = loop.compile_steps(M.build(cfg), tx, schedule, jnp.zeros((1, *shape)), parallel, mesh)
    spec = lambda s, dtype: jax.ShapeDtypeStruct(s, dtype, sharding=c.batch_sharding)  # noqa: E731
    batch_shapes = {"inputs": spec((batch, *shape), jnp.float32), "targets": spec((batch,), jnp.int32),
                    "mask": spec((batch,), jnp.float32)}
    xf = xla_flops.train_flops_per_example(c.train_step, jax.eval_shape(c.init_fn), batch_shapes,
                                           batch_size=batch)
    assert xf.devices == 8
    assert 0.99 <= xf.per_example / one.per_example <= 1.10


def test_cost_analysis_flops_reads_every_shape_and_says_why_not():
    assert xla_flops.cost_analysis_flops(Compiled({"flops": 7.0})) == (7.0, None)
    assert xla_flops.cost_analysis_flops(Compiled([{"flops": 5.0}, {"flops": 2.0}])) == (7.0, None)
    for result, why in [(None, "returned nothing"), ([], "returned nothing"),
                        ({"bytes accessed": 1.0}, "no 'flops'"), ({"flops": -1.0}, "unknown"),
                        (NotImplementedError("no"), "raised NotImplementedError")]:
        flops_, reason = xla_flops.cost_analysis_flops(Compiled(result))
        assert flops_ is None and why in reason
    xf = xla_flops.train_flops_per_example(Compiled(None), batch_size=4)
    assert xf.per_example is None and xf.model_flops_per_example is None and "nothing" in xf.reason
    assert xla_flops.train_flops_per_example(Compiled({"flops": 8.0}), batch_size=4).per_example == 2.0


def test_only_loops_with_matmuls_make_a_lower_bound():
    # Dropout's random bits come from while loops with no matrix product: not a lower bound.
    # Gradient accumulation scans the model over micro-batches: a lower bound, and per example
    # (divided by the slice, microbatches=2) the same as the plain step.
    cfg, shape, batch = M.MLPConfig(hidden=(256, 256), dropout=0.1), (16, 16, 1), 64
    model = M.build(cfg)
    tx, schedule = optim.make(OptimizerConfig(name="sgd", learning_rate=0.1), 10)
    state = jax.eval_shape(lambda: state_lib.init_state(model, tx, jnp.zeros((1, *shape)), 0))
    batch_shapes = {"inputs": jax.ShapeDtypeStruct((batch, *shape), jnp.float32),
                    "targets": jax.ShapeDtypeStruct((batch,), jnp.int32),
                    "mask": jax.ShapeDtypeStruct((batch,), jnp.float32)}
    plain = jax.jit(step_lib.make_train_step(model, tx, schedule=schedule)).lower(state, batch_shapes).compile()
    assert "while(" in plain.as_text()
    xf = xla_flops.train_flops_per_example(plain, batch_size=batch)
    assert xf.while_loops == 0 and xf.reason is None
    ratio = xf.per_example / flops.account(cfg, shape).model_flops_per_example
    assert abs(ratio - 1) <= XLA_RAW_TOLERANCE, f"{ratio:.4f}"

    accumulating = jax.jit(step_lib.make_train_step(model, tx, schedule=schedule, microbatches=2))
    acc = xla_flops.train_flops_per_example(accumulating, state, batch_shapes, batch_size=batch,
                                            microbatches=2)
    assert acc.while_loops == 1 and "lower bound" in acc.reason
    assert acc.per_example == pytest.approx(xf.per_example, rel=0.05)
