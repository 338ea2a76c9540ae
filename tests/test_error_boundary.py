"""The error boundary: whatever is corrupt in a workdir, every command that reads one answers
with exit 0, 2 or 3, never a traceback, and loses nothing.

One finished tiny language-model run (two checkpoints, weights, tokenizer, metrics, its row in
the results table) is built once; each case copies it, corrupts one file, and drives each
command that reads that file (`train` resuming, `eval`, `sample`, `fit` on the table, `sweep
--dry-run`) through the real CLI in a subprocess, each on its own copy. Files that existed before must be byte-identical afterwards, except those a
command is documented to rewrite when it succeeds (WRITTEN_ON_SUCCESS).
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GPT = str(ROOT / "experiments/configs/gpt_shakespeare.py")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")

# What a successful command may rewrite (loop.py and generate.py docstrings): `train` resumes
# into the run (its files, its row, checkpoints set aside as unreadable), `eval` writes
# eval_<split>.json, `sample`, `fit` and `sweep --dry-run` write nothing.
WRITTEN_ON_SUCCESS = {
    "train": ("run/config.json", "run/tokenizer.json", "run/metrics.jsonl", "run/summary.json",
              "run/curves.png", "run/checkpoints/", "run/checkpoints_unreadable/", "run/weights/",
              "results.jsonl"),
    "eval": ("run/eval_validation.json",),
    "sample": (), "fit": (), "sweep": (),
}


def _words(n: int) -> str:
    vocab = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs",
             "far", "away", "from", "home", "to", "sea"]
    lines, state = [], 7
    for i in range(n):
        state = (state * 1103515245 + 12345) % 2 ** 31
        lines.append(" ".join(vocab[(state >> s) % len(vocab)] for s in range(0, 24, 3)))
    return "\n".join(lines) + "\n"


def _overrides(text_file) -> list[str]:
    return ["data.dataset=text", f"data.data_dir={text_file}", "train.steps=4",
            "checkpoint.every_steps=2", "train.eval_every=none", "train.log_every=2"]


def _cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "jaxmodels.cli", *argv], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("boundary")
    text_file = root / "corpus.txt"
    text_file.write_text(_words(600))
    r = _cli("train", GPT, "--tiny", *_overrides(text_file), "--workdir", str(root / "runs" / "run"))
    assert r.returncode == 0, r.stderr[-3000:]
    run = root / "runs" / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    sweep_file = root / "sweep.py"
    base = dict(o.split("=", 1) for o in _overrides(text_file))
    sweep_file.write_text(
        "from jaxmodels.orchestration.sweep import Sweep\n\n"
        f"def get_sweep(tiny=False):\n    return Sweep(config={GPT!r}, tiny=True, base={base!r}, "
        f"runs=[{{}}])\n")
    return root, text_file, sweep_file


def _truncate(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _append(path: pathlib.Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# corruption -> (how, the commands that read that file)
CORRUPTIONS = {
    "config.json garbage": (lambda runs: (runs / "run/config.json").write_text("{not json at all"),
                            ("sample", "sweep")),
    "config.json a list": (lambda runs: (runs / "run/config.json").write_text("[1, 2, 3]\n"),
                           ("sample", "sweep")),
    "config.json missing key": (lambda runs: (runs / "run/config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((runs / "run/config.json").read_text()).items() if k != "model"})),
        ("sample", "sweep")),
    "tokenizer.json truncated": (lambda runs: _truncate(runs / "run/tokenizer.json"), ("sample",)),
    "metrics.jsonl torn": (lambda runs: _append(runs / "run/metrics.jsonl", '{"step": 6, "lo'),
                           ("train",)),
    "results.jsonl torn": (lambda runs: _append(runs / "results.jsonl", '{"run": "x", "spike_si'),
                           ("fit", "sweep", "train")),
    "newest checkpoint truncated": (lambda runs: _truncate(_largest_file(runs / "run/checkpoints/4")),
                                    ("train",)),
    "weights truncated": (lambda runs: _truncate(_largest_file(runs / "run/weights")),
                          ("eval", "sample")),
}


def _commands(runs: pathlib.Path, text_file, sweep_file) -> dict:
    config = [GPT, "--tiny", *_overrides(text_file)]
    workdir = ["--workdir", str(runs / "run")]
    return {
        "train": ["train", *config, *workdir],
        "eval": ["eval", *config, *workdir],
        "sample": ["sample", *workdir, "--prompt", "the fox", "--max-new-tokens", "4"],
        "fit": ["fit", str(runs / "results.jsonl")],
        "sweep": ["sweep", str(sweep_file), "--workdir", str(runs), "--dry-run"],
    }


def _snapshot(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_every_command_on_a_corrupt_workdir_is_an_answer_not_a_traceback(corruption, finished, tmp_path):
    root, text_file, sweep_file = finished
    damage, commands = CORRUPTIONS[corruption]
    failures = []
    for command in commands:
        runs = tmp_path / command / "runs"
        shutil.copytree(root / "runs", runs)
        damage(runs)
        before = _snapshot(runs)
        r = _cli(*_commands(runs, text_file, sweep_file)[command])
        after = _snapshot(runs)
        err = r.stderr.strip()
        where = (f"{command} on {corruption}: exit {r.returncode}: "
                 f"{err if len(err) < 3000 else err[:1500] + ' ... ' + err[-1500:]}")
        if r.returncode not in (0, 2, 3):
            failures.append(where)
        if "Traceback" in r.stderr:
            failures.append(f"{where}: traceback")
        allowed = WRITTEN_ON_SUCCESS[command] if r.returncode == 0 else ()
        changed = [name for name, digest in before.items()
                   if after.get(name) != digest and not name.startswith(allowed)]
        if changed:
            failures.append(f"{command} on {corruption} changed {changed}")
        if r.returncode == 2:
            lines = r.stderr.strip().splitlines()
            if not lines or "error: " not in lines[-1]:
                failures.append(f"{where}: no one-line error")
    assert not failures, "\n".join(failures)
