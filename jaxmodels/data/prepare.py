"""`jaxmodels prepare INPUT [INPUT ...] --out STORE`: tokenise text once into a token store.

An INPUT is the name of a corpus of jaxmodels.data.text.TEXT_CORPORA (shakespeare, wikipedia,
and with --download the download-only ones) or a local file or folder, split exactly as
data.dataset=text splits it (load_text_files: a folder's *.txt files, the last tenth of them
validation; one file's last 10% from a line start). Each input's split is one document of
that split, inputs in the order given. The tokenizer (char, byte, bpe: trained on the train
splits only; or a Hugging Face tokenizer folder / tokenizer.json) encodes the text in pieces
cut at line ends, which for char, byte and bpe gives exactly the ids of encoding it whole (bpe
encodes line by line anyway), so a store of one corpus holds the ids `data.dataset=<corpus>`
computes in memory.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator, Sequence

import numpy as np

from jaxmodels.data import token_store
from jaxmodels.data.text import DOC_SEPARATOR, TEXT_CORPORA, TextCorpus, load_text_corpus
from jaxmodels.errors import DataError, UserError

PIECE_CHARS = 1 << 20  # characters encoded at a time (the progress bar's unit of work)


def load_input(spec: str, *, download: bool = False, mirror: str | None = None) -> TextCorpus:
    path = pathlib.Path(spec).expanduser()
    if path.exists():
        return load_text_corpus("text", data_dir=str(path))
    if spec in TEXT_CORPORA and spec != "text":
        return load_text_corpus(spec, download=download, mirror=mirror)
    raise UserError(f"prepare input {spec!r} is neither a file, a folder nor a corpus: give a "
                    f"path or one of {', '.join(sorted(set(TEXT_CORPORA) - {'text'}))}")


def make_tokenizer(kind: str, train_text: str, vocab_size: int):
    from jaxmodels.data import tokenizers

    if kind in tokenizers.KINDS:
        return tokenizers.train_tokenizer(kind, train_text, vocab_size=vocab_size)
    path = pathlib.Path(kind).expanduser()
    if not path.exists():
        raise UserError(f"--tokenizer {kind!r} is neither char, byte, bpe nor a Hugging Face "
                        f"tokenizer folder or tokenizer.json file")
    try:
        return tokenizers.HFTokenizer.from_dir(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--tokenizer {kind}: {e}") from None


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of about `size` characters, each but the last ending with
    a line end (a piece is cut mid-line only when a line is longer than `size`)."""
    start = 0
    while start < len(text):
        stop = min(len(text), start + size)
        if stop < len(text):
            nl = text.rfind("\n", start, stop)
            stop = nl + 1 if nl >= start else stop
        yield text[start:stop]
        start = stop


def _encode(tokenizer, texts: list[str]) -> list[np.ndarray]:
    if hasattr(tokenizer, "encode_many"):
        return tokenizer.encode_many(texts)
    return [tokenizer.encode(t) for t in texts]


def prepare(inputs: Sequence[str], out, *, tokenizer: str = "char", vocab_size: int = 1024,
            download: bool = False, mirror: str | None = None, progress: bool = True) -> dict:
    """Writes the store (see token_store) and returns a summary: tokens per split, tokens/s."""
    import tqdm.auto

    if not inputs:
        raise UserError("prepare needs at least one INPUT (a file, a folder or a corpus name)")
    corpora = [load_input(s, download=download, mirror=mirror) for s in inputs]
    split_names = ["train", "validation"] + (["test"] if all("test" in c.splits for c in corpora)
                                             else [])
    tok = make_tokenizer(tokenizer, DOC_SEPARATOR.join(c.splits["train"] for c in corpora),
                         vocab_size)
    dtype = token_store.token_dtype(tok.vocab_size)
    folder = pathlib.Path(out).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {folder}: cannot create it ({e.strerror})") from None
    # A store being rewritten is unfinished until its new index lands.
    (folder / token_store.INDEX).unlink(missing_ok=True)
    total_chars = sum(len(c.splits[s]) for c in corpora for s in split_names)
    bar = tqdm.auto.tqdm(total=total_chars, unit="char", unit_scale=True, disable=not progress,
                         desc=f"prepare {tok.kind}")
    t0, meta = time.perf_counter(), {}
    for split in split_names:
        writer = token_store.SplitWriter(folder, split, dtype)
        for c in corpora:
            batch = list(pieces(c.splits[split]))
            # Pieces go to the tokenizer a few at a time: encode_many parallelises them.
            for k in range(0, len(batch), 8):
                group = batch[k:k + 8]
                for ids in _encode(tok, group):
                    if len(ids) and int(np.max(ids)) >= tok.vocab_size:
                        raise DataError(f"tokenizer gave id {int(np.max(ids))} outside its "
                                        f"vocabulary of {tok.vocab_size}")
                    writer.write(ids)
                bar.update(sum(map(len, group)))
            writer.write(np.zeros(0, dtype), end_document=True)
        meta[split] = writer.close()
    bar.close()
    token_store.write_index(folder, tok.to_json(), meta)
    seconds = time.perf_counter() - t0
    tokens = sum(m["tokens"] for m in meta.values())
    return {"store": str(folder), "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
            "dtype": dtype.name, "tokens": {s: m["tokens"] for s, m in meta.items()},
            "seconds": seconds, "tokens_per_sec": tokens / max(seconds, 1e-9)}


def main(argv: list[str]) -> int:
    """The `jaxmodels prepare` command line: prints the summary as JSON; errors in one line."""
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="jaxmodels prepare",
                                description="tokenise text into a token store (data.dataset="
                                            "tokens data.data_dir=STORE trains from it)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a text file, a folder of *.txt files, or a corpus name "
                        f"({', '.join(sorted(set(TEXT_CORPORA) - {'text'}))})")
    p.add_argument("--out", required=True, metavar="STORE", help="the store's folder")
    p.add_argument("--tokenizer", default="char", metavar="char|byte|bpe|HF_DIR",
                   help="char, byte, bpe (trained on the train splits), or a Hugging Face "
                        "tokenizer folder or tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=1024, help="bpe's vocabulary bound")
    p.add_argument("--download", action="store_true", help="fetch download-only corpora")
    p.add_argument("--mirror", default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        summary = prepare(args.inputs, args.out, tokenizer=args.tokenizer,
                          vocab_size=args.vocab_size, download=args.download,
                          mirror=args.mirror, progress=not args.no_progress)
    except UserError as e:
        print(f"jaxmodels: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
