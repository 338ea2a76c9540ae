"""The results table: the row a real run appends, the config hash, concurrent appends from
several processes, reading and CSV export, and `jaxmodels fit` reading the table."""

import csv
import datetime
import json
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import config as C
from jaxmodels.errors import UserError
from jaxmodels.models import MLPConfig
from jaxmodels.scaling import fit
from jaxmodels.accounting import results

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**train) -> C.Config:
    return C.Config(name="mlp_digits", model=MLPConfig(hidden=(16,)),
                    data=C.DataConfig(dataset="digits", batch_size=32),
                    optimizer=C.OptimizerConfig(learning_rate=3e-3),
                    train=C.TrainConfig(steps=10, epochs=None, log_every=5, progress=False, **train))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    summary = jaxmodels.train(tiny_config(), runs / "r1")
    return runs, summary, start


def test_a_run_appends_one_row_built_from_its_summary(real_run):
    runs, summary, start = real_run
    (row,) = results.read(runs / "results.jsonl")  # beside the workdir, one line
    assert row["run"] == "r1" and row["workdir"] == str(runs / "r1")
    for key in ("params", "train_loss", "eval_loss", "eval_split", "eval_accuracy", "wall_time_s"):
        assert row[key] == summary[key], key
    # Keys the loop does not write yet are read as None, not invented.
    for key in ("non_embedding_params", "examples_seen", "tokens_seen", "flops", "mfu", "hfu"):
        assert row[key] == summary.get(key), key
    assert row["loss"] == summary["eval_loss"]
    assert row["tokens"] == (summary.get("tokens_seen") if summary.get("tokens_seen") is not None
                             else summary.get("examples_seen"))
    stored = C.from_dict(json.loads((runs / "r1/config.json").read_text()))
    assert row["config_hash"] == results.config_hash(stored) == results.config_hash(tiny_config())
    assert row["config"] == json.loads((runs / "r1/config.json").read_text())
    assert (row["name"], row["model"]) == ("mlp_digits", "mlp")
    assert (row["jax_version"], row["platform"], row["device_count"]) == (jax.__version__, "cpu", 8)
    assert start <= datetime.datetime.fromisoformat(row["time"]) <= datetime.datetime.now(datetime.timezone.utc)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert row["git_commit"] == head.stdout.strip() and isinstance(row["git_dirty"], bool)
    else:
        assert row["git_commit"] is None


def test_config_hash_ignores_labels_and_sees_every_real_change():
    base = tiny_config()
    digest = results.config_hash(base)
    assert len(digest) == 12 and int(digest, 16) >= 0
    # Built another way, renamed, or with the step bar on: the same experiment.
    assert results.config_hash(C.apply_overrides(base, ["name=other", "train.progress=true"])) == digest
    assert results.config_hash(C.from_dict(json.loads(C.to_json(base)))) == digest
    changes = ["optimizer.learning_rate=0.001", "train.seed=1", "model.hidden=(16,16)",
               "data.dataset=mnist", "train.microbatches=2", "parallel.preset=fsdp", "train.log_every=2"]
    digests = {results.config_hash(C.apply_overrides(base, [c])) for c in changes}
    assert len(digests) == len(changes) and digest not in digests


WRITER = """
import pathlib, sys, time
from jaxmodels.accounting import results
table, go, writer = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
(go.parent / f"ready{writer}").touch()
while not go.exists():
    time.sleep(0.001)
# Append for a fixed time rather than a fixed count, so the writers surely overlap.
i, stop = 0, time.monotonic() + 0.5
while time.monotonic() < stop:
    results.append({"writer": writer, "i": i, "pad": str(writer) * (5000 + 37 * (i % 200))}, table)
    i += 1
(go.parent / f"count{writer}").write_text(str(i))
"""


def test_rows_appended_by_concurrent_processes_all_arrive_whole(tmp_path):
    table, go = tmp_path / "results.jsonl", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(table), str(go), str(w)], cwd=ROOT)
             for w in range(3)]
    try:
        # Every writer imported and waiting: the appends below really run at the same time.
        while not all((tmp_path / f"ready{w}").exists() for w in range(3)):
            assert all(p.poll() is None for p in procs), "a writer died while starting"
            time.sleep(0.01)
        go.touch()
    finally:
        codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0, 0]
    counts = [int((tmp_path / f"count{w}").read_text()) for w in range(3)]
    rows = results.read(table)  # raises on any torn or merged line
    assert sorted((r["writer"], r["i"]) for r in rows) == [(w, i) for w in range(3) for i in range(counts[w])]
    assert all(r["pad"] == str(r["writer"]) * (5000 + 37 * (r["i"] % 200)) for r in rows)
    # The writers' lines really interleave (otherwise this test proved nothing).
    writers = [r["writer"] for r in rows]
    assert sum(a != b for a, b in zip(writers, writers[1:])) > 10


def test_read_and_csv_export(tmp_path):
    assert results.read(tmp_path / "missing.jsonl") == []
    rows = [{"run": "a", "loss": 1.5, "mfu": None, "config": {"model": {"hidden": [8, 8]}}},
            {"run": "b", "loss": 1.25, "extra": True}]
    for r in rows:
        results.append(r, tmp_path / "results.jsonl")
    assert results.read(tmp_path / "results.jsonl") == rows
    results.to_csv(rows, tmp_path / "t.csv")
    table = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert list(table[0]) == ["run", "loss", "mfu", "config.model.hidden", "extra"]
    assert table[0] == {"run": "a", "loss": "1.5", "mfu": "", "config.model.hidden": "[8, 8]", "extra": ""}
    assert table[1]["extra"] == "True" and table[1]["config.model.hidden"] == ""
    (tmp_path / "bad.jsonl").write_text('{"run": "a"}\nnot a row\n')
    with pytest.raises(UserError, match=r"bad\.jsonl line 2 is not JSON"):
        results.read(tmp_path / "bad.jsonl")
    (tmp_path / "torn_only.jsonl").write_text('{"run": \n')
    with pytest.raises(UserError, match=r"torn_only\.jsonl line 1 is not JSON"):
        results.read(tmp_path / "torn_only.jsonl")


def test_a_torn_last_line_is_skipped_and_the_next_row_starts_on_a_fresh_line(tmp_path, capsys):
    """A writer killed mid-row: the next append must not glue its row onto the torn one
    (`..."spike_si{"run": ...`), and read / `jaxmodels fit` skip the torn row with one line."""
    table = tmp_path / "results.jsonl"
    rows = law_rows()
    for r in rows[:5]:
        results.append(r, table)
    with table.open("a") as f:
        f.write(json.dumps(rows[5])[:40])  # no newline: the kill came mid-write
    for r in rows[6:]:
        results.append(r, table)
    messages = []
    read = results.read(table, warn=messages.append)
    assert read == rows[:5] + rows[6:]
    assert messages == [results.torn_message(table, [6])] and "line(s) 6" in messages[0]
    with pytest.warns(UserWarning, match="skipped 1 torn row"):
        assert results.read(table) == read
    assert fit.main([str(table)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxmodels fit: warning: {messages[0]}"]


def test_record_writes_a_runs_row_exactly_once(tmp_path):
    config, workdir = tiny_config(), tmp_path / "r"
    summary = {"params": 10, "eval_loss": 1.0, "tokens_seen": None, "examples_seen": 5}
    results.record(config, summary, workdir)
    results.record(config, {**summary, "eval_loss": 0.5}, workdir)  # a relaunch: no second row
    results.record(C.apply_overrides(config, ["train.seed=1"]), summary, workdir)  # another run
    results.record(config, summary, tmp_path / "other")
    rows = results.read(tmp_path / "results.jsonl")
    assert [(r["run"], r["eval_loss"], r["config"]["train"]["seed"]) for r in rows] == [
        ("r", 1.0, 0), ("r", 1.0, 1), ("other", 1.0, 0)]


def test_audit_names_duplicated_rows_and_finished_runs_without_one(tmp_path, capsys):
    table = tmp_path / "results.jsonl"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{}")
        (tmp_path / name / "config.json").write_text("{}")
    row_ = {"run": "a", "config_hash": "abc", "params": 1e6, "tokens": 1e8, "loss": 3.0}
    results.append(row_, table)
    results.append({**row_, "loss": 2.9}, table)  # e.g. written by an older loop on relaunch
    lines = results.audit(results.read(table), table)
    assert lines == [f"results table {table}: run a (config abc) has 2 rows; a fit counts it 2 "
                     f"times: delete all but the last",
                     f"results table {table}: finished run {tmp_path / 'b'} has no row; relaunch "
                     f"it (the same command) to add it"]
    fit.main([str(table)])  # too few rows to fit; the report comes first, one line each
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:2] == [f"jaxmodels fit: warning: {line}" for line in lines]


def test_a_relaunch_of_a_complete_run_without_its_row_adds_it_once(real_run, tmp_path):
    """Killed after its last checkpoint but before its row (or its table was not writable then):
    the next launch only evaluates and adds the row; the launch after that adds none."""
    runs, summary, _ = real_run
    copy = tmp_path / "runs"
    shutil.copytree(runs / "r1", copy / "r1")
    (copy / "results.jsonl").mkdir()  # not writable as a file: a warning, the run still ends
    with pytest.warns(UserWarning, match="next launch of this run adds the row"):
        again = jaxmodels.train(tiny_config(), copy / "r1")
    assert again["resumed_from"] == [10] and again["eval_loss"] == summary["eval_loss"]
    (copy / "results.jsonl").rmdir()
    for _ in range(2):
        jaxmodels.train(tiny_config(), copy / "r1")
    (row,) = results.read(copy / "results.jsonl")
    assert row["run"] == "r1" and row["eval_loss"] == summary["eval_loss"]


def law_rows() -> list[dict]:
    """Results-table rows from a known law in the non-embedding parameters; the total adds a
    fixed 2M-parameter embedding, which bends the law, and flops are not measured (None)."""
    rows = []
    for n in (1e5, 3e5, 1e6, 3e6, 1e7):
        for d in (1e7, 1e8):
            rows.append({"run": f"n{n:g}_d{d:g}", "params": n + 2e6, "non_embedding_params": n,
                         "tokens": d, "loss": 1.7 + 400 / n ** 0.34 + 400 / d ** 0.28,
                         "eval_loss": 9.0, "flops": None})
    return rows


def test_fit_reads_the_results_table_with_another_params_column(tmp_path, capsys):
    table = tmp_path / "results.jsonl"
    for r in law_rows():
        results.append(r, table)
    read = fit.read_table(table, {"params": "non_embedding_params"})
    np.testing.assert_array_equal(read["params"], [r["non_embedding_params"] for r in law_rows()])
    np.testing.assert_array_equal(read["loss"], [r["loss"] for r in law_rows()])
    # No row has flops: the column counts as absent and C = 6 N D, with the N asked for.
    np.testing.assert_allclose(read["flops"], 6 * read["params"] * read["tokens"])
    np.testing.assert_array_equal(fit.read_table(table, {"loss": "eval_loss"})["loss"], [9.0] * 10)
    np.testing.assert_array_equal(fit.read_table(table)["params"], [r["params"] for r in law_rows()])
    # The command line passes its column options through (checked before any fitting).
    assert fit.main([str(table), "--params-column", "n_params", "--loss-column", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxmodels fit: error: table") and "has no column n_params, val" in err
    assert "\n" not in err
