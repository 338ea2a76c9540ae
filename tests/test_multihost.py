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
from jaxmodels.accounting import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = ROOT / "experiments/configs/mlp_mnist.py"
GPT = ROOT / "experiments/configs/gpt_shakespeare.py"
# digits' test split has 270 examples: 34 batches of 8, the last an uneven 6 padded to 8 (the
# eager accumulation this replaced deadlocked there; with 5 batches of 64 it did not).
MLP_OVERRIDES = ["data.dataset=digits", "data.batch_size=16", "data.eval_batch_size=8",
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
from jaxmodels.accounting import results as results_lib
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
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def _eval(summary: dict) -> tuple:
    return summary["eval_loss"], summary["eval_accuracy"], summary["eval_examples"]


@pytest.fixture(scope="module")
def mlp_reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlp_one")
    config = C.apply_overrides(C.load(MLP, tiny=True), MLP_OVERRIDES)
    return jaxmodels.train(config, workdir), workdir


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
    # per batch: 8 images, or 512 windows of 16 tokens).
    per_batch = 8 if model == "mlp" else 512 * 16
    assert reference["eval_examples"] > 2 * per_batch and reference["eval_examples"] % per_batch
    assert _eval(summaries[0])[2] == reference["eval_examples"]
    np.testing.assert_allclose(_eval(summaries[0])[:2], _eval(reference)[:2], rtol=1e-5)
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)


def _slurm_env(i: int, job_id: int) -> dict:
    # What srun sets for task i of a 2-task step on one node (only what JAX's detector reads,
    # plus SLURM_NODELIST for realism).
    return _env(SLURM_JOB_ID=str(job_id), SLURM_NTASKS="2", SLURM_PROCID=str(i),
                SLURM_LOCALID=str(i), SLURM_STEP_NODELIST="127.0.0.1", SLURM_NODELIST="127.0.0.1",
                SLURM_STEP_NUM_NODES="1")


@needs_8
def test_slurm_job_step_is_detected_and_matches_one_process(tmp_path, mlp_reference):
    reference, one = mlp_reference
    # JAX derives the coordinator port from the job id (61440 + id % 4096): choose an id whose
    # port is free.
    port = _free_port(61440)
    job_id = 4096 * 1000 + port - 61440
    two = tmp_path / "two"
    results = _finish([_start(_cli(MLP, MLP_OVERRIDES, two), _slurm_env(i, job_id))
                       for i in range(2)])
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, err[-3000:]
        assert f"jaxmodels: SLURM cluster: process {i} of 2, coordinator 127.0.0.1:{port}" in err
    # Only process 0 printed the summary line.
    assert '"eval_loss"' in results[0][1] and '"eval_loss"' not in results[1][1]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["parallel"]["mesh_shape"] == {"data": 2, "fsdp": 4, "tensor": 1}
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)
    np.testing.assert_allclose(_eval(summary)[:2], _eval(reference)[:2], rtol=1e-5)
    assert _eval(summary)[2] == reference["eval_examples"]


@needs_8
def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(tmp_path):
    overrides = [*MLP_OVERRIDES, "train.steps=150", "train.eval_every=50",
                 "checkpoint.every_steps=none"]
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    port = _free_port()
    procs = [_start(_cli(MLP, overrides, stopped, *_flags(port, i)), _env()) for i in range(2)]
    deadline = time.monotonic() + TIMEOUT
    # Process 0 logs every step: once two steps are logged the run is under way.
    while not (stopped / "metrics.jsonl").exists() or len(_losses(stopped)) < 2:
        assert time.monotonic() < deadline and procs[0].poll() is None, "the run did not start"
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice to process 1 only
    results = _finish(procs)
    steps = []
    for i, (rc, out, err) in enumerate(results):
        assert rc == 128 + signal.SIGTERM, err[-3000:]
        line = next(x for x in err.splitlines() if x.startswith("jaxmodels: stopped by SIGTERM"))
        assert ("sent to another process" in line) == (i == 0)
        steps.append(int(line.split("after step ")[1].split(":")[0]))
    assert steps[0] == steps[1] < 150, steps
    saved = sorted(int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [steps[0]]

    port = _free_port()
    resumed = _finish([_start(_cli(MLP, overrides, stopped, *_flags(port, i)), _env())
                       for i in range(2)])
    port = _free_port()
    reference = _finish([_start(_cli(MLP, overrides, straight, *_flags(port, i)), _env())
                         for i in range(2)])
    for rc, out, err in resumed + reference:
        assert rc == 0, err[-3000:]
    a, b = (json.loads((w / "summary.json").read_text()) for w in (stopped, straight))
    assert a["resumed_from"] == [steps[0]] and a["step"] == b["step"] == 150
    assert _losses(stopped) == _losses(straight)
    assert _eval(a) == _eval(b)


# `jaxmodels train` on process argv[1], which sends itself SIGTERM (a preemption notice to that
# host only) as the final evaluation starts; the evaluation then runs to its end.
SIGNAL_AT_FINAL_EVAL = """
import os, signal, sys
from jaxmodels import cli
from jaxmodels.training import evaluator
final = evaluator.Evaluator.final
def final_with_notice(self, state):
    os.kill(os.getpid(), signal.SIGTERM)
    return final(self, state)
if sys.argv[1] == sys.argv[-1]:  # this process is the one signalled (its --process-id)
    evaluator.Evaluator.final = final_with_notice
sys.exit(cli.main(sys.argv[2:]))
"""


@needs_8
def test_sigterm_to_one_process_in_the_final_evaluation_stops_both_and_relaunch_finishes(tmp_path):
    workdir = tmp_path / "run"
    port = _free_port()
    procs = [_start(["-c", SIGNAL_AT_FINAL_EVAL, "1", *_cli(MLP, MLP_OVERRIDES, workdir)[2:],
                     *_flags(port, i)], _env()) for i in range(2)]
    # Prompt: both end on their own, long before JAX's heartbeat timeout would end a waiting one.
    results = _finish(procs)
    for i, (rc, out, err) in enumerate(results):
        assert rc == 128 + signal.SIGTERM, err[-3000:]
        # One line says why it stopped, and it is the last (the start-up announcement aside).
        lines = [x for x in err.splitlines() if x.startswith("jaxmodels: stopped")]
        assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert lines[0].startswith("jaxmodels: stopped by SIGTERM" + (
            " (sent to another process)" if i == 0 else "") + " during the final evaluation: "
            "the checkpoint of step 6 "), lines[0]
    assert not (workdir / "summary.json").exists() and not (tmp_path / "results.jsonl").exists()

    port = _free_port()
    for rc, out, err in _finish([_start(_cli(MLP, MLP_OVERRIDES, workdir, *_flags(port, i)), _env())
                                 for i in range(2)]):
        assert rc == 0, err[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 6 and summary["resumed_from"] == [6]
    rows = results_lib.read(tmp_path / "results.jsonl")
    assert [r["run"] for r in rows] == ["run"] and rows[0]["loss"] == summary["eval_loss"]


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


def _clear_clusters(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "TPU_", "MEGASCALE_")):
            monkeypatch.delenv(name)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)


def test_start_stays_one_process_outside_a_cluster_and_auto_says_why(monkeypatch):
    from jaxmodels.errors import UserError
    from jaxmodels.parallel import distributed

    _clear_clusters(monkeypatch)
    # Nothing detected and nothing asked: one process, no coordinator, nothing printed.
    assert distributed.start(None) is False and distributed.start("off") is False
    with pytest.raises(UserError, match="--distributed auto found no cluster"):
        distributed.start("auto")
    with pytest.raises(UserError, match="--distributed off contradicts"):
        distributed.start("off", "127.0.0.1:1", 2, 0)
    # A SLURM job of one task has nothing to join.
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    for k, v in {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                 "SLURM_STEP_NODELIST": "node[003-004]"}.items():
        monkeypatch.setenv(k, v)
    assert distributed.start(None) is False
    assert jax.process_count() == 1


def test_cluster_detection_reads_a_slurm_step_without_starting_anything(monkeypatch):
    from jaxmodels.parallel import clusters

    _clear_clusters(monkeypatch)
    assert clusters.detect() is None
    for k, v in {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "16", "SLURM_PROCID": "3",
                 "SLURM_LOCALID": "3", "SLURM_STEP_NODELIST": "gpu[07-08]"}.items():
        monkeypatch.setenv(k, v)
    cluster = clusters.detect()
    assert cluster.name == "SLURM" and cluster.process_count() == 16
    assert cluster.env.get_coordinator_address(None, None) == f"gpu07:{61440 + 5}"


def test_one_process_stop_vote_is_the_local_signal_and_runs_nothing():
    from jaxmodels.parallel import mesh as mesh_lib
    from jaxmodels.parallel import stop_vote

    vote = stop_vote.StopVote(mesh_lib.make_mesh())
    assert not hasattr(vote, "_max")  # no program compiled, none dispatched
    assert vote(None) is None and vote(15) == 15 and vote(None) is None


def test_importing_jaxmodels_detects_no_cluster():
    # A SLURM environment must not make `import jaxmodels` (or the CLI's --help) start anything.
    env = _slurm_env(1, 4096 * 1000 + 1)
    code = ("import jaxmodels, jaxmodels.cli, jaxmodels.training.loop, jax; "
            "from jax._src import distributed; assert distributed.global_state.client is None; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
