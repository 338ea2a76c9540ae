"""TensorBoard event files (jaxmodels/training/tensorboard.py), read back with TensorBoard's own
reader: the same scalars as metrics.jsonl (also after a resume whose first launch logged past its
checkpoint), the curves image, the config text and the hparams; a sweep's runs side by side.

One tiny MLP on digits, in process: 8 steps, a log every step, validation and a checkpoint every
2 steps.
"""

import dataclasses

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator, plugin_event_multiplexer

from jaxmodels.config import CheckpointConfig, Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.errors import UserError
from jaxmodels.models import MLPConfig
from jaxmodels.training import loop, tensorboard
from jaxmodels.training.hooks import Hook
from helpers import read_metrics

CONFIG = Config(
    name="tb_digits",
    model=MLPConfig(hidden=(16,)),
    data=DataConfig(dataset="digits", batch_size=64, eval_batch_size=256, eval_split="test"),
    optimizer=OptimizerConfig(name="adam", learning_rate=3e-3),
    train=TrainConfig(steps=8, log_every=1, eval_every=2, progress=False),
    checkpoint=CheckpointConfig(every_steps=2, keep=3, async_save=False),
)


def _events(workdir):
    acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0})
    return acc.Reload()


def _scalars(acc) -> dict:
    """{tag: [(step, value)]} of the train/val scalars (the hparam/ finals are left out)."""
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if not tag.startswith("hparam/")}


def _expected(records) -> dict:
    out = {}
    for r in records:
        for tag, value in tensorboard.scalars(r).items():
            out.setdefault(tag, []).append((r["step"], value))
    return out


def _assert_same(acc, records):
    got, want = _scalars(acc), _expected(records)
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # each step once
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in want[tag]],
                                   rtol=1e-6, err_msg=tag)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("plain")
    return workdir, loop.train(CONFIG, workdir)


def test_scalars_equal_metrics_jsonl(plain):
    workdir, _ = plain
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 9))
    acc = _events(workdir)
    _assert_same(acc, records)
    assert {"loss", "val_loss", "val_accuracy", "learning_rate", "grad_norm"} <= set(_scalars(acc))


def test_image_config_text_and_hparams(plain):
    workdir, summary = plain
    acc = _events(workdir)
    (image,) = acc.Images("curves")
    assert image.step == 8 and image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"name": "tb_digits"' in text
    hp = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hp)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optimizer.learning_rate"].number_value == pytest.approx(3e-3)
    assert hparams["model.kind"].string_value == "mlp"
    assert hparams["model.hidden"].string_value == "[16]"
    final = {t: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"] if t.startswith("hparam/")}
    assert final["hparam/eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-6)


class _FailAt(Hook):
    def __init__(self, step):
        self.step = step

    def on_log(self, step, record, state):
        if step == self.step:
            raise RuntimeError("planned failure")


def test_resumed_run_has_each_step_once(plain, tmp_path):
    # The first launch logs step 5 (its events flushed) and fails before the step-6 checkpoint;
    # the relaunch resumes from step 4 and logs 5.. again, with another examples_per_sec.
    with pytest.raises(UserError, match="planned failure"):
        loop.train(CONFIG, tmp_path, hooks=[_FailAt(5)])
    loop.train(CONFIG, tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 9))
    _assert_same(_events(tmp_path), records)
    # And the values are the uninterrupted run's (the timings aside).
    plain_records = read_metrics(plain[0])
    for a, b in zip(records, plain_records):
        assert a["loss"] == b["loss"] and a.get("val_loss") == b.get("val_loss")


def test_off_writes_nothing(tmp_path):
    cfg = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, steps=2, tensorboard=False))
    loop.train(cfg, tmp_path)
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").exists()


def test_a_sweep_dir_shows_every_run_with_its_hparams(tmp_path):
    # The layout a sweep makes (sweep.resolve: DIR/<name>), written by the module's two writers
    # without training: `tensorboard --logdir DIR` lists each run with its own hparams session.
    for name, lr in (("lr_1e-3", 1e-3), ("lr_1e-2", 1e-2)):
        cfg = dataclasses.replace(CONFIG, name=name,
                                  optimizer=dataclasses.replace(CONFIG.optimizer, learning_rate=lr))
        log = tensorboard.open_log(True, tmp_path / name, [])
        log.write({"step": 1, "loss": lr})
        log.close()
        tensorboard.write_final(tmp_path / name, cfg, {"step": 1, "eval_loss": 10 * lr})
    mux = plugin_event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(tmp_path)).Reload()
    assert sorted(mux.Runs()) == ["lr_1e-2/tensorboard", "lr_1e-3/tensorboard"]
    content = mux.PluginRunToTagToContent("hparams")
    assert sorted(content) == sorted(mux.Runs())
    assert all("_hparams_/session_start_info" in tags for tags in content.values())
    for run, lr in (("lr_1e-3/tensorboard", 1e-3), ("lr_1e-2/tensorboard", 1e-2)):
        assert _events(tmp_path / run.split("/")[0]).Scalars("loss")[0].value == pytest.approx(lr)


def test_a_failing_event_writer_is_one_warning_and_stops_writing(capsys):
    class Broken:
        calls = 0

        def write(self, record):
            Broken.calls += 1
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    log = tensorboard.Guarded(Broken())
    log.write({"step": 1, "loss": 1.0})
    log.write({"step": 2, "loss": 1.0})
    err = capsys.readouterr().err
    assert Broken.calls == 1 and err.count("warning: TensorBoard writing scalars failed") == 1
    assert "metrics.jsonl is unaffected" in err


def test_tensorboardx_is_imported_without_torch():
    import subprocess
    import sys

    code = ("import sys; from jaxmodels.training import tensorboard as t; t._tensorboardx(); "
            "assert 'torch' not in sys.modules; import importlib.util; "
            "assert 'torch' not in sys.modules or sys.modules['torch'] is not None")
    import pathlib

    subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[1])
