"""Two processes x 4 CPU devices (gloo on 127.0.0.1) train like one process x 8 devices.

Each process is a subprocess with JAX_NUM_CPU_DEVICES=4; the one-process references run in this
process on the 8 simulated devices of conftest. Meshes use the "fsdp" preset, so both the batch
and the parameters are split across the process boundary. Evaluations read several batches, the
last one uneven (padded), which is where eager accumulation once deadlocked. Every subprocess
runs under a timeout, so a hang fails the test instead of blocking it.

Equalities: the two processes agree exactly (replicated numbers); two processes and one process
agree to rtol 1e-5 (a cross-process all-reduce adds in another order than one process does);
a resumed two-process run equals an uninterrupted one exactly.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import config as C

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = ROOT / "experiments/configs/mlp_mnist.py"
GPT = ROOT / "experiments/configs/gpt_shakespeare.py"
# digits' test split has 270 examples: batches of 64 leave an uneven 14, padded to 16.
MLP_OVERRIDES = ["data.dataset=digits", "data.batch_size=16", "data.eval_batch_size=64",
                 "train.steps=6", "train.log_every=1", "train.eval_every=3",
                 "parallel.preset=fsdp", "parallel.data=2"]
# The final evaluation reads the whole validation split: about 29 batches of 512 windows.
GPT_OVERRIDES = ["data.batch_size=8", "data.seq_len=16", "model.max_len=16", "data.eval_windows=24",
                 "data.eval_batch_size=512", "train.steps=4", "train.log_every=1",
                 "train.eval_every=2", "parallel.preset=fsdp"]
TIMEOUT = 420
needs_8 = pytest.mark.skipif(len(jax.devices()) < 8, reason="the reference run needs 8 devices")

# One process of a two-process run through the library API (what the CLI's `train` calls), with
# each process printing its own summary so the test can check that they agree.
DRIVER = """
import json, sys
from jaxmodels import config as C
from jaxmodels.parallel import distributed
from jaxmodels.training import loop
path, workdir, coordinator, pid, *overrides = sys.argv[1:]
distributed.start(None, coordinator, 2, int(pid))
summary = loop.train(C.apply_overrides(C.load(path, tiny=True), overrides), workdir)
print("SUMMARY " + json.dumps(summary))
"""


def _free_port(lo: int | None = None) -> int:
    for port in ([0] if lo is None else range(lo, 65536)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                                "JAX_PROCESS_ID"))}
    return {**env, "JAX_NUM_CPU_DEVICES": "4", "PYTHONPATH": str(ROOT), **extra}


def _start(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs) -> list[tuple[int, str, str]]:
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def _cli(config, overrides, workdir, *flags) -> list[str]:
    return ["-m", "jaxmodels.cli", "train", str(config), "--tiny", *overrides,
            "--workdir", str(workdir), *flags]


def _flags(port: int, i: int) -> list[str]:
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _eval(summary: dict) -> tuple:
    return summary["eval_loss"], summary["eval_accuracy"], summary["eval_examples"]


@pytest.fixture(scope="module")
def mlp_reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlp_one")
    return jaxmodels.train(C.apply_overrides(C.load(MLP, tiny=True), MLP_OVERRIDES), workdir), workdir


@needs_8
@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_multi_batch_evaluation_on_two_processes_matches_one(model, tmp_path, mlp_reference):
    if model == "mlp":
        (reference, one), config, overrides = mlp_reference, MLP, MLP_OVERRIDES
    else:
        config, overrides, one = GPT, GPT_OVERRIDES, tmp_path / "one"
        reference = jaxmodels.train(C.apply_overrides(C.load(GPT, tiny=True), overrides), one)
    port = _free_port()
    two = tmp_path / "two"
    results = _finish([_start(["-c", DRIVER, str(config), str(two), f"127.0.0.1:{port}", str(i),
                               *overrides], _env()) for i in range(2)])
    summaries = []
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        summaries.append(json.loads(out.split("SUMMARY ", 1)[1]))
    assert _eval(summaries[0]) == _eval(summaries[1])  # replicated: the same numbers everywhere
    assert summaries[0]["val_loss"] == summaries[1]["val_loss"]
    assert len(summaries[0]["devices"]) == 8
    # The final evaluation really read several batches, the last one padded (targets scored
    # per batch: 64 images, or 512 windows of 16 tokens).
    per_batch = 64 if model == "mlp" else 512 * 16
    assert reference["eval_examples"] > 2 * per_batch and reference["eval_examples"] % per_batch
    assert _eval(summaries[0])[2] == reference["eval_examples"]
    np.testing.assert_allclose(_eval(summaries[0])[:2], _eval(reference)[:2], rtol=1e-5)
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)
