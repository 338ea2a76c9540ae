"""Token stores (data/token_store.py, data/prepare.py, data.dataset=tokens).

Equalities: a store's windows detokenise to the source text; training from a store equals
training on the same text loaded the old way (the same ids, so the same batches); a run
resumed from a checkpoint, or stopped by SIGTERM and relaunched, equals an uninterrupted one; two processes reading only their own rows equal one process
of 8 devices, and their rows are disjoint and make up the global batch.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import config as C
from jaxmodels.data import prepare, token_store
from jaxmodels.data.lm import LMBatches
from jaxmodels.errors import DataError
from helpers import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
GPT = ROOT / "experiments/configs/gpt_shakespeare.py"
TINY = ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "model.max_len=16",
        "data.seq_len=16", "data.batch_size=8", "data.eval_batch_size=64", "data.eval_windows=8",
        "train.steps=4", "train.log_every=1", "train.eval_every=2"]
# Non-ASCII on every line, so the char vocabulary (trained on train) covers validation too.
TEXT = "".join(f"line {i}: caf\u00e9 na\u00efve \u2603 the quick brown fox jumps over {i * i}\n"
               for i in range(400))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _prepare(inputs, out, tokenizer="char"):
    return prepare.prepare([str(i) for i in inputs], out, tokenizer=tokenizer, progress=False)


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_windows_detokenise_to_the_source_text(kind, text_file, tmp_path):
    from jaxmodels.data.text import load_text_files

    _prepare([text_file], tmp_path / "s", kind)
    store = token_store.open_store(tmp_path / "s")
    tok = store.tokenizer()
    corpus = load_text_files(data_dir=str(text_file))
    for split in ("train", "validation"):
        ids = store.ids[split]
        assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
        assert tok.decode(np.asarray(ids)) == corpus.splits[split]
        # A training window is a slice of the text (byte windows may cut a character).
        if kind == "char":
            b = LMBatches(ids, batch_size=4, seq_len=16, seed=3)
            starts, window = b.starts(0), next(b)
            for s, row in zip(starts, window["inputs"]):
                assert tok.decode(row) == corpus.splits[split][s:s + 16]
    assert store.docs("train").tolist() == [0, len(store.ids["train"])]


def test_hf_tokenizer_round_trip(text_file, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers, decoders

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.save(str(tmp_path / "tokenizer.json"))
    _prepare([text_file], tmp_path / "s", str(tmp_path))
    store = token_store.open_store(tmp_path / "s")
    text = store.tokenizer().decode(np.asarray(store.ids["train"]))
    assert TEXT.startswith(text) and len(text) > 0.8 * len(TEXT)


def test_cli_prepare_writes_a_store(text_file, tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxmodels.cli", "prepare", str(text_file),
                          "--out", str(tmp_path / "s"), "--tokenizer", "byte"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["tokens"]["train"] + summary["tokens"]["validation"] == len(TEXT.encode())
    assert token_store.open_store(tmp_path / "s").vocab_size == 256


def _damage(store: pathlib.Path, how: str) -> str:
    if how == "missing index":
        (store / "index.json").unlink()
        return "has no index.json"
    if how == "truncated":
        data = (store / "train.bin").read_bytes()
        (store / "train.bin").write_bytes(data[:-2])
        return "truncated"
    if how == "corrupt":
        data = bytearray((store / "train.bin").read_bytes())
        data[10] ^= 1
        (store / "train.bin").write_bytes(bytes(data))
        return "sha256 differs"
    if how == "other tokenizer":
        tok = json.loads((store / "tokenizer.json").read_text())
        tok["code_points"] = tok["code_points"][::-1][:-1] + tok["code_points"][:1]
        (store / "tokenizer.json").write_text(json.dumps(tok))
        return "not the one its tokens were made with"
    if how == "absent":
        return "does not exist"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing index", "truncated", "corrupt", "other tokenizer",
                                 "absent"])
def test_a_damaged_store_is_one_line_before_compile(how, text_file, tmp_path):
    store = tmp_path / "s"
    if how != "absent":
        _prepare([text_file], store)
    expected = _damage(store, how)
    with pytest.raises(DataError, match=expected) as e:
        token_store.open_store(store)
    assert "\n" not in str(e.value)
    # Through the CLI: exit 2 and the one line, before anything compiles.
    out = subprocess.run([sys.executable, "-m", "jaxmodels.cli", "train", str(GPT), "--tiny",
                          "data.dataset=tokens", f"data.data_dir={store}", *TINY,
                          "--workdir", str(tmp_path / "run")],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_rows_are_disjoint_and_make_up_the_batch(text_file, tmp_path):
    _prepare([text_file], tmp_path / "s")
    ids = token_store.open_store(tmp_path / "s").ids["train"]
    whole = LMBatches(ids, batch_size=8, seq_len=16, seed=5, position=3)
    parts = [LMBatches(ids, batch_size=8, seq_len=16, seed=5, position=3, rows=slice(a, a + 4))
             for a in (0, 4)]
    for _ in range(2):
        batch, pieces = next(whole), [next(p) for p in parts]
        for key in batch:
            assert all(p[key].shape[0] == 4 for p in pieces)
            np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), batch[key])


def test_training_from_a_store_equals_training_on_the_text(text_file, tmp_path):
    _prepare([text_file], tmp_path / "s")
    base = C.load(GPT, tiny=True)
    old = jaxmodels.train(C.apply_overrides(base, [*TINY, "data.dataset=text",
                                                   f"data.data_dir={text_file}"]), tmp_path / "old")
    new = jaxmodels.train(C.apply_overrides(base, [*TINY, "data.dataset=tokens",
                                                   f"data.data_dir={tmp_path / 's'}",
                                                   "data.final_eval_windows=3"]), tmp_path / "new")
    assert [m["loss"] for m in read_metrics(tmp_path / "new")] == [m["loss"] for m in read_metrics(tmp_path / "old")]
    # The workdir's tokenizer is the store's, so `sample` decodes with it.
    saved = json.loads((tmp_path / "new" / "tokenizer.json").read_text())
    assert saved == json.loads((tmp_path / "s" / "tokenizer.json").read_text())
    from jaxmodels.generate import generate_text

    text = generate_text(tmp_path / "new", "caf\u00e9", max_new_tokens=5, temperature=0.0)
    assert text.startswith("caf\u00e9") and len(text) == 9 and "\ufffd" not in text
    # final_eval_windows bounds the final evaluation, and the summary says how much it read.
    assert old["eval_fraction"] == 1.0
    # Three windows of 16 targets, the last of the split's short one among them.
    assert 2 * 16 < new["eval_examples"] <= 3 * 16 < old["eval_examples"]
    assert new["eval_fraction"] == pytest.approx(new["eval_examples"] / new["eval_split_examples"])
    assert new["eval_split_examples"] == old["eval_split_examples"]


def test_resume_across_an_epoch_boundary_is_exact(tmp_path):
    # 1,800 train tokens are 112 windows of 16, an epoch every 14 steps of 8: steps 1..10,
    # stop, then 11..20 from the checkpoint (crossing step 14) == 1..20 in one go.
    small = tmp_path / "small.txt"
    small.write_text(TEXT[:2000], encoding="utf-8")
    _prepare([small], tmp_path / "s")
    base = C.apply_overrides(C.load(GPT, tiny=True), [
        *TINY, "data.dataset=tokens", f"data.data_dir={tmp_path / 's'}", "train.eval_every=none",
        "train.log_every=1"])
    straight = jaxmodels.train(C.apply_overrides(base, ["train.steps=20"]), tmp_path / "a")
    jaxmodels.train(C.apply_overrides(base, ["train.steps=10", "checkpoint.every_steps=10"]),
                    tmp_path / "b")
    resumed = jaxmodels.train(C.apply_overrides(base, ["train.steps=20",
                                                       "checkpoint.every_steps=10"]), tmp_path / "b")
    assert resumed["resumed_from"] == [10] and straight["epochs"] > 1
    assert [m["loss"] for m in read_metrics(tmp_path / "b")] == [m["loss"] for m in read_metrics(tmp_path / "a")]
    assert resumed["eval_loss"] == straight["eval_loss"]


DRIVER = """
import json, sys
from jaxmodels import config as C
from jaxmodels.parallel import distributed
from jaxmodels.training import loop
path, workdir, coordinator, pid, *overrides = sys.argv[1:]
distributed.start(None, coordinator, 2, int(pid))
first = []
inner_next = distributed.LocalStream.__next__
def spy(self):
    batch = inner_next(self)
    if not first:
        first.append(batch["inputs"].tolist())
    return batch
distributed.LocalStream.__next__ = spy
summary = loop.train(C.apply_overrides(C.load(path, tiny=True), overrides), workdir)
print("SUMMARY " + json.dumps({"summary": summary, "first": first}))
"""


@pytest.mark.skipif(len(jax.devices()) < 8, reason="the reference run needs 8 devices")
def test_two_processes_read_their_own_rows_and_match_one(text_file, tmp_path):
    from tests.test_multihost import _env, _finish, _free_port, _start

    _prepare([text_file], tmp_path / "s")
    overrides = [*TINY, "data.dataset=tokens", f"data.data_dir={tmp_path / 's'}",
                 "parallel.preset=fsdp"]
    one = jaxmodels.train(C.apply_overrides(C.load(GPT, tiny=True), overrides), tmp_path / "one")
    port = _free_port()
    results = _finish([_start(["-c", DRIVER, str(GPT), str(tmp_path / "two"),
                               f"127.0.0.1:{port}", str(i), *overrides], _env())
                       for i in range(2)])
    outs = []
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        outs.append(json.loads(out.split("SUMMARY ", 1)[1]))
    # Each process read 4 of the 8 rows of batch 0; together they are the global batch.
    ids = token_store.open_store(tmp_path / "s").ids["train"]
    batch0 = next(LMBatches(ids, batch_size=8, seq_len=16, seed=0))["inputs"]
    assert [len(o["first"][0]) for o in outs] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([o["first"][0] for o in outs]), batch0)
    two = [m["loss"] for m in read_metrics(tmp_path / "two")]
    np.testing.assert_allclose(two, [m["loss"] for m in read_metrics(tmp_path / "one")], rtol=1e-5)
    np.testing.assert_allclose(outs[0]["summary"]["eval_loss"], one["eval_loss"], rtol=1e-5)


def test_windows_read_from_the_file_equal_windows_of_the_array(tmp_path):
    from jaxmodels.data.lm import _FileWindows

    ids = np.random.default_rng(0).integers(0, 500, 10_000).astype(np.uint16)
    ids.tofile(tmp_path / "t.bin")
    mapped = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r")
    direct = LMBatches(ids, batch_size=8, seq_len=16, seed=1)
    by_file = LMBatches(mapped, batch_size=8, seq_len=16, seed=1, rows=slice(2, 6))
    assert isinstance(by_file._windows, _FileWindows)  # pread, not page faults (RSS)
    for _ in range(3):
        a, b = next(direct), next(by_file)
        for key in a:
            np.testing.assert_array_equal(a[key][2:6], b[key])


def test_a_vocabulary_over_65536_is_stored_as_uint32(tmp_path):
    class Big:
        vocab_size = 70_000

        def to_json(self):
            return {"kind": "byte", "vocab_size": self.vocab_size}

    docs = [np.array([1, 69_999, 65_536]), np.array([7, 8])]
    token_store.write_store(tmp_path / "s", Big(), {"train": docs, "validation": docs[:1]})
    store = token_store.open_store(tmp_path / "s")
    assert store.ids["train"].dtype == np.uint32
    assert store.ids["train"].tolist() == [1, 69_999, 65_536, 7, 8]
    assert store.docs("train").tolist() == [0, 3, 5]


@pytest.mark.parametrize("argv, expected", [
    (["no/such/file.txt", "--out", "OUT"], "neither a file, a folder nor a corpus"),
    (["TEXT", "--out", "OUT", "--tokenizer", "wordpiece"], "neither char, byte, bpe nor"),
])
def test_bad_prepare_arguments_are_one_line(argv, expected, text_file, tmp_path, capsys):
    argv = [str(text_file) if a == "TEXT" else str(tmp_path / "o") if a == "OUT" else a
            for a in argv]
    assert prepare.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stop_then_resume_across_epochs_is_exact(how, tmp_path):
    """SIGTERM (the run saves and stops) or kill -9 (the run resumes from its last periodic
    checkpoint, past an epoch boundary) and a relaunch equal the uninterrupted run."""
    import signal
    import time

    # 112 windows of 16: an epoch every 14 steps of 8, so a stop anywhere is epochs in.
    small = tmp_path / "small.txt"
    small.write_text(TEXT[:2000], encoding="utf-8")
    _prepare([small], tmp_path / "s")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def argv(workdir):
        return [sys.executable, "-m", "jaxmodels.cli", "train", str(GPT), "--tiny", *TINY,
                "data.dataset=tokens", f"data.data_dir={tmp_path / 's'}", "train.steps=400",
                "train.eval_every=none", "checkpoint.every_steps=10", "--workdir", str(workdir)]

    straight = subprocess.run(argv(tmp_path / "a"), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(argv(tmp_path / "b"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpts, deadline = tmp_path / "b" / "checkpoints", time.monotonic() + 300
    # Past the checkpoint of step 20 (epoch 2 began at step 15).
    while not (ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 20 for p in ckpts.iterdir())):
        assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
        time.sleep(0.01)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (128 + signal.SIGTERM if how == "SIGTERM" else -signal.SIGKILL), err[-2000:]
    again = subprocess.run(argv(tmp_path / "b"), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed_from = json.loads((tmp_path / "b" / "summary.json").read_text())["resumed_from"]
    if how == "SIGTERM":
        stopped_at = int(err.strip().splitlines()[-1].split("after step ")[1].split(":")[0])
        assert 14 < stopped_at < 400 and resumed_from == [stopped_at]
    else:
        assert len(resumed_from) == 1 and 20 <= resumed_from[0] < 400 and resumed_from[0] % 10 == 0

    def learned(workdir):  # the numbers of the run, without its timings
        return [{k: v for k, v in r.items() if not k.endswith(("_per_sec", "_s")) and k != "mfu"}
                for r in read_metrics(workdir)]

    assert learned(tmp_path / "b") == learned(tmp_path / "a")
    assert len(learned(tmp_path / "a")) == 400


def test_spread_eval_windows_read_from_the_file_equal_the_array(tmp_path):
    from jaxmodels.data.lm import lm_eval_batches

    ids = np.random.default_rng(1).integers(0, 500, 5_003).astype(np.uint16)
    ids.tofile(tmp_path / "t.bin")
    mapped = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r")
    a = list(lm_eval_batches(ids, batch_size=4, seq_len=16, max_windows=10))
    b = list(lm_eval_batches(mapped, batch_size=4, seq_len=16, max_windows=10))
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
