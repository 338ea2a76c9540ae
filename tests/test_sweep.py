"""`jaxmodels sweep`: grids and names, validation before anything trains, skip / retrain on
relaunch, failures, and worker processes == one process.

Runs are a tiny MLP on the 8x8 digits for 10 steps; one 3-run sweep is shared by the module
(the tests that relaunch it work on a copy of its folder).
"""

import ast
import csv
import json
import os
import pathlib
import re
import shutil

import pytest

from jaxmodels import cli
from jaxmodels import config as C
from jaxmodels.errors import ConfigError, RunStopped
from jaxmodels.accounting import results
from jaxmodels.orchestration import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = """
from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import MLPConfig

def get_config(tiny=False):
    return Config(name="mlp_digits", model=MLPConfig(hidden=(16,)),
                  data=DataConfig(dataset="digits", batch_size=32),
                  optimizer=OptimizerConfig(learning_rate=3e-3),
                  train=TrainConfig(steps=10, epochs=None, log_every=5))
"""

# RUNS is replaced per test; BASE too.
SWEEP = """
from jaxmodels.orchestration.sweep import Sweep, grid

def get_sweep(tiny=False):
    return Sweep(config="mlp_digits.py", runs=RUNS, base=BASE)
"""
THREE = 'grid({"model.hidden": [(8,), (16,)]}) + [{"train.seed": 1}]'
THREE_NAMES = ["hidden=8", "hidden=16", "seed=1"]


def write_sweep(folder: pathlib.Path, runs: str, base: str = "{}", name: str = "sweep.py") -> pathlib.Path:
    (folder / "mlp_digits.py").write_text(CONFIG)
    path = folder / name
    path.write_text(SWEEP.replace("RUNS", runs).replace("BASE", base))
    return path


def summary_mtimes(workdir: pathlib.Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in workdir.glob("*/summary.json")}


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = write_sweep(folder, THREE)
    outcomes = sweep.run_sweep(path, folder / "out")
    return path, folder / "out", outcomes


# ---------------------------------------------------------------------------------------------
# Declaring runs


def test_grid_is_the_cartesian_product_and_lists_concatenate():
    runs = sweep.grid({"model.hidden": [(8,), (16, 16)], "train.seed": [0, 1, 2]})
    assert runs == [{"model.hidden": h, "train.seed": s} for h in [(8,), (16, 16)] for s in (0, 1, 2)]
    assert len(runs + [{"train.seed": 9}]) == 7
    assert sweep.zip_runs({"a": [1, 2], "b": ["x", "y"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


@pytest.mark.parametrize("call, match", [
    (lambda: sweep.grid({"train.seed": 3}), r"axis 'train.seed' needs a list of values"),
    (lambda: sweep.grid({"model.hidden": (8, 16)}), r"axis 'model.hidden' needs a list"),
    (lambda: sweep.grid({"train.seed": []}), r"axis 'train.seed' has no values"),
    (lambda: sweep.zip_runs({"a": [1, 2], "b": [1]}), r"differ in length \(a: 2, b: 1\)"),
    (lambda: sweep.Sweep(config="c.py", runs={"train.seed": 1}), r"must be a list of dicts"),
    (lambda: sweep.Sweep(config="c.py", runs=[]), r"has no runs"),
])
def test_malformed_grids_and_sweeps_are_one_line_errors(call, match):
    with pytest.raises(ConfigError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_run_names_are_readable_distinct_safe_and_deterministic():
    runs = (sweep.grid({"model.hidden": [(64,), (64, 64)], "train.seed": [0, 1]})
            + [{}, {"optimizer.learning_rate": 3e-4}, {"data.vocab_size": 5, "model.vocab_size": 7},
               {"data.data_dir": "a/b"}, {"data.data_dir": "a_b"},
               {"model.hidden": tuple(range(1, 40))}, {"model.hidden": tuple(range(1, 41))}])
    names = sweep.run_names(runs)
    assert names[:7] == ["hidden=64,seed=0", "hidden=64,seed=1", "hidden=64-64,seed=0",
                         "hidden=64-64,seed=1", "base", "learning_rate=0.0003",
                         # keys sharing a last part keep their full names
                         "data.vocab_size=5,model.vocab_size=7"]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9._=,+-]{1,%d}" % sweep.MAX_NAME, n) for n in names), names
    assert names[7] != names[8] and names[7].startswith("data_dir=a_b-")  # '/' replaced, then told apart
    assert names[9].startswith("hidden=1-2-3") and names[9] != names[10]
    assert sweep.run_names(runs) == names


def test_typed_values_reach_the_config_unchanged(tmp_path):
    values = {"model.hidden": (16, 8), "model.dropout": 0.1 + 0.2, "optimizer.name": "sgd",
              "optimizer.momentum": 0.9, "optimizer.nesterov": True, "optimizer.grad_clip_norm": None,
              "optimizer.learning_rate": 3e-4, "train.seed": 7}
    path = write_sweep(tmp_path, repr([values]), base='{"optimizer.grad_clip_norm": 1.0, "train.steps": 12}')
    (run, state), = sweep.plan(path, tmp_path / "out")
    cfg = run.config
    assert (cfg.model.hidden, cfg.model.dropout, cfg.optimizer.name, cfg.optimizer.momentum) == ((16, 8), 0.1 + 0.2, "sgd", 0.9)
    assert cfg.optimizer.nesterov is True and cfg.optimizer.grad_clip_norm is None  # the run beats the base
    assert (cfg.optimizer.learning_rate, cfg.train.seed, cfg.train.steps) == (3e-4, 7, 12)
    assert cfg.train.progress is False and state == "new"
    assert run.workdir == tmp_path / "out" / run.name
    # The listed command trains the same config by hand.
    args = sweep.command(run).split()
    assert args[:3] == ["jaxmodels", "train", str(tmp_path / "mlp_digits.py")]
    by_hand = C.apply_overrides(C.load(tmp_path / "mlp_digits.py"),
                                [a.strip("'") for a in args[3:-2]] + ["train.progress=false"])
    assert by_hand == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "experiments/sweeps").glob("*.py")), ids=lambda p: p.stem)
def test_example_sweeps_resolve_with_docstring_and_tiny_variant(path, tmp_path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    for word in ("Command:", "Runtime:", "Expected:", "Tiny:", f"experiments/sweeps/{path.name}"):
        assert word in doc, f"{path.name} docstring lacks {word}"
    full, tiny = sweep.plan(path, tmp_path), sweep.plan(path, tmp_path, tiny=True)
    assert 1 <= len(tiny) < len(full)
    assert all(state == "new" for _, state in full + tiny) and not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Validation: every run before any run


@pytest.mark.parametrize("runs, base, file_text, message", [
    (THREE + ' + [{"model.hiden": (4,)}]', "{}", None,
     "sweep run 3 (hiden=4): unknown config key 'model.hiden': did you mean 'model.hidden'?"),
    ('[{"train.seed": 0}, {"train.seed": 1.5}]', "{}", None,
     "sweep run 1 (seed=1.5): train.seed='1.5': expected an integer"),
    ('[{"train.seed": 0}, {"train.seed": 0}]', "{}", None, "trains the same config as run 0 (seed=0-"),
    ('[{"train.seed": 0}]', '{"train.stepz": 5}', None,
     "sweep base: unknown config key 'train.stepz': did you mean 'train.steps'?"),
    ('[{"model.hidden": [(8,)]}]', "{}", None, "nests a tuple or a comma"),
    (None, None, "def get_sweep(tiny=False) return 1\n", "does not parse: line 1"),
    (None, None, "x = 1\n", "has no get_sweep(tiny=False) function"),
    (None, None, "def get_sweep(tiny=False):\n    return [1]\n", "returned list, expected"),
])
def test_bad_sweeps_fail_in_one_line_before_anything_trains(tmp_path, capsys, runs, base, file_text, message):
    path = write_sweep(tmp_path, runs or "[]", base or "{}")
    if file_text is not None:
        path.write_text(file_text)
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--workdir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxmodels: error: ") and "\n" not in err
    assert message in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Running, relaunching


def test_sweep_writes_every_summary_the_csv_and_one_results_row_per_run(first_sweep):
    _, out, outcomes = first_sweep
    assert [(o.run.name, o.status) for o in outcomes] == [(n, "trained") for n in THREE_NAMES]
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in THREE_NAMES}
    assert all(o.summary == summaries[o.run.name] for o in outcomes)
    rows = {r["run"]: r for r in results.read(out / "results.jsonl")}
    assert sorted(rows) == sorted(THREE_NAMES) and len(results.read(out / "results.jsonl")) == 3
    for name, summary in summaries.items():
        for key in ("params", "train_loss", "eval_loss", "eval_accuracy", "wall_time_s"):
            assert rows[name][key] == summary[key], (name, key)
        stored = C.from_dict(json.loads((out / name / "config.json").read_text()))
        assert rows[name]["config_hash"] == results.config_hash(stored)
    assert summaries["hidden=8"]["params"] == 64 * 8 + 8 + 8 * 10 + 10  # really the 8-wide MLP
    table = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["run"], r["status"], r["model.hidden"], r["train.seed"]) for r in table] == [
        ("hidden=8", "trained", "[8]", ""), ("hidden=16", "trained", "[16]", ""), ("seed=1", "trained", "", "1")]
    assert [float(r["eval_loss"]) for r in table] == [summaries[n]["eval_loss"] for n in THREE_NAMES]


def test_relaunch_skips_every_finished_run(first_sweep, capsys):
    path, out, first = first_sweep
    before, rows_before = summary_mtimes(out), (out / "results.jsonl").read_text()
    assert cli.main(["sweep", str(path), "--workdir", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "3 runs (3 done)" in listing and listing.count(" done ") == 3
    again = sweep.run_sweep(path, out)
    assert [o.status for o in again] == ["skipped"] * 3
    assert [o.summary for o in again] == [o.summary for o in first]
    assert summary_mtimes(out) == before and len(before) == 3
    assert (out / "results.jsonl").read_text() == rows_before  # nothing trained, nothing appended


def test_a_moved_sweep_folder_keeps_its_rows_in_the_table_and_the_fit_report(first_sweep, tmp_path, capsys):
    path, out, first = first_sweep
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(out, moved)  # what a move leaves, without taking the module's folder away
    rows = {r["run"]: r for r in results.read(moved / "results.jsonl")}
    assert all(r["workdir"] == str(out.absolute() / name) for name, r in rows.items())
    again = sweep.run_sweep(path, moved)
    assert [o.status for o in again] == ["skipped"] * 3
    table = list(csv.DictReader((moved / "sweep.csv").open()))
    # Matched to the run's row (columns only the row has), not the summary fallback.
    assert [(r["run"], r["config_hash"], r["git_commit"]) for r in table] == [
        (n, rows[n]["config_hash"], rows[n]["git_commit"] or "") for n in THREE_NAMES]
    assert [float(r["tokens"]) for r in table] == [rows[n]["tokens"] for n in THREE_NAMES]
    # What `jaxmodels fit` and the sweep report about missing or repeated rows: nothing.
    assert results.audit(results.read(moved / "results.jsonl"), moved / "results.jsonl") == []
    assert "warning" not in capsys.readouterr().err


class FakeTrain:
    """Stands in for `loop.train` where only the sweep's bookkeeping is under test (which runs
    train, in which folder, what a failure does): records each call and leaves what a finished
    run leaves (config.json, summary.json), or raises the error given for that run."""

    def __init__(self, errors=None):
        self.trained, self.errors = [], errors or {}

    def __call__(self, config, workdir):
        workdir = pathlib.Path(workdir)
        self.trained.append(workdir.name)
        if workdir.name in self.errors:
            raise self.errors[workdir.name]
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(C.to_json(config))
        summary = {"step": config.train.steps, "eval_loss": 1.0 + config.train.seed, "params": 1}
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary


def test_relaunch_trains_only_the_run_that_changed(first_sweep, tmp_path, monkeypatch):
    path, out, _ = first_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = summary_mtimes(copy)
    monkeypatch.setattr(sweep.loop, "train", fake := FakeTrain())
    edited = write_sweep(path.parent, THREE.replace('"train.seed": 1', '"train.seed": 2'), name="edited.py")
    outcomes = sweep.run_sweep(edited, copy)
    assert fake.trained == ["seed=2"]
    assert [(o.run.name, o.status) for o in outcomes] == [
        ("hidden=8", "skipped"), ("hidden=16", "skipped"), ("seed=2", "trained")]
    after = summary_mtimes(copy)
    assert {k: after[k] for k in before} == before  # seed=1 is no longer swept and stays as it was


def test_a_workdir_holding_another_config_is_kept_aside_and_retrained(first_sweep, tmp_path, monkeypatch):
    path, out, first = first_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    monkeypatch.setattr(sweep.loop, "train", fake := FakeTrain())
    # Another sweep into the same folder whose run "hidden=8" means something else.
    other = write_sweep(path.parent, '[{"model.hidden": (8,)}]', base='{"train.steps": 12}', name="other.py")
    assert [s for _, s in sweep.plan(other, copy)] == ["changed"]
    (outcome,) = sweep.run_sweep(other, copy)
    assert fake.trained == ["hidden=8"] and outcome.status == "trained"
    assert C.from_dict(json.loads((copy / "hidden=8/config.json").read_text())).train.steps == 12
    (old,) = copy.glob("hidden=8.replaced-*")
    assert json.loads((old / "summary.json").read_text()) == first[0].summary  # nothing lost
    assert old.name == f"hidden=8.replaced-{results.config_hash(first[0].run.config)}"
    assert summary_mtimes(copy)["hidden=16"] == summary_mtimes(out)["hidden=16"]
    # Relaunching the first sweep now puts the other run aside in turn and retrains its own.
    assert [s for _, s in sweep.plan(path, copy)] == ["changed", "done", "done"]


def test_failed_runs_are_reported_the_rest_still_train_and_the_exit_status_is_1(tmp_path, capsys, monkeypatch):
    errors = {"seed=3": ConfigError("optimizer.warmup_steps=10 is not below the 10 training steps"),
              "seed=4": RuntimeError("boom\nsecond line")}
    monkeypatch.setattr(sweep.loop, "train", fake := FakeTrain(errors))
    path = write_sweep(tmp_path, 'grid({"train.seed": [3, 4, 5]})')
    assert cli.main(["sweep", str(path), "--workdir", str(tmp_path / "out")]) == 1
    assert fake.trained == ["seed=3", "seed=4", "seed=5"]
    printed = capsys.readouterr().out
    assert re.search(r"^seed=5 +trained +6\.0000", printed, re.M)
    assert re.search(r"^seed=3 +failed +- +- +- +-$", printed, re.M)
    assert "failed: seed=3: optimizer.warmup_steps=10 is not below the 10 training steps\n" in printed
    assert "failed: seed=4: RuntimeError: boom\n" in printed  # one line of it
    # A bug (not a user error) keeps its traceback, in the run's log.
    assert "Traceback" in (tmp_path / "out/logs/seed=4.log").read_text()
    table = list(csv.DictReader((tmp_path / "out/sweep.csv").open()))
    assert [(r["run"], r["status"], r["error"][:9]) for r in table] == [
        ("seed=3", "failed", "optimizer"), ("seed=4", "failed", "RuntimeEr"), ("seed=5", "trained", "")]


def test_a_signal_stops_the_whole_sweep_with_the_runs_exit_status(tmp_path, capsys, monkeypatch):
    # SIGTERM during run seed=4: its checkpoint is saved by the loop, and the sweep must stop
    # there (a preempted job) rather than mark it failed and train seed=5.
    stopped = RunStopped("stopped by SIGTERM after step 3: checkpoint saved in x; run the same command to resume",
                         exit_code=143)
    monkeypatch.setattr(sweep.loop, "train", fake := FakeTrain({"seed=4": stopped}))
    path = write_sweep(tmp_path, 'grid({"train.seed": [3, 4, 5]})')
    assert cli.main(["sweep", str(path), "--workdir", str(tmp_path / "out")]) == 143
    assert fake.trained == ["seed=3", "seed=4"]
    assert "stopped by SIGTERM after step 3" in capsys.readouterr().err


def test_worker_processes_give_the_sequential_results_and_report_failures(first_sweep, tmp_path, monkeypatch):
    path, _, first = first_sweep
    # The same 8 CPU devices as this test process (conftest), so the numbers can match exactly.
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "8")
    # Warmup as long as the run: valid as a config, a one-line error once the loop sets up.
    failing = '{"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 10}'
    parallel = write_sweep(path.parent, f'[{failing}, {{"model.hidden": (8,)}}]', name="parallel.py")
    outcomes = sweep.run_sweep(parallel, tmp_path / "out", workers=2)
    assert [(o.run.name, o.status) for o in outcomes] == [
        ("schedule=warmup_cosine,warmup_steps=10", "failed"), ("hidden=8", "trained")]
    assert outcomes[0].error == ("optimizer.warmup_steps=10 is not below the 10 training steps: "
                                 "lower it (e.g. optimizer.warmup_steps=1)")
    assert outcomes[1].summary["eval_loss"] == first[0].summary["eval_loss"]
    assert outcomes[1].summary["train_loss"] == first[0].summary["train_loss"]
    assert "test accuracy" in (tmp_path / "out/logs/hidden=8.log").read_text()
    assert [r["run"] for r in results.read(tmp_path / "out/results.jsonl")] == ["hidden=8"]


def test_worker_runs_on_its_share_of_the_cpus():
    slots = sweep._cpu_slots(2)
    if not hasattr(os, "sched_getaffinity"):
        assert slots == [None, None]
        return
    cpus = sorted(os.sched_getaffinity(0))
    flat = [c for s in slots for c in s]
    if len(cpus) >= 2:
        assert sorted(flat) == cpus and not set(slots[0]) & set(slots[1])
    assert all(len(s) == 1 for s in sweep._cpu_slots(len(cpus) + 1))


def test_a_nonfinite_run_fails_in_one_line_and_the_sequential_sweep_goes_on(tmp_path, capsys, monkeypatch):
    # Exit 3 (non-finite loss) is this run's problem, not a reason to stop the sweep, exactly
    # as with --workers N; only a signal stops the sweep.
    nonfinite = RunStopped("non-finite loss (nan) at step 4: stopped; no checkpoint was saved before it",
                           exit_code=3)
    monkeypatch.setattr(sweep.loop, "train", fake := FakeTrain({"seed=4": nonfinite}))
    path = write_sweep(tmp_path, 'grid({"train.seed": [3, 4, 5]})')
    assert cli.main(["sweep", str(path), "--workdir", str(tmp_path / "out")]) == 1
    assert fake.trained == ["seed=3", "seed=4", "seed=5"]
    assert "failed: seed=4: non-finite loss (nan) at step 4: stopped;" in capsys.readouterr().out
    table = list(csv.DictReader((tmp_path / "out/sweep.csv").open()))
    assert [(r["run"], r["status"]) for r in table] == [
        ("seed=3", "trained"), ("seed=4", "failed"), ("seed=5", "trained")]


def _long_sweep(tmp_path) -> pathlib.Path:
    # Runs far longer than the test waits: they only end by a signal.
    return write_sweep(tmp_path, 'grid({"train.seed": [0, 1]})',
                       base='{"train.steps": 1000000, "checkpoint.every_steps": 20}')


def _start_sweep(path, out) -> "subprocess.Popen":
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "jaxmodels.cli", "sweep", str(path), "--workdir",
                             str(out), "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoints(out, names, proc, timeout=300):
    import time

    deadline = time.monotonic() + timeout
    while not all(any(p.name.isdigit() for p in (out / n / "checkpoints").glob("*")) for n in names):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)


def _stop_line(log: pathlib.Path) -> int:
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    found = re.fullmatch(r"jaxmodels: stopped by SIGTERM after step (\d+): checkpoint saved in .*; "
                         r"run the same command to resume", last)
    assert found, last
    return int(found[1])


def _saved_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())


def test_sigterm_to_the_sweep_reaches_every_worker_and_each_saves_and_says_one_line(tmp_path):
    import signal

    path, out = _long_sweep(tmp_path), tmp_path / "out"
    proc = _start_sweep(path, out)
    names = ["seed=0", "seed=1"]
    try:
        _wait_for_checkpoints(out, names, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "jaxmodels: sweep stopped by SIGTERM: 2 running run(s) saved their checkpoints "
        "(seed=0, seed=1); run the same command to resume")
    for name in names:
        step = _stop_line(out / "logs" / f"{name}.log")
        assert _saved_steps(out / name)[-1] == step  # the step it stopped at is on disk


def test_workers_end_with_their_parent_even_a_killed_one(tmp_path):
    import signal
    import time

    path, out = _long_sweep(tmp_path), tmp_path / "out"
    proc = _start_sweep(path, out)
    names = ["seed=0", "seed=1"]
    try:
        _wait_for_checkpoints(out, names, proc)
        pids = [int((out / n / ".lock").read_text().split()[0]) for n in names]
        proc.kill()  # kill -9: the parent cannot forward anything
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()

    def alive(pid):
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"  # a zombie has exited; reaping it is its new parent's business

    deadline = time.monotonic() + 120
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, "a worker outlived its killed parent"
        time.sleep(0.2)
    for name in names:  # stopped cleanly: saved, one line, no traceback
        step = _stop_line(out / "logs" / f"{name}.log")
        assert _saved_steps(out / name)[-1] == step


def test_a_finished_run_without_its_row_is_relaunched_and_the_table_report_names_it(first_sweep, tmp_path, capsys, monkeypatch):
    """Killed after summary.json but before its results row: the sweep must not count it done
    (the row would never come); it relaunches it (the loop then only evaluates and adds the row),
    and the end-of-sweep report names rows that are still missing or duplicated, one line each."""
    path, out, _ = first_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    rows = results.read(copy / "results.jsonl")
    kept = [r for r in rows if r["run"] != "hidden=16"] + [r for r in rows if r["run"] == "seed=1"]
    (copy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert [s for _, s in sweep.plan(path, copy)] == ["done", "resume", "done"]
    monkeypatch.setattr(sweep.loop, "train", fake := FakeTrain())  # adds no row
    capsys.readouterr()
    outcomes = sweep.run_sweep(path, copy)
    assert fake.trained == ["hidden=16"] and [o.status for o in outcomes] == ["skipped", "trained", "skipped"]
    report = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    table = copy / "results.jsonl"
    digest = next(r["config_hash"] for r in rows if r["run"] == "seed=1")
    assert report == [
        f"jaxmodels: warning: results table {table}: run seed=1 (config {digest}) has 2 rows; a fit "
        f"counts it 2 times: delete all but the last",
        f"jaxmodels: warning: results table {table}: finished run {copy / 'hidden=16'} has no row; "
        f"relaunch it (the same command) to add it"]
