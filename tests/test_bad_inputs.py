"""Bad input never costs work: each case is one line on stderr naming the problem and the fix,
exit status 2, no traceback, and the files of an earlier finished run (checkpoints, metrics,
summary, weights) are byte-for-byte unchanged."""

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from jaxmodels import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = str(ROOT / "experiments/configs/mlp_mnist.py")
GPT = str(ROOT / "experiments/configs/gpt_shakespeare.py")
BASE = ["data.dataset=digits", "train.steps=10", "checkpoint.every_steps=5", "train.eval_every=none"]


def _snapshot(folder: pathlib.Path) -> dict:
    # .lock names the last process that held the workdir (training/workdir.py): informative,
    # rewritten by every launch that gets as far as taking the lock.
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    assert cli.main(["train", MLP, "--tiny", *BASE, "--workdir", str(workdir)]) == 0
    assert (workdir / "summary.json").exists() and (workdir / "checkpoints" / "10").is_dir()
    return workdir


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CASES = {
    # Config keys, types and values.
    "unknown key": (["train", MLP, "--tiny", *BASE, "train.epoch=1"], "did you mean 'train.epochs'"),
    "mistyped value": (["train", MLP, "--tiny", *BASE, "train.steps=ten"], "train.steps='ten': expected an integer"),
    "negative learning rate": (["train", MLP, "--tiny", *BASE, "optimizer.learning_rate=-1e-3"],
                               "optimizer.learning_rate must be positive"),
    "zero batch": (["train", MLP, "--tiny", *BASE, "data.batch_size=0"], "data.batch_size must be positive"),
    "bad choice": (["train", MLP, "--tiny", *BASE, "train.nonfinite=maybe"], "is not one of stop, skip"),
    "dropout out of range": (["train", MLP, "--tiny", *BASE, "model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    "eval split": (["train", MLP, "--tiny", *BASE, "data.eval_split=train"], "is not one of validation, test"),
    "checkpoint every 0": (["train", MLP, "--tiny", *BASE, "checkpoint.every_steps=0"],
                           "checkpoint.every_steps must be positive"),
    "keep 0": (["train", MLP, "--tiny", *BASE, "checkpoint.keep=0"], "checkpoint.keep must be at least 1"),
    "keep_best metric": (["train", MLP, "--tiny", *BASE, "checkpoint.keep_best=loss"], "is not one of val_loss"),
    "negative spike sigma": (["train", MLP, "--tiny", *BASE, "train.spike_sigma=-2"], "train.spike_sigma must be positive"),
    "nesterov without momentum": (["train", MLP, "--tiny", *BASE, "optimizer.name=sgd", "optimizer.nesterov=true"],
                                  "needs optimizer.momentum > 0"),
    "microbatches": (["train", MLP, "--tiny", *BASE, "train.microbatches=3"], "not divisible by train.microbatches=3"),
    "warmup too long": (["train", MLP, "--tiny", *BASE, "optimizer.schedule=warmup_cosine",
                         "optimizer.warmup_steps=100"], "optimizer.warmup_steps=100 is not below the 10"),
    "mesh": (["train", MLP, "--tiny", *BASE, "parallel.data=3"], "parallel"),
    "context too long": (["train", GPT, "--tiny", "model.max_len=16", "data.seq_len=32"],
                         "data.seq_len=32 is longer than the model supports (model.max_len=16)"),
    # Files and data.
    "missing config file": (["train", "no/such/config.py"], "not found"),
    "missing dataset": (["train", MLP, "--tiny", "data.dataset=text", "data.data_dir=/no/such/corpus"],
                        "/no/such/corpus"),
    # Resuming the finished run with a config it cannot continue.
    "changed model shape": (["train", MLP, "--tiny", *BASE, "model.hidden=(16,)"],
                            "finished all 10 steps with other settings (model.hidden: [32] -> [16])"),
    "changed batch size": (["train", MLP, "--tiny", *BASE, "data.batch_size=32"],
                           "data.batch_size: 64 -> 32"),
    "changed seed": (["train", MLP, "--tiny", *BASE, "train.seed=1"], "train.seed: 0 -> 1"),
    "fewer steps than done": (["train", MLP, "--tiny", *BASE[:1], "train.steps=5", *BASE[2:]],
                              "with other settings (train.steps: 10 -> 5), so nothing would be trained"),
    "eval without weights": (["eval", MLP, "--tiny", "data.dataset=digits", "--workdir", "EMPTY"],
                             "no trained weights"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, finished_run, tmp_path, capsys):
    argv, expected = CASES[case]
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    if "--workdir" not in argv:
        argv = [*argv, "--workdir", str(finished_run)]
    before = _snapshot(finished_run)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("jaxmodels: error: "), err
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in err
    assert _snapshot(finished_run) == before


@pytest.mark.parametrize("text,expected", [
    ("def get_config(tiny=False:\n    return None\n", "bad.py' does not parse: line 1"),
    ("def get_config(tiny=False):\n    return 1 / 0\n", "failed to run: ZeroDivisionError"),
])
def test_config_file_that_does_not_parse_or_raises(text, expected, finished_run, tmp_path, capsys):
    path = _write(tmp_path, "bad.py", text)
    before = _snapshot(finished_run)
    assert cli.main(["train", path, "--workdir", str(finished_run)]) == 2
    assert expected in capsys.readouterr().err
    assert _snapshot(finished_run) == before


def test_unwritable_workdir(finished_run, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    before = _snapshot(finished_run)
    assert cli.main(["train", MLP, "--tiny", *BASE, "--workdir", str(blocker / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is not writable" in err and "pass --workdir" in err
    assert _snapshot(finished_run) == before and blocker.read_text() == "not a folder"


def test_full_disk_during_a_save_keeps_earlier_checkpoints(finished_run, tmp_path):
    """A real write failure: the resumed run's process may not write files over 6 kB (the OS
    refuses the write as it would on a full disk, with EFBIG instead of ENOSPC). Logs, configs and
    checkpoint metadata stay under that (<= 5 kB); the checkpoint's data files (params and Adam
    moments, compressed to 9-25 kB depending on the values) do not."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)

    # The limit is set by a small launcher that then becomes the run (exec), rather than by a
    # preexec_fn, which would run Python in a fork of this multithreaded (JAX) process.
    launcher = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (6_000, 6_000)); "
                "os.execv(sys.executable, [sys.executable, '-m', 'jaxmodels.cli', *sys.argv[1:]])")
    argv = [sys.executable, "-c", launcher, "train", MLP, "--tiny", *BASE[:1], "train.steps=20",
            *BASE[2:], "--workdir", str(run)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    failed = re.search(r"saving the checkpoint of step (\d+) .*free disk space.*the checkpoints of "
                       r"steps \[([\d, ]+)\] are intact", lines[-1])
    assert failed, lines[-1]
    assert int(failed[1]) == 15 and failed[2] == "5, 10"
    after = _snapshot(run)
    for name, digest in before.items():
        if name.startswith("checkpoints/") or name in ("summary.json",) or name.startswith("weights/"):
            assert after.get(name) == digest, name


# ---------------------------------------------------------------------------------------------
# Inputs that used to end in a traceback or a silent surprise.

def _text(n_lines: int) -> str:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "sea"]
    return "".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) + "\n"
                   for i in range(n_lines))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("jaxmodels: error: "), err
    return lines[-1]


@pytest.mark.parametrize("text,overrides,expected", [
    (_text(80)[:3000], ["data.vocab_size=10"], "data.vocab_size=10 is too small for a BPE tokenizer"),
    ("\n" * 3000, [], "data.tokenizer=bpe cannot be trained on this train split: it holds only line breaks"),
])
def test_bpe_that_cannot_train_is_one_line_naming_the_knob(text, overrides, expected, tmp_path, capsys):
    corpus = _write(tmp_path, "corpus.txt", text)
    workdir = tmp_path / "run"
    argv = ["train", GPT, "--tiny", "data.dataset=text", f"data.data_dir={corpus}",
            "data.tokenizer=bpe", *overrides, "--workdir", str(workdir)]
    assert cli.main(argv) == 2
    assert expected in _one_error_line(capsys)
    assert not workdir.exists()  # the data failed before the workdir was made


def test_a_missing_dataset_leaves_no_empty_workdir(tmp_path, capsys):
    workdir = tmp_path / "new" / "run"
    assert cli.main(["train", MLP, "--tiny", "data.dataset=text", "data.data_dir=/no/such/corpus",
                     "--workdir", str(workdir)]) == 2
    assert "/no/such/corpus" in _one_error_line(capsys)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv", [
    ["train", MLP, "--tiny", "data.dataset=digits"], ["eval", MLP, "--tiny", "data.dataset=digits"],
    ["sample", "--prompt", "x"], ["sweep", str(ROOT / "experiments/sweeps/mlp_width_digits.py")]])
def test_an_empty_workdir_flag_is_an_error_not_the_current_folder(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--workdir", ""]) == 2
    assert "--workdir is empty" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoints_path_that_is_a_file_fails_before_training(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a folder")
    assert cli.main(["train", MLP, "--tiny", *BASE, "--workdir", str(workdir)]) == 2
    assert "checkpoints' is a file, not a checkpoint folder" in _one_error_line(capsys)
    assert sorted(p.name for p in workdir.iterdir()) == [".lock", "checkpoints"]  # nothing trained


def test_eval_on_a_split_the_corpus_lacks_is_one_line(tmp_path, capsys):
    corpus = _write(tmp_path, "corpus.txt", _text(400))
    assert cli.main(["eval", GPT, "--tiny", "data.dataset=text", f"data.data_dir={corpus}",
                     "--split", "test", "--workdir", str(tmp_path / "run")]) == 2
    assert "--split test: text has no test split (it has train, validation)" in _one_error_line(capsys)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    corpus = folder / "corpus.txt"
    corpus.write_text(_text(400))
    workdir = folder / "run"
    assert cli.main(["train", GPT, "--tiny", "data.dataset=text", f"data.data_dir={corpus}",
                     "train.steps=2", "train.eval_every=none", "--workdir", str(workdir)]) == 0
    return workdir


@pytest.mark.parametrize("flags,expected", [
    (["--temperature", "nan"], "--temperature must be >= 0 and finite"),
    (["--temperature", "inf"], "--temperature must be >= 0 and finite"),
    (["--temperature", "-1"], "--temperature must be >= 0 and finite"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
])
def test_bad_sampling_settings_are_one_line(flags, expected, lm_run, capsys):
    assert cli.main(["sample", "--workdir", str(lm_run), "--prompt", "the", *flags]) == 2
    assert expected in _one_error_line(capsys)


@pytest.mark.parametrize("name,damage,expected", [
    ("config.json", lambda t: "{not json", "config.json is not a jaxmodels config (Expecting"),
    ("config.json", lambda t: "[1, 2, 3]", "config.json is not a jaxmodels config (it holds a JSON list"),
    ("config.json", lambda t: t.replace('"model"', '"modle"', 1), "config.json: not a jaxmodels config (expected an object with a 'model' section"),
    ("tokenizer.json", lambda t: t[: len(t) // 2], "tokenizer.json cannot be read ("),
])
def test_sample_on_a_corrupt_workdir_is_one_line_and_changes_nothing(name, damage, expected, lm_run, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(lm_run, workdir)
    (workdir / name).write_text(damage((workdir / name).read_text()))
    before = _snapshot(workdir)
    assert cli.main(["sample", "--workdir", str(workdir), "--prompt", "the"]) == 2
    assert expected in _one_error_line(capsys)
    assert _snapshot(workdir) == before


def test_a_prompt_with_unseen_characters_warns_in_one_line(lm_run, capsys):
    assert cli.main(["sample", "--workdir", str(lm_run), "--prompt", "the Zébra", "--max-new-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    (warning,) = [line for line in err.splitlines() if "warning" in line]
    assert warning.startswith("jaxmodels: warning: the prompt has characters the tokenizer never "
                              "saw in training ('Z', 'é')")
    assert out.startswith("the \ufffd\ufffdbra")  # what the model was given: the unknown id
