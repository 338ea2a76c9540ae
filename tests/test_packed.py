"""Packed sweeps (jaxmodels/orchestration/packed.py): K vmapped models == K separate runs.

The references are the real loop: `jaxmodels.train` for a variant that changes the seed and the
learning rate, and the loop's own jitted step, batch stream and `run_eval` (over the 8 simulated
devices) for the others, including init_scale != 1, which a config cannot express. The packed
run is on one device, so the two sum in different orders (the loop splits each batch over 8
devices, vmap batches the matmuls): after 30 Adam steps parameters agree to rtol 1e-4, atol 1e-6
and losses to rtol 1e-5 (measured: losses within 3e-7).
"""

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels
from jaxmodels import cli
from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.errors import UserError
from jaxmodels.models import BatchNormCNNConfig, MLPConfig, TransformerLMConfig
from jaxmodels.orchestration import packed
from jaxmodels.training import checkpoint, loop, optim
from jaxmodels.training import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-6
LOSS_RTOL = 1e-5

MLP_DIGITS = Config(
    name="packed_mlp_digits",
    model=MLPConfig(hidden=(32,), dropout=0.1),
    data=DataConfig(dataset="digits", batch_size=32, eval_batch_size=128, eval_split="test"),
    # Warmup + cosine with a final fraction and clipping: the schedule shape must survive the
    # per-model learning rate.
    optimizer=OptimizerConfig(name="adam", learning_rate=2e-3, schedule="warmup_cosine",
                              warmup_steps=5, final_lr_fraction=0.1, grad_clip_norm=1.0),
    train=TrainConfig(seed=0, steps=30, log_every=10, eval_every=15, progress=False),
)
VARIANTS = (packed.Variant(seed=0), packed.Variant(seed=1, learning_rate=5e-3),
            packed.Variant(seed=2, init_scale=0.5))


def separate_config(config: Config, variant: packed.Variant) -> Config:
    lr = variant.learning_rate or config.optimizer.learning_rate
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, seed=variant.seed),
        optimizer=dataclasses.replace(config.optimizer, learning_rate=lr))


def loop_reference(config: Config, variants, starts=None):
    """Variants sharing one learning rate, trained by the loop's compiled step (one compile
    serves them all) over the loop's batch stream, from `init_scaled_state` or from `starts`.
    Returns the loop's setup and, per variant, the final state and the mean loss of the last
    `log_every` steps (what the summary calls train_loss)."""
    assert len({v.learning_rate for v in variants}) == 1
    s = loop.setup(separate_config(config, variants[0]))
    tx, _ = optim.make(s.config.optimizer, s.total_steps)  # the loop's optimizer
    example = jnp.asarray(s.task.example_inputs)
    init = jax.jit(lambda seed, scale: packed.init_scaled_state(s.model, tx, example, seed, scale),
                   out_shardings=s.state_sharding)
    results = []
    for i, variant in enumerate(variants):
        if starts is None:
            state = init(np.int32(variant.seed), np.float32(variant.init_scale))
        else:
            state = jax.device_put(starts[i].replace(opt_state=tx.init(starts[i].params)),
                                   s.state_sharding)
        batches = s.task.train_batches(variant.seed)
        losses = []
        for _ in range(s.total_steps):
            state, metrics = s.train_step(state, jax.device_put(next(batches), s.batch_sharding))
            losses.append(float(metrics["loss"]))
        results.append((state, float(np.mean(losses[-config.train.log_every:]))))
    return s, results


def assert_trees_close(actual, expected):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e),
                                                         rtol=PARAM_RTOL, atol=PARAM_ATOL),
                 actual, expected)


@pytest.fixture(scope="module")
def mlp_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("packed")
    p = packed.setup(MLP_DIGITS, VARIANTS)
    states, summaries = packed.run(p, workdir, progress=False)
    return p, states, summaries, workdir


def test_seed_and_lr_variant_equals_a_separate_jaxmodels_train(mlp_sweep, tmp_path):
    _, states, summaries, _ = mlp_sweep
    config = separate_config(MLP_DIGITS, VARIANTS[1])
    separate = jaxmodels.train(config, tmp_path)
    ours = summaries[1]
    assert ours["step"] == separate["step"] == 30
    assert ours["learning_rate"] == config.optimizer.learning_rate == 5e-3
    for key in ("train_loss", "val_loss", "eval_loss"):
        assert ours[key] == pytest.approx(separate[key], rel=LOSS_RTOL), key
    for key in ("train_accuracy", "val_accuracy", "eval_accuracy"):
        assert ours[key] == pytest.approx(separate[key], abs=1e-6), key
    fresh = packed.unstack(states, 1)
    saved = checkpoint.restore_weights(tmp_path, {"params": fresh.params, "model_state": fresh.model_state})
    assert_trees_close(fresh.params, saved["params"])


def test_config_lr_and_init_scale_variants_equal_the_loop_step(mlp_sweep):
    _, states, summaries, _ = mlp_sweep
    s, results = loop_reference(MLP_DIGITS, [VARIANTS[0], VARIANTS[2]])
    for k, (state, train_loss) in zip((0, 2), results):
        final = loop.run_eval(s, state, "test")
        assert_trees_close(packed.unstack(states, k).params, state.params)
        assert summaries[k]["learning_rate"] == MLP_DIGITS.optimizer.learning_rate
        assert summaries[k]["train_loss"] == pytest.approx(train_loss, rel=LOSS_RTOL)
        assert summaries[k]["eval_loss"] == pytest.approx(final["loss"], rel=LOSS_RTOL)
        assert summaries[k]["eval_examples"] == final["examples"] == 270


def test_variants_differ_so_packing_did_not_mix_them(mlp_sweep):
    # Guards against a broadcast bug that trains one model K times: the seeds and rates differ,
    # so every pair of final models must too.
    _, states, summaries, _ = mlp_sweep
    kernels = [np.asarray(packed.unstack(states, k).params["head"]["kernel"]) for k in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(kernels[a] - kernels[b]).max() > 1e-3
    assert len({s["eval_loss"] for s in summaries}) == 3


def test_one_compile_each_and_files_written(mlp_sweep):
    _, _, summaries, workdir = mlp_sweep
    assert summaries[0]["packed"]["compilations"] == {"train_step": 1, "eval_step": 1}
    assert json.loads((workdir / "packed_summary.json").read_text()) == summaries
    for k in range(3):
        records = [json.loads(line) for line in (workdir / f"metrics_{k}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [10, 15, 20, 30]
        assert records[-1]["loss"] == summaries[k]["train_loss"]
        # Each model's TensorBoard events: its scalars and its own learning rate as an hparam.
        from tensorboard.backend.event_processing import event_accumulator
        from tensorboard.plugins.hparams import plugin_data_pb2

        acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard" / f"model_{k}")).Reload()
        train = [r for r in records if "loss" in r]
        assert [e.step for e in acc.Scalars("loss")] == [r["step"] for r in train]
        assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in train], rel=1e-6)
        start = plugin_data_pb2.HParamsPluginData.FromString(
            acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["optimizer.learning_rate"].number_value == \
            pytest.approx(summaries[k]["learning_rate"])


class _TrainMeanwhile:
    """The task of a packed setup whose `save` (the packed run's second write, inside its lock)
    first launches `jaxmodels train` into the same workdir, then stops the packed run."""

    def __init__(self, task, argv):
        self._task, self.argv, self.code = task, argv, None

    def __getattr__(self, name):
        return getattr(self._task, name)

    def save(self, workdir):
        before = sorted(p.name for p in workdir.iterdir())
        self.code = cli.main([*self.argv, "--workdir", str(workdir)])
        assert sorted(p.name for p in workdir.iterdir()) == before  # the train touched nothing
        raise _Stop


class _Stop(Exception):
    pass


def test_packed_run_holds_its_workdir_lock(mlp_sweep, tmp_path, capsys):
    p, *_ = mlp_sweep
    mlp = str(ROOT / "experiments/configs/mlp_mnist.py")
    busy = _TrainMeanwhile(p.task, ["train", mlp, "--tiny", "data.dataset=digits", "train.steps=2"])
    with pytest.raises(_Stop):
        packed.run(dataclasses.replace(p, task=busy), tmp_path / "w", progress=False)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert busy.code == 2 and line.startswith(
        f"jaxmodels: error: workdir {str(tmp_path / 'w')!r} is in use by process {os.getpid()} "), line
    assert line.endswith("wait for it or pick another --workdir")
    # And the other way round: a packed run into a workdir another run holds writes nothing.
    with workdir_lib.locked(tmp_path / "w"):
        before = sorted(x.name for x in (tmp_path / "w").iterdir())
        with pytest.raises(workdir_lib.WorkdirBusy, match="is in use by process"):
            packed.run(p, tmp_path / "w", progress=False)
        assert sorted(x.name for x in (tmp_path / "w").iterdir()) == before
    with workdir_lib.locked(tmp_path / "w"):  # released by the runs that ended, either way
        pass


def test_reported_learning_rates_follow_the_schedule_scaled_per_model(mlp_sweep, tmp_path):
    _, _, _, workdir = mlp_sweep
    lrs = [[json.loads(line).get("learning_rate") for line in
            (workdir / f"metrics_{k}.jsonl").read_text().splitlines()] for k in range(3)]
    schedule = optim.make(MLP_DIGITS.optimizer, 30)[1]
    # Interval means of the per-step rates, the first (compiling) step included as in the loop:
    # step t runs at schedule(t - 1).
    expected = [np.mean([schedule(t) for t in range(0, 10)]), None,
                np.mean([schedule(t) for t in range(10, 20)]), np.mean([schedule(t) for t in range(20, 30)])]
    for k, peak in enumerate((2e-3, 5e-3, 2e-3)):
        got = [x for x in lrs[k] if x is not None]
        want = [e * peak / 2e-3 for e in expected if e is not None]
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_scale_init_scales_exactly_the_weight_matrices():
    params = {"dense": {"kernel": jnp.full((3, 4), 2.0), "bias": jnp.full((4,), 2.0)},
              "norm": {"scale": jnp.ones((4,))}, "embed": {"embedding": jnp.full((5, 4), -1.0)},
              "conv": {"kernel": jnp.full((3, 3, 1, 2), 4.0)}}
    scaled = packed.scale_init(params, 0.25)
    assert jax.tree.map(lambda x: float(x.reshape(-1)[0]), scaled) == {
        "dense": {"kernel": 0.5, "bias": 2.0}, "norm": {"scale": 1.0},
        "embed": {"embedding": -0.25}, "conv": {"kernel": 1.0}}


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_injected_optimizer_equals_optim_make_at_any_learning_rate(name):
    # Weight decay and clipping on where the optimizer takes them: adafactor adds its decay after
    # the learning rate, so a multiplier on the update would be wrong there.
    cfg = OptimizerConfig(name=name, learning_rate=1e-2, schedule="warmup_cosine", warmup_steps=2,
                          final_lr_fraction=0.1, grad_clip_norm=0.5,
                          weight_decay=0.0 if name in ("sgd", "adam") else 0.1,
                          momentum=0.9 if name == "sgd" else 0.0)
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.0, 1.0, 4)}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 2)) * (i + 1), params) for i in range(4)]

    def trajectory(tx):
        p, state = params, tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
        return p

    for lr in (1e-2, 3e-2):
        expected = trajectory(optim.make(dataclasses.replace(cfg, learning_rate=lr), 10)[0])
        actual = trajectory(packed.injected_optimizer(cfg, 10, jnp.float32(lr)))
        jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7), actual, expected)


@pytest.mark.parametrize("schedule", sorted(optim.SCHEDULES))
def test_every_schedule_is_its_learning_rate_times_the_unit_shape(schedule):
    cfg = OptimizerConfig(learning_rate=3e-3, schedule=schedule, warmup_steps=10, final_lr_fraction=0.2)
    steps = jnp.arange(0, 100)
    np.testing.assert_allclose(3e-3 * packed.unit_schedule(cfg, 100)(steps),
                               optim.SCHEDULES[schedule](cfg, 100)(steps), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("variants, message", [
    ([], "no variants"),
    ([packed.Variant(seed=0), packed.Variant(seed=1, learning_rate=0.0)], "variant 1: learning_rate must be a positive"),
    ([packed.Variant(seed=0, learning_rate=float("nan"))], "variant 0: learning_rate"),
    ([packed.Variant(seed=0, init_scale=-1.0)], "variant 0: init_scale must be a positive"),
    ([packed.Variant(seed=0, init_scale=True)], "variant 0: init_scale must be a positive"),
    ([packed.Variant(seed=-3)], "variant 0: seed must be an integer"),
    ([packed.Variant(seed=1.5)], "variant 0: seed must be an integer"),
    ([{"seed": 0}], "variant 0 is a dict, not a packed.Variant"),
])
def test_bad_variants_are_one_line_errors_before_anything_is_made(tmp_path, variants, message):
    workdir = tmp_path / "never"
    with pytest.raises(UserError, match=message) as info:
        packed.train_packed(MLP_DIGITS, variants, workdir)
    assert "\n" not in str(info.value)
    assert not workdir.exists()


def test_batchnorm_statistics_are_packed_too():
    config = Config(
        name="packed_bn_digits",
        model=BatchNormCNNConfig(block_filters=(4,), convs_per_block=1, hidden=16, dropout=0.0),
        data=DataConfig(dataset="digits", batch_size=16, eval_batch_size=144, eval_split="test"),
        optimizer=OptimizerConfig(name="sgd", learning_rate=0.05, momentum=0.9),
        train=TrainConfig(steps=6, log_every=3, eval_every=6, progress=False))
    variants = (packed.Variant(seed=3), packed.Variant(seed=4, learning_rate=0.1, init_scale=2.0))
    states, summaries = packed.run(packed.setup(config, variants), progress=False)
    # One reference (each learning rate costs a compile): the variant that differs in everything.
    _, [(state, train_loss)] = loop_reference(config, variants[1:])
    ours = packed.unstack(states, 1)
    assert_trees_close(ours.params, state.params)
    assert_trees_close(ours.model_state, state.model_state)
    assert summaries[1]["train_loss"] == pytest.approx(train_loss, rel=LOSS_RTOL)
    # The running statistics moved away from their init (mean 0) and differ between the models.
    means = np.asarray(states.model_state["batch_stats"]["bn0_0"]["mean"])
    assert np.abs(means).min(axis=1).max() > 1e-3 and np.abs(means[0] - means[1]).max() > 1e-3


@pytest.mark.slow  # ~15 s of CPU, mostly compiling (init, vmapped step and eval, the loop's step)
def test_tiny_transformer_lm_packed_equals_the_loop(tmp_path):
    # SGD, not Adam: Adam's first step is lr * g / (|g| + eps), about lr whatever g's size, so a
    # coordinate whose gradient is rounding noise (measured: 4e-8 against a median of 1.5e-2, in
    # the position embedding) takes a step of a different size when the summation order changes
    # (vmap against a batch split over 8 devices): 6e-4 apart after one step at lr 1e-2. Adam's
    # equivalence is checked on the MLP above, where no gradient is that small.
    # A small local corpus keeps loading and the final evaluation over the whole validation split
    # to a fraction of a second. Generated from a fixed seed, so the test reads the same text
    # whatever else in the repository changes.
    rng = np.random.default_rng(7)
    words = ["the", "king", "shall", "speak", "of", "war", "and", "peace", "to", "his", "lords",
             "when", "night", "falls", "upon", "the", "silent", "field", "yet", "no", "man", "stirs"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=12)) + "." for _ in range(700)))
    config = Config(
        name="packed_gpt_tiny",
        model=TransformerLMConfig(num_layers=1, num_heads=2, d_model=16, max_len=16),
        data=DataConfig(dataset="text", data_dir=str(corpus), tokenizer="char", seq_len=16,
                        batch_size=8, eval_batch_size=64, eval_split="validation", eval_windows=64),
        optimizer=OptimizerConfig(name="sgd", learning_rate=0.3, momentum=0.9,
                                  schedule="warmup_linear", warmup_steps=2),
        train=TrainConfig(steps=8, log_every=4, eval_every=8, progress=False))
    variants = (packed.Variant(seed=0), packed.Variant(seed=5, learning_rate=0.5))
    p = packed.setup(config, variants)
    states, summaries = packed.run(p, progress=False)
    # From the packed initial state (initialisation is compared with the loop's on the MLP and
    # the CNN; a second Transformer init would cost 4-5 s of compilation).
    _, [(state, train_loss)] = loop_reference(config, variants[1:],
                                              starts=[packed.unstack(p.init_fn(), 1)])
    assert_trees_close(packed.unstack(states, 1).params, state.params)
    assert summaries[1]["train_loss"] == pytest.approx(train_loss, rel=LOSS_RTOL)
    # The members really are two models (a packing that broadcast one would pass the checks
    # above). Compared on parameters: the two losses can land within 0.1 % of each other on
    # some corpora.
    first = jax.tree.leaves(packed.unstack(states, 0).params)
    second = jax.tree.leaves(packed.unstack(states, 1).params)
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(first, second))


# ---------------------------------------------------------------------------------------------
# The packed step is the loop's: muP multipliers and the non-finite guard come with it.


def _assert_equals_separate_run(ours: dict, state, config: Config, workdir):
    separate = jaxmodels.train(config, workdir)
    assert ours["step"] == separate["step"]
    for key in ("train_loss", "val_loss", "eval_loss"):
        assert ours[key] == pytest.approx(separate[key], rel=LOSS_RTOL), key
    for key in ("train_accuracy", "val_accuracy", "eval_accuracy"):
        assert ours[key] == pytest.approx(separate[key], abs=1e-6), key
    assert ours["skipped_updates"] == separate["skipped_updates"]
    saved = checkpoint.restore_weights(workdir, {"params": state.params, "model_state": state.model_state})
    assert_trees_close(state.params, saved["params"])
    return separate


MUP_DIGITS = dataclasses.replace(
    MLP_DIGITS, name="packed_mup_digits",
    # Width 64 against a base of 16: the hidden matrix trains at a quarter of the rate, so a
    # sweep that dropped the multipliers would end far from the separate runs.
    model=MLPConfig(hidden=(64,), parametrization="mup", base_width=16),
    train=dataclasses.replace(MLP_DIGITS.train, steps=20, log_every=10, eval_every=10))


def test_mup_sweep_equals_separate_mup_runs(tmp_path):
    variants = (packed.Variant(seed=0), packed.Variant(seed=1, learning_rate=5e-3))
    states, summaries = packed.run(packed.setup(MUP_DIGITS, variants), progress=False)
    for k, variant in enumerate(variants):
        _assert_equals_separate_run(summaries[k], packed.unstack(states, k),
                                    separate_config(MUP_DIGITS, variant), tmp_path / f"run{k}")


def test_mup_multipliers_change_the_packed_run():
    # The equivalence above could hold with no muP at all only if the multipliers did nothing.
    standard = dataclasses.replace(MUP_DIGITS, model=dataclasses.replace(MUP_DIGITS.model,
                                                                         base_width=64))
    variants = (packed.Variant(seed=0),)
    ours = packed.run(packed.setup(MUP_DIGITS, variants), progress=False)[1][0]
    plain = packed.run(packed.setup(standard, variants), progress=False)[1][0]
    assert abs(ours["train_loss"] - plain["train_loss"]) > 1e-3


@pytest.fixture
def poison(monkeypatch):
    """NaN inputs in the train batches of the steps in `poison.steps` (1-based), in every
    stream (as tests/test_checkpoint.py poisons the loop's)."""
    from jaxmodels.data.pipeline import TrainBatches

    class Poison:
        steps: set = set()
        value = np.nan  # None: the inputs times 1e3 instead (finite, a loss spike)

    real_next = TrainBatches.__next__

    def poisoned_next(self):
        batch = real_next(self)
        if self.position in Poison.steps:
            bad = batch["inputs"] * 1e3 if Poison.value is None else np.full_like(batch["inputs"], Poison.value)
            batch = dict(batch, inputs=bad)
        return batch

    monkeypatch.setattr(TrainBatches, "__next__", poisoned_next)
    return Poison


@pytest.mark.parametrize("guard, value, steps", [
    ({"nonfinite": "skip"}, np.nan, {4, 13}),
    # Spikes: inputs 1000 times too large, after the window's 5 accepted losses.
    ({"spike_sigma": 3.0, "spike_window": 5}, None, {9, 16}),
], ids=["nonfinite_skip", "spike_guard"])
def test_guarded_packed_run_equals_separate(tmp_path, poison, guard, value, steps):
    poison.steps, poison.value = steps, value
    config = dataclasses.replace(MLP_DIGITS, train=dataclasses.replace(
        MLP_DIGITS.train, steps=20, **guard))
    variants = (packed.Variant(seed=0), packed.Variant(seed=1, learning_rate=5e-3))
    p = packed.setup(config, variants)
    states, summaries = packed.run(p, progress=False)
    assert [s["skipped_updates"] for s in summaries] == [2, 2]
    assert all(np.isfinite(s["train_loss"]) and np.isfinite(s["eval_loss"]) for s in summaries)
    _assert_equals_separate_run(summaries[1], packed.unstack(states, 1),
                                separate_config(config, variants[1]), tmp_path / "run")


def test_nonfinite_stop_stops_only_that_model_and_says_so(poison):
    poison.steps = {7}
    config = dataclasses.replace(MLP_DIGITS, train=dataclasses.replace(MLP_DIGITS.train, steps=10))
    states, summaries = packed.run(packed.setup(config, (packed.Variant(seed=0),)), progress=False)
    assert summaries[0]["stopped"] == {"step": 7, "reason": "non-finite loss (nan)"}
