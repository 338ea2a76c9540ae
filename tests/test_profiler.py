"""train.profile_steps (jaxmodels/training/profile.py): bad ranges are one line before any
compile, a trace of the requested steps lands in WORKDIR/profile, and profiling changes nothing the
run computes (bitwise on CPU).

One tiny MLP on digits, in process: 6 steps, a log every step.
"""

import dataclasses
import gzip
import json

import numpy as np
import pytest

from jaxmodels.config import CheckpointConfig, Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.errors import ConfigError, UserError
from jaxmodels.models import MLPConfig
from jaxmodels.training import checkpoint, loop
from helpers import read_metrics

CONFIG = Config(
    name="profile_digits",
    model=MLPConfig(hidden=(16,)),
    data=DataConfig(dataset="digits", batch_size=64, eval_batch_size=256, eval_split="test"),
    optimizer=OptimizerConfig(name="adam", learning_rate=3e-3),
    train=TrainConfig(steps=6, log_every=1, eval_every=3, progress=False, tensorboard=False),
    checkpoint=CheckpointConfig(every_steps=None, async_save=False),
)


def _with(**train):
    return dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, **train))


@pytest.mark.parametrize("text, problem", [
    ("5:3", "END at least START"), ("a:b", "not START:END"), ("3", "not START:END"),
    ("0:2", "START must be at least 1"), ("", "not START:END")])
def test_bad_ranges_are_one_line(text, problem):
    with pytest.raises(ConfigError, match=problem) as e:
        _with(profile_steps=text)
    assert "\n" not in str(e.value) and str(e.value).startswith("train.profile_steps=")


def test_end_beyond_the_run_is_one_line_before_any_step(tmp_path):
    with pytest.raises(UserError, match=r"the run has only 6 steps: pass an END of at most 6") as e:
        loop.train(_with(profile_steps="4:7"), tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


def _weights(workdir):
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore((workdir / checkpoint.WEIGHTS_DIR).absolute())


def _records(workdir):
    return read_metrics(workdir, drop=("examples_per_sec", "mfu", "hfu"))


def test_trace_of_the_steps_and_an_unchanged_run(tmp_path):
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    loop.train(CONFIG, plain)
    loop.train(_with(profile_steps="3:4", profile_perfetto=True), profiled)
    traces = list((profiled / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    (perfetto,) = list((profiled / "profile").rglob("*.trace.json.gz"))  # for ui.perfetto.dev
    # Every traced step, and only those, is annotated with its number (the step view's grouping).
    events = json.load(gzip.open(perfetto))["traceEvents"]
    steps = sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")
    assert steps == [3, 4], steps
    assert not (plain / "profile").exists()
    assert _records(plain) == _records(profiled)
    a, b = _weights(plain), _weights(profiled)
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
