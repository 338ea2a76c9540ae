"""Runtime hyper-parameters (training/optim.py): the peak learning rate, the schedule's final
fraction, the decoupled weight decay and the seed are values the compiled programs read, not
constants in them, so runs of a sweep over them compile once.

The injected optimizer trains what the baked one (`optim.make_baked`, every value a constant)
trains; runs that differ only in those values lower to identical programs; and a second CLI
run with another learning rate and seed loads every program from the persistent cache.
"""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels.config import OptimizerConfig, ParallelConfig
from jaxmodels.models import MLPConfig, build
from jaxmodels.parallel import mesh as mesh_lib
from jaxmodels.training import loop, optim

from test_compile_cache import _entries, _train


@pytest.mark.parametrize("schedule", sorted(optim.SCHEDULES))
@pytest.mark.parametrize("fraction", [0.0, 0.1, 1.0])
def test_runtime_schedule_equals_the_schedule_built_with_constants(schedule, fraction):
    cfg = OptimizerConfig(learning_rate=3e-3, schedule=schedule, warmup_steps=7,
                          final_lr_fraction=fraction)
    steps = jnp.arange(0, 60)
    baked = optim.SCHEDULES[schedule](cfg, 50)(steps)
    _, injected = optim.make(cfg, 50)
    np.testing.assert_allclose(injected(steps), baked, rtol=1e-6, atol=1e-12)
    # ... and with the values read from an optimizer state holding other ones.
    other = dataclasses.replace(cfg, learning_rate=0.5, final_lr_fraction=0.25)
    tx, _ = optim.make(cfg, 50)
    state = optim.with_hyperparams(tx.init({"w": jnp.zeros(2)}), learning_rate=0.5,
                                   final_lr_fraction=0.25)
    np.testing.assert_allclose(injected.from_state(steps, state),
                               optim.SCHEDULES[schedule](other, 50)(steps), rtol=1e-6, atol=1e-12)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"kernel": jax.random.normal(k1, (4, 3)), "bias": jax.random.normal(k2, (3,))}


def _trajectory(tx, opt_state=None, steps=12):
    """Params after `steps` updates of a quadratic with a non-trivial gradient."""
    params = _params()
    target = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
    opt_state = tx.init(params) if opt_state is None else opt_state

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: sum(jnp.sum((q[k] - target[k]) ** 4) for k in q))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params


CASES = [
    OptimizerConfig(name="sgd", learning_rate=0.05, momentum=0.9, schedule="warmup_cosine",
                    warmup_steps=3, final_lr_fraction=0.1),
    OptimizerConfig(name="adam", learning_rate=0.02, schedule="warmup_cosine", warmup_steps=3),
    OptimizerConfig(name="adamw", learning_rate=0.02, weight_decay=0.3, schedule="warmup_cosine",
                    warmup_steps=3, final_lr_fraction=0.2, grad_clip_norm=1.0),
    OptimizerConfig(name="lion", learning_rate=0.01, weight_decay=0.1, schedule="warmup_linear",
                    warmup_steps=3),
]


@pytest.mark.parametrize("mup", [False, True], ids=["standard", "mup"])
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: c.name)
def test_injected_optimizer_trains_what_the_baked_one_does(cfg, mup):
    multipliers = {"kernel": 0.25, "bias": 2.0} if mup else None
    baked = _trajectory(optim.make_baked(cfg, 12, multipliers)[0])
    injected = _trajectory(optim.make(cfg, 12, multipliers)[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), injected, baked)
    # One optimizer built with the config's values, given another run's values in its state,
    # trains that run: what a sweep whose runs share a program relies on.
    values = {"learning_rate": cfg.learning_rate * 3, "final_lr_fraction": 0.5}
    if cfg.name in optim.DECOUPLED:
        values["weight_decay"] = 0.05
    other = dataclasses.replace(cfg, **values)
    tx, _ = optim.make(cfg, 12, multipliers)
    state = optim.with_hyperparams(tx.init(_params()), **values)
    moved = _trajectory(tx, state)
    expected = _trajectory(optim.make_baked(other, 12, multipliers)[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), moved, expected)
    # The two runs do differ (else the comparison above proves nothing).
    assert not np.allclose(moved["kernel"], injected["kernel"], rtol=1e-3)


def test_unknown_hyperparameter_is_a_one_line_error():
    tx, _ = optim.make(OptimizerConfig(name="adam"), 10)
    with pytest.raises(KeyError, match="no runtime hyper-parameter weight_decay"):
        optim.with_hyperparams(tx.init(_params()), weight_decay=0.1)


def _lowered(cfg: OptimizerConfig, seed: int, make=optim.make) -> tuple[str, str]:
    """The HLO text of the loop's jitted init and train step for a tiny MLP."""
    model = build(MLPConfig(num_classes=3, hidden=(8,)))
    example = jnp.zeros((1, 5), jnp.float32)
    tx, schedule = make(cfg, 20)
    parallel = ParallelConfig()
    c = loop.compile_steps(model, tx, schedule, example, parallel, mesh_lib.make_mesh(parallel),
                           seed=seed)
    state = jax.eval_shape(c.init_fn)
    batch = {"inputs": jax.ShapeDtypeStruct((8, 5), jnp.float32),
             "targets": jax.ShapeDtypeStruct((8,), jnp.int32),
             "mask": jax.ShapeDtypeStruct((8,), jnp.float32)}
    return c.init_fn.func.lower(*c.init_fn.args).as_text(), c.train_step.lower(state, batch).as_text()


def test_runs_differing_in_learning_rate_decay_and_seed_lower_to_one_program():
    cfg = OptimizerConfig(name="adamw", learning_rate=1e-3, weight_decay=0.01,
                          schedule="warmup_cosine", warmup_steps=5)
    other = dataclasses.replace(cfg, learning_rate=3e-2, weight_decay=0.1, final_lr_fraction=0.1)
    init1, step1 = _lowered(cfg, seed=0)
    init2, step2 = _lowered(other, seed=7)
    assert step1 == step2
    assert init1 == init2
    # The comparison can fail: with the values baked in, the programs differ.
    assert _lowered(cfg, 0, optim.make_baked)[1] != _lowered(other, 0, optim.make_baked)[1]


def test_second_run_of_a_learning_rate_sweep_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    first, summary1, _ = _train(cache, tmp_path / "run1", "optimizer.learning_rate=1e-3")
    written = _entries(cache)
    second, summary2, _ = _train(cache, tmp_path / "run2", "optimizer.learning_rate=1e-2",
                                 "train.seed=3")
    # Every program of the second run (init, train step, eval step) was loaded, none written.
    assert first["misses"] > 0 and second["misses"] == 0 and second["hits"] > 0, (first, second)
    assert _entries(cache) == written
    assert summary2["train_loss"] != summary1["train_loss"]  # it did train another run
    print(f"compile time: run 1 {summary1['compile_time_s']:.2f} s, "
          f"run 2 {summary2['compile_time_s']:.2f} s")


def test_packed_sweeps_of_other_rates_and_seeds_lower_to_one_program():
    from jaxmodels.config import Config, DataConfig, TrainConfig
    from jaxmodels.orchestration import packed

    config = Config(name="packed_hlo", model=MLPConfig(hidden=(8,)),
                    data=DataConfig(dataset="digits", batch_size=8),
                    optimizer=OptimizerConfig(name="adam", learning_rate=2e-3,
                                              schedule="warmup_cosine", warmup_steps=2),
                    train=TrainConfig(steps=5, progress=False))

    def lowered(variants):
        p = packed.setup(config, variants)
        states = jax.eval_shape(p.init_fn)
        batch = packed.stack_batches([next(p.task.train_batches(0))] * len(variants))
        return (p.init_fn.func.lower(*p.init_fn.args).as_text(),
                p.train_step.lower(states, batch).as_text())

    first = lowered([packed.Variant(seed=0), packed.Variant(seed=1, learning_rate=5e-3)])
    second = lowered([packed.Variant(seed=4, learning_rate=1e-2), packed.Variant(seed=9)])
    assert first == second


def test_resume_with_another_learning_rate_trains_at_the_new_one(tmp_path):
    # The checkpoint holds the old run's rate in its optimizer state; resume.py allows the
    # change, so the relaunch's config must win, as it did when the rate was a constant.
    import jaxmodels
    from jaxmodels import config as C
    from test_checkpoint import MLP

    def config(*overrides):
        return C.apply_overrides(C.load(MLP, tiny=True), [
            "data.dataset=digits", "train.log_every=1", "train.eval_every=none",
            "checkpoint.async_save=false", "checkpoint.every_steps=3", *overrides])

    jaxmodels.train(config("train.steps=3", "optimizer.learning_rate=1e-3"), tmp_path)
    summary = jaxmodels.train(config("train.steps=5", "optimizer.learning_rate=4e-2"), tmp_path)
    assert summary["resumed_from"] == [3]
    rates = {r["step"]: r["learning_rate"] for r in map(json.loads,
             (tmp_path / "metrics.jsonl").read_text().splitlines()) if "learning_rate" in r}
    np.testing.assert_allclose([rates[s] for s in (1, 2, 3)], 1e-3, rtol=1e-6)
    np.testing.assert_allclose([rates[s] for s in (4, 5)], 4e-2, rtol=1e-6)


def test_a_two_run_learning_rate_sweep_compiles_each_program_once(tmp_path):
    # A sequential sweep in one CLI process: run 2, at another rate and seed, loads run 1's
    # init, train step and eval step from the persistent cache, so the cache holds one entry
    # of each (its file names start with the program's name). With the rate a constant in the
    # step, run 2 compiled a second train step and wrote a second entry.
    from test_compile_cache import COUNTING_CLI, _env
    from test_sweep import write_sweep

    path = write_sweep(tmp_path, '[{"optimizer.learning_rate": 1e-3}, '
                                 '{"optimizer.learning_rate": 1e-2, "train.seed": 1}]',
                       base='{"checkpoint.every_steps": None, "train.eval_every": None}')
    proc = subprocess.run([sys.executable, "-c", COUNTING_CLI, "sweep", str(path), "--workdir",
                           str(tmp_path / "out")], env=_env(tmp_path / "cache"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.split("COUNTS ")[-1])
    names = [entry.rsplit("-", 2)[0] for entry in _entries(tmp_path / "cache")]
    for program in ("jit_train_step", "jit_init_of", "jit_eval_step"):
        assert names.count(program) == 1, (program, sorted(names))
    assert counts["hits"] >= 3, counts  # run 2's three programs, loaded
    assert len(list((tmp_path / "out").glob("*/summary.json"))) == 2


def test_bfloat16_parameters_keep_a_float32_rate():
    tx, _ = optim.make(OptimizerConfig(name="adamw", learning_rate=3e-3, weight_decay=0.1), 10)
    state = tx.init(jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params()))
    assert {v.dtype for v in state.hyperparams.values()} == {jnp.dtype(jnp.float32)}
    assert float(state.hyperparams["learning_rate"]) == np.float32(3e-3)
