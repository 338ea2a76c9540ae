"""The loop's pieces one by one (periodic schedule, metrics log, throughput meter, evaluator
names, curves, XLA FLOPs), and a regression run through the whole loop whose summary, records
and curves follow its objective (MSE: mae, never accuracy)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import CheckpointConfig, Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.training import loop, plots, throughput
from jaxmodels.training.evaluator import Evaluator
from jaxmodels.training.metrics_log import MetricsLog
from jaxmodels.training.periodic import Periodic
from jaxmodels.training.run_checkpoint import LoopState


def test_periodic_evaluates_at_each_epoch_boundary_crossed_and_at_the_end():
    when = Periodic(total_steps=11, steps_per_epoch=2.5, log_every=4, save_every=5)
    assert [s for s in range(1, 12) if when.eval_due(s)] == [3, 5, 8, 10, 11]
    assert [s for s in range(1, 12) if when.log_due(s)] == [4, 8, 11]
    assert [s for s in range(1, 12) if when.save_due(s)] == [5, 10, 11]
    every = Periodic(total_steps=7, steps_per_epoch=2.5, log_every=4, eval_every=3)
    assert [s for s in range(1, 8) if every.eval_due(s)] == [3, 6, 7]
    assert when.epoch(3) == 1.2


def test_metrics_log_means_skip_skipped_steps_and_rewrites_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')  # a killed run's tail
    ls = LoopState()
    log = MetricsLog(ls, [{"step": 1}], path, guarded=True)
    assert path.read_text() == '{"step": 1}\n'
    log.add(2, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0), "skipped": jnp.float32(0)})
    log.add(3, {"loss": jnp.float32(np.nan), "grad_norm": jnp.float32(1.0), "skipped": jnp.float32(1)})
    log.add(4, {"loss": jnp.float32(3.0), "grad_norm": jnp.float32(1.0), "skipped": jnp.float32(0)})
    assert log.nonfinite() == (3, "loss", pytest.approx(np.nan, nan_ok=True))
    record = log.interval(4, 0.5)
    assert record == {"step": 4, "epoch": 0.5, "loss": 2.0, "grad_norm": 1.0, "skipped": 1}
    assert ls.pending == [] and ls.skipped == 1
    log.write(record)
    log.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 4]
    assert log.last_train == record


def test_throughput_excludes_the_compile_and_the_pauses(monkeypatch):
    clock = iter([0.0, 10.0, 10.0, 12.0, 15.0, 20.0, 21.0, 25.0, 30.0])  # perf_counter calls
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    ls = LoopState()
    meter = throughput.Throughput(ls, batch_size=8, tokens_per_example=4, n_devices=1)  # t=0
    meter.stepped(True, jnp.zeros(()))  # compile: 0 -> 10, clock restarts at 10
    meter.stepped(False, None)
    meter.stepped(False, None)
    with meter.pause("eval_time"):  # 12 -> 15: 3 s of evaluation
        pass
    record = meter.interval()  # at 20: 10 s since the restart, 3 of them paused
    assert ls.compile_time == 10.0 and ls.eval_time == 3.0 and ls.train_time == 7.0
    assert record == {"examples_per_sec": 16 / 7.0, "tokens_per_sec": 4 * 16 / 7.0}
    assert ls.timed_examples == 16


def test_xla_flops_of_a_matmul_step_per_example():
    w = jnp.ones((16, 32))
    step = jax.jit(lambda state, batch: (batch["inputs"] @ state).sum())
    got = throughput.xla_flops_per_example(step, w, {"inputs": jnp.ones((4, 16))}, batch_size=4)
    # 2 * 16 * 32 multiply-adds per row, plus the sum's 32 adds per row.
    assert got.model_flops_per_example == pytest.approx(2 * 16 * 32, rel=0.1)


def test_evaluator_names_come_from_the_measurement():
    ev = Evaluator(lambda state, split, periodic: {"loss": 1.0, "mae": 0.5, "examples": 3}, "test")
    assert ev.periodic(None) == {"val_loss": 1.0, "val_mae": 0.5}
    packed_ev = Evaluator(lambda s, split, periodic: [{"loss": 1.0, "examples": 3}] * 2, "test")
    assert packed_ev.periodic(None) == [{"val_loss": 1.0}] * 2


def test_curves_have_a_panel_per_objective_metric_and_its_loss_label():
    records = [{"step": 1, "loss": 2.0, "mae": 1.0, "learning_rate": 0.1, "grad_norm": 1.0},
               {"step": 2, "val_loss": 1.5, "val_mae": 0.8}]
    fig = plots.curves_figure(records, loss_label="mean squared error")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "mae", "learning rate"]
    assert fig.axes[0].get_ylabel() == "mean squared error"
    with_acc = plots.curves_figure([{"step": 1, "loss": 2.0, "accuracy": 0.5, "val_accuracy": 0.4}])
    assert [ax.get_title() for ax in with_acc.axes] == ["loss", "accuracy", "learning rate"]


def test_plot_curves_redraws_a_workdir_inline(tmp_path):
    import json

    import jaxmodels
    from jaxmodels.errors import UserError

    with pytest.raises(UserError, match="no logged steps"):
        jaxmodels.plot_curves(tmp_path)
    records = [{"step": 10, "loss": 2.0, "accuracy": 0.3, "learning_rate": 1e-3},
               {"step": 20, "loss": 1.0, "accuracy": 0.6, "val_loss": 1.2, "val_accuracy": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3')
    (tmp_path / "summary.json").write_text(json.dumps({"name": "run_x", "objective": "cross_entropy"}))
    fig = jaxmodels.plot_curves(tmp_path)  # the torn last line (a killed writer) is skipped
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert fig.axes[0].get_ylabel() == "cross_entropy loss" and fig.texts[0].get_text() == "run_x"
    assert list(fig.axes[1].lines[1].get_xdata()) == [20]  # validation accuracy, at step 20
    # Shown as an image when it is a cell's value, with or without pyplot.
    assert fig._repr_png_().startswith(b"\x89PNG")


class Regressor(nn.Module):
    """A user model the FLOP formulas do not know: the digit's class as a number."""

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(1)(nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1))))[:, 0]


def test_a_regression_run_is_named_after_its_objective(tmp_path):
    config = Config(
        name="regress_digits",
        data=DataConfig(dataset="digits", batch_size=64, eval_batch_size=256, eval_split="test"),
        optimizer=OptimizerConfig(name="adam", learning_rate=3e-3),
        train=TrainConfig(steps=6, log_every=3, eval_every=3, progress=False),
        checkpoint=CheckpointConfig(every_steps=None))
    summary = loop.train(config, tmp_path, parts=loop.Parts(model=Regressor(), objective="mse"))
    assert summary["objective"] == "mse"
    for prefix in ("train", "val", "eval"):
        assert np.isfinite(summary[f"{prefix}_mae"]) and np.isfinite(summary[f"{prefix}_loss"])
        assert f"{prefix}_accuracy" not in summary
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("accuracy" not in k for r in records for k in r)
    assert [r["step"] for r in records if "val_mae" in r] == [3, 6]
    assert plots.metric_names(records) == ["mae"]
    # No formula for a user's model: XLA counts the step's FLOPs, so MFU is still reported.
    assert summary["flops_source"] == "xla" and summary["flops_per_example"] > 0
    assert 0 < summary["mfu"] < 1 and summary["compilations"]["train_step"] == 1
    assert (tmp_path / "curves.png").exists()


def test_a_repeated_sigterm_keeps_saving_and_a_second_sigint_stops_at_once():
    import os
    import signal

    from jaxmodels.training.loop import _SignalFlag

    flag = _SignalFlag()
    with flag:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: no interrupt
        assert flag.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert signal.getsignal(signal.SIGTERM) is not flag._handle  # handlers restored
