"""Two processes x 4 CPU devices (gloo on 127.0.0.1) train like one process x 8 devices.

Each process is a `jaxmodels train` subprocess with --coordinator/--num-processes/--process-id;
the reference runs in this process on the 8 simulated devices of conftest. Both use the same
tiny MLP on digits, with the "fsdp" preset over a data=2 x fsdp=4 mesh so that both the batch
and the parameters are split across the process boundary. About 20 s.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import config as C

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = ROOT / "experiments/configs/mlp_mnist.py"
OVERRIDES = ["data.dataset=digits", "data.batch_size=16", "train.steps=10", "train.log_every=1",
             "train.eval_every=10", "parallel.preset=fsdp", "parallel.data=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(len(jax.devices()) < 8, reason="the reference run needs 8 devices")
def test_two_processes_match_one_process(tmp_path):
    reference = jaxmodels.train(C.apply_overrides(C.load(MLP, tiny=True), OVERRIDES), tmp_path / "one")

    port = _free_port()
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "jaxmodels.cli", "train", str(MLP), "--tiny", *OVERRIDES,
         "--workdir", str(tmp_path / "two"), "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["devices"] and len(summary["devices"]) == 8
    assert summary["parallel"]["mesh_shape"] == {"data": 2, "fsdp": 4, "tensor": 1}
    # Only process 0 printed the summary line.
    assert '"eval_loss"' in outs[0][0] and '"eval_loss"' not in outs[1][0]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    assert summary["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)


def test_process_settings_come_from_flags_or_environment(monkeypatch):
    from jaxmodels.errors import UserError
    from jaxmodels.parallel import distributed

    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.settings_from(None, None, None) is None
    assert distributed.settings_from("h:1", 2, 1) == ("h:1", 2, 1)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:2")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.settings_from(None, None, None) == ("h:2", 4, 3)
    assert distributed.settings_from(None, None, 0) == ("h:2", 4, 0)  # a flag beats the env
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(UserError, match="needs all of --coordinator"):
        distributed.settings_from(None, None, None)
    with pytest.raises(UserError, match="not in \\[0, 4\\)"):
        distributed.settings_from(None, None, 4)
