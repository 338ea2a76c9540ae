"""One process per workdir: a second `train`/`eval` on a busy workdir is one line, exit 2, and
touches nothing; the first run's files are whole; a lock of a `kill -9`'d process does not block;
and an error never leaves the process hanging on threads."""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxmodels import cli
from jaxmodels.training import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = str(ROOT / "experiments/configs/mlp_mnist.py")
BASE = ["--tiny", "data.dataset=digits", "train.eval_every=none", "train.log_every=5"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")

# Holds the lock of argv[1] until killed, after saying so on stdout.
HOLDER = """
import sys, time
from jaxmodels.training import workdir
with workdir.locked(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _snapshot(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _hold(workdir: pathlib.Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    assert cli.main(["train", MLP, *BASE, "train.steps=10", "--workdir", str(workdir)]) == 0
    return workdir


@pytest.mark.parametrize("command", ["train", "train --restart", "eval"])
def test_a_busy_workdir_is_one_line_exit_2_and_nothing_changes(command, finished, capsys):
    holder = _hold(finished)
    try:
        before = _snapshot(finished)
        capsys.readouterr()
        sub, *flags = command.split()
        assert cli.main([sub, MLP, *BASE, "train.steps=20", *flags, "--workdir", str(finished)]) == 2
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"jaxmodels: error: workdir {str(finished)!r} is in use by process "
                               f"{holder.pid} (jaxmodels "), line
        assert line.endswith("wait for it or pick another --workdir") and "Traceback" not in err
        assert _snapshot(finished) == before
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_does_not_block_a_relaunch(tmp_path):
    holder = _hold(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / workdir_lib.LOCK_FILE).read_text().startswith(f"{holder.pid} ")
    with workdir_lib.locked(tmp_path):  # at once: the kernel dropped the dead holder's lock
        assert (tmp_path / workdir_lib.LOCK_FILE).read_text().startswith(f"{os.getpid()} ")


def test_a_second_train_while_the_first_runs_leaves_the_first_whole(tmp_path):
    """Two real processes: the first trains 60 steps; the second, launched while the first holds
    the lock, must fail at once, and the first must end with every metrics line it logged
    (before the lock, the second's os.replace of metrics.jsonl cut the first's lines off)."""
    workdir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "jaxmodels.cli", "train", MLP, *BASE,
                              "train.steps=60", "checkpoint.every_steps=10", "--workdir",
                              str(workdir)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = workdir / workdir_lib.LOCK_FILE
    deadline = time.monotonic() + 240
    while not (lock.exists() and lock.read_text().startswith(f"{first.pid} ")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    # Paused, so that the second surely starts while the first is mid-run (JAX's start-up alone
    # can outlast a tiny run); the lock stays held meanwhile.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run([sys.executable, "-m", "jaxmodels.cli", "train", MLP, *BASE,
                                 "train.steps=60", "checkpoint.every_steps=10", "--workdir",
                                 str(workdir)], env=ENV, capture_output=True, text=True, timeout=240)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    assert f"is in use by process {first.pid}" in second.stderr.strip().splitlines()[-1]
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # Every logged interval once, in order (validation at epoch ends adds lines of its own).
    assert steps == sorted(set(steps)) and set(range(5, 61, 5)) <= set(steps) and steps[-1] == 60
    assert json.loads((workdir / "summary.json").read_text())["step"] == 60
    rows = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(rows) == 1


def test_an_error_ends_the_process_even_with_a_hanging_thread():
    """What a failed async orbax save left behind: a non-daemon thread that never ends. The CLI
    prints its one line and exits instead of waiting for it forever in threading._shutdown."""
    script = ("import sys, threading; from jaxmodels import cli; "
              "threading.Thread(target=threading.Event().wait).start(); "
              "sys.argv = ['jaxmodels', 'train', 'train.steps=ten']; sys.exit(cli.main())")
    r = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("jaxmodels: error: train.steps='ten'")
