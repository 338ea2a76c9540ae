"""Tokenizers: text to int32 ids and back, rebuildable from a JSON dict.

One interface (`Tokenizer`), three kinds:
  char  one id per distinct character of the training text, plus one id for anything else.
  byte  UTF-8 bytes: 256 ids, no training, round-trips any text.
  bpe   a sentencepiece BPE model trained in memory with lossless settings (byte fallback,
        identity normalisation, no dummy prefix), so decode(encode(text)) == text.

Every tokenizer round-trips the text it can represent exactly: `decode(encode(s)) == s` for any
s made of known characters (char) and for any str that can be written as UTF-8 (byte, bpe).
`to_json()` returns a JSON-serialisable dict holding everything needed to rebuild the tokenizer
(the BPE model proto base64-encoded), and `tokenizer_from_json` rebuilds it: the training loop
saves it to the workdir and sampling reads it back. sentencepiece is imported only when a BPE
tokenizer is trained or rebuilt.
"""

from __future__ import annotations

import base64
import io
import itertools
import pathlib
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from jaxmodels.errors import ConfigError, DataError


class _BadTrainingInput(ConfigError, ValueError):
    """A data knob that cannot make a tokenizer of this text: one line in the CLI (a
    ConfigError), and still the ValueError that callers of `train_tokenizer` caught before."""


class _UntrainableText(DataError, ValueError):
    """The same, for a text no knob can fix."""

KINDS = ("char", "byte", "bpe")
# BPE trains on at most this many leading characters of the train text (cut at a line end):
# about a second of sentencepiece time, and the merges of 1 MB of text cover the rest well.
BPE_SAMPLE_CHARS = 1_000_000


class Tokenizer(Protocol):
    """What the data pipeline and the sampler need from a tokenizer."""
    kind: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray:
        """int32 ids [len], each in 0..vocab_size-1."""

    def decode(self, ids) -> str:
        """Text of a sequence of ids (a list or a 1-D integer array)."""

    def to_json(self) -> dict:
        """A JSON-serialisable dict from which tokenizer_from_json rebuilds this tokenizer."""


def _as_ids(ids, vocab_size: int) -> np.ndarray:
    """ids as a 1-D int64 array, checked to lie in 0..vocab_size-1."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D sequence of integers, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"id {bad} is outside this tokenizer's vocabulary 0..{vocab_size - 1}")
    return arr


def _code_points(text: str) -> np.ndarray:
    """Code points of `text` as uint32 [len] (lone surrogates included), without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _check_json(d: dict, kind: str) -> None:
    if not isinstance(d, dict) or d.get("kind") != kind:
        got = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"expected a {kind!r} tokenizer dict, got kind {got!r}")


# ---------------------------------------------------------------------------------------------

class CharTokenizer:
    """One id per character of a fixed vocabulary, plus one id for unknown characters.

    Ids 0..len(chars)-1 are the vocabulary characters in sorted (code point) order, as nanoGPT
    numbers them; the last id, `unknown_id` == len(chars), stands for every other character and
    decodes to U+FFFD. Encoding is a table lookup over the text's code points (vectorised, about
    0.1 s for 5M characters).
    """
    kind = "char"

    def __init__(self, chars: str):
        code_points = np.unique(_code_points(chars))
        if len(code_points) == 0:
            raise ValueError("a char tokenizer needs at least one character")
        self._code_points = code_points.astype(np.uint32)
        self.unknown_id = len(code_points)
        self.vocab_size = len(code_points) + 1
        # Code point -> id for code points up to the largest known one; larger ones are unknown.
        self._table = np.full(int(code_points[-1]) + 1, self.unknown_id, np.int32)
        self._table[code_points] = np.arange(len(code_points), dtype=np.int32)
        self._decode_table = np.append(self._code_points, np.uint32(0xFFFD))

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """The vocabulary is the set of characters of `text`."""
        return cls("".join(set(text)))

    @property
    def chars(self) -> str:
        """The vocabulary characters, in id order."""
        return self._code_points.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def unknown_chars(self, text: str) -> str:
        """The distinct characters of `text` outside the vocabulary (each encodes to
        `unknown_id`), in order of first appearance."""
        ids = self.encode(text)
        return "".join(dict.fromkeys(c for c, i in zip(text, ids.tolist()) if i == self.unknown_id))

    def encode(self, text: str) -> np.ndarray:
        cp = _code_points(text)
        known = cp < len(self._table)
        ids = self._table[np.where(known, cp, 0)]
        ids[~known] = self.unknown_id
        return ids

    def decode(self, ids) -> str:
        cp = self._decode_table[_as_ids(ids, self.vocab_size)]
        return cp.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_json(self) -> dict:
        # Code points rather than a string: a vocabulary may hold lone surrogates (enwik8's
        # escaped bytes), which some JSON writers refuse inside strings.
        return {"kind": self.kind, "vocab_size": self.vocab_size,
                "code_points": self._code_points.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> CharTokenizer:
        _check_json(d, cls.kind)
        chars = np.asarray(d["code_points"], dtype="<u4").tobytes().decode("utf-32-le",
                                                                          "surrogatepass")
        tok = cls(chars)
        if tok.vocab_size != d.get("vocab_size", tok.vocab_size):
            raise ValueError(f"char tokenizer dict says vocab_size {d['vocab_size']} but holds "
                             f"{tok.vocab_size - 1} characters (+1 unknown)")
        return tok


class ByteTokenizer:
    """UTF-8 bytes, 256 ids.

    Encoding uses errors="surrogateescape", so a str decoded from raw bytes with the same handler
    (enwik8's split boundaries) encodes back to exactly those bytes; any other str encodes to its
    UTF-8. Decoding replaces invalid byte sequences (such as a character cut by a sampled window)
    with U+FFFD and is otherwise exact.
    """
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "surrogateescape"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return _as_ids(ids, 256).astype(np.uint8).tobytes().decode("utf-8", "replace")

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    @classmethod
    def from_json(cls, d: dict) -> ByteTokenizer:
        _check_json(d, cls.kind)
        return cls()


class BPETokenizer:
    """A sentencepiece BPE model with lossless settings.

    Id 0 is <unk> (never produced: byte fallback covers every character), id 1 is "\\n" (a user
    defined symbol, so no piece spans a line break), then the 256 byte pieces <0x00>..<0xFF>,
    then characters and merged pieces. Encoding runs line by line (sentencepiece is much faster
    on many short inputs than on one long one) and joins the lines with the "\\n" id, which gives
    the same ids as encoding the whole text because "\\n" is always a piece of its own.
    """
    kind = "bpe"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm  # Lazy: only BPE users need it.

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.vocab_size = int(self._sp.get_piece_size())
        self._newline_id = int(self._sp.piece_to_id("\n"))
        if self._sp.id_to_piece(self._newline_id) != "\n":
            raise ValueError("this sentencepiece model has no '\\n' piece: it was not trained by "
                             "train_tokenizer('bpe', ...)")

    @classmethod
    def train(cls, text: str, vocab_size: int = 1024,
              sample_chars: int = BPE_SAMPLE_CHARS) -> BPETokenizer:
        """Trains on the first `sample_chars` characters of `text` (ending at a line end).

        vocab_size is an upper bound: a small text may support fewer pieces, and the result's
        vocab_size says how many it has. Deterministic: the same text gives the same model.
        """
        import sentencepiece as spm  # Lazy: only BPE users need it.

        sample = text[:sample_chars]
        if len(text) > sample_chars and "\n" in sample:
            sample = sample[:sample.rindex("\n")]
        lines = [line for line in sample.split("\n") if line]
        if not lines:
            raise ValueError("cannot train a BPE tokenizer on an empty text")
        # unk + "\n" + 256 byte pieces + one piece per distinct character, before any merge.
        needed = 258 + len(set(sample) - {"\n"})
        if vocab_size < needed:
            raise ValueError(f"vocab_size={vocab_size} is too small for a BPE tokenizer of this "
                             f"text: it needs at least {needed} (256 bytes, <unk>, '\\n' and "
                             f"{needed - 258} distinct characters)")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
                vocab_size=vocab_size, hard_vocab_limit=False,
                # The lossless settings: no normalisation, whitespace kept as it is, every
                # character covered and anything unseen spelled out in bytes.
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False, byte_fallback=True, character_coverage=1.0,
                user_defined_symbols=["\n"], split_by_whitespace=True,
                allow_whitespace_only_pieces=True,
                # Long lines (XML, minified text) are trained on, not skipped.
                max_sentence_length=1 << 20,
                unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                num_threads=1, minloglevel=2)
        except RuntimeError as e:
            message = " ".join(str(e).split())
            raise ValueError(f"sentencepiece could not train a BPE model: {message}") from e
        return cls(model.getvalue())

    def encode(self, text: str) -> np.ndarray:
        lines = text.split("\n")
        try:
            pieces = self._sp.encode(lines)
        except (UnicodeEncodeError, TypeError):
            # Lone surrogates (enwik8's escaped bytes) cannot be passed to sentencepiece (it
            # refuses them with a TypeError or UnicodeEncodeError); each becomes "?".
            lines = text.encode("utf-8", "replace").decode("utf-8").split("\n")
            pieces = self._sp.encode(lines)
        lengths = np.fromiter(map(len, pieces), np.int64, count=len(pieces))
        flat = np.fromiter(itertools.chain.from_iterable(pieces), np.int32,
                           count=int(lengths.sum()))
        # A "\n" id after every line but the last.
        return np.insert(flat, np.cumsum(lengths[:-1]), np.int32(self._newline_id))

    def decode(self, ids) -> str:
        return self._sp.decode(_as_ids(ids, self.vocab_size).tolist())

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size,
                "model": base64.b64encode(self._proto).decode("ascii")}

    @classmethod
    def from_json(cls, d: dict) -> BPETokenizer:
        _check_json(d, cls.kind)
        tok = cls(base64.b64decode(d["model"]))
        if tok.vocab_size != d.get("vocab_size", tok.vocab_size):
            raise ValueError(f"bpe tokenizer dict says vocab_size {d['vocab_size']} but its "
                             f"model has {tok.vocab_size} pieces")
        return tok


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (the tokenizer.json shipped beside a checkpoint).

    Encoding adds no special tokens (a corpus is one stream of text; BOS/EOS are the data's
    business), so ids are exactly the model's own. to_json keeps the whole tokenizer.json
    text, so a workdir rebuilds it without the checkpoint folder.
    """
    kind = "hf"

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer as _Tok  # Lazy: only imported checkpoints need it.

        self._json = tokenizer_json
        try:
            self._tok = _Tok.from_str(tokenizer_json)
        except Exception as e:  # the Rust side raises its own Exception type
            raise ValueError(f"not a Hugging Face tokenizer.json ({' '.join(str(e).split())})") from None
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    @classmethod
    def from_dir(cls, path) -> HFTokenizer:
        """The tokenizer.json in checkpoint folder `path` (or the file itself)."""
        path = pathlib.Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist: a Hugging Face tokenizer is a "
                                    f"tokenizer.json file (save_pretrained writes one)")
        return cls(file.read_text(encoding="utf-8"))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """encode of each text, in parallel on the Rust side (prepare's fast path)."""
        out = self._tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in out]

    def decode(self, ids) -> str:
        return self._tok.decode(_as_ids(ids, self.vocab_size).tolist(), skip_special_tokens=False)

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "tokenizer_json": self._json}

    @classmethod
    def from_json(cls, d: dict) -> HFTokenizer:
        _check_json(d, cls.kind)
        return cls(d["tokenizer_json"])


# ---------------------------------------------------------------------------------------------

_FROM_JSON: dict[str, Callable[[dict], Tokenizer]] = {
    "char": CharTokenizer.from_json,
    "byte": ByteTokenizer.from_json,
    "bpe": BPETokenizer.from_json,
    "hf": HFTokenizer.from_json,
}


def tokenizer_from_json(d: dict) -> Tokenizer:
    """Rebuilds a tokenizer from its to_json() dict."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in _FROM_JSON:
        raise ValueError(f"not a tokenizer dict: kind {kind!r}, expected one of {', '.join(KINDS)}")
    return _FROM_JSON[kind](d)


def train_tokenizer(kind: Literal["char", "byte", "bpe"], train_text: str, *,
                    vocab_size: int = 1024) -> Tokenizer:
    """A tokenizer of `kind` fitted to `train_text` (train split only, never validation).

    vocab_size is used by "bpe" only (an upper bound; see BPETokenizer.train): a char
    tokenizer's vocabulary is the text's characters plus one, a byte tokenizer's is 256.
    """
    if kind == "char":
        return CharTokenizer.train(train_text)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        # The trainer's ValueErrors name its own arguments; these name the config's knobs.
        if not any(train_text.split("\n")):
            raise _UntrainableText("data.tokenizer=bpe cannot be trained on this train split: it holds "
                            "only line breaks; give a text with words, or set data.tokenizer=char")
        try:
            return BPETokenizer.train(train_text, vocab_size=vocab_size)
        except ValueError as e:
            message = str(e)
            if message.startswith("vocab_size="):
                raise _BadTrainingInput(f"data.{message}: raise data.vocab_size, or set "
                                  f"data.tokenizer=char") from None
            raise _BadTrainingInput(f"data.tokenizer=bpe with data.vocab_size={vocab_size} failed on this "
                              f"text ({message}): change data.vocab_size or set "
                              f"data.tokenizer=char") from None
    raise ValueError(f"unknown tokenizer {kind!r}: choose one of {', '.join(KINDS)}")
