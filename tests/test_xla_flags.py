"""XLA CPU flags set by jaxmodels/runtime.py: they reach XLA when set before JAX starts, the
user's XLA_FLAGS and the switch-off win, and after JAX started they are refused with one line."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import pytest

from jaxmodels import runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A flag whose effect is visible without timing anything: the CPU device count.
PROBE = ("--xla_force_host_platform_device_count=3",)

REACHES_XLA = textwrap.dedent(f"""
    import json, os
    from jaxmodels import runtime
    set_ = runtime.configure_xla_flags({PROBE!r})
    import jax
    print("OUT " + json.dumps({{"set": set_, "devices": jax.device_count()}}))
""")


def test_flags_set_before_jax_starts_reach_xla():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.FLAGS_ENV)}
    proc = subprocess.run([sys.executable, "-c", REACHES_XLA], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.split("OUT ")[-1])
    assert out == {"set": PROBE[0], "devices": 3}


@pytest.mark.parametrize("env", [{"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"},
                                 {"XLA_FLAGS": ""}, {runtime.FLAGS_ENV: "0"}])
def test_user_flags_and_switch_off_win(monkeypatch, env):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = dict(os.environ)
    assert runtime.configure_xla_flags(PROBE) is None
    assert dict(os.environ) == before


def test_after_jax_started_says_so_once(monkeypatch, capsys):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(runtime.FLAGS_ENV, raising=False)
    jax.devices()  # the backend has started (it had, in this test process, anyway)
    runtime._say_once.cache_clear()
    assert runtime.configure_xla_flags(PROBE) is None
    assert runtime.configure_xla_flags(PROBE) is None
    err = capsys.readouterr().err
    assert err.count("are not applied") == 1 and "XLA_FLAGS" not in os.environ, err


CONFIGS = {  # one dense-only model, and a Transformer: attention's dots, softmax and norms
    "mlp": [str(ROOT / "experiments/configs/mlp_mnist.py"), "data.dataset=digits"],
    "gpt": [str(ROOT / "experiments/configs/gpt_shakespeare.py"), "data.eval_windows=2"],
}


def _train_loss(workdir, model, **env) -> float:
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.FLAGS_ENV)}
    path, *extra = CONFIGS[model]
    proc = subprocess.run([sys.executable, "-m", "jaxmodels.cli", "train", path, "--tiny", *extra,
                           "train.steps=3", "train.eval_every=none", "optimizer.warmup_steps=1",
                           "checkpoint.every_steps=none", "--no-compile-cache", "--workdir",
                           str(workdir)], env={**base, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The start-up line says which flags the run compiled with.
    assert ("jaxmodels' XLA CPU flags" in proc.stdout + proc.stderr) == (runtime.FLAGS_ENV not in env)
    return json.loads((workdir / "summary.json").read_text())["train_loss"]


# Turned on by adopting a flag in runtime.CPU_FLAGS: until then both runs are the same program.
@pytest.mark.skipif(not runtime.CPU_FLAGS, reason="no XLA CPU flag adopted (runtime.CPU_FLAGS)")
@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_adopted_flags_train_the_same_losses(tmp_path, model):
    with_flags = _train_loss(tmp_path / "with", model)
    without = _train_loss(tmp_path / "without", model, **{runtime.FLAGS_ENV: "0"})
    # A fused dot may sum in another order: float32 reassociation over 3 steps, no more.
    assert with_flags == pytest.approx(without, rel=1e-5)
