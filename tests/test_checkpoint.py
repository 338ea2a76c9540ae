"""Checkpoints, exact resume and fault handling.

The resume tests run `jaxmodels train` in separate processes (as a preempted job would be), all
with the same environment, so an uninterrupted run and a killed-and-resumed one execute the same
compiled programs and must agree bitwise: state, metrics.jsonl and summary.json.
"""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels
from jaxmodels import config as C
from jaxmodels import models
from jaxmodels.data.pipeline import TrainBatches
from jaxmodels.errors import RunStopped, UserError
from jaxmodels.training import checkpoint, loop, optim, resume, tasks
from jaxmodels.training import step as step_lib
from jaxmodels.training.state import init_state
from helpers import TIMING, read_metrics, saved_state, sigterm_when_reading

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = ROOT / "experiments/configs/mlp_mnist.py"
# 45 steps of batch 64 over digits' 1,257 training examples cross two epoch boundaries (steps
# 20 and 40, where validation runs); warmup + cosine and dropout make the step and the PRNG
# matter; a checkpoint every step makes a kill land anywhere, mid-save included.
RUN = [str(MLP), "--tiny", "data.dataset=digits", "train.steps=45", "train.eval_every=none",
       "train.log_every=5", "optimizer.schedule=warmup_cosine", "optimizer.warmup_steps=5",
       "model.dropout=0.1", "checkpoint.every_steps=1", "checkpoint.keep=2"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    return env


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "jaxmodels.cli", "train", *RUN, *extra, "--workdir", str(workdir)]


def _train(workdir, *extra):
    return subprocess.run(_cmd(workdir, *extra), env=_env(), capture_output=True, text=True, timeout=300)


def _start(workdir, *extra):
    return subprocess.Popen(_cmd(workdir, *extra), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(workdir, at_least: int, proc, timeout=120.0):
    """Polls until a complete checkpoint of step >= at_least exists (or the process ended)."""
    folder = pathlib.Path(workdir) / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and any(p.name.isdigit() and int(p.name) >= at_least for p in folder.iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {at_least}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError("timed out waiting for a checkpoint")


def _records(workdir):
    return read_metrics(workdir, drop=TIMING)


def _records_with_timing(workdir):
    return read_metrics(workdir)


def _summary_numbers(workdir):
    s = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    return {k: s[k] for k in ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                              "eval_loss", "eval_accuracy", "examples_seen", "skipped_updates")}


def _final_state(workdir, step=45):
    return saved_state(workdir, step)


def _assert_same_run(a, b):
    assert _records(a) == _records(b)
    assert _summary_numbers(a) == _summary_numbers(b)
    sa, sb = _final_state(a), _final_state(b)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        assert x.dtype == y.dtype and np.array_equal(x, y), "states differ bitwise"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    r = _train(workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    return workdir


def test_uninterrupted_run_crosses_epochs_and_keeps_the_newest_checkpoints(uninterrupted):
    records = _records(uninterrupted)
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40, 45]
    assert json.loads((uninterrupted / "summary.json").read_text())["resumed_from"] == []
    assert sorted(int(p.name) for p in (uninterrupted / "checkpoints").iterdir()) == [44, 45]


def test_kill_9_at_a_random_step_then_resume_is_bitwise_the_uninterrupted_run(uninterrupted, tmp_path):
    k = random.Random().randint(3, 38)  # a random step: any step must do
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, k, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "summary.json").exists()
    r = _train(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from the checkpoint of step" in r.stderr
    resumed_at = json.loads((tmp_path / "summary.json").read_text())["resumed_from"]
    assert len(resumed_at) == 1 and k <= resumed_at[0] < 45, (k, resumed_at)
    _assert_same_run(uninterrupted, tmp_path)


def test_sigterm_saves_the_current_step_exits_cleanly_and_resumes_exactly(uninterrupted, tmp_path):
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, 7, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("jaxmodels: stopped by SIGTERM after step ") and "run the same command to resume" in last
    stopped_at = int(last.split("after step ")[1].split(":")[0])
    assert max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == stopped_at
    assert "Traceback" not in err
    r = _train(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == [stopped_at]
    _assert_same_run(uninterrupted, tmp_path)


# ---------------------------------------------------------------------------------------------
# In-process tests (the 8 simulated devices of conftest): retention, half-written and corrupt
# checkpoints, restore onto other meshes, non-finite values.


def _config(*overrides):
    base = ["data.dataset=digits", "train.log_every=5", "train.eval_every=none",
            "checkpoint.async_save=false"]
    return C.apply_overrides(C.load(MLP, tiny=True), base + list(overrides))


def _steps(workdir):
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def test_retention_keeps_newest_every_mth_and_best(tmp_path):
    jaxmodels.train(_config("train.steps=24", "checkpoint.every_steps=2", "checkpoint.keep=2",
                            "checkpoint.keep_every=10"), tmp_path / "a")
    assert _steps(tmp_path / "a") == [10, 20, 22, 24]
    # Best by validation loss: validation every 4 steps, saves every 4; a huge learning rate makes
    # the loss rise after the first steps, so the best is an early one, not among the newest.
    summary = jaxmodels.train(_config("train.steps=24", "train.eval_every=4", "checkpoint.every_steps=4",
                                      "checkpoint.keep=1", "checkpoint.keep_best=val_loss",
                                      "optimizer.learning_rate=3.0"), tmp_path / "b")
    records = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    best = min(val, key=val.get)
    assert best != 24 and summary["step"] == 24
    assert _steps(tmp_path / "b") == sorted({best, 24})


def test_half_written_checkpoint_is_ignored_and_cleaned_up(tmp_path):
    jaxmodels.train(_config("train.steps=10", "checkpoint.every_steps=5"), tmp_path)
    rows = (tmp_path.parent / "results.jsonl").read_text().splitlines()
    jaxmodels.train(_config("train.steps=10", "checkpoint.every_steps=5"), tmp_path)  # finished: re-evaluates only
    assert (tmp_path.parent / "results.jsonl").read_text().splitlines() == rows
    # What a kill during the save of step 15 leaves: orbax's temporary folder, never renamed.
    tmp = tmp_path / "checkpoints" / "15.orbax-checkpoint-tmp-1234"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "garbage").write_bytes(b"\0" * 100)
    assert checkpoint.Checkpoints(tmp_path, C.CheckpointConfig()).steps() == [5, 10]
    summary = jaxmodels.train(_config("train.steps=20", "checkpoint.every_steps=5"), tmp_path)
    assert summary["resumed_from"] == [10] and summary["step"] == 20
    assert not tmp.exists()


def test_corrupt_checkpoint_falls_back_to_the_previous_and_says_which(tmp_path, capsys):
    jaxmodels.train(_config("train.steps=10", "checkpoint.every_steps=5"), tmp_path)
    reference = jaxmodels.train(_config("train.steps=20", "checkpoint.every_steps=5"), tmp_path / "ref")
    # Truncate every data file of the newest checkpoint's state (a disk that lost its tail).
    for f in (tmp_path / "checkpoints" / "10" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()
    summary = jaxmodels.train(_config("train.steps=20", "checkpoint.every_steps=5"), tmp_path)
    err = capsys.readouterr().err
    assert "checkpoint step 10" in err and "unreadable" in err and "resuming from step 5" in err
    assert summary["resumed_from"] == [5]
    assert (tmp_path / checkpoint.UNREADABLE_DIR / "10").is_dir()
    # Resumed from step 5 of the same run: the result is the uninterrupted one's.
    assert summary["eval_loss"] == reference["eval_loss"]


def test_no_readable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
    jaxmodels.train(_config("train.steps=5", "checkpoint.every_steps=5"), tmp_path)
    for f in (tmp_path / "checkpoints" / "5" / "state").rglob("*"):
        if f.is_file() and "ocdbt" in str(f):
            f.write_bytes(b"")
    with pytest.raises(UserError, match="no checkpoint in .* could be restored .*--restart"):
        jaxmodels.train(_config("train.steps=10"), tmp_path)
    assert _steps(tmp_path) == [5]
    summary = jaxmodels.train(_config("train.steps=10"), tmp_path, restart=True)
    assert summary["resumed_from"] == [] and _steps(tmp_path) == [10]


@pytest.fixture(scope="module")
def fsdp_checkpoint(tmp_path_factory):
    """An MLP trained 6 steps with FSDP over the 8 devices, checkpointed at step 6."""
    workdir = tmp_path_factory.mktemp("fsdp")
    cfg = _config("train.steps=6", "parallel.preset=fsdp", "model.hidden=(64,)")
    jaxmodels.train(cfg, workdir)
    s = loop.setup(cfg)
    abstract = loop.abstract_state(s.init_fn, s.state_sharding)
    saved = checkpoint.Checkpoints(workdir, cfg.checkpoint).restore_latest(abstract).state
    return cfg, workdir, jax.tree.map(np.asarray, saved)


@pytest.mark.parametrize("devices,preset", [(4, "fsdp"), (1, "data"), (8, "tensor")])
def test_restore_onto_another_mesh_gives_equal_values(fsdp_checkpoint, devices, preset):
    cfg, workdir, saved = fsdp_checkpoint
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    shape = {"fsdp": (1, devices, 1), "data": (1, 1, 1), "tensor": (1, 1, devices)}[preset]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]).reshape(shape), ("data", "fsdp", "tensor"))
    task = tasks.build(cfg.data)
    model_cfg = tasks.resolve_model(cfg.model, task)
    model = models.build(model_cfg)
    tx, schedule = optim.make(cfg.optimizer, 6)
    c = loop.compile_steps(model, tx, schedule, jnp.asarray(task.example_inputs),
                           C.ParallelConfig(preset=preset), mesh)
    abstract = loop.abstract_state(c.init_fn, c.state_sharding)
    restored = checkpoint.Checkpoints(workdir, cfg.checkpoint).restore_latest(abstract)
    assert restored.step == 6
    for x, sh, ref in zip(jax.tree.leaves(restored.state), jax.tree.leaves(c.state_sharding),
                          jax.tree.leaves(saved)):
        assert x.sharding == sh
        assert np.array_equal(np.asarray(x), ref)
    if preset == "tensor":
        kernel = restored.state.params["dense0"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")


def test_resume_on_another_layout_continues_the_run(fsdp_checkpoint, tmp_path):
    cfg, workdir, _ = fsdp_checkpoint
    shutil.copytree(workdir, tmp_path / "run")
    # Saved under FSDP on 8 devices, continued with tensor parallelism (a safe change).
    summary = jaxmodels.train(C.apply_overrides(cfg, ["train.steps=10", "parallel.preset=tensor"]),
                              tmp_path / "run")
    assert summary["resumed_from"] == [6] and summary["step"] == 10
    assert summary["parallel"]["preset"] == "tensor"


# ---------------------------------------------------------------------------------------------
# Non-finite values and the spike guard.


@pytest.fixture
def poison(monkeypatch):
    """Makes the image train batches of the steps in `poison.steps` (1-based) carry NaN inputs."""

    class Poison:
        steps: set = set()

    real_next = TrainBatches.__next__

    def poisoned_next(self):
        batch = real_next(self)
        if self.position in Poison.steps:  # position: batches served, this one included
            batch = dict(batch, inputs=np.full_like(batch["inputs"], np.nan))
        return batch

    monkeypatch.setattr(TrainBatches, "__next__", poisoned_next)
    return Poison


def test_nonfinite_loss_stops_with_step_metric_and_last_good_checkpoint(tmp_path, poison):
    poison.steps = {8}
    with pytest.raises(RunStopped, match=r"non-finite loss \(nan\) at step 8: stopped; the last good "
                                         r"checkpoint is step 6") as e:
        jaxmodels.train(_config("train.steps=20", "checkpoint.every_steps=3"), tmp_path)
    assert e.value.exit_code == 3
    assert _steps(tmp_path) == [3, 6]  # nothing saved from the poisoned state
    assert not (tmp_path / "summary.json").exists()


def test_skip_policy_drops_the_update_and_counts_it(tmp_path, poison):
    poison.steps = {4, 9}
    summary = jaxmodels.train(_config("train.steps=12", "train.nonfinite=skip"), tmp_path)
    assert summary["skipped_updates"] == 2
    assert np.isfinite(summary["eval_loss"]) and np.isfinite(summary["train_loss"])
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records if "skipped" in r] == [1, 1, 0]


def _tiny_step_setup(**guard):
    model = models.build(models.MLPConfig(num_classes=3, hidden=(8,)))
    tx = optax.adam(1e-2)
    x = jax.random.normal(jax.random.key(0), (16, 5))
    y = jnp.arange(16) % 3
    state = init_state(model, tx, x[:1], 0)
    step = jax.jit(step_lib.make_train_step(model, tx, schedule=lambda s: 1e-2, **guard))
    return state, step, {"inputs": x, "targets": y, "mask": jnp.ones(16)}


def test_skipped_update_leaves_the_state_exactly_unchanged():
    state, step, batch = _tiny_step_setup(nonfinite="skip")
    bad = dict(batch, inputs=batch["inputs"].at[3, 2].set(jnp.inf))
    new, metrics = step(state, bad)
    assert float(metrics["skipped"]) == 1.0 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state, state.loss_stats)),
                    jax.tree.leaves((new.params, new.opt_state, new.loss_stats))):
        assert np.array_equal(a, b)
    good, metrics = step(new, batch)
    assert float(metrics["skipped"]) == 0.0
    assert not np.array_equal(good.params["head"]["kernel"], state.params["head"]["kernel"])


def test_spike_guard_skips_a_loss_far_above_the_recent_mean():
    state, step, batch = _tiny_step_setup(spike_sigma=3.0, spike_window=5)
    for _ in range(8):
        state, metrics = step(state, batch)
        assert float(metrics["skipped"]) == 0.0
    spike = dict(batch, inputs=batch["inputs"] * 1e3)  # same targets, absurd logits
    new, metrics = step(state, spike)
    assert float(metrics["skipped"]) == 1.0
    assert np.array_equal(new.params["head"]["kernel"], state.params["head"]["kernel"])
    # Before the window is full the guard does not judge.
    fresh, step2, _ = _tiny_step_setup(spike_sigma=3.0, spike_window=5)
    _, metrics = step2(fresh, spike)
    assert float(metrics["skipped"]) == 0.0


def test_loss_stats_are_running_moments_while_the_window_fills():
    losses = np.array([2.0, 1.0, 4.0, 3.0], np.float32)
    stats = jnp.zeros(3)
    for x in losses:
        stats = step_lib.update_loss_stats(stats, jnp.float32(x), window=10)
    np.testing.assert_allclose(stats, [4, losses.mean(), losses.var()], rtol=1e-6)


def test_resume_allows_safe_changes_and_refuses_shape_changes():
    a = C.to_dict(_config("train.steps=10"))
    allowed, refused = resume.config_changes(a, C.to_dict(_config("train.steps=20", "train.log_every=3",
                                                                   "parallel.preset=fsdp")))
    assert not refused and len(allowed) == 3
    _, refused = resume.config_changes(a, C.to_dict(_config("train.steps=10", "model.hidden=(16,)")))
    assert refused == ["model.hidden: [32] -> [16]"]
    # A checkpoint written before a config field existed resumes when the field is at its default.
    older = json.loads(json.dumps(a))
    del older["model"]["parametrization"], older["train"]["spike_window"]
    assert resume.check_resume(older, a, "w", 10) == []
    with pytest.raises(UserError, match=r"model.parametrization: 'standard' -> 'mup'"):
        resume.check_resume(older, C.to_dict(_config("train.steps=10", "model.parametrization=mup",
                                                     "model.base_width=32")), "w", 10)


# ---------------------------------------------------------------------------------------------
# Every family resumes exactly: a Transformer and an LSTM language model (text windows) and a
# BatchNorm CNN (mutable collections). In-process: a SIGTERM raised by the data stream at a
# chosen step stops the run there, and a second call resumes it.

FAMILIES = {
    # With remat, which must not change a value, and makes hardware FLOPs exceed model FLOPs.
    "transformer_lm": (ROOT / "experiments/configs/gpt_shakespeare.py",
                       ["data.eval_split=validation", "model.remat=true"]),
    "lstm_lm": (ROOT / "experiments/configs/lstm_shakespeare.py", ["data.eval_split=validation"]),
    "bn_cnn": (ROOT / "experiments/configs/bn_cnn_mnist.py", ["model.dropout=0.2"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_resumes_bitwise_after_a_sigterm(family, tmp_path, monkeypatch):
    path, extra = FAMILIES[family]
    cfg = C.apply_overrides(C.load(path, tiny=True), [
        *extra, "train.steps=10", "train.log_every=3", "train.eval_every=4",
        "checkpoint.every_steps=none", "train.progress=false",
        "data.prefetch=0"])  # read in step order, so the signal comes at step 5 (test_prefetch.py reads ahead)
    reference = jaxmodels.train(cfg, tmp_path / "reference")

    restore = sigterm_when_reading(monkeypatch, cfg.data, 5)  # while step 5 is being prepared
    with pytest.raises(RunStopped, match="stopped by SIGTERM after step 5"):
        jaxmodels.train(cfg, tmp_path / "run")
    restore()
    assert _steps(tmp_path / "run") == [5]
    resumed = jaxmodels.train(cfg, tmp_path / "run")
    assert resumed["resumed_from"] == [5]
    if cfg.model.kind == "transformer_lm":
        assert resumed["hfu"] > resumed["mfu"] > 0
        assert all(r["hfu"] > r["mfu"] for r in _records_with_timing(tmp_path / "run") if "mfu" in r)
    assert _records(tmp_path / "run") == _records(tmp_path / "reference")
    for key in ("train_loss", "val_loss", "eval_loss", "eval_accuracy"):
        assert resumed[key] == reference[key], key
    a, b = _final_state(tmp_path / "reference", 10), _final_state(tmp_path / "run", 10)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(x, y)
