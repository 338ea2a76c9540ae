"""Crash consistency: a run killed with SIGKILL at any of its writes, then relaunched with the
same command, ends exactly where an uninterrupted run does.

The write points of one `jaxmodels train`, in the order a run reaches them (POINTS below):
config.json, tokenizer.json (language models), each metrics.jsonl line, each checkpoint (orbax:
the first with all files written and the final rename not yet done, the last still in flight
when the loop moves on), weights/, summary.json and the results.jsonl row. A torn file write is
a real half write: the hook writes half of the bytes, then kills the process. (curves.png, the
last write, is left out: nothing reads it, and every launch that finishes redraws it.)

Each case is one launch killed there (tests/crash_driver.py installs the hook from outside; the
library has no test hooks) and one ordinary relaunch. Checked against one uninterrupted run of
the same command: the final parameters bitwise, metrics.jsonl and summary.json equal apart from
wall-clock fields, and exactly one results row for the run. Right after the kill, every JSON
file a later command reads (config.json, tokenizer.json, summary.json) is whole or absent.

The launches are forked from one driver process that imported everything once (the imports
cost more than these runs), and compilations are shared through a persistent cache folder:
the file takes about 55 s of CPU (one core busy at a time).
"""

import json
import os
import pathlib
import select
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxmodels.accounting import results

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The smallest runs that reach every write point: two metrics lines and two checkpoints.
RUNS = {
    "mlp": [str(ROOT / "experiments/configs/mlp_mnist.py"), "--tiny", "data.dataset=digits",
            "train.steps=4", "train.log_every=2", "train.eval_every=none",
            "checkpoint.every_steps=2"],
    # A character LSTM on a 16 kB text (written by the fixture), for tokenizer.json.
    "lm": [str(ROOT / "experiments/configs/lstm_shakespeare.py"), "--tiny", "data.dataset=text",
           "data.data_dir={corpus}", "train.steps=2", "train.log_every=2",
           "train.eval_every=none", "checkpoint.every_steps=2"],
}
# Metrics that measure time, not the computation (and `resumed_from`, `compilations`, which
# say which launch did what), differ between an interrupted run and an uninterrupted one.
CLOCK = {"examples_per_sec", "tokens_per_sec", "mfu", "hfu", "wall_time_s", "compile_time_s",
         "eval_time_s", "resumed_from", "compilations"}

# (id, run, kill): every write point, in the order a run reaches them.
POINTS = [
    ("config.json", "mlp", {"write": "config.json", "n": 1}),
    ("tokenizer.json", "lm", {"write": "tokenizer.json", "n": 1}),
    ("metrics-line-1", "mlp", {"write": "metrics.jsonl", "n": 1}),
    # All files of step 2 written, not yet renamed to checkpoints/2.
    ("checkpoint-1-commit", "mlp", {"commit": "checkpoints", "n": 1}),
    ("metrics-line-2", "mlp", {"write": "metrics.jsonl", "n": 2}),
    # The last save started in the background and the loop moved on to the final evaluation.
    ("checkpoint-2-in-flight", "mlp", {"call": "jaxmodels.training.checkpoint:Checkpoints.save",
                                       "n": 2, "when": "after"}),
    ("weights", "mlp", {"commit": "weights", "n": 1}),
    ("summary.json", "mlp", {"write": "summary.json", "n": 1}),
    ("results-row", "mlp", {"write": "results.jsonl", "n": 1}),
]
JSON_FILES = ("config.json", "tokenizer.json", "summary.json")
LAUNCH_TIMEOUT = 300


class Driver:
    """The forking launcher of tests/crash_driver.py, one per module."""

    def __init__(self, cache: pathlib.Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
        env.pop("JAX_NUM_CPU_DEVICES", None)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests/crash_driver.py"), str(cache)],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def launch(self, argv: list[str], log: pathlib.Path, kill: dict | None = None) -> dict:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "kill": kill}) + "\n")
        self.proc.stdin.flush()
        # A launch that hangs fails the test instead of blocking the suite.
        ready, _, _ = select.select([self.proc.stdout], [], [], LAUNCH_TIMEOUT)
        if not ready:
            self.proc.kill()
            pytest.fail(f"a launch did not end within {LAUNCH_TIMEOUT} s; see {log}")
        answer = self.proc.stdout.readline()
        assert answer, f"the driver died; see {log}"
        return json.loads(answer)

    def close(self):
        self.proc.stdin.close()
        self.proc.kill()  # it holds no state worth a clean exit, which takes seconds
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = Driver(tmp_path_factory.mktemp("xla_cache"))
    yield d
    d.close()


def _train(argv: list[str], workdir: pathlib.Path) -> list[str]:
    return ["train", *argv, "--workdir", str(workdir)]


def _run_clean(driver, argv, folder: pathlib.Path) -> pathlib.Path:
    workdir = folder / "run"
    answer = driver.launch(_train(argv, workdir), folder / "log.txt")
    assert answer == {"code": 0}, (folder / "log.txt").read_text()[-3000:]
    return workdir


@pytest.fixture(scope="module")
def runs(driver, tmp_path_factory):
    """The argv of each run, and its uninterrupted reference run's workdir (made on first use)."""
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog and runs far away".split()
    corpus.write_text("\n".join(" ".join(rng.choice(words, 10)) for _ in range(300)))
    argvs = {name: [a.format(corpus=corpus) for a in argv] for name, argv in RUNS.items()}
    references = {}

    def get(name: str):
        if name not in references:
            references[name] = _run_clean(driver, argvs[name], tmp_path_factory.mktemp(name))
        return argvs[name], references[name]

    return get


def _weights(workdir: pathlib.Path) -> dict:
    restored = ocp.StandardCheckpointer().restore((workdir / "weights").absolute())
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(restored)}


def _without_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in CLOCK}


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [_without_clock(json.loads(line))
            for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _check_whole_or_absent(workdir: pathlib.Path) -> None:
    for name in JSON_FILES:
        path = workdir / name
        if path.exists():
            try:
                json.loads(path.read_text())
            except ValueError as e:
                pytest.fail(f"{name} is torn after the kill ({e}): a later command reading it fails")


def _check_equal_to_reference(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    got, want = _weights(workdir), _weights(reference)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert _metrics(workdir) == _metrics(reference)
    summary, expected = (_without_clock(json.loads((w / "summary.json").read_text()))
                         for w in (workdir, reference))
    assert summary == expected
    (row,) = results.read(results.table_path(reference))
    table = results.table_path(workdir)
    rows = [r for r in results.read(table, warn=lambda message: None)
            if results.identity(r) == results.identity(row)]
    assert len(rows) == 1, f"{len(rows)} results rows for the run"
    for column in ("loss", "eval_accuracy", "train_loss", "params", "tokens", "flops"):
        assert rows[0][column] == row[column], column
    assert results.audit(results.read(table, warn=lambda message: None), table) == []


def _crash_and_relaunch(driver, argv, folder: pathlib.Path, kill: dict) -> pathlib.Path:
    workdir = folder / "run"
    answer = driver.launch(_train(argv, workdir), folder / "killed.txt", kill)
    assert answer == {"killed": True}, ("the hook never fired: the write point moved; "
                                        + (folder / "killed.txt").read_text()[-2000:])
    _check_whole_or_absent(workdir)
    answer = driver.launch(_train(argv, workdir), folder / "relaunch.txt")
    assert answer == {"code": 0}, (folder / "relaunch.txt").read_text()[-3000:]
    return workdir


@pytest.mark.parametrize("run,kill", [(r, k) for _, r, k in POINTS], ids=[i for i, _, _ in POINTS])
def test_killed_at_a_write_point_then_relaunched_equals_the_uninterrupted_run(
        run, kill, driver, runs, tmp_path):
    argv, reference = runs(run)
    workdir = _crash_and_relaunch(driver, argv, tmp_path, kill)
    _check_equal_to_reference(workdir, reference)
