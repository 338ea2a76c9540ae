"""A token store: a tokenised corpus on disk, read by memory map, never loaded whole.

Shape names: N tokens in a split, D documents in a split.

Layout of the folder STORE (`jaxmodels prepare` writes it, data.dataset=tokens reads it):
  index.json        {"format", "version", "dtype" ("uint16" or "uint32"), "vocab_size",
                     "tokenizer_sha256", "splits": {split: {"file", "tokens", "documents",
                     "sha256"}}}; written last, so a store without it is unfinished.
  tokenizer.json    the tokenizer's to_json(); its sha256 is in the index.
  <split>.bin       the split's token ids, raw little-endian dtype [N] (nanoGPT's layout).
  <split>.docs.npy  int64 [D+1] offsets: document d is tokens [docs[d], docs[d+1]).

Why a raw memory map and not ArrayRecord: a training window is T+1 contiguous tokens at a
random offset; a memory map serves it as one slice of the page cache, with no record framing,
no decompression and no per-record index lookup, and the same file answers windows of any T.
benchmarks/token_store.py measures both (README "Token stores"). Training windows are read
from the map's file with pread (data/lm.py _FileWindows), which keeps resident memory flat.

Every check a damaged store can fail (missing index, truncated file, changed bytes, a
tokenizer.json that is not the one the tokens were made with) raises a one-line DataError at
open, before anything compiles. The sha256 of each token file is checked by streaming the file
(ordinary reads, so the check does not count towards the process's resident memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable

import numpy as np

from jaxmodels import files
from jaxmodels.errors import DataError

FORMAT = "jaxmodels-token-store"
VERSION = 1
INDEX = "index.json"
TOKENIZER = "tokenizer.json"
_CHUNK = 1 << 24  # bytes per read while hashing


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the disk and page cache of uint32), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SplitWriter:
    """Appends documents' ids to STORE/<split>.bin.tmp; `close` renames it into place."""

    def __init__(self, folder: pathlib.Path, split: str, dtype: np.dtype):
        self.split, self.dtype = split, dtype
        self.path = folder / f"{split}.bin"
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._f = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self.tokens = 0
        self.offsets = [0]

    def write(self, ids: np.ndarray, *, end_document: bool = False) -> None:
        """Appends ids; end_document closes the current document after them."""
        data = np.ascontiguousarray(ids, self.dtype).tobytes()
        self._f.write(data)
        self._hash.update(data)
        self.tokens += len(ids)
        if end_document:
            self.offsets.append(self.tokens)

    def close(self) -> dict:
        if self.offsets[-1] != self.tokens:
            self.offsets.append(self.tokens)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        docs = self.path.with_name(f"{self.split}.docs.npy")
        tmp = docs.with_name(docs.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(self.offsets, np.int64))
        os.replace(tmp, docs)
        return {"file": self.path.name, "tokens": self.tokens,
                "documents": len(self.offsets) - 1, "sha256": self._hash.hexdigest()}


def write_index(folder: pathlib.Path, tokenizer_json: dict, splits: dict[str, dict]) -> None:
    """tokenizer.json, then index.json (last: its presence marks a finished store)."""
    text = json.dumps(tokenizer_json)
    files.write_atomic(folder / TOKENIZER, text)
    index = {"format": FORMAT, "version": VERSION,
             "dtype": token_dtype(int(tokenizer_json["vocab_size"])).name,
             "vocab_size": int(tokenizer_json["vocab_size"]),
             "tokenizer_sha256": _sha256_text(text), "splits": splits}
    files.write_atomic(folder / INDEX, json.dumps(index, indent=1) + "\n")


def write_store(folder, tokenizer, splits: dict[str, Iterable[np.ndarray]]) -> pathlib.Path:
    """A store of `splits` ({split: documents' id arrays}) made with `tokenizer` (small stores
    and tests; `prepare` streams through SplitWriter itself)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    meta = {}
    for split, docs in splits.items():
        w = SplitWriter(folder, split, dtype)
        for ids in docs:
            w.write(np.asarray(ids), end_document=True)
        meta[split] = w.close()
    write_index(folder, tokenizer.to_json(), meta)
    return folder


@dataclasses.dataclass(frozen=True, eq=False)
class TokenStore:
    """An opened store: `ids[split]` a read-only memmap [N], `docs[split]` offsets [D+1]."""

    folder: pathlib.Path
    index: dict
    tokenizer_json: dict
    ids: dict[str, np.ndarray]

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    def docs(self, split: str) -> np.ndarray:
        return np.load(self.folder / f"{split}.docs.npy", mmap_mode="r")

    def tokenizer(self):
        from jaxmodels.data.tokenizers import tokenizer_from_json
        return tokenizer_from_json(self.tokenizer_json)


def _bad(folder: pathlib.Path, what: str) -> DataError:
    return DataError(f"token store {folder} {what}: run `jaxmodels prepare ... --out {folder}` "
                     f"again")


def open_store(folder, *, verify: bool = True) -> TokenStore:
    """Opens STORE read-only after checking it (see the module docstring); verify=False skips
    only the sha256 of the token files (sizes and the tokenizer are always checked)."""
    folder = pathlib.Path(folder).expanduser()
    index_path = folder / INDEX
    if not index_path.is_file():
        if not folder.is_dir():
            raise DataError(f"token store {folder} does not exist: make one with `jaxmodels "
                            f"prepare INPUT --out {folder}` and set data.data_dir to it")
        raise _bad(folder, "has no index.json (unfinished or not a token store)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            raise ValueError("format")
        dtype = np.dtype(index["dtype"]).newbyteorder("<")
        splits = index["splits"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _bad(folder, "has an unreadable or foreign index.json") from None
    if index.get("version") != VERSION:
        raise _bad(folder, f"is format version {index.get('version')}, this jaxmodels reads "
                           f"{VERSION}")
    try:
        tok_text = (folder / TOKENIZER).read_text(encoding="utf-8")
    except OSError:
        raise _bad(folder, "has no tokenizer.json") from None
    if _sha256_text(tok_text) != index.get("tokenizer_sha256"):
        raise _bad(folder, "has a tokenizer.json that is not the one its tokens were made with "
                           "(sha256 differs from index.json)")
    ids = {}
    for split, meta in splits.items():
        path = folder / meta["file"]
        expected = int(meta["tokens"]) * dtype.itemsize
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            raise _bad(folder, f"lacks {meta['file']}")
        if size != expected:
            raise _bad(folder, f"has {meta['file']} of {size:,} bytes, its index says "
                               f"{expected:,} (truncated or overwritten)")
        if verify and sha256_file(path) != meta["sha256"]:
            raise _bad(folder, f"has {meta['file']} whose sha256 differs from index.json "
                               f"(corrupt)")
        if int(meta["tokens"]) < 2:
            raise _bad(folder, f"has a {split} split of {meta['tokens']} tokens")
        ids[split] = np.memmap(path, dtype=dtype, mode="r", shape=(int(meta["tokens"]),))
    if "train" not in ids or "validation" not in ids:
        raise _bad(folder, f"has splits {', '.join(ids) or 'none'}, not train and validation")
    return TokenStore(folder, index, json.loads(tok_text), ids)
