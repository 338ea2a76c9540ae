"""Language-model batches: token ids in, fixed-shape int32 windows out.

Shape names: B batch, T sequence length (seq_len), N tokens in a split.

A batch is {"inputs": int32 [B,T], "targets": int32 [B,T], "mask": float32 [B,T]}, the key
names every model family's step reads; targets are the inputs shifted left by one token, taken
from the same window of T+1 tokens. Training batches are random windows, each batch a pure
function of (seed, batch index), so the stream's whole state is one integer. Evaluation batches
are contiguous windows covering the split once, the last padded with mask 0.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import numpy as np

from jaxmodels.data.pipeline import restored_position
from jaxmodels.data.text import TextCorpus, load_text_corpus
from jaxmodels.data.tokenizers import Tokenizer, train_tokenizer
from jaxmodels.errors import DataError


def _check_ids(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids


def _check_positive(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _FileWindows:
    """Rows ids[s : s+width] of a whole-file np.memmap, read with os.pread rather than through
    the map: a page fault maps the kernel's whole (large) page-cache folio into the process,
    so random windows through the map grow its resident memory towards the file's size
    (about 0.5-3 MB per window measured here); pread copies only the window's bytes."""

    def __init__(self, ids: np.memmap, width: int):
        self._fd = os.open(ids.filename, os.O_RDONLY)
        self._base, self._dtype, self._width = int(ids.offset), ids.dtype, width
        self._len = len(ids) - width + 1

    def __len__(self) -> int:
        return self._len

    def read(self, start: int, count: int) -> np.ndarray:
        """ids[start : start+count]."""
        size = self._dtype.itemsize
        return np.frombuffer(os.pread(self._fd, count * size, self._base + start * size),
                             self._dtype)

    def __getitem__(self, starts: np.ndarray) -> np.ndarray:
        size = self._width * self._dtype.itemsize
        out = np.empty((len(starts), self._width), self._dtype)
        for row, start in enumerate(starts.tolist()):
            out[row] = np.frombuffer(os.pread(self._fd, size, self._base + start * self._dtype.itemsize),
                                     self._dtype)
        return out

    def __del__(self, _close=os.close):  # os may be gone when this runs at interpreter exit
        fd = getattr(self, "_fd", None)
        if fd is not None:
            _close(fd)


def _whole_file_map(ids: np.ndarray) -> bool:
    # A memmap np.memmap() made itself (its base is the mmap); a slice of one has another
    # offset than its `offset` attribute says, so it is read through the map instead.
    return (isinstance(ids, np.memmap) and isinstance(ids.base, mmap.mmap)
            and bool(ids.filename) and ids.flags.c_contiguous)


class LMBatches:
    """Random windows of length seq_len+1 drawn by seed; resumable by one integer.

    Batch k takes its B window starts from np.random.default_rng([seed, k]).integers(0, N - T,
    size=B): every window of T+1 tokens inside the split is equally likely, and batch k does not
    depend on any batch before it, so restoring the position (get_state/set_state, or
    position=k) continues the stream identically. Gathering is one fancy index into a strided
    view of ids (no copy of the split): tens of microseconds a batch at B=32, T=64.

    ids may be any integer dtype (uint16 keeps a large split small, a np.memmap keeps it on
    disk); batches are int32. `rows` (a slice of 0..batch_size) makes every batch only those
    rows of the global batch: a process of a multi-host run gathers only its own windows.
    """

    def __init__(self, ids: np.ndarray, *, batch_size: int, seq_len: int, seed: int,
                 position: int = 0, rows: slice | None = None):
        file_map = ids if _whole_file_map(ids) else None
        ids = _check_ids(ids)
        self._batch_size = _check_positive("batch_size", batch_size)
        self._seq_len = _check_positive("seq_len", seq_len)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if len(ids) < self._seq_len + 1:
            raise ValueError(f"a window of seq_len+1={self._seq_len + 1} tokens does not fit in "
                             f"a split of {len(ids)} tokens: lower seq_len or use more text")
        self._ids = ids
        # Row s is ids[s : s+T+1]; a view, so it costs nothing whatever the split's size (a
        # file's memmap: read by pread, see _FileWindows).
        self._windows = (_FileWindows(file_map, self._seq_len + 1) if file_map is not None else
                         np.lib.stride_tricks.sliding_window_view(ids, self._seq_len + 1))
        self._seed = int(seed)
        self._rows = slice(None) if rows is None else rows
        self._local = len(range(self._batch_size)[self._rows])
        self._position = 0
        self.set_state({"position": position, "seed": self._seed})

    @property
    def num_tokens(self) -> int:
        return len(self._ids)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def position(self) -> int:
        """Batches served so far; the next batch is batch `position`."""
        return self._position

    @property
    def tokens_per_batch(self) -> int:
        """Target tokens in one batch, B*T."""
        return self._batch_size * self._seq_len

    @property
    def epoch(self) -> float:
        """Target tokens served so far over the split's size (windows overlap at random, so
        one epoch sees most but not all tokens)."""
        return self._position * self.tokens_per_batch / self.num_tokens

    def starts(self, position: int) -> np.ndarray:
        """Window start offsets [B] of batch `position` (pure: does not move the stream)."""
        rng = np.random.default_rng([self._seed, int(position)])
        return rng.integers(0, len(self._windows), size=self._batch_size)

    def __iter__(self) -> LMBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        # Starts of the whole batch, then this stream's rows: every process draws the same B.
        window_BT1 = self._windows[self.starts(self._position)[self._rows]]
        self._position += 1
        return {
            "inputs": np.array(window_BT1[:, :-1], dtype=np.int32, order="C"),
            "targets": np.array(window_BT1[:, 1:], dtype=np.int32, order="C"),
            "mask": np.ones((self._local, self._seq_len), np.float32),
        }

    def get_state(self) -> dict:
        """JSON-serialisable state: set_state on a fresh stream over the same ids resumes."""
        return {"position": self._position, "seed": self._seed, "batch_size": self._batch_size,
                "seq_len": self._seq_len, "num_tokens": self.num_tokens}

    def set_state(self, state: dict) -> None:
        """Restores get_state's output.

        "position" and "seed" are required; "batch_size", "seq_len" and "num_tokens", when
        given, must match this stream, because a position means nothing over another split or
        window shape.
        """
        self._position = restored_position(state, "LMBatches", seed=self._seed,
                                           batch_size=self._batch_size, seq_len=self._seq_len,
                                           num_tokens=self.num_tokens)


def lm_eval_batches(ids: np.ndarray, *, batch_size: int, seq_len: int,
                    max_windows: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Contiguous non-overlapping windows covering the split in order, every batch the same
    shape, the last padded with mask 0 so no token is dropped or double-counted. With
    max_windows, a fixed subset of that many windows spread evenly over the whole split (the
    same ones every call), so a quick validation does not only see the split's first pages.

    Window j has inputs ids[jT : jT+T] and targets ids[jT+1 : jT+T+1], so the targets of all
    windows are ids[1:], each exactly once; a token's context is what precedes it in its window
    (the first target of each window sees one token). The last window is padded with id 0 and
    mask 0.0 where the split runs out, and the last batch with whole windows of mask 0.0, so
    sum(mask) is the number of targets scored and a mask-weighted mean is the per-token loss.
    """
    file_map = ids if _whole_file_map(ids) else None
    ids = _check_ids(ids)
    b = _check_positive("batch_size", batch_size)
    t = _check_positive("seq_len", seq_len)
    if len(ids) < 2:
        raise ValueError(f"a split of {len(ids)} tokens has nothing to predict: it needs 2 or more")
    num_windows = -(-(len(ids) - 1) // t)
    if max_windows is not None and _check_positive("max_windows", max_windows) < num_windows:
        chosen = np.unique(np.linspace(0, num_windows - 1, max_windows).round().astype(np.int64))
        # A file's windows by pread, as for training (a fault would map whole folios).
        read = (_FileWindows(file_map, 1).read if file_map is not None
                else lambda start, count: ids[start:start + count])
        return _spread_eval_batches(read, len(ids), b, t, chosen)
    return _lm_eval_batches(ids, b, t, num_windows)


def _spread_eval_batches(read, num_ids, b, t, windows):
    """Batches of the given window indices (window j covers targets ids[jT+1 : jT+T+1]);
    read(start, count) gives ids[start : start+count]."""
    for k in range(0, len(windows), b):
        starts = windows[k:k + b] * t
        inputs = np.zeros((b, t), np.int32)
        targets = np.zeros((b, t), np.int32)
        mask = np.zeros((b, t), np.float32)
        for row, start in enumerate(starts):
            n = min(t, num_ids - 1 - int(start))
            window = read(int(start), n + 1)
            inputs[row, :n] = window[:n]
            targets[row, :n] = window[1:]
            mask[row, :n] = 1.0
        yield {"inputs": inputs, "targets": targets, "mask": mask}


def _lm_eval_batches(ids, b, t, num_windows):
    num_targets = min(len(ids) - 1, num_windows * t)
    num_batches = -(-num_windows // b)
    # Lay the covered tokens out as one padded row of B*T*num_batches (+1 for the last target).
    padded = np.zeros(num_batches * b * t + 1, np.int32)
    padded[:num_targets + 1] = ids[:num_targets + 1]
    mask = np.zeros(num_batches * b * t, np.float32)
    mask[:num_targets] = 1.0
    # Batches are views of these two buffers; read-only so no consumer can change a later batch.
    padded.flags.writeable = False
    mask.flags.writeable = False
    for k in range(num_batches):
        lo, hi = k * b * t, (k + 1) * b * t
        yield {"inputs": padded[lo:hi].reshape(b, t),
               "targets": padded[lo + 1:hi + 1].reshape(b, t),
               "mask": mask[lo:hi].reshape(b, t)}


def fixed_tokenizer(path: str) -> Tokenizer:
    """The tokenizer.json in folder `path`: a jaxmodels workdir's (its own JSON, with a "kind")
    or a Hugging Face checkpoint's (anything else)."""
    import json
    import pathlib

    from jaxmodels.data.tokenizers import HFTokenizer, tokenizer_from_json

    file = pathlib.Path(path) / "tokenizer.json"
    if not file.is_file():
        raise DataError(f"data.tokenizer={path!r} is neither char, byte, bpe nor a folder with a "
                        f"tokenizer.json in it")
    text = file.read_text(encoding="utf-8")
    d = json.loads(text)
    return tokenizer_from_json(d) if isinstance(d, dict) and "kind" in d else HFTokenizer(text)


def load_lm_data(name: str = "shakespeare", *, tokenizer: str, vocab_size: int,
                 data_dir: str | None = None, download: bool = False, mirror: str | None = None,
                 ) -> tuple[TextCorpus, Tokenizer, dict[str, np.ndarray]]:
    """A corpus, a tokenizer trained on its train split only, and each split's ids.

    Args:
      name: a key of jaxmodels.data.text.TEXT_CORPORA.
      tokenizer: "char", "byte" or "bpe".
      vocab_size: the BPE vocabulary's upper bound (ignored by char and byte).
      data_dir, download, mirror: as for load_text_corpus.

    Returns:
      (corpus, tokenizer, ids) where ids maps each split of the corpus to a read-only 1-D array,
      uint16 when the vocabulary fits (half the memory of int32 for enwik8's 90M tokens), else
      int32. LMBatches and lm_eval_batches take either and emit int32.
    """
    corpus = load_text_corpus(name, data_dir=data_dir, download=download, mirror=mirror)
    if tokenizer in ("char", "byte", "bpe"):
        tok = train_tokenizer(tokenizer, corpus.splits["train"], vocab_size=vocab_size)
    else:
        tok = fixed_tokenizer(tokenizer)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    ids = {}
    for split, text in corpus.splits.items():
        arr = tok.encode(text).astype(dtype)
        arr.flags.writeable = False
        ids[split] = arr
    return corpus, tok, ids
