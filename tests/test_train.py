"""End-to-end: short real-data runs through `jaxmodels.train`, the files they write, and `eval`.

These are the few slow tests (seconds each): they share one tiny classic-CNN run per session.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jaxmodels
from jaxmodels import config as C
from jaxmodels.accounting import flops

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED_CNN = ROOT / "experiments/configs/seed_cnn_mnist.py"


@pytest.fixture(scope="module")
def seed_cnn_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seed_cnn")
    # 10,000 test examples in batches of 384: the last batch holds 16 real examples and is
    # padded, which must neither drop examples nor trigger a second compile.
    config = C.apply_overrides(C.load(SEED_CNN, tiny=True), ["data.eval_batch_size=384"])
    summary = jaxmodels.train(config, workdir)
    return config, workdir, summary


def test_writes_config_metrics_summary_and_curves(seed_cnn_run):
    config, workdir, summary = seed_cnn_run
    assert C.from_dict(json.loads((workdir / "config.json").read_text())) == config
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    for r in records:
        for key in ("loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "examples_per_sec"):
            assert np.isfinite(r[key]), key
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk == summary
    for key in ("step", "train_loss", "eval_loss", "eval_accuracy", "params", "wall_time_s", "examples_per_sec"):
        assert summary[key] is not None, key
    assert summary["step"] == 60 and summary["params"] == 63_050
    # FLOPs are the analytic count times what was trained; MFU a fraction of the device peak.
    acc = flops.account(config.model, (28, 28, 1))
    assert summary["examples_seen"] == 60 * config.data.batch_size
    assert summary["flops"] == acc.model_flops_per_example * summary["examples_seen"]
    assert summary["non_embedding_params"] == 63_050
    assert 0 < summary["mfu"] < 1 and summary["hfu"] == summary["mfu"]  # no remat
    assert all(0 < r["mfu"] < 1 for r in records)
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_mnist_loss_falls_and_accuracy_beats_chance_widely(seed_cnn_run):
    _, workdir, summary = seed_cnn_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]
    # 60 steps of batch 32 (under 4 % of an epoch): chance is 10 %.
    assert summary["eval_accuracy"] > 0.8
    assert summary["eval_split"] == "test" and summary["eval_examples"] == 10_000


def test_one_compile_each_for_train_and_eval_including_the_padded_batch(seed_cnn_run):
    _, _, summary = seed_cnn_run
    assert summary["compilations"] == {"train_step": 1, "eval_step": 1}


def test_eval_command_reproduces_the_summary(seed_cnn_run):
    _, workdir, summary = seed_cnn_run
    out = subprocess.run(
        [sys.executable, "-m", "jaxmodels.cli", "eval", str(SEED_CNN), "--tiny",
         "data.eval_batch_size=384", "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["split"] == "test" and result["examples"] == 10_000
    assert result["accuracy"] == pytest.approx(summary["eval_accuracy"], abs=1e-9)
    assert result["loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)


def test_eval_of_a_missing_run_is_a_one_line_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxmodels.cli", "eval", str(SEED_CNN), "--tiny", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no trained weights" in lines[0] and "jaxmodels train" in lines[0]


def test_same_seed_same_result_and_seed_changes_it(tmp_path):
    base = C.apply_overrides(C.load(ROOT / "experiments/configs/mlp_mnist.py", tiny=True),
                             ["train.steps=15", "train.log_every=5", "data.dataset=digits"])
    a = jaxmodels.train(base, tmp_path / "a")
    b = jaxmodels.train(base, tmp_path / "b")
    c = jaxmodels.train(C.apply_overrides(base, ["train.seed=1"]), tmp_path / "c")
    assert a["eval_loss"] == b["eval_loss"] and a["train_loss"] == b["train_loss"]
    assert c["eval_loss"] != a["eval_loss"]
    assert a["eval_examples"] == 270  # the digits test split


def test_batchnorm_cnn_trains_with_batch_stats_through_the_pure_step(tmp_path):
    config = C.load(ROOT / "experiments/configs/bn_cnn_mnist.py", tiny=True)
    summary = jaxmodels.train(config, tmp_path)
    # Evaluation uses the running statistics the train step accumulated; stale (initial) statistics
    # would leave it near chance.
    assert summary["eval_accuracy"] > 0.6
    assert summary["compilations"] == {"train_step": 1, "eval_step": 1}


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(jaxmodels.UserError, match="is not writable"):
        jaxmodels.train(C.load(SEED_CNN, tiny=True), blocker / "run")


LSTM_LM = ROOT / "experiments/configs/lstm_shakespeare.py"


@pytest.fixture(scope="module")
def lstm_lm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lstm_lm")
    config = C.apply_overrides(C.load(LSTM_LM, tiny=True), ["train.steps=40"])
    summary = jaxmodels.train(config, workdir)
    return config, workdir, summary


def test_language_model_loss_falls_on_real_text(lstm_lm_run):
    config, workdir, summary = lstm_lm_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # Uniform guessing over the 85-symbol vocabulary costs ln 85 = 4.44 nats.
    assert records[0]["loss"] > 3.5
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert summary["eval_loss"] < 3.3
    assert summary["tokens_per_sec"] == pytest.approx(summary["examples_per_sec"] * 32)
    # The vocabulary was filled from the tokenizer and recorded in the resolved config.
    saved = C.from_dict(json.loads((workdir / "config.json").read_text()))
    assert saved.model.vocab_size == 85 and config.model.vocab_size is None
    assert summary["compilations"] == {"train_step": 1, "eval_step": 1}


def test_sample_command_continues_the_prompt(lstm_lm_run):
    _, workdir, _ = lstm_lm_run
    cmd = [sys.executable, "-m", "jaxmodels.cli", "sample", "--workdir", str(workdir),
           "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "3"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    text = first.stdout[:-1]  # print's newline
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40
    assert first.stdout == again.stdout  # the seed fixes the sample


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prompt", "x", "--temperature", "-1"], "--temperature must be >= 0"),
])
def test_sample_bad_arguments(lstm_lm_run, args, message):
    _, workdir, _ = lstm_lm_run
    out = subprocess.run([sys.executable, "-m", "jaxmodels.cli", "sample", "--workdir", str(workdir), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_sample_from_a_classifier_run_is_refused(seed_cnn_run):
    _, workdir, _ = seed_cnn_run
    out = subprocess.run([sys.executable, "-m", "jaxmodels.cli", "sample", "--workdir", str(workdir),
                          "--prompt", "x"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and "not a language model" in out.stderr


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=mnist"], "needs a text dataset"),
    (["data.eval_split=test"], "shakespeare has no test split"),
    (["model.vocab_size=10"], "model.vocab_size=10 is smaller than the 85 tokens"),
])
def test_task_and_model_mismatches_are_clear_errors(tmp_path, overrides, message):
    config = C.apply_overrides(C.load(LSTM_LM, tiny=True), overrides)
    with pytest.raises(jaxmodels.UserError, match=message):
        jaxmodels.train(config, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_row_mnist_rnn_classifier_beats_chance(tmp_path):
    config = C.load(ROOT / "experiments/configs/lstm_row_mnist.py", tiny=True)
    summary = jaxmodels.train(config, tmp_path)
    assert summary["eval_accuracy"] > 0.3 and summary["eval_examples"] == 10_000


def test_sampling_again_reuses_the_compiled_program(lstm_lm_run):
    # A notebook samples one model many times: the second call with other settings and another
    # prompt (same length bucket) must not trace a new program, and must still obey them.
    from jaxmodels import generate

    _, workdir, _ = lstm_lm_run
    generate._generator.cache_clear()
    greedy = jaxmodels.sample(workdir, "ROMEO:", max_new_tokens=30, temperature=0.0)
    top1 = jaxmodels.sample(workdir, "ROMEO:", max_new_tokens=30, temperature=1.0, top_k=1, seed=5)
    other = jaxmodels.sample(workdir, "JULIET:", max_new_tokens=30, temperature=0.9, seed=1)
    info = generate._generator.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    assert top1 == greedy  # keeping only the likeliest token is greedy at any temperature
    assert other.startswith("JULIET:") and len(other) == len("JULIET:") + 30
